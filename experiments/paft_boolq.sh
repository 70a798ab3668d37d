#!/usr/bin/env bash
# PAFT vs single-prompt LoRA vs the base model on BoolQ (label words), judged on unseen templates.
# The whole pipeline through the CLI: generate -> split -> train (lora, paft) -> eval -> report.
# Defaults are a reduced CPU setting (2 cores); scale with the variables below on a GPU, e.g.
#   TRAIN=2000 TEST=500 EPOCHS=3 FIELD=0 N_TEMPLATES=450 experiments/paft_boolq.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/exp/paft_boolq}
DATA=${DATA:-../shared/data/boolq.jsonl}
TRAIN=${TRAIN:-256}; TEST=${TEST:-80}; EPOCHS=${EPOCHS:-2}; LR=${LR:-3e-4}
FIELD=${FIELD:-150}; N_TEMPLATES=${N_TEMPLATES:-90}; MAXLEN=${MAXLEN:-160}
test -f "$DATA" || { echo "need $DATA (../shared beside the checkout)" >&2; exit 1; }

flexpaft prompts generate --task boolq --format label_words --n "$N_TEMPLATES" --split 1/9 \
  --min-test 10 --adversarial 1 --seed 0 --out "$OUT/prompts"
COMMON=(--set data.task=boolq --set "data.source=$DATA" --set data.format=label_words
        --set "data.max_field_chars=$FIELD" --set "data.max_length=$MAXLEN")
TRAIN_ARGS=("${COMMON[@]}" --set "data.limit=$TRAIN" --set "optim.epochs=$EPOCHS" --set "optim.lr=$LR")
flexpaft train --method lora -o "$OUT/lora" "${TRAIN_ARGS[@]}"
flexpaft train --method paft -o "$OUT/paft" "${TRAIN_ARGS[@]}" --set "prompts.prompt_set=$OUT/prompts/train.jsonl"
EVAL_ARGS=("${COMMON[@]}" --set "data.skip=$TRAIN" --set "data.limit=$TEST"
           --set "prompts.prompt_set=$OUT/prompts/test.jsonl" --set "prompts.adversarial_set=$OUT/prompts/adversarial.jsonl"
           --set prompts.template=)
flexpaft eval -o "$OUT/eval/base" --set name=base "${EVAL_ARGS[@]}"
flexpaft eval -o "$OUT/eval/lora" --set name=lora --adapter "$OUT/lora/adapter" "${EVAL_ARGS[@]}"
flexpaft eval -o "$OUT/eval/paft" --set name=paft --adapter "$OUT/paft/adapter" "${EVAL_ARGS[@]}"
flexpaft report "$OUT/eval/base" "$OUT/eval/lora" "$OUT/eval/paft" --thresholds 0.6,0.7 --html -o "$OUT/report"
