import pytest

from codellama.train.config import resolve_config
from codellama.train.loop import train


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("data", "no-such-shards", "not a finished shard directory"),
        ("base", "no-such-model", "neither a checkpoint directory nor a preset"),
    ],
)
def test_bad_inputs_fail_before_writing_anything(tmp_path, monkeypatch, field, value, message):
    monkeypatch.chdir(tmp_path)
    fields = {"data": "no-such-shards", "base": "tiny", "out": str(tmp_path / "run")}
    if field == "base":
        from codellama.data.shards import ShardWriter

        writer = ShardWriter(tmp_path / "shards", 8, 100)
        writer.add(list(range(8)))
        writer.finish()
        fields["data"] = str(tmp_path / "shards")
    fields[field] = value
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        train(resolve_config("code", "tiny", **fields))
    assert not (tmp_path / "run").exists()


def test_long_context_recipe_expects_whole_file_packing_and_offload_switch():
    config = resolve_config("long-context", "7b", ["activation_offload=true"])
    assert config.data_expect == {"packing": "whole-files"} and config.activation_offload is True
