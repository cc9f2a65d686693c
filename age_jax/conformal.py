"""Split-conformal age intervals (Vovk et al. 2005; Lei et al. 2018), in plain numpy.

Calibration: n held-out examples (the validation split) give non-conformity scores s_i; for a
coverage 1 - alpha the interval's half-width uses the finite-sample quantile
  q = the ceil((n + 1)(1 - alpha))-th smallest score (infinite when that exceeds n),
which covers a new exchangeable example with probability >= 1 - alpha.

Two scores, chosen by what the head predicts:
  'normalized' (softmax heads, which give a distribution over ages): s = |y - yhat| / sigma_hat,
               sigma_hat the predicted distribution's standard deviation (at least SIGMA_FLOOR);
               interval yhat -+ q * sigma_hat, so an uncertain face gets a wider interval.
  'mondrian'   (regression and ordinal heads, one number per face): s = |y - yhat| within each
               LAE age group of the *predicted* age (Vovk's Mondrian / group-conditional
               conformal), interval yhat -+ q_group: errors grow with age, so do the widths.
               A group with too few calibration examples for the coverage asked (q infinite)
               uses the pooled quantile of all groups, and the calibration says which did.
The calibration keeps every score, so any coverage can be asked for later.
"""
import dataclasses
import json
import math

import numpy as np

from age_jax import ages, metrics, storage

CALIBRATION_FILE = "calibration.json"
METHODS = ("normalized", "mondrian")
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
    if self.method == "normalized" and spread is None:
      raise ValueError("a 'normalized' calibration needs the predicted spread of each face")
    q, _ = self.quantiles(coverage)
    half = q[ages.group_index(pred)] * _spread(spread if self.method == "normalized" else None, pred.size)
    return np.maximum(pred - half, 0.0), pred + half

  def to_json(self) -> dict:
    return {"method": self.method, "source": self.source, "step": self.step,
            "num_examples": int(self.scores.size), "sigma_floor": SIGMA_FLOOR,
            "scores": [round(float(s), 6) for s in self.scores], "groups": [int(g) for g in self.groups]}

  @classmethod
  def from_json(cls, d: dict) -> "Calibration":
    if d.get("method") not in METHODS:
      raise ValueError(f"calibration method {d.get('method')!r}; expected one of {list(METHODS)}")
    scores, groups = np.asarray(d["scores"], np.float64), np.asarray(d["groups"], np.int64)
    if scores.shape != groups.shape or scores.size == 0:
      raise ValueError(f"calibration has {scores.size} scores and {groups.size} groups")
    return cls(d["method"], scores, groups, d.get("source", ""), int(d.get("step", -1)))


def calibrate(pred_age, true_age, spread=None, source: str = "", step: int = -1) -> Calibration:
  """A calibration from held-out predictions; 'normalized' when spreads are given, else 'mondrian'."""
  pred = np.asarray(pred_age, np.float64).reshape(-1)
  errors = metrics.absolute_errors(pred, true_age)
  method = method_for(spread is not None)
  scores = errors / _spread(spread, pred.size) if method == "normalized" else errors
  groups = ages.group_index(pred) if method == "mondrian" else np.zeros(pred.size, np.int64)
  return Calibration(method, scores, groups, source, step)


def calibrate_predictions(predictions: dict, source: str = "", step: int = -1) -> Calibration:
  """From an Evaluator's predictions: 'pred_age', 'age' and, for softmax heads, 'pred_spread'."""
  return calibrate(predictions["pred_age"], predictions["age"], predictions.get("pred_spread"), source, step)


def save(calibration: Calibration, workdir: str) -> str:
  path = storage.path(workdir) / CALIBRATION_FILE
  storage.write_text(path, json.dumps(calibration.to_json()))
  return str(path)


def load(workdir: str) -> Calibration | None:
  """The workdir's calibration, or None when it has none."""
  path = storage.path(workdir) / CALIBRATION_FILE
  if not path.exists():
    return None
  try:
    return Calibration.from_json(json.loads(path.read_text()))
  except (ValueError, KeyError) as e:
    raise ValueError(f"{path} is not a valid calibration: {e}") from e


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
             "calibration_examples": int(calibration.scores.size), "calibration_step": calibration.step,
             "by_coverage": {}}
  for c in coverages:
    low, high = calibration.intervals(predictions["pred_age"], predictions.get("pred_spread"), c)
    entry = interval_report(low, high, predictions["age"], gender, race)
    entry["groups_using_pooled_quantile"] = [
        n for n, used in zip(ages.GROUP_NAMES, calibration.quantiles(c)[1]) if used]
    section["by_coverage"][f"{c:g}"] = entry
  return section
