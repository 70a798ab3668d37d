#!/usr/bin/env bash
# PAFT on PIQA with the PAFT paper's own training prompts (../shared/prompts/paft/piqa.train.jsonl,
# letter format): split at template level -> train lora (the task's template) and paft -> eval on
# the held-out templates -> report. Defaults are a reduced CPU setting: few examples and test
# templates. SmolLM2-135M cannot bind option letters at this size (../shared/data/README.md), so on
# CPU this checks the pipeline, not the method; on a GPU use a larger model, e.g.
#   MODEL=meta-llama/Meta-Llama-3-8B TRAIN=1200 TEST=300 TEST_FRACTION=0.111 EPOCHS=3 experiments/paft_piqa.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/exp/paft_piqa}
DATA=${DATA:-../shared/data/piqa.jsonl}
PROMPTS=${PROMPTS:-../shared/prompts/paft/piqa.train.jsonl}
MODEL=${MODEL:-embedded}
TRAIN=${TRAIN:-160}; TEST=${TEST:-60}; EPOCHS=${EPOCHS:-1}; LR=${LR:-3e-4}
TEST_FRACTION=${TEST_FRACTION:-0.024}; FIELD=${FIELD:-160}; MAXLEN=${MAXLEN:-192}
test -f "$DATA" && test -f "$PROMPTS" || { echo "need $DATA and $PROMPTS (../shared beside the checkout)" >&2; exit 1; }

flexpaft prompts validate "$PROMPTS" --task piqa --format letter --out "$OUT/prompts/valid.jsonl" | tail -n 1
flexpaft prompts split "$OUT/prompts/valid.jsonl" --test-fraction "$TEST_FRACTION" --seed 0 --out "$OUT/prompts"
COMMON=(--set data.task=piqa --set "data.source=$DATA" --set data.format=letter --set "model.name=$MODEL"
        --set "data.max_field_chars=$FIELD" --set "data.max_length=$MAXLEN")
TRAIN_ARGS=("${COMMON[@]}" --set "data.limit=$TRAIN" --set "optim.epochs=$EPOCHS" --set "optim.lr=$LR")
flexpaft train --method lora -o "$OUT/lora" "${TRAIN_ARGS[@]}"
flexpaft train --method paft -o "$OUT/paft" "${TRAIN_ARGS[@]}" --set "prompts.prompt_set=$OUT/prompts/train.jsonl"
EVAL_ARGS=("${COMMON[@]}" --set "data.skip=$TRAIN" --set "data.limit=$TEST"
           --set "prompts.prompt_set=$OUT/prompts/test.jsonl" --set prompts.template=)
flexpaft eval -o "$OUT/eval/base" --set name=base "${EVAL_ARGS[@]}"
flexpaft eval -o "$OUT/eval/lora" --set name=lora --adapter "$OUT/lora/adapter" "${EVAL_ARGS[@]}"
flexpaft eval -o "$OUT/eval/paft" --set name=paft --adapter "$OUT/paft/adapter" "${EVAL_ARGS[@]}"
flexpaft report "$OUT/eval/base" "$OUT/eval/lora" "$OUT/eval/paft" --thresholds 0.5,0.6 -o "$OUT/report"
