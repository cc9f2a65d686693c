"""Prediction: ages, conformal age intervals (and gender/race where the model has them) for a
folder of images or for face crops in memory."""
import csv
import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from age_jax import conformal
from age_jax.data import pipeline
from age_jax.evaluate import Evaluator, restore
from age_jax.train import step as step_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_records(folder: str) -> list[dict]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder {folder!r} does not exist")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder!r}")
  records = []
  for name in names:
    with open(os.path.join(folder, name), "rb") as f:
      records.append({"image": f.read(), "file_name": name})
  return records


def load_calibration(workdir: str) -> conformal.Calibration | None:
  calibration = conformal.load(workdir)
  if calibration is None:
    logging.warning("%s has no %s: ages come without intervals (run `python -m launch.evaluate "
                    "--workdir=%s --calibrate`)", workdir, conformal.CALIBRATION_FILE, workdir)
  return calibration


def interval_rows(predictions: dict, calibration, coverage: float) -> list[dict]:
  """One {'age', 'low', 'high'} (no interval without a calibration) per prediction, in years."""
  ages = np.asarray(predictions["pred_age"], np.float64)
  rows = [{"age": round(float(a), 2)} for a in ages]
  if calibration is not None:
    low, high = calibration.intervals(ages, predictions.get("pred_spread"), coverage)
    for row, lo, hi in zip(rows, low, high):
      row.update(low=_years(lo), high=_years(hi))
  for task in ("gender", "race"):
    if f"pred_{task}" in predictions:
      for row, v in zip(rows, predictions[f"pred_{task}"]):
        row[task] = int(v)
  return rows


def _years(value):
  """Rounded years; None for an unbounded side (too few calibration examples for the coverage)."""
  return round(float(value), 2) if np.isfinite(value) else None


def predict_folder(workdir: str, folder: str, out_csv: str, step: int | None = None,
                   coverage: float = conformal.DEFAULT_COVERAGE) -> list[dict]:
  exp, cfg, state, normalizer = restore(workdir, step)
  calibration = load_calibration(workdir)
  records = image_records(folder)
  predictions = Evaluator(exp, cfg, normalizer, records=records).predict(state)
  rows = [{"file": r["file_name"], **row}
          for r, row in zip(records, interval_rows(predictions, calibration, coverage))]
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    with open(out_csv, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  return rows


def _bucket(n: int) -> int:
  """Batch sizes are padded to powers of two (at least 8) so few shapes ever compile."""
  return max(8, 1 << (n - 1).bit_length())


class Predictor:
  """A restored checkpoint for face crops in memory (one process): uint8 HxWx3 RGB crops ->
  rows of age, interval (with a calibration) and gender/race, preprocessed as in evaluation."""

  def __init__(self, workdir: str, step: int | None = None):
    self.exp, self.cfg, self.state, self.normalizer = restore(workdir, step)
    self.calibration = load_calibration(workdir)
    self._to_input = pipeline.eval_transform(self.cfg.data)
    predict_step = step_lib.make_predict_step(self.exp.model, self.exp.formulation)
    self._predict = jax.jit(lambda params, stats, images: predict_step(params, stats, {"image": images}),
                            compiler_options=self.exp.compiler_options)

  def preprocess(self, crop: np.ndarray) -> np.ndarray:
    """A uint8 RGB face crop -> the network input (as pipeline.decode_image + eval_batches)."""
    size = self.cfg.data.load_size
    if crop.shape[:2] != (size, size):
      crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    return self.normalizer(self._to_input(crop))

  def raw(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-crop 'pred_age' (+ 'pred_spread', 'pred_gender', 'pred_race') arrays."""
    if not crops:
      return {"pred_age": np.zeros(0, np.float32)}
    images = np.stack([self.preprocess(np.asarray(c, np.uint8)) for c in crops])
    padded = np.concatenate([images, np.zeros((_bucket(len(crops)) - len(crops),) + images.shape[1:],
                                              images.dtype)])
    out = jax.device_get(self._predict(self.state.params, self.state.batch_stats, padded))
    return {k: np.asarray(v)[:len(crops)] for k, v in out.items()}

  def __call__(self, crops: list[np.ndarray], coverage: float = conformal.DEFAULT_COVERAGE) -> list[dict]:
    return interval_rows(self.raw(crops), self.calibration, coverage)
