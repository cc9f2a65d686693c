"""Ages for every face in a folder of photos:
  python -m launch.predict --workdir=DIR --folder=PHOTOS [--out=predictions.csv] [--draw_dir=DIR]
            [--faces=detect|crops]

--faces=detect (default): every face found, with its box, five points, score, age and its
interval (low, high) at --coverage when the workdir is calibrated (gender and race as names where
the model predicts them). --faces=crops: each image is one face crop, used
as it is. One CSV row per face, or per file without a face (status no_face) or unreadable
(status error, never stopping the rest); the JSON beside it holds one object per file.
"""
import os

from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_FOLDER = flags.DEFINE_string("folder", None, "Folder of photos (.jpg/.png/...).")
_OUT = flags.DEFINE_string("out", "predictions.csv", "CSV to write, one row per face; the JSON goes "
                           "beside it with the suffix .json.")
_FACES = flags.DEFINE_enum("faces", "detect", ["detect", "crops"],
                           "detect: find and align every face; crops: each image is one face crop.")
_DRAW_DIR = flags.DEFINE_string("draw_dir", None, "Also write each photo with boxes and ages drawn here.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_COVERAGE = flags.DEFINE_float("coverage", 0.9, "Coverage of each age's conformal interval (low, high).")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "When the checkpoint's weights have no calibration (none, or "
                                "only other steps'), calibrate them on the validation split first; without "
                                "it a calibration of other weights is refused.")
flags.mark_flags_as_required(["workdir", "folder"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  from age_jax.inference import predict
  paths = predict.image_paths(_FOLDER.value)
  predictor = predict.Predictor(_WORKDIR.value, _STEP.value, coverage=_COVERAGE.value, calibrate=_CALIBRATE.value)
  results = predict.predict_files(predictor, paths, faces=_FACES.value, draw_dir=_DRAW_DIR.value)
  out_json = os.path.splitext(_OUT.value)[0] + ".json"
  predict.write_results(results, _OUT.value, out_json)
  counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "no_face", "error")}
  num_faces = sum(len(r["faces"]) for r in results)
  print(f"{len(results)} images: {counts['ok']} with faces ({num_faces} faces), {counts['no_face']} without "
        f"a face, {counts['error']} unreadable; wrote {_OUT.value} and {out_json}")
  for r in results:
    if r["status"] == "error":
      print(f"  skipped {r['file']}: {r['error']}")


if __name__ == "__main__":
  app.run(main)
