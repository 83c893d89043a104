"""A KV cache layer that grows in place, so a decode step writes one token's keys instead of copying all.

transformers' `DynamicLayer` appends with `torch.cat`: every decode step copies the whole cache (at an
editor's 7k-token prompt on SmolLM2, 160 MB per step in bf16). `GrowingLayer` keeps spare room at the end
of its storage and writes new tokens into it; `keys`/`values` are views of the filled part. Anything that
assigns `keys`/`values` (the decoder trims, merges and pads its batches that way) replaces the storage, so
the next append reallocates: a view handed out earlier (the prompt cache keeps such views) is never
written to.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_MIN_ROOM = 64  # tokens of spare room a reallocation adds at least


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose appends write into spare room instead of concatenating."""

    def __init__(self) -> None:
        self._k = self._v = None
        self._n = 0
        super().__init__()

    @property
    def keys(self):
        return None if self._k is None else self._k[..., : self._n, :] if self._k.dim() == 4 else self._k

    @keys.setter
    def keys(self, value) -> None:
        self._k = value
        self._n = value.shape[-2] if value is not None and value.dim() == 4 else 0

    @property
    def values(self):
        return None if self._v is None else self._v[..., : self._n, :] if self._v.dim() == 4 else self._v

    @values.setter
    def values(self, value) -> None:
        self._v = value  # set after keys everywhere, with the same length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self._n, key_states.shape[-2]
        if self._k.dim() != 4 or self._k.shape[-2] < n + new or self._k.shape[:2] != key_states.shape[:2]:
            self._grow(key_states, value_states, n + new)
        self._k[..., n : n + new, :] = key_states
        self._v[..., n : n + new, :] = value_states
        self._n = n + new
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
        """New storage with room past `need`, holding what is cached so far."""
        room = need + max(_MIN_ROOM, need // 8)
        b, h, _, d = key_states.shape
        k = key_states.new_empty((b, h, room, d))
        v = value_states.new_empty((b, h, room, value_states.shape[-1]))
        if self._n:
            k[..., : self._n, :], v[..., : self._n, :] = self.keys, self.values
        self._k, self._v = k, v


def growing_cache(config) -> DynamicCache:
    """transformers' `DynamicCache` for `config`, with its full-attention layers growing in place."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
