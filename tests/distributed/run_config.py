"""The tiny run every multi-process test trains (launch.train --config=tests/distributed/run_config.py).

Logged every step so each step's loss can be compared; a constant learning rate so a run stopped
at num_steps=2 and resumed with num_steps=4 follows the same schedule as an uninterrupted one.
"""
from tests.tiny import tiny_config


def get_config():
  return tiny_config(**{
      "train.batch_size": 16,
      "train.num_steps": 4,
      "train.log_every": 1,
      "train.checkpoint_every": 2,
      "train.max_to_keep": 3,
      "optim.schedule": "constant",
      "data.val_split": "",        # the evaluation test predicts explicitly
      "eval.batch_size": 24,       # the 40-odd images are padded to whole batches
  })
