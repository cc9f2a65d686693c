#!/usr/bin/env bash
# The long-tail table (issue 26) at the quickstart's scale, on the UTKFace test split: the stage-1
# run (configs/quickstart.py, trained here unless STAGE1_WORKDIR holds a finished run), its post-hoc
# logit adjustment (no training) and stage-2 runs from its weights, each row's overrides of
# configs/quickstart_lae.py:classifier (8 epochs; head-only rows learn age_head alone).
#   bash launch/bench/longtail_table.sh /path/to/UTKFace OUT_DIR [STAGE1_WORKDIR] [ROW ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: bash launch/bench/longtail_table.sh /path/to/UTKFace OUT_DIR [STAGE1_WORKDIR] [ROW ...]"
folder=${1:?$usage}
out=${2:?$usage}
stage1=${3:-$out/stage1}
shift $(( $# < 3 ? $# : 3 ))
py=.venv/bin/python
mkdir -p "$out"
if [ ! -f "$stage1/eval/utkface_test/report.json" ]; then
  start=$(date +%s)
  $py -m launch.train --config=configs/quickstart.py --workdir="$stage1" --config.data.manual_dir="$folder"
  echo "stage1 train_s=$(( $(date +%s) - start ))" | tee -a "$out/times.txt"
  $py -m launch.evaluate --workdir="$stage1" > /dev/null
fi
# name | overrides of configs/quickstart_lae.py:classifier (each row with logit_adjustment=0, so a
# row measures its method alone)
fine_tune="--config.train.trainable=all --config.formulation.name=dldl_v2 --config.data.sampler=shuffle \
--config.optim.name=adamw --config.optim.learning_rate=1e-4 --config.optim.lr_reference_batch=0 \
--config.optim.schedule=cosine --config.optim.weight_decay=1e-4"
all_rows=(
  "LAE stage 2, eq. 4 per example, class-balanced|"
  "LAE stage 2, eq. 4 on the batch mean|--config.formulation.lae_reading=batch_mean"
  "stage 2 with the stage-1 loss, class-balanced|--config.formulation.name=dldl_v2"
  "stage 2 with the stage-1 loss, shuffled, head only (control)|--config.formulation.name=dldl_v2 --config.data.sampler=shuffle"
  "balanced softmax, head only|--config.formulation.name=dldl_v2 --config.formulation.balanced_softmax=True --config.data.sampler=shuffle"
  "LDS (sqrt_inv), head only|--config.formulation.name=dldl_v2 --config.formulation.lds_reweight=sqrt_inv --config.data.sampler=shuffle"
  "Balanced MSE (BMC, s=3, weight 0.1), head only|--config.formulation.name=dldl_v2 --config.formulation.dldl_lambda=0 --config.formulation.bmse_weight=0.1 --config.formulation.bmse_sigma=3 --config.data.sampler=shuffle"
  "FDS (gaussian, ks 5, sigma 2), head only|--config.formulation.name=dldl_v2 --config.formulation.fds=True --config.data.sampler=shuffle"
  "LDS + FDS, head only|--config.formulation.name=dldl_v2 --config.formulation.lds_reweight=sqrt_inv --config.formulation.fds=True --config.data.sampler=shuffle"
  "fine-tune, all layers (control)|$fine_tune"
  "RankSim (gamma 1), fine-tune all layers|$fine_tune --config.formulation.ranksim_weight=1"
)
rows=("${all_rows[@]}")
[ $# -gt 0 ] && rows=("$@")   # ROW arguments: 'NAME|OVERRIDES' of other rows
table_rows=()
for row in "${rows[@]}"; do
  IFS='|' read -r name overrides <<< "$row"
  workdir="$out/$(echo "$name" | tr -c 'A-Za-z0-9\n' '_')"
  table_rows+=("--row=$name=$workdir")
  [ -f "$workdir/eval/utkface_test/report.json" ] && continue
  start=$(date +%s)
  # shellcheck disable=SC2086
  $py -m launch.train --config=configs/quickstart_lae.py:classifier --workdir="$workdir" \
    --config.data.manual_dir="$folder" --config.model.init_from="$stage1" \
    --config.formulation.logit_adjustment=0 $overrides > "$workdir.log" 2>&1
  echo "$name train_s=$(( $(date +%s) - start ))" | tee -a "$out/times.txt"
  $py -m launch.evaluate --workdir="$workdir" > /dev/null 2>&1
done
$py -m launch.bench.longtail_table --stage1="$stage1" "${table_rows[@]}" --times="$out/times.txt" --out="$out/table.md"
