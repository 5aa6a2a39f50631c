import pytest
import torch

from kubevae.training import checkpoint


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))})
    newest = checkpoint.checkpoint_path(tmp_path, 30)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="ckpt-000000030.pt: checksum"):
        state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 20 and path.name == "ckpt-000000020.pt"


def test_checkpoint_without_checksum_counts_as_incomplete(tmp_path):
    checkpoint.save(tmp_path, 1, {"step": 1})
    checkpoint.save(tmp_path, 2, {"step": 2})
    checkpoint.checkpoint_path(tmp_path, 2).with_suffix(".pt.sha256").unlink()
    with pytest.warns(UserWarning):
        assert checkpoint.load_latest(tmp_path)[0]["step"] == 1


def test_only_the_newest_are_kept(tmp_path):
    for step in range(5):
        checkpoint.save(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == \
        ["ckpt-000000004.pt", "ckpt-000000003.pt"]


def test_empty_folder_has_no_checkpoint(tmp_path):
    assert checkpoint.load_latest(tmp_path / "missing") is None
