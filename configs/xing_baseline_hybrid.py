"""Xing et al. 2017, 3.3 and Table 5: the hybrid multi-task network on the baseline, age (MAE) +
gender + race. Needs a dataset with gender and race labels (UTKFace, MORPH II)."""
from configs import xing_baseline_mae


def get_config():
  c = xing_baseline_mae.get_config()
  c.multitask.kind = "hybrid"
  return c


def get_staged_config():
  """The hybrid's three-step training of 3.3.3 as stages: group classifier, then the group
  estimators on their groups' data, then end to end."""
  c = get_config()
  n = c.train.num_steps
  c.stages.stage1_group = {"multitask": {"stage": "group"}, "train": {"num_steps": n // 5}}
  c.stages.stage2_group_age = {"multitask": {"stage": "group_age"}, "train": {"num_steps": 2 * n // 5}}
  c.stages.stage3_end_to_end = {"multitask": {"stage": "end_to_end"}, "train": {"num_steps": 2 * n // 5}}
  return c
