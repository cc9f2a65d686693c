"""Split-conformal age intervals (Vovk et al. 2005; Lei et al. 2018), in plain numpy.

Calibration: n held-out examples (the validation split) give non-conformity scores s_i; for a
coverage 1 - alpha the interval's half-width uses the finite-sample quantile
  q = the ceil((n + 1)(1 - alpha))-th smallest score (infinite when that exceeds n),
which covers a new exchangeable example with probability >= 1 - alpha.

Three methods; the first two are chosen by what the head predicts, the third on request:
  'normalized' (softmax heads, which give a distribution over ages): s = |y - yhat| / sigma_hat,
               sigma_hat the predicted distribution's standard deviation (at least SIGMA_FLOOR);
               interval yhat -+ q * sigma_hat, so an uncertain face gets a wider interval.
  'mondrian'   (regression and ordinal heads, one number per face): s = |y - yhat| within each
               LAE age group of the *predicted* age (Vovk's Mondrian / group-conditional
               conformal), interval yhat -+ q_group: errors grow with age, so do the widths.
  'normalized_mondrian' (softmax heads): the normalized score, its quantile taken within
               each group of the predicted age as 'mondrian' does: the spread alone under-covers
               the teenage and middle groups (BUILD_NOTES: 11-20 at 74-79% for 90%).
               A group with too few calibration examples for the coverage asked (q infinite)
               uses the pooled quantile of all groups, and the calibration says which did.
The calibration keeps every score, so any coverage can be asked for later.

A calibration belongs to the weights and the path that made its scores: the checkpoint step,
whether ages were mirror-averaged, and what the faces were (`faces`: 'chips', the build's
validation images as evaluation reads them; 'detected', the same faces found by the detector
and aligned onto the canonical crop, as photos are; 'pasted', pasted into a larger photo
first). Each is stored in its own file, WORKDIR/calibrations/step_<N>_<plain|mirror>_<faces>.json,
so calibrating one step never touches another's. `load` returns the one for the weights asked
and refuses (CalibrationMismatch) when the workdir holds calibrations only for other weights.
The single-file calibration.json of earlier versions is still read (its mirror unrecorded).
"""
import dataclasses
import json
import math

import numpy as np

from age_jax import ages, inference_rules, metrics, storage

CALIBRATION_DIR = "calibrations"
LEGACY_FILE = "calibration.json"  # one file per workdir, written before calibrations/ existed
METHODS = ("normalized", "mondrian", "normalized_mondrian")
SPREAD_METHODS = ("normalized", "normalized_mondrian")  # the half-width scales with the face's spread
FACES = ("chips", "detected", "pasted")  # what the calibration faces were (module doc)
SIGMA_FLOOR = 0.5  # years: keeps a near-one-hot softmax from dividing by ~0
DEFAULT_COVERAGE = 0.9


def finite_sample_quantile(scores, coverage: float) -> float:
  """The ceil((n + 1) * coverage)-th smallest score; inf when that rank exceeds n."""
  _check_coverage(coverage)
  scores = np.sort(np.asarray(scores, np.float64).reshape(-1))
  n = scores.size
  rank = math.ceil((n + 1) * coverage - 1e-9)  # the tolerance keeps (n+1)*0.9 = 90.0000001 at 90
  return float("inf") if rank > n or n == 0 else float(scores[rank - 1])


def _check_coverage(coverage):
  if not 0 < coverage < 1:
    raise ValueError(f"coverage={coverage!r}; expected a fraction in (0, 1), e.g. 0.9")


def method_for(has_spread: bool) -> str:
  return "normalized" if has_spread else "mondrian"


def _spread(spread, n):
  return np.maximum(np.asarray(spread, np.float64).reshape(-1), SIGMA_FLOOR) if spread is not None else np.ones(n)


