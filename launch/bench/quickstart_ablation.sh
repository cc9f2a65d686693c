#!/usr/bin/env bash
# The quickstart's ablations at equal wall time: each row trains from scratch for about the same
# minutes (steps chosen from each row's training speed on a 2-core CPU), then is scored on the
# validation split without and with mirror averaging. The test split is left for the final runs.
#   bash launch/bench/quickstart_ablation.sh /path/to/UTKFace OUT_DIR [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/../.."
folder=${1:?usage: bash launch/bench/quickstart_ablation.sh /path/to/UTKFace OUT_DIR [MINUTES]}
out=${2:?usage: bash launch/bench/quickstart_ablation.sh /path/to/UTKFace OUT_DIR [MINUTES]}
minutes=${3:-4}
py=.venv/bin/python
mkdir -p "$out"
# name | images/s of its training loop here (sets its steps) | overrides of configs/quickstart.py
rows=(
  "xing64_mae|560|--config.model.name=xing_baseline --config.formulation.name=mae"
  "xing64_dldl_v2|560|--config.model.name=xing_baseline --config.formulation.name=dldl_v2"
  "resnet18w32_64_mae|420|--config.model.name=resnet18 --config.model.resnet_width=32 --config.formulation.name=mae"
  "resnet18w32_64_dldl_v2|420|--config.model.name=resnet18 --config.model.resnet_width=32 --config.formulation.name=dldl_v2"
  "resnet18w32_80_dldl_v2|280|--config.model.name=resnet18 --config.model.resnet_width=32 --config.formulation.name=dldl_v2 --config.data.load_size=88 --config.data.image_size=80"
  "resnet18w48_64_dldl_v2|230|--config.model.name=resnet18 --config.model.resnet_width=48 --config.formulation.name=dldl_v2"
  "resnet18w32_64_dldl_v2_lr3e-3|420|--config.model.name=resnet18 --config.model.resnet_width=32 --config.formulation.name=dldl_v2 --config.optim.learning_rate=3e-3"
)
# Rows already in OUT_DIR (their evaluations written) are kept, so rows can be added and re-run.
for row in "${rows[@]}"; do
  IFS='|' read -r name speed overrides <<< "$row"
  steps=$(( minutes * 60 * speed / 64 ))
  workdir="$out/$name"
  [ -f "$workdir/eval/validation_mirror_true/report.json" ] && continue
  start=$(date +%s)
  # shellcheck disable=SC2086
  $py -m launch.train --config=configs/quickstart.py --workdir="$workdir" --config.data.manual_dir="$folder" \
    --config.train.num_steps="$steps" --config.train.eval_every=0 $overrides > "$workdir.log" 2>&1
  echo "$name steps=$steps train_s=$(( $(date +%s) - start ))" | tee -a "$out/times.txt"
  for mirror in false true; do
    $py -m launch.evaluate --workdir="$workdir" --split=validation --mirror=$mirror \
      --out="$workdir/eval/validation_mirror_$mirror" > /dev/null 2>&1
  done
done
$py - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| row | steps | train s | val MAE | val MAE, mirrored | sigma (mirrored) |")
print("|---|---|---|---|---|---|")
for line in open(os.path.join(out, "times.txt")):
  name, steps, secs = line.split()
  r = {m: json.load(open(os.path.join(out, name, "eval", f"validation_mirror_{m}", "report.json")))
       for m in ("false", "true")}
  print(f"| {name} | {steps.split('=')[1]} | {secs.split('=')[1]} | {r['false']['mae']:.3f} | "
        f"{r['true']['mae']:.3f} | {r['true']['aar']['sigma']:.2f} |")
PY
