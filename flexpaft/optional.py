"""Optional dependencies: features that need them say what to install; the rest work without.

matplotlib draws plots (report, demo, Flexora's alpha.png, loss.png; installed by default, but a
minimal environment may lack it) and openpyxl reads and writes .xlsx prompt sets (the ``xlsx``
extra).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from flexpaft.errors import FlexpaftError

log = logging.getLogger(__name__)

EXTRAS = {"openpyxl": "xlsx"}


def install_hint(module: str) -> str:
    return (
        f"pip install 'flexpaft[{EXTRAS[module]}]'" if module in EXTRAS else f"pip install {module}"
    )


def require(module: str, feature: str) -> ModuleType:
    """``module``, or a one-line FlexpaftError saying which extra to install for ``feature``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FlexpaftError(f"{feature} needs {module}: {install_hint(module)}") from None


def available(module: str, skipped: str) -> bool:
    """True when ``module`` imports; otherwise logs that ``skipped`` was skipped and how to get it."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        log.warning("%s skipped: %s is not installed (%s)", skipped, module, install_hint(module))
        return False
