"""A training workdir's guards: one trainer at a time (a lock naming its holder), and a resume
only with the config the workdir was trained with.

Fields that change how a run executes but not what it computes may differ on a resume
(RESUMABLE); so may the length of the run and the learning rate (to extend a run, or to resume
from the last finite checkpoint after a divergence). Everything else is refused before anything
is written, naming the fields.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from age_jax import config as config_lib, locks, storage

LOCK_FILE = "train.lock"
RESUMABLE = ("train.num_steps", "train.num_epochs", "optim.learning_rate", "train.log_every",
             "train.checkpoint_every", "train.eval_every", "train.max_to_keep", "eval.batch_size", "eval.mirror",
             "data.manual_dir", "data.data_dir", "data.num_threads", "data.num_workers", "data.prefetch",
             "data.cache", "model.conv_lowering", "mesh.data", "mesh.fsdp", "mesh.fsdp_min_size")
# Filled in by training from the data (stored so a resume rebuilds the same run); a changed
# source is caught by the fingerprint (datasets.prepare), not here.
DERIVED = ("data.fingerprint", "formulation.age_counts", "formulation.num_identities", "train.train_size")


class WorkdirInUse(RuntimeError):
  pass


class _Held:
  """The workdir lock; releasing it also removes a workdir this run created and left empty."""

  def __init__(self, workdir: str):
    self.workdir, self.created = workdir, not os.path.exists(workdir)
    self.lock = locks.FileLock(os.path.join(workdir, LOCK_FILE)).acquire(blocking=False)

  def release(self):
    self.lock.release()
    if self.created and os.listdir(self.workdir) == [LOCK_FILE]:
      os.remove(self.lock.path)
      os.rmdir(self.workdir)


def lock(workdir: str) -> _Held | None:
  """Process 0 holds the workdir's lock for the run; every process fails if it is held.
  An object store (gs://) or a filesystem without flock (gcsfuse) has no lock: a warning."""
  held, error = None, ""
  if jax.process_index() == 0:
    try:
      if storage.is_uri(workdir):
        raise OSError("an object store has no file locks")
      held = _Held(os.path.abspath(os.path.expanduser(workdir)))
    except locks.LockHeld as e:
      error = str(e)
    except OSError as e:
      print(f"warning: {workdir} is not locked against a second trainer ({e})", flush=True)
  failed = error != ""
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))
  if failed:
    raise WorkdirInUse(f"workdir {workdir} is in use: {error or 'see process 0'}; another launch.train "
                       "is training there (wait for it, stop it, or use another --workdir)")
  return held


def _field(key: str) -> str:
  """'stages.<name>.train.num_steps' -> 'train.num_steps'."""
  parts = key.split(".")
  return ".".join(parts[2:]) if parts[0] == "stages" and len(parts) > 2 else key


def changed_fields(saved, given) -> dict:
  """{field: (saved, given)} of the config fields that differ, derived ones left out."""
  a, b = config_lib.flatten(saved.to_dict()), config_lib.flatten(given.to_dict())
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not _field(k).startswith(DERIVED)}


def check_resume(cfg, workdir: str):
  """Refuses cfg when workdir holds a config it differs from in more than RESUMABLE fields;
  returns the saved config (None for a new workdir)."""
  if not (storage.path(workdir) / config_lib.CONFIG_FILE).exists():
    return None
  saved = config_lib.load(workdir)
  changed = changed_fields(saved, cfg)
  refused = {k: v for k, v in changed.items() if _field(k) not in RESUMABLE}
  if refused:
    listed = "; ".join(f"config.{k}: {a!r} in the workdir, {b!r} now" for k, (a, b) in refused.items())
    raise ValueError(f"{workdir} was trained with another config ({listed}); nothing was changed. "
                     "Use a new --workdir for a different experiment, or re-run with the workdir's "
                     f"values (a resume may change only {', '.join(RESUMABLE)})")
  for k, (a, b) in changed.items():
    if jax.process_index() == 0:
      print(f"resume: config.{k} {a!r} -> {b!r}", flush=True)
  return saved
