"""Atomic file and directory writes, and content hashes for run manifests.

Every output flexpaft writes goes through here so that an interrupted run never leaves a
half-written file or adapter where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename.

    An existing ``path`` is moved aside first and removed only after the new one is in place,
    so at every instant either the old or the new complete directory exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    share_tree(tmp)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | os.PathLike) -> bool:
    """Repair what a killed ``atomic_directory`` left beside ``path``; True if it restored it.

    Killed between its two renames, it leaves no ``path`` but the complete previous version as
    ``.NAME.old-PID``: that is moved back. Unfinished ``.NAME.*.tmp`` directories and old
    versions that are no longer needed are removed; nothing else is touched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return False
    olds = sorted(
        (p for p in path.parent.glob(f".{path.name}.old-*") if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    restored = False
    if olds and not path.exists():
        os.replace(olds.pop(), path)
        restored = True
    for p in olds + [p for p in path.parent.glob(f".{path.name}.*.tmp") if p.is_dir()]:
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
