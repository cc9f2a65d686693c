"""Interval calibration and coverage along the path a face takes to the model.

Users send photos: each face is detected, aligned onto the canonical crop and aged. A calibration
on the build's validation chips measures a different path. Here labelled faces go along one of
  'chips'     the image itself, resized to the model's input (a face crop, as a plain build stores it);
  'detected'  the image -> detector -> the canonical crop (what predict does with a photo);
  'pasted'    the image pasted into a larger photo (data/paste.py) -> detector -> canonical crop,
and optionally through a shift first (blur, JPEG re-encoding: `SHIFTS`). Faces the detector
misses are left out and counted ('found'). The same functions recalibrate on a small labelled
sample of new data (a folder), the way to keep coverage when the faces change (conformal
intervals cover exchangeable data only: a calibration says nothing about faces unlike its own).
"""
import io
import sys
import time

import numpy as np
from PIL import Image, ImageFilter

from age_jax import conformal
from age_jax.data import paste
from age_jax.faces import align_to_canonical, read_rgb
from age_jax.inference import pasted_faces

PATHS = ("chips", "detected", "pasted")
COVERAGES = (0.8, 0.9, 0.95)


def blur(radius: float):
  return lambda image: np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), np.uint8)


def jpeg(quality: int):
  def shift(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return read_rgb(buffer.getvalue())
  return shift


def parse_shift(spec: str):
  """'' (none), 'blur:R' (Gaussian blur of radius R px) or 'jpeg:Q' (re-encoded at quality Q)."""
  if not spec:
    return None
  kind, _, value = spec.partition(":")
  try:
    if kind == "blur":
      return blur(float(value))
    if kind == "jpeg":
      return jpeg(int(value))
  except ValueError:
    pass
  raise ValueError(f"shift {spec!r}; expected '', 'blur:RADIUS' or 'jpeg:QUALITY'")


def path_predictions(predictor, images: list[np.ndarray], true_ages, path: str, *, seed: int = 0,
                     photo_size: int = 320, shift=None, mirror: bool | None = None, label: str = "") -> dict:
  """Predictions of labelled faces along `path` (PATHS): {'pred_age', 'pred_spread' (softmax
  heads), 'age' (of the faces found), 'found' (bool per image)}; shift: image -> image, applied
  to what the detector sees (the photo; the chip itself for 'chips')."""
  if path not in PATHS:
    raise ValueError(f"path {path!r}; expected one of {list(PATHS)}")
  true_ages = np.asarray(true_ages, np.float64)
  if path == "pasted":
    rng = np.random.default_rng(seed)
    images = [paste.paste(im, rng, photo_size)[0] for im in images]
  if shift is not None:
    images = [shift(im) for im in images]
  if path == "chips":
    crops, found = images, np.ones(len(images), bool)
  else:
    faces = pasted_faces._chosen(predictor.detector, images, label=label)
    found = np.array([f is not None for f in faces])
    crops = [align_to_canonical(im, np.asarray(f.landmarks, np.float64), predictor.crop_size)
             for im, f in zip(images, faces) if f is not None]
  p = predictor.crop_predictions(crops, mirror) if crops else {"pred_age": np.zeros(0)}
  out = {"pred_age": p["pred_age"], "age": true_ages[found], "found": found}
  if "pred_spread" in p:
    out["pred_spread"] = p["pred_spread"]
  return out


def coverage_table(calibration: conformal.Calibration, predictions: dict, coverages=COVERAGES) -> dict:
  """Per nominal coverage: overall coverage, mean width and coverage per true age group."""
  out = {}
  for c in coverages:
    low, high = calibration.intervals(predictions["pred_age"], predictions.get("pred_spread"), c)
    report = conformal.interval_report(low, high, predictions["age"])
    out[f"{c:g}"] = {"coverage": report["coverage"], "mean_width": report["mean_width"], "count": report["count"],
                     "per_age_group": {k: {"coverage": v["coverage"], "count": v["count"]}
                                       for k, v in report["per_age_group"].items()}}
  return out


def calibrate_on_path(predictor, images, true_ages, path: str, source: str, *, method: str | None = None,
                      save: bool = True, **path_options) -> tuple[conformal.Calibration, dict]:
  """(the calibration of the predictor's weights on these labelled faces along `path`, their
  predictions); saved in the workdir (conformal.save: other steps' calibrations are kept)."""
  mirror = bool(predictor.cfg.eval.mirror if path_options.get("mirror") is None else path_options["mirror"])
  p = path_predictions(predictor, images, true_ages, path, **path_options)
  if p["pred_age"].size == 0:
    raise ValueError(f"no face found in any of the {len(images)} calibration images ({source})")
  calibration = conformal.calibrate_predictions(p, source, predictor.step, mirror, path, method)
  if save:
    conformal.save(calibration, predictor.workdir)
  return calibration, p


def labelled_images(records, limit: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
  """(uint8 images, ages) of records with an encoded 'image' and an 'age' (an even subsample of
  `limit` when given)."""
  n = len(records)
  chosen = range(n) if not limit or limit >= n else np.linspace(0, n - 1, limit).astype(int)
  images, true = [], []
  start = time.time()
  for k, i in enumerate(chosen):
    record = records[int(i)]
    images.append(read_rgb(record["image"]))
    true.append(float(record["age"]))
    if k % 500 == 499:
      print(f"[age_jax] read {k + 1} images ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
  return images, np.asarray(true)


def group_gaps(table: dict, coverage: str = "0.9", min_count: int = 20) -> dict:
  """Nominal minus measured coverage per true age group (positive: under-covered); groups with
  fewer than min_count faces are left out (one face covers 0% or 100%)."""
  nominal = float(coverage)
  return {g: round(nominal - v["coverage"], 4) for g, v in table[coverage]["per_age_group"].items()
          if v["count"] >= min_count}



def calibrate_workdir(workdir: str, step: int | None, path: str, *, folder: str | None = None, limit: int = 0,
                      method: str | None = None, mirror: bool | None = None, seed: int = 0) -> conformal.Calibration:
  """Calibrates the workdir's checkpoint along `path` on its validation split, or on a labelled
  `folder` of new data (recalibration under a shift); stores it (conformal.save) and returns it."""
  from age_jax.data import datasets, run_data
  from age_jax.inference.predict import Predictor
  predictor = Predictor(workdir, step, intervals=False)
  cfg = predictor.cfg
  if mirror is not None:
    cfg.eval.mirror = bool(mirror)
  if folder:
    records, source = datasets.folder_source(folder), f"folder:{folder}"
  else:
    if not cfg.data.val_split:
      raise ValueError("calibration needs a validation split, and config.data.val_split is empty")
    records, source = run_data.load_split(cfg, cfg.data.val_split), f"{cfg.data.name}:{cfg.data.val_split}"
  images, true = labelled_images(records, limit)
  calibration, p = calibrate_on_path(predictor, images, true, path, source, method=method, seed=seed,
                                     label=f"calibration faces ({path})")
  print(f"[age_jax] {path}: {int(p['found'].sum())}/{len(images)} faces found", file=sys.stderr, flush=True)
  return calibration
