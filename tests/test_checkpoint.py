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


def test_newest_with_a_valid_checksum_that_fails_to_load_falls_back(tmp_path):
    """The checksum only says the bytes are the ones written; they may still not load."""
    for step in (10, 20):
        checkpoint.save(tmp_path, step, {"step": step, "model": {"w": torch.zeros(2)}})
    newest = checkpoint.checkpoint_path(tmp_path, 30)
    newest.write_bytes(b"PK\x03\x04 not a torch checkpoint")
    newest.with_suffix(".pt.sha256").write_text(checkpoint.sha256_file(newest) + "\n")
    assert checkpoint.is_valid(newest)
    with pytest.warns(UserWarning, match=r"ckpt-000000030.pt: checksum matches but it cannot be loaded"):
        state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 20 and path.name == "ckpt-000000020.pt"


def test_newest_that_lacks_what_the_trainer_restores_falls_back(tmp_path):
    checkpoint.save(tmp_path, 1, {"step": 1, "model": {}})
    checkpoint.save(tmp_path, 2, {"step": 2})  # no model state
    with pytest.warns(UserWarning, match=r"ckpt-000000002.pt: loads but lacks \['model'\]"):
        state, _ = checkpoint.load_latest(tmp_path, required=("model", "step"))
    assert state["step"] == 1
