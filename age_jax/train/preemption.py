"""Stop requests (SIGTERM from a scheduler or a preemptible VM, SIGINT from Ctrl-C): training
saves a checkpoint at a step every process agrees on, then exits with one line.

One mechanism for one and many processes: with the distributed runtime up, JAX's preemption
notifier owns SIGTERM and `multihost_utils.reached_preemption_sync_point(step)` turns a notice
on any process into the same step on all; SIGINT is handed to it as a SIGTERM. A single process
has no coordination service: a Python handler marks the request and the next step is the one.
A second signal aborts at once (KeyboardInterrupt).

Phases (single process): only the step loop (`between_steps`) waits for a step boundary. In
every other phase (`during(name)`: the dataset build, the decode-once pass, compilation,
validation, the final calibration, start-up) the first signal raises Stopped at once from the
handler, so the work stops within moments and every file it was writing is left as it was
(each is written to a temporary name and renamed when complete). A phase stuck in native code
(an XLA compilation) cannot see the exception: a watchdog ends the process after GRACE_S with
the same line and exit status. Python drops an exception raised inside a garbage-collector
callback or a __del__ (it reaches sys.unraisablehook instead): the hook catches a dropped Stopped
and signals the main thread again, out of the dropping context, so that the handler re-raises it.
"""
import atexit
import contextlib
import os
import signal
import sys
import threading
import time

import jax
from jax.experimental import multihost_utils

from age_jax import versions

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal, what shells report


GRACE_S = 4.0  # a phase that does not stop within this after the signal is ended by the watchdog
REDELIVER_S = 0.01  # a dropped Stopped is raised again this long after
TEARDOWN_S = 1.5  # after a stop, the exit's atexit handlers get this long (see exit_now)


class Stopped(BaseException):
  """Training stopped on request after saving `step`, or during `phase` (nothing of it kept);
  str() is the one line to print. A BaseException, like KeyboardInterrupt, so that no
  `except Exception` on the way (a bad file skipped in a build) swallows it."""

  def __init__(self, step: int | None, signum: int, directory: str, phase: str | None = None):
    self.step, self.phase, self.exit_code = step, phase, EXIT_CODES.get(signum, 143)
    name = signal.Signals(signum).name if signum else "preemption notice"
    if phase is None:
      line = f"stopped by {name} at step {step}: checkpoint saved in {directory}; re-run the same command to resume"
    else:
      line = (f"stopped by {name} during {phase}: nothing half-written, {directory} holds what was finished "
              "before; re-run the same command to resume")
    super().__init__(line)

  def report(self) -> None:
    """Prints the one line (once: a watchdog still running will not print it again)."""
    global _REPORTED
    if not _REPORTED:
      _REPORTED = True
      print(self, file=sys.stderr, flush=True)


_REPORTED = False


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

  def __init__(self, directory: str = ""):
    self.signum = None
    self.synced = _sync_manager_running()
    self.directory = directory
    self.phase = "start-up"   # None: between steps (polled); a name: stop at once
    self._previous = {}
    self._previous_hook = None
    self._dropped = None  # a Stopped that Python dropped, to raise again
    self._left = threading.Event()  # set when the `with` block is left: the watchdog stands down

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
      signums = (signal.SIGINT,) if self.synced else (signal.SIGINT, signal.SIGTERM)
      for signum in signums:
        self._previous[signum] = signal.signal(signum, self._handle)
      self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
    return self

  def __exit__(self, *exc):
    self._left.set()
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    if self._previous_hook is not None:
      sys.unraisablehook, self._previous_hook = self._previous_hook, None

  def _unraisable(self, unraisable):
    """A Stopped raised while a gc callback or __del__ ran was dropped: signal the main thread
    again from another thread, a moment later (a signal handled in here would be dropped too)."""
    if isinstance(unraisable.exc_value, Stopped) and self._previous:
      self._dropped = unraisable.exc_value
      threading.Timer(REDELIVER_S, self._redeliver).start()
    else:
      self._previous_hook(unraisable)

  def _redeliver(self):
    if self._dropped is not None and not self._left.is_set():  # our handler is still installed
      signal.pthread_kill(threading.main_thread().ident, self.signum)

  @contextlib.contextmanager
  def during(self, phase: str):
    """A phase that a signal stops at once (Stopped naming it)."""
    previous, self.phase = self.phase, phase
    try:
      if self.signum is not None and not self.synced:  # signalled before this phase began
        raise Stopped(None, self.signum, self.directory, phase)
      yield
    finally:
      self.phase = previous

  @contextlib.contextmanager
  def between_steps(self):
    """The step loop: a signal is only noted; the loop polls `reached` and saves a checkpoint."""
    previous, self.phase = self.phase, None
    try:
      yield
    finally:
      self.phase = previous

  def _handle(self, signum, frame):
    if self._dropped is not None:
      stopped, self._dropped = self._dropped, None
      raise stopped
    if self.signum is not None:
      self.__exit__()
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
    self.signum = signum
    if self.phase is not None and not self.synced:
      stopped = Stopped(None, signum, self.directory, self.phase)
      threading.Thread(target=_watchdog, args=(stopped, self._left), daemon=True).start()
      raise stopped
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


def _watchdog(stopped: Stopped, left: threading.Event) -> None:
  """Ends the process GRACE_S after a signal unless the training code has been left by then
  (a phase stuck in native code never raises; after that, the caller decides)."""
  if not left.wait(GRACE_S):
    stopped.report()
    os._exit(stopped.exit_code)


def exit_now(stopped: Stopped) -> None:
  """Prints the one line and exits with its status, fast: the atexit handlers run (logs; child
  processes such as grain's workers are shut down), then the process ends without joining the
  worker threads a phase left (TFDS's shard writers, decoders would run to the end of their work)
  and without the runtime's teardown (seconds), within TEARDOWN_S whatever the handlers do."""
  stopped.report()
  def end():
    time.sleep(TEARDOWN_S)
    os._exit(stopped.exit_code)
  threading.Thread(target=end, daemon=True).start()
  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(stopped.exit_code)
