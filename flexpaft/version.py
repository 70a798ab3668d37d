"""flexpaft's version, and the versions of the stack a figure was made with."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """flexpaft, Python and the libraries that decide the numbers (recorded in every training
    manifest, evaluation result and report, so a figure says what produced it)."""
    import accelerate
    import peft
    import torch
    import transformers

    return {
        "flexpaft": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }
