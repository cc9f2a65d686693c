"""Tiny configs shared by tests: small widths and 64 px inputs keep compilation short."""
import numpy as np

from age_jax import config as config_lib


def random_batches(n, batch_size, image_size, seed=0):
  """n batches of random images and ages (1-90), for steps that need no real data."""
  rng = np.random.default_rng(seed)
  for _ in range(n):
    yield {"image": rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
           "age": rng.uniform(1, 90, size=batch_size).astype(np.float32)}


def tiny_config(**overrides):
  c = config_lib.default_config()
  c.model.conv_features = (8, 8, 8)
  c.model.fc_features = (16, 16)
  c.data.load_size = 72
  c.data.image_size = 64
  c.data.num_threads = 1
  c.train.batch_size = 16
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.eval.batch_size = 16
  c.optim.learning_rate = 1e-2
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
