"""Xing et al. 2017, 3.3 and Table 5: the parallel multi-task network on the baseline, age (MAE) +
gender + race. Needs a dataset with gender and race labels (UTKFace, MORPH II)."""
from configs import xing_baseline_mae


def get_config():
  c = xing_baseline_mae.get_config()
  c.multitask.kind = "parallel"
  return c
