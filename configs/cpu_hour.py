"""The quickstart's recipe trained twice as long: the main job in about 35 minutes on a 2-core CPU.

Same network, loss, crops and mirror averaging as configs/quickstart.py; 18,000 steps of 64
(72 epochs of UTKFace's training split) under the same cosine schedule. Run it the same way:
    bash launch/quickstart.sh /path/to/UTKFace workdirs/cpu_hour --config=configs/cpu_hour.py
"""
from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.train.num_steps = 18000
  c.train.eval_every = 6000
  return c
