"""Prediction: photos in, every face with its age out (or a folder of face crops).

  predictor = Predictor(workdir)              # restores the model once; reuse it for many photos
  faces = predictor.photo(image)              # uint8 HxWx3 photo -> [FaceAge], one per face found
  results = predict_files(predictor, paths)   # per file: status, error, faces (bad files never abort)

In 'detect' mode every face the detector finds is aligned onto the canonical crop, as a
canonical-crop build stores it (faces/find.py, faces/canonical.py), then resized and cropped as
evaluation does. In 'crops' mode each image is one face crop used as it is, as a plain build
stores it. Each age comes with its conformal interval [low, high] at the predictor's coverage
(age_jax/conformal.py, applied by inference/intervals.py) when the workdir holds a calibration,
and `calibrated_on` says what the
interval's coverage was measured on. The calibration must belong to the restored weights (step,
mirror): one of other weights is refused at construction (conformal.CalibrationMismatch, with
the command that fixes it), unless calibrate=True, which calibrates these weights on the spot
(validation chips, conformal.save); intervals=False reads none. In 'detect' mode a calibration on detected (or pasted)
faces is preferred to one on chips; 'crops' prefers chips.
"""
import csv
import dataclasses
import json
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from absl import logging

from age_jax import conformal
from age_jax.ages import GENDER_NAMES, RACE_NAMES
from age_jax.data import run_data
from age_jax.faces import FaceDetector, align_to_canonical, detect, read_rgb, run_crop_size
from age_jax.inference import intervals as intervals_lib
from age_jax.inference.restore import restore
from age_jax.train.evaluator import predict_source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FACE_MODES = ("detect", "crops")
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclasses.dataclass
class FaceAge:
  age: float
  box: np.ndarray | None = None        # (4,) x0, y0, x1, y1 in the photo; None for a crop
  score: float | None = None
  landmarks: np.ndarray | None = None  # (5, 2) (x, y), POINT_NAMES order
  gender: str | None = None            # where the model predicts it
  race: str | None = None
  low: float | None = None             # the conformal interval, with a calibration; an
  high: float | None = None            # unbounded side (too small a calibration) is None
  calibrated_on: str | None = None     # the interval's calibration: '<faces path>:<source>'

  def as_dict(self) -> dict:
    out = {"age": round(float(self.age), 2)}
    if self.low is not None:
      out.update(low=round(self.low, 2), high=None if self.high is None else round(self.high, 2),
                 calibrated_on=self.calibrated_on)
    if self.box is not None:
      out.update(box=[round(float(v), 1) for v in self.box], score=round(float(self.score), 4),
                 landmarks=[[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks])
    out.update({k: v for k, v in (("gender", self.gender), ("race", self.race)) if v is not None})
    return out


class Predictor:
  """A restored model with its input pipeline and a face detector (built on first use)."""

  def __init__(self, workdir: str, step: int | None = None, detector=None,
               coverage: float = conformal.DEFAULT_COVERAGE, calibrate: bool = False, intervals: bool = True):
    self.exp, self.cfg, self.state, self.normalizer = restore(workdir, step)
    self.workdir, self.step, self.coverage = workdir, int(self.state.step), coverage
    self._predict = {}  # mirror -> jitted predict step, built on first use
    self._calibrations = {}  # (mirror, faces mode) -> Calibration | None
    self._detector = detector
    self.crop_size = run_crop_size(self.cfg.data)
    mirror = bool(self.cfg.eval.mirror)
    if not intervals:  # ages only (e.g. to calibrate these weights): no calibration is read
      self.calibration = None
      self._calibrations = {(m, mode): None for m in (False, True) for mode in ("detect", "crops")}
      return
    # calibrate: these weights, on the spot (the validation chips) when none of theirs is stored.
    self.calibration = intervals_lib.calibration_of(workdir, self.exp, self.cfg, self.normalizer, self.state,
                                                    calibrate, mirror, "detect")
    self._calibrations[(mirror, "detect")] = self.calibration
    if self.calibration is None:
      logging.warning("%s has no calibration: ages come without intervals (run `%s`)", workdir,
                      conformal.fix_command(workdir, self.step, mirror))

  def calibration_for(self, mirror: bool, mode: str = "detect"):
    """The calibration of these weights with `mirror` for faces found in photos ('detect') or
    given as crops ('crops'); None when the workdir has none. CalibrationMismatch for the
    run's own mirror when only other weights are calibrated; for the other mirror (asked
    explicitly by crop_ages) a missing calibration means no intervals."""
    key = (bool(mirror), mode)
    if key not in self._calibrations:
      try:
        self._calibrations[key] = intervals_lib.load(self.workdir, self.step, bool(mirror), mode)
      except conformal.CalibrationMismatch:
        if bool(mirror) == bool(self.cfg.eval.mirror):
          raise
        self._calibrations[key] = None
    return self._calibrations[key]

  @property
  def detector(self):
    if self._detector is None:
      self._detector = FaceDetector()
    return self._detector

  def predict_fn(self, mirror: bool | None = None):
    """The jitted predict step; mirror=None: the run's config.eval.mirror."""
    mirror = bool(self.cfg.eval.mirror if mirror is None else mirror)
    if mirror not in self._predict:
      self._predict[mirror] = self.exp.jit_predict_step(mirror)
    return self._predict[mirror]

  def crop_predictions(self, crops: list[np.ndarray], mirror: bool | None = None) -> dict:
    """The raw predictions ('pred_age', 'pred_spread' for softmax heads, ...) of face crops
    (uint8 HxWx3, any size), each resized to the model's load size; mirror as in predict_fn."""
    size = self.cfg.data.load_size
    source = [{"image": _resize(c, size), "age": -1.0, "gender": -1, "race": -1} for c in crops]
    return predict_source(self.exp, self.cfg, self.normalizer, self.predict_fn(mirror), self.state, source)

  def crop_ages(self, crops: list[np.ndarray], coverage: float | None = None, mirror: bool | None = None,
                mode: str = "crops") -> list[FaceAge]:
    """Ages (and intervals at `coverage`, default the predictor's) of face crops (uint8 HxWx3,
    any size), each resized to the model's load size; mirror as in predict_fn; mode: where the
    crops come from ('detect': aligned from photos), which chooses the calibration."""
    if not crops:
      return []
    p = self.crop_predictions(crops, mirror)
    ages = p["pred_age"]
    calibration = self.calibration_for(self.cfg.eval.mirror if mirror is None else mirror, mode)
    low, high, on = intervals_lib.apply(calibration, ages, p.get("pred_spread"), coverage or self.coverage)
    out = []
    for i in range(len(crops)):
      face = FaceAge(age=float(ages[i]), low=low[i], high=high[i], calibrated_on=on)
      if "pred_gender" in p:
        face.gender = GENDER_NAMES[int(p["pred_gender"][i])]
      if "pred_race" in p:
        face.race = RACE_NAMES[int(p["pred_race"][i])]
      out.append(face)
    return out

  def records_ages(self, records) -> np.ndarray:
    """Ages of dataset records (encoded images) through the run's own input pipeline."""
    source = run_data.loaded_source(self.cfg, records)
    return predict_source(self.exp, self.cfg, self.normalizer, self.predict_fn(), self.state, source)["pred_age"]

  def faces(self, images: list[np.ndarray], coverage: float | None = None) -> list[list[FaceAge]]:
    """Every face of each photo (detector order: best score first), with its age."""
    found = detect(self.detector, images)
    crops, owners = [], []
    for k, (image, faces) in enumerate(zip(images, found)):
      for face in faces:
        crops.append(align_to_canonical(image, np.asarray(face.landmarks, np.float64), self.crop_size))
        owners.append((k, face))
    results = [[] for _ in images]
    for (k, face), aged in zip(owners, self.crop_ages(crops, coverage, mode="detect")):
      aged.box, aged.score = np.asarray(face.box, np.float32), float(face.score)
      aged.landmarks = np.asarray(face.landmarks, np.float32)
      results[k].append(aged)
    return results

  def photo(self, image: np.ndarray, coverage: float | None = None) -> list[FaceAge]:
    return self.faces([image], coverage)[0]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.uint8)


