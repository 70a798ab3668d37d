"""Atomic file and directory writes, and content hashes for run manifests.

Every output flexpaft writes goes through here so that an interrupted run never leaves a
half-written file or adapter where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    # mkstemp creates 0600 files; finished outputs get the usual permissions (0666 & ~umask).
    return 0o666 & ~_umask()


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file normal permissions and rename it into place."""
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def write_error(e: BaseException, path: str | os.PathLike) -> BaseException:
    """``e`` as an OSError naming ``path`` when it is a failed write that does not say where.

    ``f.write``/``fsync`` on a full disk raise OSError without a file name; safetensors wraps
    the OS error in its own ``SafetensorError`` ("I/O error: ... (os error 28)") and torch.save in
    a RuntimeError. The CLI turns an OSError into one line naming the path and the cause, so
    those become OSErrors here, at the write site, where the path is known. Anything else is
    returned unchanged.
    """
    if isinstance(e, OSError):
        if e.filename is None and e.errno is not None:
            return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
        return e
    text = str(e)
    if type(e).__name__ == "SafetensorError" and "I/O error" in text:
        m = re.search(r"\(os error (\d+)\)", text)
        code = int(m.group(1)) if m else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    if isinstance(e, RuntimeError) and ("failed writing" in text or "file write failed" in text):
        return OSError(errno.EIO, "write failed (is the disk full?)", str(path))
    return e


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer library (matplotlib, openpyxl);
    on success it is renamed onto ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=path.suffix + ".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = write_error(e, path)
        if named is not e:
            raise named from None
        raise


def share_tree(root: str | os.PathLike) -> None:
    """Usual permissions (``umask`` applied) for a finished directory tree: mkdtemp makes 0700
    directories and some writers (safetensors, mkstemp) 0600 files, which teammates on a shared
    cluster could not read."""
    mask = _umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    os.chmod(root, dir_mode)
    for parent, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(parent, d), dir_mode)
        for f in files:
            p = os.path.join(parent, f)
            if not os.path.islink(p):
                os.chmod(p, file_mode)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = write_error(e, path)
        if named is not e:
            raise named from None
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _owner_tag() -> str:
    """``HOST-PID`` of this process, put in the names of its temporary directories so that a
    recovery by another process can tell a live writer's work from a dead one's leftovers."""
    # Short: it goes into file names, which most file systems cap at 255 bytes.
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:16] or "host"
    return f"{host}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or a number that is not ours to judge)
    return True


def _owner_alive(tag: str) -> bool:
    """Whether the process named by ``HOST-PID`` (or a bare PID) may still be writing.

    Our own pid counts as alive (a directory of ours is ours to finish); a pid on another host
    cannot be checked from here and counts as alive too (a shared file system). Tags that are
    not ``HOST-PID``, written by versions before this one, count as dead, as they always did.
    """
    host, _, pid = tag.rpartition("-")
    if not host or not pid.isdigit():
        return False
    if host != _owner_tag().rpartition("-")[0]:
        return True
    return int(pid) == os.getpid() or _pid_alive(int(pid))


def _tmp_owner(p: Path, name: str) -> str:
    # ``.NAME.HOST-PID-RANDOM.tmp`` -> ``HOST-PID``; mkdtemp's random part has no "-".
    middle = p.name[len(name) + 2 : -len(".tmp")]
    return middle.rpartition("-")[0]


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename.

    An existing ``path`` is moved aside first and removed only after the new one is in place,
    so at every instant either the old or the new complete directory exists.

    ``keep_existing`` is for cache entries, which any number of processes may fill at once:
    every writer works in its own ``.NAME.HOST-PID-RANDOM.tmp``, and one that finishes after
    another has published ``path`` keeps that finished copy and discards its own (a rename
    cannot replace a non-empty directory, and the two copies are equal anyway).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}-", suffix=".tmp", dir=path.parent)
    )
    try:
        yield tmp
        share_tree(tmp)
        if keep_existing:
            _publish_or_keep(tmp, path)
            return
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{_owner_tag()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        named = write_error(e, path)
        if named is not e:
            raise named from None
        raise


def _publish_or_keep(tmp: Path, path: Path) -> None:
    if path.is_dir() and any(path.iterdir()):
        shutil.rmtree(tmp, ignore_errors=True)  # another writer finished first
        return
    try:
        os.replace(tmp, path)  # also replaces an empty directory
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not path.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another writer finished in between


def recover_directory(path: str | os.PathLike) -> bool:
    """Repair what a killed ``atomic_directory`` left beside ``path``; True if it restored it.

    Killed between its two renames, it leaves no ``path`` but the complete previous version as
    ``.NAME.old-HOST-PID``: that is moved back. Unfinished ``.NAME.*.tmp`` directories and old
    versions that are no longer needed are removed; nothing else is touched. Only what a dead
    process left is touched: a live writer's temporary directory (another process filling the
    same cache entry) is its own business.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return False
    prefix = f".{path.name}.old-"
    olds = sorted(
        (
            p
            for p in path.parent.glob(f".{path.name}.old-*")
            if p.is_dir() and not _owner_alive(p.name[len(prefix) :])
        ),
        key=lambda p: p.stat().st_mtime,
    )
    restored = False
    if olds and not path.exists():
        os.replace(olds.pop(), path)
        restored = True
    tmps = [
        p
        for p in path.parent.glob(f".{path.name}.*.tmp")
        if p.is_dir() and not _owner_alive(_tmp_owner(p, path.name))
    ]
    for p in olds + tmps:
        shutil.rmtree(p, ignore_errors=True)
    return restored


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
