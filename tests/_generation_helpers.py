"""A scripted model: the tiny model's forward pass with its next-token choice replaced by a script.

A random model cannot be made to write a particular text; stop rules that depend on the text (n_indent,
a newline after a time limit) need one that does. The forward pass is real (shapes, KV cache, batching,
cancellation all run as usual), only the logits are overwritten.
"""

from __future__ import annotations

import torch


class ScriptedModel(torch.nn.Module):
    """Wraps a `LlamaForCausalLM`: after the prompt, row by row, it 'predicts' `script` token by token
    (then EOS forever). `prompt_len` is where the script starts. Each forward pass takes `step_ms` on
    `clock` (a stand-in for time.perf_counter that a test installs, so time rules are exact)."""

    def __init__(self, model, script: list[int], prompt_len: int, eos_id: int, step_ms: float = 0.0):
        super().__init__()
        self.inner, self.script, self.prompt_len, self.eos_id = model, script, prompt_len, eos_id
        self.config, self.step_ms, self.now = model.config, step_ms, 0.0

    def clock(self) -> float:
        return self.now

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        self.now += self.step_ms / 1e3
        last = kwargs["position_ids"][:, -1]  # the position of each row's last fed token
        forced = torch.full_like(out.logits[:, -1, :], -1e9)
        for b, pos in enumerate(last.tolist()):
            k = pos + 1 - self.prompt_len
            forced[b, self.script[k] if 0 <= k < len(self.script) else self.eos_id] = 0.0
        out.logits = forced[:, None, :]
        return out
