"""Process group and FSDP2 sharding: one code path from a single CPU process to torchrun on many nodes.

Under `torchrun` (WORLD_SIZE > 1) we join a process group (nccl on GPUs, gloo on CPUs) and
shard every decoder layer plus the root with `fully_shard` (FSDP2). On one node every rank
holds a shard of one model copy; across nodes the default is hybrid sharding (HSDP): each node
shards its own copy, so the per-layer all-gathers and reduce-scatters stay on the node's links
and only one gradient all-reduce per step crosses the network. Alone, nothing is wrapped and
the same loop runs as plain PyTorch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1  # ranks on this node

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None
        )
    if dist.is_initialized():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, local_world)
    return DistEnv(device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_sum(value: float | int, env: DistEnv) -> float:
    """Sum a Python number over ranks (float64 on the training device)."""
    if not env.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_object(obj, env: DistEnv):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_mesh_shape(env: DistEnv, shard_size: int = 0) -> tuple[int, int]:
    """(replicas, ranks per replica): flat FSDP on one node, one replica per node (HSDP) across nodes."""
    shard = shard_size or (env.local_world_size if 1 < env.local_world_size < env.world_size else env.world_size)
    if shard > env.world_size or env.world_size % shard:
        raise ValueError(f"fsdp_shard_size {shard} does not divide the {env.world_size} ranks")
    return env.world_size // shard, shard


def shard_model(
    model: torch.nn.Module, env: DistEnv, *, param_dtype: torch.dtype | None = None, shard_size: int = 0
) -> torch.nn.Module:
    """FSDP2: each decoder layer is a unit (gathered just in time), then the root (embeddings, head).

    FSDP averages gradients over ranks (HSDP too: over the shard group, then the replicas); the
    loop multiplies each rank's loss by W to undo it, because it already divides by the number of
    target tokens in the whole global batch (a divide factor of 1 would say the same, but gloo
    has no PREMUL_SUM reduction).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    replicas, shard = shard_mesh_shape(env, shard_size)
    if replicas > 1:
        mesh = init_device_mesh(env.device.type, (replicas, shard), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(env.device.type, (shard,))
    mp = (
        MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        if param_dtype
        else MixedPrecisionPolicy()
    )
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    if replicas > 1:
        log.info("HSDP: %d layers + root sharded over %d ranks, %d replicas", len(model.model.layers), shard, replicas)
    else:
        log.info("FSDP2: %d layers + root sharded over %d ranks", len(model.model.layers), env.world_size)
    return model


def load_full_state_from_rank0(model: torch.nn.Module, full_state: dict, env: DistEnv) -> None:
    """Give a sharded meta-device model real storage and fill it from rank 0's full state dict.

    Collective: rank 0 passes the whole state dict, the others an empty one; each rank keeps only
    its own shards of what rank 0 broadcasts.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=env.device)
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    log.info("rank 0's weights broadcast into %d ranks' shards", env.world_size)
