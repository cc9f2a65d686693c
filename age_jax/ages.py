"""Ages, their groups and the label codes beside them: one module, one rounding rule.

Rounding: an age in years becomes a whole year by `whole_years`, halves up (2.5 -> 3), for
every use: classification bins and ordinal targets, per-age counts, samplers' age classes,
per-age MAE and CCS's rounded predictions. Halves up, as a person rounds by hand, so a rounded
age in a report is the one its reader would write (the papers' labels are whole years).
Groups: the eight age groups of LAE Table 1 (1-10, ..., 61-70, 71-81), the first also taking
ages below 1 and the last every age above 70 (open-ended), used by AAR/sigma, class-balanced
sampling by age group and the Mondrian intervals.
Both functions take numpy or JAX arrays (`xp`); the ONNX export converts the JAX function that
calls them, so every export computes what evaluation does.
"""
import numpy as np

# LAE Table 1: (first, last) age of each group, both inclusive; the last is open above.
GROUPS = ((1, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 60), (61, 70), (71, 81))
GROUP_NAMES = tuple(f"{a}-{b}" for a, b in GROUPS[:-1]) + (f"{GROUPS[-1][0]}+",)

# Label codes shared by the datasets, samplers, multi-task heads and reports.
GENDER_NAMES = ("male", "female")
RACE_NAMES = ("White", "Black", "Asian", "Indian", "Others")   # UTKFace's codes 0..4
NUM_GENDERS, NUM_RACES = len(GENDER_NAMES), len(RACE_NAMES)


def whole_years(ages, xp=np):
  """Nearest whole year, halves up (float dtype kept)."""
  return xp.floor(xp.asarray(ages) + 0.5)


def per_year_counts(ages) -> np.ndarray:
  """Images per whole-year age (index = age in years); unknown ages (< 0) are left out."""
  known = np.asarray(ages, np.float64).reshape(-1)
  return np.bincount(whole_years(known[known >= 0]).astype(np.int64), minlength=1)


def group_index(ages, xp=np):
  """LAE Table 1 group (0..7) of each age: <= 10 -> 0, (10, 20] -> 1, ..., > 70 -> 7 (int32)."""
  # Written with xp functions only (no array methods), so numpy and jax.numpy both run it.
  return xp.astype(xp.clip(xp.ceil(xp.asarray(ages) / 10.0) - 1.0, 0.0, float(len(GROUPS) - 1)), xp.int32)
