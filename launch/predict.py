"""Predict ages for a folder of face images:
  python -m launch.predict --workdir=DIR --folder=IMAGES --out=predictions.csv"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_FOLDER = flags.DEFINE_string("folder", None, "Folder of face images (.jpg/.png/...).")
_OUT = flags.DEFINE_string("out", "predictions.csv",
                           "CSV to write: file, age[, low, high (the interval)][, gender, race].")
_COVERAGE = flags.DEFINE_float("coverage", 0.9, "Coverage of the conformal age interval (a fraction).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "folder"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  from age_jax import predict
  rows = predict.predict_folder(_WORKDIR.value, _FOLDER.value, _OUT.value, _STEP.value,
                                 coverage=_COVERAGE.value)
  print(f"wrote {len(rows)} predictions to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
