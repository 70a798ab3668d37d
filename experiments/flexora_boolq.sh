#!/usr/bin/env bash
# Flexora on BoolQ (label words): search -> select -> retrain, against LoRA on all blocks and
# random blocks of the same count (3 seeds), all with the same data, steps and evaluation.
# Defaults are a reduced CPU setting; on a GPU raise TRAIN/EPOCHS/VAL/TEST.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/exp/flexora_boolq}
DATA=${DATA:-../shared/data/boolq.jsonl}
TRAIN=${TRAIN:-256}; VAL=${VAL:-64}; TEST=${TEST:-150}; EPOCHS=${EPOCHS:-1}; LR=${LR:-3e-4}
FIELD=${FIELD:-150}; MAXLEN=${MAXLEN:-160}
test -f "$DATA" || { echo "need $DATA (../shared beside the checkout)" >&2; exit 1; }

COMMON=(--set data.task=boolq --set "data.source=$DATA" --set data.format=label_words
        --set "data.max_field_chars=$FIELD" --set "data.max_length=$MAXLEN")
TRAIN_ARGS=("${COMMON[@]}" --set "data.limit=$TRAIN" --set "optim.epochs=$EPOCHS" --set "optim.lr=$LR"
            --set "flexora.val_examples=$VAL")
# Flexora: the search holds VAL examples out for alpha; stage 2 trains on the rest.
flexpaft train --method flexora -o "$OUT/flexora" "${TRAIN_ARGS[@]}"
LAYERS=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['layers'])" "$OUT/flexora/manifest.json")
COUNT=$(python -c "import json,sys; print(len(json.load(open(sys.argv[1]))['layers']))" "$OUT/flexora/manifest.json")
BLOCKS=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['flexora']['n_blocks'])" "$OUT/flexora/manifest.json")
echo "flexora selected $COUNT blocks: $LAYERS"
# Baselines train on the same TRAIN-VAL examples as stage 2 (skip the same held-out split would
# need the same shuffle; simpler and fair: same count of examples, same steps).
BASE_ARGS=("${COMMON[@]}" --set "data.limit=$((TRAIN - VAL))" --set "optim.epochs=$EPOCHS" --set "optim.lr=$LR")
flexpaft train --method lora -o "$OUT/all" "${BASE_ARGS[@]}"
for seed in 0 1 2; do
  RAND=$(python -c "from flexpaft.methods.flexora.select import random_layers; print(random_layers($BLOCKS, $COUNT, $seed))")
  flexpaft train --method lora -o "$OUT/random$seed" "${BASE_ARGS[@]}" --set "lora.layers_to_transform=$RAND"
done
# LoRA-drop-style baseline: the COUNT blocks with the largest LoRA output norm in the all-block run.
DROP=$(python experiments/lora_drop_layers.py "$OUT/all/adapter" "$COUNT" "${BASE_ARGS[@]}" | tail -n 1)
flexpaft train --method lora -o "$OUT/loradrop" "${BASE_ARGS[@]}" --set "lora.layers_to_transform=$DROP"
EVAL_ARGS=("${COMMON[@]}" --set "data.skip=$TRAIN" --set "data.limit=$TEST")
flexpaft eval -o "$OUT/eval/base" --set name=base "${EVAL_ARGS[@]}"
for run in flexora all loradrop random0 random1 random2; do
  flexpaft eval -o "$OUT/eval/$run" --set "name=$run" --adapter "$OUT/$run/adapter" "${EVAL_ARGS[@]}"
done
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for run in ["base", "flexora", "all", "loradrop", "random0", "random1", "random2"]:
    r = json.loads((out / "eval" / run / "results.json").read_text())
    m = json.loads((out / run / "manifest.json").read_text()) if run != "base" else {}
    rows.append((run, r["per_template"][0]["accuracy"], m.get("layers"), m.get("trainable_parameters"), m.get("train_seconds")))
fx = json.loads((out / "flexora" / "manifest.json").read_text())["flexora"]
lines = ["| run | accuracy | layers | trainable params | stage-2 train s |", "|---|---|---|---|---|"]
lines += [f"| {a} | {100*b:.1f} | {c if c is None else len(c)} | {d} | {e} |" for a, b, c, d, e in rows]
lines += ["", f"search: {json.dumps(fx)}"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