def image_paths(folder: str) -> list[str]:
  """Entries of folder with an image suffix (a directory or broken file among them is reported
  by predict_files, not here)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder {folder!r} does not exist")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder!r}")
  return [os.path.join(folder, n) for n in names]


def _read(path: str):
  """(uint8 image, None) or (None, why it cannot be read)."""
  if os.path.isdir(path):
    return None, "a directory, not an image file"
  try:
    return read_rgb(path), None
  except Exception as e:  # PIL and the OS raise many types for unreadable files
    return None, f"cannot read image: {type(e).__name__}: {e}"


def predict_files(predictor: Predictor, paths: list[str], faces: str = "detect", chunk: int = 16,
                  draw_dir: str | None = None) -> list[dict]:
  """Per path, in order: {'file', 'status' ('ok' | 'no_face' | 'error'), 'error', 'faces': [FaceAge]}.
  A file that cannot be read is reported with status 'error'; the others go on."""
  if faces not in FACE_MODES:
    raise ValueError(f"faces={faces!r}; expected one of {list(FACE_MODES)}")
  results = []
  for first in range(0, len(paths), chunk):
    read = [(path, *_read(path)) for path in paths[first:first + chunk]]
    good = [(path, image) for path, image, error in read if error is None]
    images = [image for _, image in good]
    found = predictor.faces(images) if faces == "detect" else [[f] for f in predictor.crop_ages(images)]
    by_path = dict(zip((p for p, _ in good), found))
    for path, image, error in read:
      faces_here = by_path.get(path, [])
      status = "error" if error else ("ok" if faces_here else "no_face")
      results.append({"file": os.path.basename(path), "status": status, "error": error or "",
                      "faces": faces_here})
      if draw_dir and image is not None and jax.process_index() == 0:
        os.makedirs(draw_dir, exist_ok=True)
        draw(image, faces_here).save(os.path.join(draw_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg"),
                                     quality=90)
  return results


def describe(face: FaceAge) -> str:
  interval = None if face.low is None else f"[{face.low:.0f}-{'?' if face.high is None else f'{face.high:.0f}'}]"
  return " ".join([f"{face.age:.1f}"] + [v for v in (interval, face.gender, face.race) if v])


def draw(image: np.ndarray, faces: list[FaceAge]) -> Image.Image:
  """The photo with each face's box, five points and age (crops: the age in a corner)."""
  picture = Image.fromarray(image)
  pen = ImageDraw.Draw(picture)
  width = max(1, round(max(image.shape[:2]) / 300))
  for face in faces:
    if face.box is None:
      pen.text((2, 2), describe(face), fill=(255, 255, 0))
      continue
    x0, y0, x1, y1 = (float(v) for v in face.box)
    pen.rectangle((x0, y0, x1, y1), outline=(0, 255, 0), width=width)
    for x, y in face.landmarks:
      pen.ellipse((x - width, y - width, x + width, y + width), fill=(255, 0, 0))
    pen.text((x0, max(0.0, y0 - 12)), describe(face), fill=(255, 255, 0))
  return picture


