"""Evaluate a trained workdir:  python -m launch.evaluate --workdir=DIR [--split=test | --folder=DIR] [--calibrate]

Writes report.json and PNG plots (default: DIR/eval/<source>/) and prints the metrics table;
--calibrate first calibrates the conformal age intervals on the validation split (DIR/calibration.json).
"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_SPLIT = flags.DEFINE_string("split", None, "Split of the training dataset (default: config.data.eval_split).")
_FOLDER = flags.DEFINE_string("folder", None, "Evaluate on another labelled folder instead "
                              "(UTKFace-named images, or images with a labels.csv).")
_OUT = flags.DEFINE_string("out", None, "Where to write report.json and plots.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "First calibrate the age intervals on the validation "
                                "split and store them in the workdir (training does this when it ends).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _SPLIT.value and _FOLDER.value:
    raise app.UsageError("give --split or --folder, not both")
  common.setup_jax()
  from age_jax import evaluate, report
  result = evaluate.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, folder=_FOLDER.value,
                                     out_dir=_OUT.value, step=_STEP.value,
                                     calibrate_first=_CALIBRATE.value)
  print(report.format_table(result), flush=True)


if __name__ == "__main__":
  app.run(main)
