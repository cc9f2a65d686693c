"""The pasted-face check on a split of a run's dataset (age_jax/inference/pasted_faces.py):
  python -m launch.bench.pasted_faces --workdir=DIR [--split=test] [--limit=1000] [--out=pasted.json]
Prints MAE against the true ages for the chips as trained, the chips detected and aligned, the
chips pasted into larger photos then detected and aligned, and those photos resized whole.

With --scales=1,3,6,10 it pastes at those fixed multiples of the chip size instead, each with and
without the sensor noise of --noise (age_jax/inference/pasted_faces.py, check_scales), one table row each;
the detector's smallest face is then --min_face_fraction of the pasted chip's side.
"""
import json

from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_SPLIT = flags.DEFINE_string("split", None, "Split of the run's dataset (default: config.data.eval_split).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use this many chips, evenly spaced over the split (0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the pasting (background, scale, angle, offset).")
_MIN_FACE = flags.DEFINE_float("min_face_size", 20.0, "The detector's smallest face, in pixels.")
_REFINE = flags.DEFINE_bool("refine", True, "Refine the landmarks by a second detection in the canonical frame.")
_SCALES = flags.DEFINE_list("scales", [], "Fixed paste scales (multiples of the chip side), e.g. 1,3,6,10.")
_NOISE = flags.DEFINE_float("noise", 8.0, "With --scales: sensor noise sigma at mid grey, at full resolution.")
_MIN_FACE_FRACTION = flags.DEFINE_float("min_face_fraction", 0.3,
                                        "With --scales: the detector's smallest face, as a fraction of the pasted chip's side.")
_OUT = flags.DEFINE_string("out", None, "Write the summary and every age here (JSON).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  import numpy as np
  from age_jax.faces import FaceDetector, read_rgb
  from age_jax.inference import pasted_faces, predict
  from age_jax.data import run_data
  predictor = predict.Predictor(_WORKDIR.value, detector=FaceDetector(min_face_size=_MIN_FACE.value))
  cfg = predictor.cfg
  records = run_data.load_split(cfg, _SPLIT.value or cfg.data.eval_split)
  n = len(records)
  indices = np.arange(n) if not _LIMIT.value or _LIMIT.value >= n else np.linspace(0, n - 1, _LIMIT.value).astype(int)
  subset = [records[int(i)] for i in indices]
  chips = [read_rgb(r["image"]) for r in subset]
  if _SCALES.value:
    scales = [float(v) for v in _SCALES.value]
    side = max(chips[0].shape[:2])
    detector_for = lambda s: FaceDetector(min_face_size=max(_MIN_FACE.value, _MIN_FACE_FRACTION.value * side * s))
    result = pasted_faces.check_scales(predictor, chips, [r["age"] for r in subset], scales, (0.0, _NOISE.value),
                                       seed=_SEED.value, detector_for=detector_for, verbose=True, refine=_REFINE.value)
    result["chips"]["files"] = len(subset)
    print(json.dumps(result["chips"]))
    print("scale  noise  found  MAE_pasted  MAE_chips  gap     per_face")
    for r in result["rows"]:
      print(f"{r['scale']:5g}  {r['noise']:5g}  {r['found']:.3f}  {r['mae_pasted']:10.3f}  {r['mae_chips']:9.3f}  "
            f"{r['mae_gap']:+.3f}  {r['pasted_vs_chip']:.3f}")
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump({**result, "file_names": [r["file_name"] for r in subset]}, f)
    return
  as_trained = predictor.records_ages(subset)
  result = pasted_faces.check(predictor, chips, [r["age"] for r in subset], seed=_SEED.value,
                              as_trained=as_trained, verbose=True, refine=_REFINE.value)
  result["summary"]["files"] = len(subset)
  print(json.dumps(result["summary"], indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({**result, "file_names": [r["file_name"] for r in subset]}, f)


if __name__ == "__main__":
  app.run(main)
