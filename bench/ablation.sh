#!/usr/bin/env bash
# Each architecture knob against the baseline on a short budget of the quick start, 3 seeds each,
# compared with wgpt.compare: the ablation table of docs/models.md.
#
#   bash bench/ablation.sh [OUT_DIR]        # about 40 minutes on 2 CPU cores; OUT_DIR default outputs/ablation
#   bash bench/ablation.sh OUT_DIR --dry-run  # the commands only
#
# One sweep per setting (seed=1,2,3), the baseline's first, so wgpt.compare takes the first group as
# the baseline and labels every other group by the knob it adds. A rerun skips settings whose sweep
# dir already holds compare-ready jobs (summary.json), so an interrupted ablation goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/ablation}
dry=${2:-}
budget=(model=gpt2-tiny tokenizer=bpe trainer.max_steps=300 seed=1,2,3)

settings=(
  "baseline|"
  "cosinenorm|model.norm=cosinenorm"
  "no-affine|model.norm_affine=false"
  "qk-norm|model.qk_norm=true"
  "softcap|model.logit_softcap=30"
  "z-loss|model.z_loss=1e-4"
  "relu2|model.activation=relu2"
  "window32|model.attn_window=32"
  "window32-SSSL|model.attn_window=32 model.window_pattern=SSSL"
  "document-mask|model.document_mask=true"
  "zero-init|model.zero_init=true"
  "dropout|model.dropout=0.1"
  "parallel-block|model.parallel_block=true"
)

dirs=()
for entry in "${settings[@]}"; do
  name=${entry%%|*}
  read -r -a knob <<< "${entry#*|}"
  dir="$out/$name"
  dirs+=("$dir")
  cmd=(python train.py -m "${budget[@]}" "${knob[@]}" "paths.output_root=$out/runs" "hydra.sweep.dir=$dir")
  if [[ $dry == --dry-run ]]; then echo "${cmd[*]}"; continue; fi
  if [[ $(find "$dir" -name summary.json 2>/dev/null | wc -l) -ge 3 ]]; then echo "done already: $dir"; continue; fi
  echo "$(date +%T) ${cmd[*]}"
  mkdir -p "$out/logs"
  "${cmd[@]}" > "$out/logs/$name.log" 2>&1 || { echo "failed: see $out/logs/$name.log"; exit 1; }
done
cmd=(python -m wgpt.compare "${dirs[@]}" --paired --out "$out")
if [[ $dry == --dry-run ]]; then echo "${cmd[*]}"; exit 0; fi
"${cmd[@]}"
