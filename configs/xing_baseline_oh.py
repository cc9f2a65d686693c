"""Xing et al. 2017, Tables 3-4: NetOH: one-hot softmax over K ages (3.2.1), decoded by argmax,
with the baseline network and the training of section 4.1 (see xing_baseline_mae.py)."""
from configs import xing_baseline_mae


def get_config():
  c = xing_baseline_mae.get_config()
  c.formulation.name = "oh"
  return c
