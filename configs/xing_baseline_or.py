"""Xing et al. 2017, Tables 3-4: NetOR: ordinal regression with K-1 binary classifiers (3.2.4, eq. 11),
with the baseline network and the training of section 4.1 (see xing_baseline_mae.py)."""
from configs import xing_baseline_mae


def get_config():
  c = xing_baseline_mae.get_config()
  c.formulation.name = "or"
  return c
