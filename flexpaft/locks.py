"""One writer at a time: advisory locks on run directories and cache entries.

A run directory (train, eval, search, study) is written by one process only: its checkpoint
recovery and its atomic replacements assume nobody else is renaming beside them. The first
process takes ``.flexpaft.lock`` in the directory with ``fcntl.flock`` and writes who it is
there; a second one is refused in one line naming the holder. A cache entry (a dequantized
model) is filled by whoever comes first while the others wait, then find it done.

``flock`` belongs to the open file, so the kernel drops it when its holder dies however it dies
(SIGKILL, OOM): a lock file left by a dead process is simply free, and no pid has to be judged
stale. The file is removed on release; an acquirer checks that the file it locked is still the
one at the path (and retries otherwise), so removal never lets two holders in. Where the file
system cannot lock (some network mounts), the run goes on unlocked with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from flexpaft.errors import FlexpaftError

try:
    import fcntl
except ImportError:  # not POSIX: no locking, as before
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".flexpaft.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# Run directories this process holds, by real path, with a count: a run that starts another
# in the same directory (none does today) must not lock itself out, as a second flock on a
# second open file of the same process would.
_held: dict[str, int] = {}


class RunDirBusy(FlexpaftError):
    """Another live process holds the run directory."""


def _open_locked(path: Path, blocking: bool) -> int | None:
    """An fd of ``path`` holding an exclusive flock, None if someone else holds it (and not
    ``blocking``); -1 where the file system cannot lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            if e.errno in _UNSUPPORTED:
                log.warning(
                    "warning: %s cannot be locked (%s); going on unlocked", path, e.strerror
                )
                return -1
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it as we waited: lock the new one


def _release(fd: int, path: Path) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)  # while still held, so a waiter sees it gone and starts over
    os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info.get("host", ""))
        what, started = str(info.get("command", "flexpaft")), str(info.get("started", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
    where = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
    return f"{what}, {where}, started {started}"


@contextlib.contextmanager
def run_dir_lock(directory: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold ``directory`` (created if needed) for this process while the block runs.

    Raises :class:`RunDirBusy` at once when another live process holds it. A directory this
    call created is removed again if the block leaves it empty (a run refused by a later
    check leaves nothing behind)."""
    from flexpaft.validate import check_writable_dir

    out = Path(directory)
    check_writable_dir(out)
    key = os.path.realpath(out)
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = _open_locked(path, blocking=False)
    if fd is None:
        raise RunDirBusy(
            f"{out} is in use by another flexpaft run ({_holder(path)}): wait for it to finish "
            "or choose another output_dir"
        )
    if fd >= 0:
        started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        data = json.dumps({**info, "started": started}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        _release(fd, path)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty


@contextlib.contextmanager
def cache_entry_lock(entry: str | os.PathLike) -> Iterator[None]:
    """Wait until no other process fills cache ``entry``, then hold it while the block runs.

    The lock is ``.NAME.lock`` beside the entry; the caller checks again, inside the block,
    whether a process that held it before has finished the entry meanwhile."""
    entry = Path(entry)
    if fcntl is None:
        yield
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    path = entry.parent / f".{entry.name}.lock"
    fd = _open_locked(path, blocking=False)
    if fd is None:
        log.info("waiting for another process writing %s", entry)
        fd = _open_locked(path, blocking=True)
    try:
        yield
    finally:
        _release(fd, path)  # type: ignore[arg-type]
