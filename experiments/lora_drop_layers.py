"""LoRA-drop-style layer choice: rank blocks by the norm of their LoRA output, keep the top k.

Takes an adapter trained on all blocks and the same data settings, runs a few training batches
through it, and prints the k blocks whose LoRA branch moves the hidden states most (as a Python
list, for ``--set lora.layers_to_transform=...``).

    python experiments/lora_drop_layers.py ADAPTER K [--set key=value ...]
"""

from __future__ import annotations

import argparse
from itertools import islice

from accelerate import Accelerator

from flexpaft.config import load_config
from flexpaft.evaluate.evaluator import load_adapter
from flexpaft.flexora.select import lora_drop_ranking
from flexpaft.models import load_model
from flexpaft.train.config import TrainConfig
from flexpaft.train.data import make_loader
from flexpaft.train.templates import training_templates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("k", type=int)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    cfg = load_config(TrainConfig, None, args.set)
    task, fmt, examples = cfg.data.load()
    model, tok = load_model(cfg.model.name, cfg.model.dtype)
    templates, _ = training_templates(cfg, task, fmt, examples, model, tok)
    model = load_adapter(model, args.adapter).eval()
    loader, _ = make_loader(cfg, task, fmt, examples, templates, tok, cfg.seed, Accelerator())
    scores = lora_drop_ranking(model, list(islice(loader, args.batches)))
    top = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[: args.k])
    print(top)


if __name__ == "__main__":
    main()
