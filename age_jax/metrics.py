"""Evaluation metrics of Xing 2017 (3.1.3, 4.x) and LAE (Bao 2021, 3.2), in plain numpy.

  MAE        Xing eq. 1, on the raw predicted ages.
  CCS(t)     Xing eqs. 2-3: the number of test images with |yhat - y| <= t. Predicted ages are
             rounded to whole years first (round_predictions=True, ages.whole_years): Xing's CCS(0)
             counts (Tables 5-6, ~14% of the test set for a regression net) only make sense for
             whole-year predictions, since a real-valued prediction almost never equals y exactly.
  RCCS(t)    Xing eq. 4: CCS_a(t) - CCS_b(t), two methods on the same test set.
  AAR, sigma LAE eqs. 6-7 over the eight age groups of LAE Table 1 (ages.GROUPS). An empty group has no MAE^j: sigma is the root mean square over the non-empty groups
             (eq. 7 with 8 replaced by their number); the report shows the group's MAE as null.
Balanced MAEs (long-tail reporting): group-balanced MAE, the mean of the non-empty LAE group
             MAEs; age-balanced MAE, the mean of the per-age MAEs over the whole-year ages present;
             many/medium/few-shot MAE (Yang et al. 2021, DIR 4): the test examples whose true age
             has over 100, 20-100 or under 20 training images.
Per-age MAE (Xing Figs. 6-7), per-label MAE (gender / race, Fig. 9) and label accuracy skip
unknown labels (-1).
"""
from typing import Iterable

import numpy as np

from age_jax import ages

CCS_THRESHOLDS = tuple(range(11))


def _pair(pred_age, true_age):
  pred = np.asarray(pred_age, np.float64).reshape(-1)
  true = np.asarray(true_age, np.float64).reshape(-1)
  if pred.shape != true.shape:
    raise ValueError(f"{pred.size} predicted ages but {true.size} true ages")
  if pred.size == 0:
    raise ValueError("no examples to evaluate")
  return pred, true


def absolute_errors(pred_age, true_age) -> np.ndarray:
  pred, true = _pair(pred_age, true_age)
  return np.abs(pred - true)


def mae(pred_age, true_age) -> float:
  """Xing eq. 1."""
  return float(np.mean(absolute_errors(pred_age, true_age)))


def ccs(pred_age, true_age, thresholds: Iterable[float] = CCS_THRESHOLDS,
        round_predictions: bool = True) -> np.ndarray:
  """Xing eqs. 2-3: CCS(t) = sum_i h(|yhat_i - y_i| - t), h(x) = 1 if x <= 0; one count per t."""
  pred, true = _pair(pred_age, true_age)
  errors = np.abs((ages.whole_years(pred) if round_predictions else pred) - true)
  return np.array([int(np.sum(errors - t <= 0)) for t in thresholds], np.int64)


def ccs_fraction(pred_age, true_age, thresholds: Iterable[float] = CCS_THRESHOLDS,
                 round_predictions: bool = True) -> np.ndarray:
  """CCS(t) divided by the number of test images."""
  return ccs(pred_age, true_age, thresholds, round_predictions) / np.asarray(true_age).size


def rccs(pred_a, pred_b, true_age, thresholds: Iterable[float] = CCS_THRESHOLDS,
         round_predictions: bool = True) -> np.ndarray:
  """Xing eq. 4: RCCS^a_b(t) = CCS_a(t) - CCS_b(t); positive where method a is better."""
  thresholds = tuple(thresholds)
  return (ccs(pred_a, true_age, thresholds, round_predictions)
          - ccs(pred_b, true_age, thresholds, round_predictions))


def aar_from(mae_value: float, sigma: float) -> float:
  """LAE eq. 6: AAR = max(0, 7 - MAE) + max(0, 3 - sigma)."""
  return max(0.0, 7.0 - mae_value) + max(0.0, 3.0 - sigma)


def sigma_from(group_maes, mae_value: float) -> float:
  """LAE eq. 7: sqrt(mean_j (MAE^j - MAE)^2), over the groups whose MAE^j is not None / NaN."""
  known = np.array([m for m in group_maes if m is not None and not np.isnan(m)], np.float64)
  if known.size == 0:
    raise ValueError("sigma (LAE eq. 7) needs at least one non-empty age group")
  return float(np.sqrt(np.mean((known - mae_value) ** 2)))


