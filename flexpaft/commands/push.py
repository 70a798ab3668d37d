"""``flexpaft push ADAPTER --repo-id ID``: upload an adapter and its model card (``hub.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.stored import read_json_object

HELP = "upload an adapter with its model card to the Hugging Face hub (token: HF_TOKEN)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter directory (a training run's <output_dir>/adapter)")
    p.add_argument("--repo-id", required=True, help="hub repository, e.g. me/smollm2-boolq-paft")
    p.add_argument(
        "--public", action="store_true", help="create the repository public (default: private)"
    )
    p.add_argument(
        "--eval",
        help="a `flexpaft eval` output directory (or results.json) whose table goes in the card",
    )


def run(args: argparse.Namespace) -> int:
    results = None
    if args.eval:
        path = Path(args.eval)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise FlexpaftError(f"evaluation results not found: {path}")
        results = read_json_object(path, "rerun `flexpaft eval` to write it again")
    from flexpaft.hub import push_adapter

    url = push_adapter(args.adapter, args.repo_id, private=not args.public, results=results)
    print(f"pushed {args.adapter} to {url}")
    return 0
