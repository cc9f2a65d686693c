"""Evaluate a trained workdir:
  python -m launch.evaluate --workdir=DIR [--split=test] [--calibrate]
  python -m launch.evaluate --workdir=DIR --dataset=fgnet --manual_dir=SRC [--split=...] [--faces=detect|crops]
  python -m launch.evaluate --workdir=DIR --folder=FACES [--faces=detect|crops]

Writes report.json and PNG plots (default: DIR/eval/<source>/) and prints the metrics table;
--calibrate first calibrates the conformal age intervals on the validation split (DIR/calibration.json).
"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_SPLIT = flags.DEFINE_string("split", None, "Split of the training dataset (default: config.data.eval_split), "
                             "or of --dataset (default: 'test', else all its splits).")
_DATASET = flags.DEFINE_string("dataset", None, "Evaluate on another registered dataset (e.g. fgnet), built "
                               "once from --manual_dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Source folder of --dataset (may be omitted once built).")
_FOLDER = flags.DEFINE_string("folder", None, "Evaluate on another labelled folder instead "
                              "(UTKFace-named images, or images with a labels.csv).")
_FACES = flags.DEFINE_enum("faces", "detect", ["detect", "crops"],
                           "For --dataset / --folder: detect and align each face onto the canonical crop "
                           "(as a canonical-crop build does), or use the images as they are.")
_OUT = flags.DEFINE_string("out", None, "Where to write report.json and plots.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "First calibrate the age intervals on the validation "
                                "split and store them in the workdir (training does this when it ends).")
_MIRROR = flags.DEFINE_bool("mirror", None, "Average each face's age with its mirror image's "
                             "(default: the run's config.eval.mirror).")
_VIEWS = flags.DEFINE_enum("views", None, ["1", "5"], "Views averaged per face: the centre crop, or it and "
                           "four shifted crops (default: the run's config.data.eval_views).")
_CHOOSE = flags.DEFINE_bool("choose_logit_adjustment", False, "First choose the logit adjustment's tau on the "
                            "validation split (runs with config.formulation.logit_adjustment=-1; training "
                            "does this when it ends).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _FOLDER.value and (_SPLIT.value or _DATASET.value):
    raise app.UsageError("give --folder alone, or --dataset [--split], or --split")
  if _MANUAL_DIR.value and not _DATASET.value:
    raise app.UsageError("--manual_dir is the source folder of --dataset")
  common.setup_jax()
  from age_jax import evaluate, report
  result = evaluate.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, folder=_FOLDER.value,
                                     dataset=_DATASET.value, manual_dir=_MANUAL_DIR.value,
                                     faces=_FACES.value, out_dir=_OUT.value, step=_STEP.value,
                                     calibrate_first=_CALIBRATE.value, mirror=_MIRROR.value,
                                     views=_VIEWS.value and int(_VIEWS.value),
                                     choose_logit_adjustment=_CHOOSE.value)
  print(report.format_table(result), flush=True)


if __name__ == "__main__":
  app.run(main)