def aar(pred_age, true_age) -> dict:
  """LAE eqs. 6-7: {'aar', 'mae', 'sigma', 'group_mae' (None where empty), 'group_count',
  'group_names', 'groups_used'}."""
  errors = absolute_errors(pred_age, true_age)
  group = ages.group_index(np.asarray(true_age, np.float64))
  counts = np.bincount(group, minlength=len(ages.GROUPS))
  group_mae = [float(np.mean(errors[group == j])) if counts[j] else None for j in range(len(ages.GROUPS))]
  overall = float(np.mean(errors))
  sigma = sigma_from(group_mae, overall)
  return {"aar": aar_from(overall, sigma), "mae": overall, "sigma": sigma, "group_mae": group_mae,
          "group_count": [int(c) for c in counts], "group_names": list(ages.GROUP_NAMES),
          "groups_used": int(np.sum(counts > 0))}


# DIR's shot regions by training images per whole-year age: many > 100, few < 20, medium between.
MANY_SHOT_ABOVE, FEW_SHOT_BELOW = 100, 20
SHOTS = ("many", "medium", "few")


def shot_of(true_age, train_counts) -> np.ndarray:
  """0 (many), 1 (medium) or 2 (few) per example, from its whole-year age's training count."""
  years = ages.whole_years(np.asarray(true_age, np.float64).reshape(-1)).astype(np.int64)
  counts = np.asarray(train_counts)
  seen = np.where((years >= 0) & (years < counts.size), counts[np.clip(years, 0, counts.size - 1)], 0)
  return np.where(seen > MANY_SHOT_ABOVE, 0, np.where(seen < FEW_SHOT_BELOW, 2, 1))


def balanced(pred_age, true_age, train_counts=None) -> dict:
  """{'group_balanced_mae', 'age_balanced_mae'} and, given the training counts per whole-year
  age (ages.per_year_counts), {'shot': {'many'|'medium'|'few': {'mae' (None if empty), 'count'}}}."""
  errors = absolute_errors(pred_age, true_age)
  group_maes = [m for m in aar(pred_age, true_age)["group_mae"] if m is not None]
  result = {"group_balanced_mae": float(np.mean(group_maes)),
            "age_balanced_mae": float(np.mean(mae_per_age(pred_age, true_age)["mae"]))}
  if train_counts is not None:
    shot = shot_of(true_age, train_counts)
    result["shot"] = {name: {"mae": float(np.mean(errors[shot == i])) if np.any(shot == i) else None,
                             "count": int(np.sum(shot == i))} for i, name in enumerate(SHOTS)}
  return result


def mae_per_age(pred_age, true_age) -> dict:
  """MAE at each true age present (rounded to whole years), as in Xing Figs. 6-7:
  {'age': [...], 'mae': [...], 'count': [...]}, ages ascending."""
  errors = absolute_errors(pred_age, true_age)
  years = ages.whole_years(np.asarray(true_age, np.float64).reshape(-1)).astype(np.int64)
  present = np.unique(years)
  return {"age": [int(a) for a in present],
          "mae": [float(np.mean(errors[years == a])) for a in present],
          "count": [int(np.sum(years == a)) for a in present]}


def mae_by_label(pred_age, true_age, labels) -> dict:
  """MAE per label value (gender, race or a combined group; Xing Fig. 9), skipping labels < 0:
  {label (str): {'mae': float, 'count': int}}."""
  errors = absolute_errors(pred_age, true_age)
  labels = np.asarray(labels).reshape(-1)
  if labels.shape != errors.shape:
    raise ValueError(f"{labels.size} labels for {errors.size} examples")
  return {str(int(v)): {"mae": float(np.mean(errors[labels == v])), "count": int(np.sum(labels == v))}
          for v in np.unique(labels) if v >= 0}


def accuracy(pred_labels, true_labels):
  """Fraction of correct predictions among examples with a known label (>= 0); None if none."""
  pred = np.asarray(pred_labels).reshape(-1)
  true = np.asarray(true_labels).reshape(-1)
  if pred.shape != true.shape:
    raise ValueError(f"{pred.size} predicted labels but {true.size} true labels")
  known = true >= 0
  if not known.any():
    return None
  return float(np.mean(pred[known] == true[known]))
