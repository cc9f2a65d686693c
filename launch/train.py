"""Train an experiment:  python -m launch.train --config=configs/x.py --workdir=DIR [--config.key=value]

Re-running the same command on the same workdir resumes from its latest checkpoint.
On SIGTERM or SIGINT it saves a checkpoint at the current step and exits with one line (status
143 or 130); re-running resumes there. A workdir another trainer holds is refused.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.refuse_repeated_flags(sys.argv[1:])
  common.setup_jax()
  common.share_compilation_cache(_WORKDIR.value)
  common.require_workdir_access(_WORKDIR.value)
  from age_jax.train import loop, preemption, workdir  # after the JAX set-up
  try:
    result = loop.train(_CONFIG.value, _WORKDIR.value)
  except preemption.Stopped as e:
    preemption.exit_now(e)  # the one line, status 143/130
  except workdir.WorkdirInUse as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(1)
  print("final:", " ".join(f"{k}={v:.4g}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
  app.run(main)
