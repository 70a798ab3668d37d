"""Build the packaged SNIPS slice (flexpaft/data/snips_{train,test}.jsonl) from the full corpus.

The corpus is SNIPS 2017 (sonos/nlu-benchmark, ``2017-06-custom-intent-engines/<Intent>/
train_<Intent>_full.json``), CC0 1.0, one ``{"text", "intent"}`` object per line with duplicates
removed (the file ../shared/data/snips.jsonl of the development machines). From each of the 7
intents, 300 utterances are drawn with a fixed seed: 240 go to the training file and 60 to the
test file, so the split is fixed, disjoint by construction and label-balanced. Rows are written
with the intents interleaved (one of each in turn), so every prefix of either file is balanced.

    python experiments/make_snips_slice.py ../shared/data/snips.jsonl flexpaft/data
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

PER_INTENT = 300
TEST_PER_INTENT = 60
SEED = 2017


def main(src: str, out_dir: str) -> None:
    rows = [json.loads(line) for line in Path(src).read_text(encoding="utf-8").splitlines() if line]
    by_intent: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_intent.setdefault(r["intent"], []).append({"text": r["text"], "intent": r["intent"]})
    rng = random.Random(SEED)
    train, test = {}, {}
    for intent in sorted(by_intent):
        drawn = rng.sample(by_intent[intent], PER_INTENT)
        test[intent], train[intent] = drawn[:TEST_PER_INTENT], drawn[TEST_PER_INTENT:]
    for name, part in (("train", train), ("test", test)):
        n = len(next(iter(part.values())))
        interleaved = [part[i][k] for k in range(n) for i in sorted(part)]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in interleaved)
        (Path(out_dir) / f"snips_{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{name}: {len(interleaved)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:3])
