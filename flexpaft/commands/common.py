"""What several commands share: flags that stand for ``--set`` overrides, output formatting."""

from __future__ import annotations

import argparse

ALLOW_OVERLAP_HELP = (
    "shortcut for --set data.allow_overlap=true: train on a task's evaluation split, or "
    "evaluate an adapter on examples it was trained on"
)


def flags(args: argparse.Namespace) -> argparse.Namespace:
    """Boolean flags as ``--set`` overrides placed before the user's own (which win)."""
    if getattr(args, "allow_overlap", False):
        args.set = ["data.allow_overlap=true", *args.set]
    return args


def layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    if not layers:
        return "-"
    out, start, prev = [], layers[0], layers[0]
    for x in layers[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)
