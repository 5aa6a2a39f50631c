"""kubevae.storage: atomic writes leave nothing behind that blocks or misleads the next run
(issue 14, item 10): a killed directory swap, killed temporaries, and fsync before rename."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubevae import storage
from kubevae.storage import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    remove_stale_temporaries,
)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def host() -> str:
    return storage._host()


def write_folder(path, text: str) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text(text)


def test_a_killed_swap_under_the_same_pid_does_not_block_the_next(tmp_path):
    """PID 1 in a container: the killed run and the re-run have the same pid."""
    out = tmp_path / "model"
    write_folder(out, "v1")
    leftover = tmp_path / f".model.old-{os.getpid()}"  # what a killed swap used to leave
    leftover.mkdir()
    (leftover / "a.txt").write_text("v0")
    write_folder(out, "v2")
    write_folder(out, "v3")
    assert (out / "a.txt").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "model"
    stale = [tmp_path / f".model.{host()}-{dead_pid()}-k1ll3d.tmp",               # a folder
             tmp_path / f".model.old-{host()}-{dead_pid()}-0123abcd",              # a swap
             tmp_path / f".model.{host()}-{os.getpid()}-restarted.tmp"]            # pid 1 again
    for path in stale:
        path.mkdir()
        (path / "partial").write_bytes(b"\0" * 10)
    stale_file = tmp_path / f".model.{host()}-{dead_pid()}-f1le.tmp"
    stale_file.write_bytes(b"half")
    kept = [tmp_path / f".model.{host()}-{os.getppid()}-alive.tmp",   # a live process's
            tmp_path / f".model.otherhost-{dead_pid()}-shared.tmp",   # another machine's
            tmp_path / ".other.tmp", tmp_path / f".modelx.{host()}-{dead_pid()}-x.tmp"]
    for path in kept:
        path.mkdir()
    write_folder(out, "v1")
    assert not any(p.exists() for p in stale + [stale_file])
    assert all(p.exists() for p in kept)
    assert remove_stale_temporaries(out) == []


def test_a_temporary_being_written_is_never_stale(tmp_path):
    out = tmp_path / "m.json"
    with atomic_path(out) as tmp:
        tmp.write_text("x")
        assert remove_stale_temporaries(out) == [] and tmp.exists()
        with atomic_dir(tmp_path / "m.json.d") as other:  # cleaning another path leaves it be
            assert tmp.exists() and other.exists()
    assert out.read_text() == "x"


def test_killed_file_writes_are_cleaned_by_the_next_write(tmp_path):
    out = tmp_path / "card.json"
    code = ("import os, sys; from kubevae.storage import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half'); os._exit(9)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(out)], timeout=60)
    assert killed.returncode == 9
    assert len(list(tmp_path.iterdir())) == 1 and not out.exists()  # the killed temporary
    atomic_write_text(out, "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"b")
        (tmp / "a.bin").write_bytes(b"a")
    swap = events.index(("replace", str(tmp)))
    synced = {path for kind, path in events[:swap] if kind == "fsync"}
    assert {str(tmp / "a.bin"), str(tmp / "sub" / "b.bin"), str(tmp / "sub"), str(tmp)} <= synced
    assert ("fsync", str(tmp_path)) in events[swap:]  # the new name itself


@pytest.mark.parametrize("writer", ["file", "folder"])
def test_outputs_are_readable_by_others(tmp_path, writer):
    if writer == "file":
        atomic_write_text(tmp_path / "x", "x")
        assert oct((tmp_path / "x").stat().st_mode & 0o777) == "0o644"
    else:
        write_folder(tmp_path / "x", "x")
        assert oct((tmp_path / "x").stat().st_mode & 0o777) == "0o755"
