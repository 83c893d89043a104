"""Two ranks under torchrun (gloo, FSDP2 fully_shard) take exactly the steps one process takes."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import final_weights, metric_losses, run_cli, write_code_shards

pytestmark = pytest.mark.slow  # every test here takes tens of seconds (training runs, subprocesses)

ARGS = [
    "--set",
    "max_steps=4",
    "--set",
    "seq_len=64",
    "--set",
    "batch_tokens=512",
    "--set",
    "micro_batch_size=2",
    "--set",
    "precision=fp32",
    "--set",
    "optim.lr=3e-3",
    "--set",
    "schedule.warmup_steps=1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def shards(tiny_tokenizer, stdlib_texts, tmp_path_factory):
    return write_code_shards(tiny_tokenizer, stdlib_texts[:40], tmp_path_factory.mktemp("fsdp") / "shards", 64)


def test_two_gloo_ranks_match_one_process(shards, tiny_tokenizer_dir, tmp_path):
    common = ["train", "code", "--data", str(shards), "--tokenizer", str(tiny_tokenizer_dir), *ARGS]
    two = run_cli(*common, "--out", str(tmp_path / "two"), torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "FSDP2: 2 layers + root sharded over 2 ranks" in two.stderr
    one = run_cli(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]

    losses_two, losses_one = metric_losses(tmp_path / "two"), metric_losses(tmp_path / "one")
    assert [s for s, _ in losses_one] == [1, 2, 3, 4]
    assert [s for s, _ in losses_two] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(losses_two, losses_one):
        assert a == pytest.approx(b, rel=1e-5)
    assert losses_one[-1][1] < losses_one[0][1]  # it learned: the comparison is not of two no-ops
    a, b = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    assert a.keys() == b.keys()
    for key in a:  # per tensor: Adam can turn summation-order noise in a ~0 gradient into a visible step
        assert ((a[key] - b[key]).norm() / b[key].norm()).item() < 1e-4, key


@pytest.mark.parametrize("stored", ["fp32", "bf16"])
def test_checkpoint_base_reaches_every_rank_from_rank0(shards, tiny_model_dir, tmp_path, stored):
    """Only rank 0 reads the base (in its stored precision); the others get fp32 shards by broadcast, RoPE rebuilt."""
    from codellama.checkpoint import load_model, save_checkpoint
    from codellama.tokenizer import load_tokenizer

    if stored == "bf16":  # like Meta's releases: rank 0 holds it in bf16, the shards are its exact fp32 upcast
        tiny_model_dir = save_checkpoint(
            load_model(tiny_model_dir, dtype=torch.bfloat16), tmp_path / "bf16", load_tokenizer(tiny_model_dir)
        )
    frozen = [a if a != "optim.lr=3e-3" else "optim.lr=1e-30" for a in ARGS]  # steps below fp32 resolution
    common = [
        "train",
        "code",
        "--data",
        str(shards),
        "--base",
        str(tiny_model_dir),
        *frozen,
        "--set",
        "rope.base=1000000",
    ]  # a changed RoPE: the rebuilt buffers must follow the config
    two = run_cli(*common, "--out", str(tmp_path / "two"), torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    for (_, a), (_, b) in zip(metric_losses(tmp_path / "two"), metric_losses(tmp_path / "one")):
        assert a == pytest.approx(b, rel=1e-5)
    base = load_model(tiny_model_dir).state_dict()  # fp32 (upcast from bf16 where stored so)
    exported = final_weights(tmp_path / "two")
    assert exported.keys() == {k for k in base if "rotary" not in k}
    for key, value in exported.items():
        assert value.dtype == torch.float32 and torch.equal(value, base[key]), key


def test_mesh_shape_is_flat_on_one_node_and_hybrid_across_nodes():
    from codellama.train.distributed import DistEnv, shard_mesh_shape

    assert shard_mesh_shape(DistEnv(world_size=8, local_world_size=8)) == (1, 8)
    assert shard_mesh_shape(DistEnv(world_size=32, local_world_size=8)) == (4, 8)  # one replica per node
    assert shard_mesh_shape(DistEnv(world_size=32, local_world_size=8), 32) == (1, 32)  # flat, on request
    assert shard_mesh_shape(DistEnv(world_size=32, local_world_size=8), 16) == (2, 16)
    with pytest.raises(ValueError, match="does not divide"):
        shard_mesh_shape(DistEnv(world_size=32, local_world_size=8), 12)


def test_hybrid_sharding_matches_one_process(shards, tiny_tokenizer_dir, tmp_path):
    """4 ranks as 2 replicas x 2 shards (HSDP, as across two nodes) take the steps one process takes.

    With 2 micro-batches per rank, so the replicas' single all-reduce per step is checked too.
    """
    one_seq = [a if a != "micro_batch_size=2" else "micro_batch_size=1" for a in ARGS]
    common = ["train", "code", "--data", str(shards), "--tokenizer", str(tiny_tokenizer_dir), *one_seq]
    four = run_cli(*common, "--set", "fsdp_shard_size=2", "--out", str(tmp_path / "four"), torchrun=4)
    assert four.returncode == 0, four.stderr[-3000:]
    assert "HSDP: 2 layers + root sharded over 2 ranks, 2 replicas" in four.stderr
    one = run_cli(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    for (_, a), (_, b) in zip(metric_losses(tmp_path / "four"), metric_losses(tmp_path / "one")):
        assert a == pytest.approx(b, rel=1e-5)
    a, b = final_weights(tmp_path / "four"), final_weights(tmp_path / "one")
    for key in a:
        assert ((a[key] - b[key]).norm() / b[key].norm()).item() < 1e-4, key
