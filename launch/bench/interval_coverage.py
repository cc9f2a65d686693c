"""Interval coverage along the paths users take, and under shifts (age_jax/inference/photo_calibration.py):
  python -m launch.bench.interval_coverage --workdir=DIR [--cal_limit=1000] [--test_limit=1000]
         [--methods=normalized,normalized_mondrian] [--shifts=blur:2,jpeg:15] [--recal_limit=200]

Calibrates the checkpoint on the validation split along each of --cal_paths (not saved), then
measures coverage at 80/90/95% on test faces along chips / detected / pasted, overall and per true
age group; then, per shift, coverage of the detected-face calibration on shifted test photos, and
after recalibrating on --recal_limit shifted validation faces (the recalibration path for new
data). Writes --out (JSON) and prints a table. Detection runs once per path and shift.
"""
import json
import time

from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir (read only: nothing is saved in it).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_CAL_LIMIT = flags.DEFINE_integer("cal_limit", 1000, "Validation faces to calibrate on along the detector "
                                  "paths (even subsample; 0: all); the chips path takes every one.")
_TEST_LIMIT = flags.DEFINE_integer("test_limit", 1000, "Test faces to measure on along the detector paths "
                                   "(even subsample; 0: all); the chips path takes every one.")
_CAL_PATHS = flags.DEFINE_list("cal_paths", ["chips", "detected"], "Paths to calibrate along.")
_TEST_PATHS = flags.DEFINE_list("test_paths", ["chips", "detected", "pasted"], "Paths to measure along.")
_METHODS = flags.DEFINE_list("methods", ["normalized", "normalized_mondrian"], "Conformal methods.")
_SHIFTS = flags.DEFINE_list("shifts", ["blur:2", "jpeg:15"], "Shifts of the detected path: blur:R, jpeg:Q.")
_RECAL_LIMIT = flags.DEFINE_integer("recal_limit", 200, "Shifted validation faces to recalibrate on.")
_OUT = flags.DEFINE_string("out", "interval_coverage.json", "Where to write the figures.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  import numpy as np

  from age_jax import conformal
  from age_jax.inference import photo_calibration as pc
  from age_jax.data import run_data
  from age_jax.inference.predict import Predictor

  start = time.time()
  predictor = Predictor(_WORKDIR.value, _STEP.value, intervals=False)
  cfg = predictor.cfg
  val_images, val_ages = pc.labelled_images(run_data.load_split(cfg, cfg.data.val_split))
  test_images, test_ages = pc.labelled_images(run_data.load_split(cfg, cfg.data.eval_split))
  predictions = {}

  def subsample(images, true, limit):
    if not limit or limit >= len(images):
      return images, true
    chosen = np.linspace(0, len(images) - 1, limit).astype(int)
    return [images[i] for i in chosen], true[chosen]

  def predicted(which, path, shift="", limit=0):
    key = (which, path, shift, limit)
    if key not in predictions:
      images, true = (val_images, val_ages) if which == "val" else (test_images, test_ages)
      if path != "chips" or shift:
        images, true = subsample(images, true, limit or (_CAL_LIMIT.value if which == "val" else _TEST_LIMIT.value))
      predictions[key] = pc.path_predictions(predictor, images, true, path, shift=pc.parse_shift(shift),
                                             seed=1 if which == "val" else 2, label=f"{which} {path} {shift}")
      p = predictions[key]
      print(f"[{time.time() - start:.0f} s] {which} {path} {shift or 'no shift'}: {int(p['found'].sum())}/"
            f"{len(images)} found, MAE {np.mean(np.abs(p['pred_age'] - p['age'])):.3f}", flush=True)
    return predictions[key]

  source = f"{cfg.data.name}:{cfg.data.val_split}"
  result = {"workdir": _WORKDIR.value, "step": predictor.step, "mirror": bool(cfg.eval.mirror),
            "validation_faces": len(val_images), "test_faces": len(test_images), "cal_limit": _CAL_LIMIT.value,
            "test_limit": _TEST_LIMIT.value, "recal_limit": _RECAL_LIMIT.value, "by_method": {}, "shifts": {},
            "found": {}, "mae": {}}
  for method in _METHODS.value:
    for cal_path in _CAL_PATHS.value:
      p = predicted("val", cal_path)
      cal = conformal.calibrate_predictions(p, source, predictor.step, bool(cfg.eval.mirror), cal_path, method)
      for test_path in _TEST_PATHS.value:
        table = pc.coverage_table(cal, predicted("test", test_path))
        result["by_method"].setdefault(method, {}).setdefault(f"cal_{cal_path}", {})[f"test_{test_path}"] = table
        row = " ".join(f"{c}: {table[c]['coverage']:.3f}" for c in table)
        worst = max((v for v in pc.group_gaps(table).values() if v is not None), default=None)
        print(f"{method:20s} calibrated on {cal_path:8s} measured on {test_path:8s} {row} | worst group at 0.9: "
              f"{worst:+.3f} under", flush=True)
  for key, p in list(predictions.items()):
    result["found"][" ".join(k for k in map(str, key[:3]) if k)] = [int(p["found"].sum()), int(p["found"].size)]
    result["mae"][" ".join(k for k in map(str, key[:3]) if k)] = float(np.mean(np.abs(p["pred_age"] - p["age"])))

  method = _METHODS.value[-1]
  base = conformal.calibrate_predictions(predicted("val", "detected"), source, predictor.step,
                                         bool(cfg.eval.mirror), "detected", method)
  for shift in _SHIFTS.value:
    shifted = predicted("test", "detected", shift)
    recal_p = predicted("val", "detected", shift, _RECAL_LIMIT.value)
    recal = conformal.calibrate_predictions(recal_p, f"{source} ({shift}, {_RECAL_LIMIT.value} faces)",
                                            predictor.step, bool(cfg.eval.mirror), "detected", method)
    result["shifts"][shift] = {"validation_calibration": pc.coverage_table(base, shifted),
                               "recalibrated": pc.coverage_table(recal, shifted),
                               "found": [int(shifted["found"].sum()), int(shifted["found"].size)],
                               "mae": float(np.mean(np.abs(shifted["pred_age"] - shifted["age"])))}
    for name, table in (("validation cal.", result["shifts"][shift]["validation_calibration"]),
                        (f"recal. {_RECAL_LIMIT.value}", result["shifts"][shift]["recalibrated"])):
      print(f"shift {shift:8s} {name:16s} " + " ".join(f"{c}: {table[c]['coverage']:.3f}" for c in table), flush=True)
  result["seconds"] = round(time.time() - start, 1)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {_OUT.value} ({result['seconds']} s)")


if __name__ == "__main__":
  app.run(main)
