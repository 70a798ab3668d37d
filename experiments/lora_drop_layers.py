"""LoRA-drop-style layer choice: rank blocks by the norm of their LoRA output, keep the top k.

Takes an adapter trained on all blocks and the same data settings, runs a few training batches
through it, and prints the k blocks whose LoRA branch moves the hidden states most (as a Python
list, for ``--set lora.layers_to_transform=...``). ``flexpaft study`` runs the same steps for its
``lora_drop`` method.

    python experiments/lora_drop_layers.py ADAPTER K [--set key=value ...]
"""

from __future__ import annotations

import argparse

from flexpaft.methods.flexora.baselines import lora_drop_scores
from flexpaft.methods.flexora.select import select_layers
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("k", type=int)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    cfg = load_config(TrainConfig, None, args.set)
    scores = lora_drop_scores(cfg, args.adapter, args.batches)
    print(select_layers(scores, "topk", args.k))


if __name__ == "__main__":
    main()
