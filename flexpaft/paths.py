"""Where flexpaft caches things (dequantized models, downloaded task data)."""

from __future__ import annotations

import os
from pathlib import Path

from flexpaft.errors import FlexpaftError


def cache_dir() -> Path:
    """``$FLEXPAFT_CACHE``, else ``$XDG_CACHE_HOME/flexpaft``, else ``~/.cache/flexpaft``."""
    if os.environ.get("FLEXPAFT_CACHE"):
        root = Path(os.environ["FLEXPAFT_CACHE"])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "flexpaft"
    setting = "FLEXPAFT_CACHE" if os.environ.get("FLEXPAFT_CACHE") else "the cache directory"
    if root.exists() and not root.is_dir():
        raise FlexpaftError(
            f"{setting} {root} is a file, not a directory (set FLEXPAFT_CACHE to a directory)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        # A file in the way higher up, a read-only parent: say which setting points there.
        raise FlexpaftError(
            f"{setting} {root} cannot be created: {e.strerror or e} "
            "(set FLEXPAFT_CACHE to a writable directory)"
        ) from None
    return root
