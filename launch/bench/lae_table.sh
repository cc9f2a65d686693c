#!/usr/bin/env bash
# LAE Table 2 at the quickstart's scale (UTKFace test split): the representation stage
# (configs/quickstart.py, trained here unless STAGE1_WORKDIR holds a finished run) and stage-2
# variants from its weights (configs/quickstart_lae.py:classifier with each row's overrides).
#   bash launch/bench/lae_table.sh /path/to/UTKFace OUT_DIR [STAGE1_WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: bash launch/bench/lae_table.sh /path/to/UTKFace OUT_DIR [STAGE1_WORKDIR]"
folder=${1:?$usage}
out=${2:?$usage}
stage1=${3:-$out/stage1_dldl_v2}
py=.venv/bin/python
mkdir -p "$out"
$py -m launch.train --config=configs/quickstart.py --workdir="$stage1" --config.data.manual_dir="$folder"
[ -f "$stage1/eval/utkface_test/report.json" ] || $py -m launch.evaluate --workdir="$stage1" > /dev/null
# name | overrides of configs/quickstart_lae.py:classifier
rows=(
  "stage2_eq4_balanced|"
  "stage2_eq4_batch_mean_balanced|--config.formulation.lae_reading=batch_mean"
  "stage2_stage1_loss_balanced|--config.formulation.name=dldl_v2"
  "stage2_eq4_not_balanced|--config.data.sampler=shuffle"
  "stage2_eq4_balanced_adamw_1e-3|--config.optim.name=adamw --config.optim.learning_rate=1e-3 --config.optim.lr_reference_batch=0 --config.optim.weight_decay=1e-4"
)
for row in "${rows[@]}"; do
  IFS='|' read -r name overrides <<< "$row"
  workdir="$out/$name"
  [ -f "$workdir/eval/utkface_test/report.json" ] && continue
  start=$(date +%s)
  # shellcheck disable=SC2086
  $py -m launch.train --config=configs/quickstart_lae.py:classifier --workdir="$workdir" \
    --config.data.manual_dir="$folder" --config.model.init_from="$stage1" $overrides > "$workdir.log" 2>&1
  echo "$name train_s=$(( $(date +%s) - start ))" | tee -a "$out/times.txt"
  $py -m launch.evaluate --workdir="$workdir" > /dev/null 2>&1
done
$py - "$out" "$stage1" "${rows[@]}" <<'PY'
import json, os, sys
out, stage1, rows = sys.argv[1], sys.argv[2], [r.split("|")[0] for r in sys.argv[3:]]
print("| run | MAE | 1-10 | 21-30 | 71+ | sigma | AAR |")
print("|---|---|---|---|---|---|---|")
for name, workdir in [("stage1_dldl_v2", stage1)] + [(r, os.path.join(out, r)) for r in rows]:
  a = json.load(open(os.path.join(workdir, "eval", "utkface_test", "report.json")))["aar"]
  g = dict(zip(a["group_names"], a["group_mae"]))
  print(f"| {name} | {a['mae']:.3f} | {g['1-10']:.2f} | {g['21-30']:.2f} | {g['71+']:.2f} | "
        f"{a['sigma']:.2f} | {a['aar']:.3f} |")
PY
