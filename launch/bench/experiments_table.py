"""Train several variants of one config with the same data, network and step budget, evaluate
each on the test split, and print a table in the style of Xing 2017 Tables 3 and 5.

  python -m launch.bench.experiments_table --table=formulations --config=configs/quickstart.py \
      --workdir=workdirs/formulations --config.data.manual_dir=/path/to/UTKFace [--steps=3000]
  python -m launch.bench.experiments_table --table=multitask ...

Each variant trains in WORKDIR/<variant> (re-running resumes or reuses finished runs).
"""
import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from launch import common

TABLES = {
    # Xing Table 3 rows, plus DLDL-v2 (LAE) and CORAL.
    "formulations": {name: {"formulation": {"name": name}}
                     for name in ("oh", "ldl", "mse", "mae", "or", "dldl_v2", "coral")},
    # Xing Table 5: single-task NetMAE against the three multi-task networks.
    "multitask": {kind: {"multitask": {"kind": kind}} for kind in ("none", "parallel", "deep", "hybrid")},
}

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Base config.")
_TABLE = flags.DEFINE_enum("table", "formulations", list(TABLES), "Which variants to compare.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the variants' workdirs.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per variant (default: the config's).")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants.")
flags.mark_flag_as_required("workdir")


def _row(name, report, seconds):
  ccs = report["ccs"]["fraction"]
  cells = [name, f"{report['mae']:.2f}"] + [f"{100 * ccs[t]:.1f}" for t in range(5)]
  cells.append(f"{report['aar']['aar']:.2f}")
  for task in ("gender", "race"):
    accuracy = report.get(task, {}).get("accuracy")
    cells.append("-" if accuracy is None else f"{100 * accuracy:.1f}")
  cells.append(f"{seconds / 60:.1f}")
  return "| " + " | ".join(cells) + " |"


def main(argv):
  del argv
  common.setup_jax()
  from age_jax import evaluate
  from age_jax import stages
  from age_jax.train import loop
  base = _CONFIG.value
  rows = []
  for name, overrides in TABLES[_TABLE.value].items():
    if _ONLY.value and name not in _ONLY.value:
      continue
    cfg = base.copy_and_resolve_references()
    stages.merge_overrides(cfg, overrides, "")
    if _STEPS.value:
      cfg.train.num_steps = _STEPS.value
    workdir = os.path.join(_WORKDIR.value, name)
    print(f"=== {name} ===", flush=True)
    start = time.time()
    loop.train(cfg, workdir)
    seconds = time.time() - start
    report = evaluate.evaluate_workdir(workdir)
    with open(os.path.join(workdir, "table_row.json"), "w") as f:
      json.dump({"variant": name, "train_seconds": seconds, "mae": report["mae"]}, f)
    rows.append(_row(name, report, seconds))
  print("| variant | MAE | CCS(0) % | CCS(1) % | CCS(2) % | CCS(3) % | CCS(4) % | AAR | gender acc % "
        "| race acc % | train min |")
  print("|---" * 11 + "|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
