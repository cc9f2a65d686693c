"""Start-up shared by the launchers: compilation cache, and the distributed runtime when asked."""
import os

import jax
from absl import app, flags, logging

_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Multi-host: 'auto' joins a coordinator given by the flags below or $AGE_JAX_COORDINATOR, or "
    "detected (SLURM step with >1 task, Open MPI, Cloud TPU VM); 'on' fails without one; 'off' never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300,
                                            "Seconds to wait for every process to join before failing.")


def refuse_repeated_flags(argv) -> None:
  """A flag given twice is an error: absl keeps the last value, or joins a tuple's two values."""
  seen = set()
  for arg in argv:
    if arg == "--":
      break
    if arg.startswith("--"):
      name = arg[2:].split("=", 1)[0]
      if name in seen:
        raise app.UsageError(f"--{name} is given twice; give each flag once")
      seen.add(name)


def setup_distributed() -> None:
  """Joins the other processes (before anything touches a device) when the flags, the
  environment or the cluster ask for it; see age_jax/distributed.py."""
  from age_jax import distributed
  if distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                            mode=_DISTRIBUTED.value, timeout_s=_DISTRIBUTED_TIMEOUT.value):
    print(distributed.describe(), flush=True)


def setup_jax(cache_dir: str = "") -> None:
  """Persistent compilation cache on by default: a re-run or resume skips recompiling the step.
  Then the distributed runtime, when asked for."""
  cache_dir = cache_dir or os.environ.get("AGE_JAX_COMPILATION_CACHE",
                                          os.path.expanduser("~/.cache/age_jax/jax_compilation"))
  if cache_dir != "off":
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  # Our progress lines are the log; orbax and TFDS log every file operation at INFO.
  logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  setup_distributed()
