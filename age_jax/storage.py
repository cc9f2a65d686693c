"""One path layer for everything a run writes to its workdir: local folders, NFS, gcsfuse mounts
and gs:// buckets, through etils.epath (what orbax and TFDS use; gs:// needs the `gcs` extra).

- A URI (gs://bucket/run) stays a URI: never made absolute against the local working directory.
- Small files (config.json, the mean image, reports) are written whole: through a temporary
  file and a rename on a filesystem, directly on an object store (an object appears whole or
  not at all, and renames there are copies).
- Orbax finalises a checkpoint by renaming its directory, which gcsfuse refuses on flat buckets;
  there it must write a commit file instead (renames_are_atomic).
- In a multi-process run every process writes checkpoint shards to the workdir, so it must be
  one directory all hosts see (check_shared).
"""
import io
import os
import secrets

import numpy as np
from etils import epath

# Filesystems (as /proc/mounts names them) on which a directory rename is not atomic or fails.
_NO_ATOMIC_DIR_RENAME = ("fuse.gcsfuse",)
MOUNTS_FILE = "/proc/self/mounts"


def is_uri(p) -> bool:
  return "://" in os.fspath(p)


def path(p) -> epath.Path:
  """A workdir path: a URI as given, a local path absolute with ~ expanded."""
  p = os.fspath(p)
  return epath.Path(p if is_uri(p) else os.path.abspath(os.path.expanduser(p)))


def write_bytes(p, data: bytes) -> None:
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_uri(p):
    p.write_bytes(data)
    return
  tmp = p.with_name(p.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, p)


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode())


def save_npy(p, array) -> None:
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array))
  write_bytes(p, buffer.getvalue())


def load_npy(p) -> np.ndarray:
  with path(p).open("rb") as f:
    return np.load(f, allow_pickle=False)


class LineLog:
  """Appends lines to a file (metrics.jsonl). A local file is opened for appending; an object
  cannot be appended to, so there the whole (small) log is rewritten at each flush."""

  def __init__(self, p):
    self.path = path(p)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._local = None if is_uri(self.path) else open(self.path, "a")
    self._lines = None
    if self._local is None:
      self._lines = self.path.read_text() if self.path.exists() else ""

  def write(self, line: str) -> None:
    if self._local is not None:
      self._local.write(line)
      self._local.flush()
    else:
      self._lines += line
      self.path.write_text(self._lines)

  def close(self) -> None:
    if self._local is not None:
      self._local.close()


def filesystem_type(p, mounts_file: str | None = None) -> str | None:
  """The type of the filesystem holding local path p (the longest mount point above it)."""
  p = os.path.realpath(os.path.abspath(os.fspath(p)))
  best, fstype = "", None
  try:
    with open(mounts_file or MOUNTS_FILE) as f:
      for line in f:
        fields = line.split()
        if len(fields) < 3:
          continue
        mount_point = fields[1].replace("\\040", " ")
        inside = p == mount_point or p.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
          best, fstype = mount_point, fields[2]
  except OSError:
    return None
  return fstype


def renames_are_atomic(p, mounts_file: str | None = None) -> bool:
  """Whether orbax may finalise checkpoints under p by renaming a directory."""
  return not is_uri(p) and filesystem_type(p, mounts_file) not in _NO_ATOMIC_DIR_RENAME


def check_shared(workdir) -> None:
  """Refuses, on every process, a workdir that not all processes of the run see: one local to
  each host would leave each host's checkpoint shards where no other host can restore them."""
  import jax
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return
  token = str(int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31)))))
  marker = path(workdir) / f".age_jax_shared_{token}"
  if jax.process_index() == 0:
    write_text(marker, token)
  multihost_utils.sync_global_devices("age_jax: shared-workdir marker written")
  seen = marker.exists() and marker.read_text() == token
  seen_by = np.asarray(multihost_utils.process_allgather(np.int32(seen)))
  if jax.process_index() == 0:
    marker.unlink(missing_ok=True)
  blind = [i for i, s in enumerate(seen_by.reshape(-1)) if not s]
  if blind:
    raise ValueError(
        f"--workdir={workdir} is not shared by all {jax.process_count()} processes: process(es) {blind} do "
        "not see the file process 0 wrote there. Every process writes checkpoint shards to the workdir, so "
        "it must be one directory on every host: a gs:// path, or an NFS / gcsfuse mount at the same path.")