@dataclasses.dataclass
class Calibration:
  method: str
  scores: np.ndarray           # (n,) non-conformity scores of the calibration examples
  groups: np.ndarray           # (n,) LAE group of the predicted age ('mondrian'); zeros otherwise
  source: str = ""             # what it was calibrated on, e.g. 'utkface:validation'
  step: int = -1               # the checkpoint step it belongs to
  mirror: bool | None = None   # whether the ages were mirror-averaged (None: not recorded, legacy file)
  faces: str = "chips"         # FACES: the path the calibration faces took

  def describe(self) -> str:
    mirror = {None: "mirror unrecorded", True: "mirrored", False: "not mirrored"}[self.mirror]
    return f"step {self.step}, {mirror}, {self.faces} of {self.source or 'an unnamed source'}"

  def quantiles(self, coverage: float = DEFAULT_COVERAGE) -> tuple[np.ndarray, list[bool]]:
    """(q per LAE age group (8,), whether each group fell back to the pooled quantile)."""
    pooled = finite_sample_quantile(self.scores, coverage)
    if self.method == "normalized":
      return np.full(len(ages.GROUPS), pooled), [False] * len(ages.GROUPS)
    q, pooled_used = [], []
    for g in range(len(ages.GROUPS)):
      own = finite_sample_quantile(self.scores[self.groups == g], coverage)
      pooled_used.append(not np.isfinite(own))
      q.append(pooled if not np.isfinite(own) else own)
    return np.asarray(q), pooled_used

  def intervals(self, pred_age, spread=None, coverage: float = DEFAULT_COVERAGE):
    """(low, high) arrays in years for predictions (and, for 'normalized', predicted spreads)."""
    pred = np.asarray(pred_age, np.float64).reshape(-1)
    uses_spread = self.method in SPREAD_METHODS
    if uses_spread and spread is None:
      raise ValueError(f"a {self.method!r} calibration needs the predicted spread of each face")
    q, _ = self.quantiles(coverage)
    spread = np.asarray(spread, np.float64).reshape(-1) if uses_spread else None
    return inference_rules.interval(pred, spread, q, uses_spread, SIGMA_FLOOR)

  def to_json(self) -> dict:
    return {"method": self.method, "source": self.source, "step": self.step, "mirror": self.mirror,
            "faces": self.faces, "num_examples": int(self.scores.size), "sigma_floor": SIGMA_FLOOR,
            "scores": [round(float(s), 6) for s in self.scores], "groups": [int(g) for g in self.groups]}

  @classmethod
  def from_json(cls, d: dict) -> "Calibration":
    if d.get("method") not in METHODS:
      raise ValueError(f"calibration method {d.get('method')!r}; expected one of {list(METHODS)}")
    scores, groups = np.asarray(d["scores"], np.float64), np.asarray(d["groups"], np.int64)
    if scores.shape != groups.shape or scores.size == 0:
      raise ValueError(f"calibration has {scores.size} scores and {groups.size} groups")
    faces = d.get("faces", "chips")
    if faces not in FACES:
      raise ValueError(f"calibration faces {faces!r}; expected one of {list(FACES)}")
    mirror = d.get("mirror")
    return cls(d["method"], scores, groups, d.get("source", ""), int(d.get("step", -1)),
               None if mirror is None else bool(mirror), faces)


def calibrate(pred_age, true_age, spread=None, source: str = "", step: int = -1, mirror: bool | None = None,
              faces: str = "chips", method: str | None = None) -> Calibration:
  """A calibration from held-out predictions. method None: 'normalized' when spreads are given,
  else 'mondrian'; 'normalized_mondrian' needs spreads."""
  pred = np.asarray(pred_age, np.float64).reshape(-1)
  errors = metrics.absolute_errors(pred, true_age)
  method = method or method_for(spread is not None)
  if method not in METHODS:
    raise ValueError(f"calibration method {method!r}; expected one of {list(METHODS)}")
  if method in SPREAD_METHODS and spread is None:
    raise ValueError(f"calibration method {method!r} needs the predicted spreads (a softmax head)")
  if faces not in FACES:
    raise ValueError(f"calibration faces {faces!r}; expected one of {list(FACES)}")
  scores = errors / _spread(spread, pred.size) if method in SPREAD_METHODS else errors
  groups = ages.group_index(pred) if method != "normalized" else np.zeros(pred.size, np.int64)
  return Calibration(method, scores, groups.astype(np.int64), source, step, mirror, faces)


def calibrate_predictions(predictions: dict, source: str = "", step: int = -1, mirror: bool | None = None,
                          faces: str = "chips", method: str | None = None) -> Calibration:
  """From an Evaluator's predictions: 'pred_age', 'age' and, for softmax heads, 'pred_spread'."""
  return calibrate(predictions["pred_age"], predictions["age"], predictions.get("pred_spread"), source, step,
                   mirror, faces, method)


class CalibrationMismatch(ValueError):
  """The workdir holds calibrations, but none for the weights asked (another step or mirror)."""


def file_name(step: int, mirror: bool, faces: str) -> str:
  return f"step_{int(step)}_{'mirror' if mirror else 'plain'}_{faces}.json"


def fix_command(workdir: str, step: int, mirror: bool, faces: str = "chips") -> str:
  """The command that calibrates these weights."""
  return (f"python -m launch.evaluate --workdir={workdir} --step={step} --calibrate"
          + (" --mirror" if mirror else "") + (f" --calibrate_faces={faces}" if faces != "chips" else ""))


