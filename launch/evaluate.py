"""Evaluate a trained workdir:
  python -m launch.evaluate --workdir=DIR [--split=test] [--calibrate]
  python -m launch.evaluate --workdir=DIR --dataset=fgnet --manual_dir=SRC [--split=...] [--faces=detect|crops]
  python -m launch.evaluate --workdir=DIR --folder=FACES [--faces=detect|crops]

Writes report.json and PNG plots (default: DIR/eval/<source>/) and prints the metrics table;
--calibrate first calibrates the conformal age intervals of this checkpoint (step, mirror) and
stores them beside the others (DIR/calibrations/step_<N>_<plain|mirror>_<faces>.json):
  --calibrate                                   the validation split as evaluation reads it (chips)
  --calibrate --calibrate_faces=detected        validation faces through the detector and the
                                                canonical crop, as photos are ('pasted': pasted
                                                into a larger photo first)
  --calibrate --calibrate_folder=NEW --calibrate_faces=detected   recalibrate on a small labelled
                                                sample of new data (UTKFace names or labels.csv)
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
_CALIBRATE_FACES = flags.DEFINE_enum("calibrate_faces", "chips", ["chips", "detected", "pasted"],
                                     "With --calibrate: the path the calibration faces take (chips as "
                                     "stored; detected and aligned as photos are; pasted into a photo first).")
_CALIBRATE_FOLDER = flags.DEFINE_string("calibrate_folder", None, "With --calibrate: calibrate on this labelled "
                                        "folder (new data) instead of the validation split.")
_CALIBRATE_LIMIT = flags.DEFINE_integer("calibrate_limit", 0, "With --calibrate_faces=detected/pasted: at most "
                                        "this many faces (an even subsample; 0: all).")
_METHOD = flags.DEFINE_enum("calibration_method", None, ["normalized", "mondrian", "normalized_mondrian"],
                            "Conformal method (default: normalized for softmax heads, mondrian otherwise).")
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
  if (_CALIBRATE_FOLDER.value or _CALIBRATE_FACES.value != "chips") and not _CALIBRATE.value:
    raise app.UsageError("--calibrate_faces and --calibrate_folder go with --calibrate")
  common.setup_jax()
  from age_jax import evaluate, report
  on_path = _CALIBRATE.value and (_CALIBRATE_FOLDER.value or _CALIBRATE_FACES.value != "chips")
  if on_path:
    from age_jax.inference import photo_calibration
    calibration = photo_calibration.calibrate_workdir(
        _WORKDIR.value, _STEP.value, _CALIBRATE_FACES.value, folder=_CALIBRATE_FOLDER.value,
        limit=_CALIBRATE_LIMIT.value, method=_METHOD.value, mirror=_MIRROR.value)
    print(f"calibrated {calibration.describe()} on {calibration.scores.size} faces", flush=True)
  result = evaluate.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, folder=_FOLDER.value,
                                     dataset=_DATASET.value, manual_dir=_MANUAL_DIR.value,
                                     faces=_FACES.value, out_dir=_OUT.value, step=_STEP.value,
                                     calibrate_first=_CALIBRATE.value and not on_path, mirror=_MIRROR.value,
                                     calibration_method=_METHOD.value, views=_VIEWS.value and int(_VIEWS.value),
                                     choose_logit_adjustment=_CHOOSE.value)
  print(report.format_table(result), flush=True)


if __name__ == "__main__":
  app.run(main)
