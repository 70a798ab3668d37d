"""Where flexpaft caches things (dequantized models, downloaded task data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FLEXPAFT_CACHE``, else ``$XDG_CACHE_HOME/flexpaft``, else ``~/.cache/flexpaft``."""
    if os.environ.get("FLEXPAFT_CACHE"):
        root = Path(os.environ["FLEXPAFT_CACHE"])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "flexpaft"
    root.mkdir(parents=True, exist_ok=True)
    return root