def save(calibration: Calibration, workdir: str) -> str:
  """Writes the calibration to its own file (replacing only one for the same step, mirror and
  faces); returns the path."""
  if calibration.step < 0 or calibration.mirror is None:
    raise ValueError(f"a calibration to save needs its step and mirror ({calibration.describe()})")
  path = storage.path(workdir) / CALIBRATION_DIR / file_name(calibration.step, calibration.mirror,
                                                             calibration.faces)
  storage.write_text(path, json.dumps(calibration.to_json()))  # atomic: a temp file renamed
  return str(path)


def _read(path) -> Calibration:
  try:
    return Calibration.from_json(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a valid calibration: {e}") from e


def stored(workdir: str) -> list[Calibration]:
  """Every calibration the workdir holds (the legacy calibration.json last)."""
  root = storage.path(workdir)
  folder = root / CALIBRATION_DIR
  found = [_read(p) for p in sorted(folder.glob("step_*.json"))] if folder.exists() else []
  if (root / LEGACY_FILE).exists():
    found.append(_read(root / LEGACY_FILE))
  return found


def load(workdir: str, step: int, mirror: bool, faces=("chips", "detected", "pasted")) -> Calibration | None:
  """The calibration of the weights at `step` with `mirror`, the first of `faces` (a preference
  order) that exists; None when the workdir holds no calibration at all. CalibrationMismatch,
  naming both steps and the command that fixes it, when it holds calibrations of other weights only."""
  faces = (faces,) if isinstance(faces, str) else tuple(faces)
  every = stored(workdir)
  if not every:
    return None
  step = int(step)
  matching = [c for c in every if c.step == step and c.mirror in (None, bool(mirror))]
  for kind in faces:
    for c in matching:
      if c.faces == kind:
        return c
  held = "; ".join(sorted({c.describe() for c in every}))
  raise CalibrationMismatch(
      f"{workdir} holds calibrations for other weights ({held}), not for the checkpoint at step {step} "
      f"{'mirrored' if mirror else 'not mirrored'} ({'/'.join(faces)}): its intervals would not belong to "
      f"these weights. Calibrate them: {fix_command(workdir, step, mirror, faces[0])} "
      "(or pass --calibrate to this command to calibrate on the spot)")


def _coverage_width(cover, width, mask):
  n = int(mask.sum())
  mean_width = float(width[mask].mean()) if n else None
  return {"count": n, "coverage": float(cover[mask].mean()) if n else None,
          "mean_width": mean_width if mean_width is not None and np.isfinite(mean_width) else None}


def interval_report(low, high, true_age, gender=None, race=None) -> dict:
  """Empirical coverage and mean width, overall and per LAE age group (of the true age),
  gender and race (labels -1 = unknown, skipped). An infinite width (too few calibration
  examples for the coverage) reports mean_width None."""
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  true = np.asarray(true_age, np.float64).reshape(-1)
  cover, width = (low <= true) & (true <= high), high - low
  out = _coverage_width(cover, width, np.ones(true.size, bool))
  groups = ages.group_index(true)
  out["per_age_group"] = {name: _coverage_width(cover, width, groups == g)
                          for g, name in enumerate(ages.GROUP_NAMES)}
  for name, labels in (("gender", gender), ("race", race)):
    if labels is not None and np.any(np.asarray(labels) >= 0):
      labels = np.asarray(labels).reshape(-1)
      out[f"per_{name}"] = {str(int(v)): _coverage_width(cover, width, labels == v)
                            for v in np.unique(labels) if v >= 0}
  return out


def report_section(calibration: Calibration, predictions: dict, coverages=(0.8, 0.9, 0.95),
                   gender=None, race=None) -> dict:
  """The 'intervals' section of an evaluation report: one interval_report per nominal coverage."""
  section = {"method": calibration.method, "calibrated_on": calibration.source,
             "calibration_faces": calibration.faces, "calibration_mirror": calibration.mirror,
             "calibration_examples": int(calibration.scores.size), "calibration_step": calibration.step,
             "by_coverage": {}}
  for c in coverages:
    low, high = calibration.intervals(predictions["pred_age"], predictions.get("pred_spread"), c)
    entry = interval_report(low, high, predictions["age"], gender, race)
    entry["groups_using_pooled_quantile"] = [
        n for n, used in zip(ages.GROUP_NAMES, calibration.quantiles(c)[1]) if used]
    section["by_coverage"][f"{c:g}"] = entry
  return section
