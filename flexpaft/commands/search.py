"""``flexpaft search``: Flexora's layer search alone (``flexpaft.search``).

The search alternates one optimizer step of LoRA on every block (on stage 2's loss) with one step
of the per-block logits alpha on the validation batches: first-order by default, as the paper's
code does (``flexora.unroll=K``: a K-step unrolled hypergradient). It runs one pass over its
training split by default (``flexora.search_budget=1``: one outer step per inner optimizer step,
on every machine). The blocks are ranked by alpha, and by default (``flexora.selection=
validated``) the validation batches decide how many are kept: never a selection that validates
worse than all blocks beyond a paired standard error, on the unseen wordings or under the user's
own prompt.

Writes to ``<output_dir>/flexora/``: selection.json (chosen layers, every scored selection size
under ``ladder``, and a PEFT LoraConfig for them), alpha.jsonl (alpha and gates every step),
alpha.png (alpha per layer over the search) and a resumable checkpoint. ``flexpaft train --method
flexora`` runs the same search, then stage 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flexpaft.settings.loading import add_config_arguments, config_from_args
from flexpaft.settings.train import TrainConfig

HELP = (
    "Flexora: search which blocks get LoRA (per-block gates tuned on validation data by "
    "first-order steps, or flexora.unroll=K unrolled ones; validation decides how many blocks)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig, example="flexora.unroll=2")
    parser.add_argument("--output-dir", "-o", help="shortcut for --set output_dir=...")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, args, ("output_dir",))
    from flexpaft.methods.flexora.outcome import ALPHA_LOG, ALPHA_PLOT, SEARCH_DIR, SELECTION
    from flexpaft.recipe import search

    outcome = search(cfg, progress=not getattr(args, "quiet", False))
    if os.environ.get("RANK", "0") == "0":
        out = Path(cfg.output_dir) / SEARCH_DIR
        print(
            f"selected layers ({outcome.rule}, {len(outcome.layers)} of {outcome.n_blocks}): "
            f"{','.join(map(str, outcome.layers))}"
        )
        print(f"selection: {out / SELECTION}  alpha: {out / ALPHA_LOG}  plot: {out / ALPHA_PLOT}")
    return 0
