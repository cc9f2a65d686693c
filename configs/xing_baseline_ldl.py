"""Xing et al. 2017, Tables 3-4: NetLDL: Gaussian label distribution (3.2.2, eqs. 5-8),
with the baseline network and the training of section 4.1 (see xing_baseline_mae.py)."""
from configs import xing_baseline_mae


def get_config():
  c = xing_baseline_mae.get_config()
  c.formulation.name = "ldl"
  return c
