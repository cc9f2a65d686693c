"""Xing et al. 2017 NetMAE: the baseline network (3.1.1) with the MAE loss (eq. 10),
trained as in 4.1: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 1e-3 / 10 every
10k iterations, 50k iterations, 227 px random crops of 256 px faces, mirroring."""
from age_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.formulation.name = "mae"
  c.data.load_size = 256
  c.data.image_size = 227
  c.data.augment = "xing"
  c.data.normalize = "mean_image"
  c.train.batch_size = 128
  c.train.num_steps = 50_000
  c.optim.name = "sgd"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "step"
  c.optim.step_every = 10_000
  return c
