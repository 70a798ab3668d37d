"""The operating system said no: an OSError as the one line the CLI prints.

Disk full, read-only mount, permission denied, a name too long, a file where a directory must
be: the user can fix each of these, so each is a ``flexpaft: error:`` line naming the path and
the cause (exit 2), never a traceback. Writes are atomic (io.py), so when one fails the last
finished file, adapter or checkpoint is still in place; the hint says so.
"""

from __future__ import annotations

import errno
import os

# Causes where a hint says more than strerror does.
_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long (most file systems allow 255 bytes per name)",
    errno.EEXIST: "a file is in the way (it already exists)",
    errno.EISDIR: "it is a directory, where a file is expected",
    errno.ENOTDIR: "a part of the path is a file, where a directory is expected",
}
_KEPT = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def describe_os_error(e: OSError) -> str:
    """One line: the path(s), the cause, what was kept, and where the cache is if it is the
    cache that failed."""
    code = e.errno
    cause = _HINTS.get(code) if code is not None else None
    cause = cause or e.strerror or str(e) or type(e).__name__
    if code is not None and code in errno.errorcode and code not in _HINTS:
        cause += f" ({errno.errorcode[code]})"
    where = _where(e)
    line = f"{where}: {cause}" if where else cause
    if code in _KEPT:
        line += "; finished outputs and the last checkpoint are kept"
    cache = os.environ.get("FLEXPAFT_CACHE")
    if cache and where and os.path.abspath(str(e.filename)).startswith(os.path.abspath(cache)):
        line += f" (this is the cache, FLEXPAFT_CACHE={cache})"
    return line.replace("\n", " ")


def _where(e: OSError) -> str:
    if e.filename is None:
        return ""
    first = os.fsdecode(e.filename) if isinstance(e.filename, bytes) else str(e.filename)
    if e.filename2 is not None:
        return f"{first} -> {e.filename2}"
    return first