CSV_COLUMNS = ("file", "status", "face", "age", "low", "high", "calibrated_on", "gender", "race", "score", "x0", "y0", "x1", "y1",
               *(f"{p}_{c}" for p in POINT_NAMES for c in "xy"), "error")


def csv_rows(results: list[dict]) -> list[dict]:
  """One row per face; a file without faces (or unreadable) gets one row with its status."""
  rows = []
  for result in results:
    base = {"file": result["file"], "status": result["status"], "error": result["error"]}
    if not result["faces"]:
      rows.append(base)
    for k, face in enumerate(result["faces"]):
      row = {**base, "face": k, "age": round(face.age, 2), "gender": face.gender or "", "race": face.race or ""}
      row.update({name: round(v, 2) for name, v in (("low", face.low), ("high", face.high)) if v is not None})
      if face.calibrated_on:
        row["calibrated_on"] = face.calibrated_on
      if face.box is not None:
        row.update(score=round(face.score, 4), **dict(zip(("x0", "y0", "x1", "y1"), np.round(face.box, 1).tolist())))
        for name, (x, y) in zip(POINT_NAMES, face.landmarks):
          row[f"{name}_x"], row[f"{name}_y"] = round(float(x), 1), round(float(y), 1)
      rows.append(row)
  return rows


def write_results(results: list[dict], out_csv: str, out_json: str | None = None) -> None:
  """The CSV (one row per face or bad file) and optionally the JSON (one object per file)."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
  with open(out_csv, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(csv_rows(results))
  if out_json:
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
      json.dump([{**r, "faces": [face.as_dict() for face in r["faces"]]} for r in results], f, indent=1)
