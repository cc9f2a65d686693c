"""Start-up shared by the launchers: compilation cache, and the distributed runtime when asked."""
import os
import sys

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


def share_compilation_cache(workdir: str) -> None:
  """In a multi-process run JAX writes the persistent compilation cache from process 0 only, so a
  folder per host leaves every other host recompiling on each resume: the cache goes into the
  workdir (shared by every host, checked at start-up) unless $AGE_JAX_COMPILATION_CACHE names one."""
  if jax.process_count() == 1 or os.environ.get("AGE_JAX_COMPILATION_CACHE"):
    return
  from age_jax import storage
  jax.config.update("jax_compilation_cache_dir", str(storage.path(workdir) / "jax_compilation_cache"))


def require_workdir_access(workdir: str) -> None:
  """Before any long work, every process makes the calls orbax and age_jax.storage will make on an
  object-store workdir (age_jax/preflight.py); a missing permission on any host stops all of them,
  each naming its own problems. (A local workdir fails at once by itself, naming the path.)"""
  from age_jax import preflight, storage
  if not storage.is_uri(workdir):
    return
  who = f"process {jax.process_index()}/{jax.process_count()}" if jax.process_count() > 1 else ""
  problems = preflight.workdir_problems(workdir, who)
  for line in problems:
    print(f"workdir check: {line}", file=sys.stderr, flush=True)
  failed = bool(problems)
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    failed = bool(np.asarray(multihost_utils.process_allgather(np.int32(failed))).any())
  if failed:
    print(f"--workdir={workdir}: the calls training makes there fail (see above, or on another process); "
          "`python -m launch.preflight --workdir=...` checks again", file=sys.stderr, flush=True)
    sys.exit(1)


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
