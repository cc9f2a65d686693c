"""Stop requests (SIGTERM from a scheduler or a preemptible VM, SIGINT from Ctrl-C): training
saves a checkpoint at a step every process agrees on, then exits with one line.

One mechanism for one and many processes: with the distributed runtime up, JAX's preemption
notifier owns SIGTERM and `multihost_utils.reached_preemption_sync_point(step)` turns a notice
on any process into the same step on all; SIGINT is handed to it as a SIGTERM. A single process
has no coordination service: a Python handler marks the request and the next step is the one.
A second signal aborts at once (KeyboardInterrupt).
"""
import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

from age_jax import versions

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal, what shells report


class Stopped(Exception):
  """Training stopped on request after saving `step`; str() is the one line to print."""

  def __init__(self, step: int, signum: int, directory: str):
    self.step, self.exit_code = step, EXIT_CODES.get(signum, 143)
    name = signal.Signals(signum).name if signum else "preemption notice"
    super().__init__(f"stopped by {name} at step {step}: checkpoint saved in {directory}; "
                     "re-run the same command to resume")


def _sync_manager_running() -> bool:
  """Whether stops go through JAX's preemption sync point: whenever the distributed runtime is up.
  Public APIs only; one that is missing or switched off fails here, at start-up, instead of
  falling back to per-process signals (the hosts would save different steps and hang)."""
  if not jax.distributed.is_initialized():
    return False
  if not callable(getattr(multihost_utils, "reached_preemption_sync_point", None)):
    raise RuntimeError(f"jax {jax.__version__} has no jax.experimental.multihost_utils."
                       "reached_preemption_sync_point, which multi-host stops rely on; install the tested "
                       f"range jax>={versions.TESTED_JAX[0]},<{versions.TESTED_JAX[1]} (pip install -e '.[tpu]' "
                       "or '.[cuda]')")
  enabled = getattr(jax.config, "jax_enable_preemption_service", None)
  if enabled is None:
    raise RuntimeError(f"jax {jax.__version__} has no jax_enable_preemption_service option, which multi-host "
                       f"stops rely on; install jax>={versions.TESTED_JAX[0]},<{versions.TESTED_JAX[1]}")
  if not enabled:
    raise RuntimeError("jax_enable_preemption_service is off, so a SIGTERM on one host would not reach the "
                       "others and the hosts would save different steps: unset JAX_ENABLE_PREEMPTION_SERVICE")
  return True


class StopRequests:
  """with StopRequests() as stop: ... if stop.reached(step): save, raise stop.stopped(...)"""

  def __init__(self):
    self.signum = None
    self.synced = _sync_manager_running()
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
      signums = (signal.SIGINT,) if self.synced else (signal.SIGINT, signal.SIGTERM)
      for signum in signums:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signum is not None:
      self.__exit__()
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
    self.signum = signum
    print(f"[age_jax] {signal.Signals(signum).name}: saving a checkpoint after this step, then "
          "stopping (again to abort)", file=sys.stderr, flush=True)
    if self.synced:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells every process

  def reached(self, step: int) -> bool:
    """True at the step to save and stop at; call it at every step, on every process."""
    if self.synced:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.signum is not None

  def stopped(self, step: int, directory: str) -> Stopped:
    return Stopped(step, self.signum or (0 if self.synced else signal.SIGTERM), directory)
