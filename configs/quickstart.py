"""Quickstart: the Xing baseline with the MAE loss on UTKFace, sized for a 2-core CPU (< 30 min).

Faces are decoded once at 72 px and kept in RAM; the network sees random 64 px crops
(the baseline's smallest input that keeps a 1x1 map after conv3's pooling). See
BUILD_NOTES.md for how the resolution, optimizer and schedule were chosen.
"""
from age_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.formulation.name = "mae"
  c.data.load_size = 72
  c.data.image_size = 64
  c.data.cache = "memory"
  c.train.batch_size = 64
  c.train.num_steps = 8000
  c.train.log_every = 200
  c.train.checkpoint_every = 1000
  c.train.eval_every = 2000
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200
  return c
