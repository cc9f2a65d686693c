"""Intervals applied to predictions: which calibration a path reads, calibrating on the spot,
and the interval of each predicted age.

The calibration and the interval rule themselves are below the training layer (conformal.py,
inference_rules.interval): training calibrates its last step and reports coverage with them.
This module only chooses and applies, the same way for evaluation, the predictor and the exports.
"""
import numpy as np
from absl import logging

from age_jax import conformal

# Which calibration (conformal.FACES) a face path reads first: the one whose faces came the same way
# (why: docs/intervals_and_export.md, "Face paths").
FACES_FOR = {"detect": ("detected", "pasted", "chips"), "crops": ("chips", "detected", "pasted")}


def load(workdir: str, step: int, mirror: bool, mode: str = "detect") -> conformal.Calibration | None:
  """The calibration of the weights at (step, mirror) for faces given as `mode` (FACES_FOR); None
  when the workdir holds none; conformal.CalibrationMismatch when it holds other weights' only."""
  if mode not in FACES_FOR:
    raise ValueError(f"faces mode {mode!r}; expected one of {list(FACES_FOR)}")
  return conformal.load(workdir, int(step), bool(mirror), FACES_FOR[mode])


def calibration_of(workdir, exp, cfg, normalizer, state, calibrate: bool = False, mirror: bool | None = None,
                   mode: str = "detect"):
  """The calibration of the restored weights for faces given as `mode` (aligned faces: detected
  preferred to chips); with calibrate, one of these weights is made first (on the validation
  chips, train.evaluator.calibrate) when there is none or only other weights'."""
  from age_jax.train.evaluator import calibrate as calibrate_chips  # the training-side predict loop
  mirror = bool(cfg.eval.mirror if mirror is None else mirror)
  try:
    calibration = load(workdir, int(state.step), mirror, mode)
  except conformal.CalibrationMismatch:
    if not calibrate:
      raise
    calibration = None
  if calibration is None and calibrate:
    logging.info("calibrating step %d on the validation split", int(state.step))
    cfg.eval.mirror = mirror
    calibrate_chips(exp, cfg, normalizer, state, workdir)
    calibration = load(workdir, int(state.step), mirror, mode)
  return calibration


def apply(calibration: conformal.Calibration | None, ages, spreads, coverage: float):
  """(low, high, calibrated_on) per predicted age: lists of floats, None for an unbounded side
  (too small a calibration for the coverage) or for every face without a calibration."""
  n = len(ages)
  if calibration is None:
    return [None] * n, [None] * n, None
  low, high = calibration.intervals(ages, spreads, coverage)
  return [_finite(v) for v in low], [_finite(v) for v in high], f"{calibration.faces}:{calibration.source}"


def _finite(value):
  return None if value is None or not np.isfinite(value) else float(value)
