"""Atomic file and folder writes: a partial output never looks complete.

Everything is written under a temporary name in the destination's own folder (so that the
final rename stays on one filesystem and is atomic), flushed to disk (fsync of every file and
folder), and renamed into place only when whole; the folder holding it is fsynced after the
rename, so that the new name survives a power cut.

A process killed mid-write leaves its temporaries behind. Their names say whose they are,
`.NAME.<host>-<pid>-<random>.tmp` (and `.NAME.old-...`, `.NAME.scratch-...`), so the next
write of NAME removes the stale ones first: those of this host whose process is gone, or whose
pid is this process's own but which this process did not make (a container restarted as PID 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_live: set[str] = set()  # temporaries this process is writing now (never stale)
_live_lock = threading.Lock()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _claim(tmp_path)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.chmod(tmp_path, FILE_MODE)  # mkstemp makes 0600; outputs are meant to be read by others
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)
        _release(tmp_path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    remove_stale_temporaries(path)
    tmp = temporary_dir(path)
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700
        _fsync_tree(tmp)
        if path.exists():
            # Move the old one aside first so that `path` is never half old, half new. The name
            # is new each time: a leftover of a killed swap never blocks the next one.
            old = path.with_name(f".{path.name}.old-{_owner()}-{secrets.token_hex(4)}")
            _claim(old)
            try:
                os.replace(path, old)
                os.replace(tmp, path)
                _fsync_dir(path.parent)
                shutil.rmtree(old, ignore_errors=True)
            finally:
                _release(old)
        else:
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _release(tmp)


def temporary_dir(path: Path, kind: str = "") -> Path:
    """A new folder beside `path`, named as this process's temporary (`kind`: e.g. "scratch-").
    The caller removes it; if the process is killed, the next remove_stale_temporaries does."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}{_owner()}-", suffix=".tmp",
                                dir=path.parent))
    _claim(tmp)
    return tmp


def release_temporary(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _release(path)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by killed processes (see the module docstring).
    Returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:old-|scratch-)?"
                         r"(?P<host>[A-Za-z0-9.-]+?)-(?P<pid>\d+)-[A-Za-z0-9_]+(?:\.tmp)?$")
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.old-(?P<pid>\d+)$")  # before the host was named
    removed: list[Path] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name) or legacy.match(name)
        if match is None:
            continue
        candidate = path.parent / name
        if _is_stale(candidate, match.groupdict().get("host") or _host(), int(match["pid"])):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


FILE_MODE, DIR_MODE = 0o644, 0o755


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:63] or "host"


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _is_stale(candidate: Path, host: str, pid: int) -> bool:
    if host != _host():
        return False  # another machine's (a shared volume): its process may be alive
    if pid == os.getpid():
        with _live_lock:
            return str(candidate) not in _live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _claim(path: Path) -> None:
    with _live_lock:
        _live.add(str(path))


def _release(path: Path) -> None:
    with _live_lock:
        _live.discard(str(path))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and folder under `root` on disk before `root` is renamed into place."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            file = Path(dirpath) / name
            if not file.is_symlink():
                _fsync_file(file)
        _fsync_dir(Path(dirpath))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
