"""Predicts a split of a trained workdir in one of several processes; process 0 saves what it got.

  python -m tests.distributed.predict_worker --workdir=W --split=train --out=F.npz \
      [--coordinator_address=H:P --num_processes=N --process_id=I]   (the launchers' flags)
"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to predict.")
_OUT = flags.DEFINE_string("out", None, "Where process 0 writes the predictions (.npz).")


def main(argv):
  del argv
  common.setup_jax()
  import jax
  import numpy as np
  from age_jax.inference.restore import restore
  from age_jax.train import evaluator
  exp, cfg, state, normalizer = restore(_WORKDIR.value)
  predictions = evaluator.Evaluator(exp, cfg, normalizer, _SPLIT.value).predict(state)
  if jax.process_index() == 0:
    np.savez(_OUT.value, process_count=jax.process_count(), device_count=jax.device_count(), **predictions)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
