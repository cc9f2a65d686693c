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


def folder_config(folder, data_dir, **overrides):
  """tiny_config training on a generated image folder: RAM cache, no dropout, constant rate."""
  return tiny_config(**{"data.manual_dir": folder, "data.data_dir": data_dir, "data.cache": "memory",
                        "model.dropout_rate": 0.0, "optim.schedule": "constant", **overrides})


def short_run_config(folder, data_dir, **overrides):
  """folder_config for a 2-step run without validation."""
  return folder_config(folder, data_dir, **{"data.val_split": "", "train.num_steps": 2, **overrides})


def train_steps(cfg, devices=None, num_steps=3):
  """Builds cfg on `devices` and runs num_steps jitted train steps on random batches.
  Returns (experiment, final state, per-step losses)."""
  import jax
  from age_jax.train import experiment, sharding
  exp = experiment.build(cfg, devices=devices)
  state = exp.init_state(jax.random.key(0))
  train_step = exp.jit_train_step()
  losses = []
  for batch in random_batches(num_steps, cfg.train.batch_size, cfg.data.image_size):
    state, metrics = train_step(state, sharding.to_global(batch, exp.mesh), jax.random.key(1))
    losses.append(float(metrics["loss"]))
  return exp, state, losses
