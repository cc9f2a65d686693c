"""Advisory file locks (fcntl.flock) that say who holds them.

The kernel releases a flock when its holder dies, however it dies, so a lock left behind by a
killed process is never stale: the next taker simply gets it and rewrites the holder line.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import time


class LockHeld(RuntimeError):
  """The lock is held by another process; `holder` is what it wrote ({} if not yet written)."""

  def __init__(self, path: str, holder: dict):
    self.path, self.holder = path, holder
    who = (f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('since')}"
           if holder else "another process")
    super().__init__(f"{path} is held by {who}")


class FileLock:
  """lock = FileLock(path).acquire(blocking=False) ... lock.release()"""

  def __init__(self, path: str):
    self.path = path
    self._fd = None

  def acquire(self, blocking: bool = True) -> "FileLock":
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise LockHeld(self.path, holder) from None
    except BaseException:
      os.close(fd)
      raise
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# What flock raises where the filesystem has no locks: Lustre mounted without -o flock (ENOSYS),
# NFS without a lock daemon (ENOLCK), some FUSE mounts (EOPNOTSUPP, EINVAL).
NO_LOCKS_ERRNOS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)
_warned = set()


@contextlib.contextmanager
def held_where_supported(path: str, unprotected: str):
  """Holds FileLock(path) (blocking) for the block. On a filesystem without flock the block runs
  unlocked after one warning line per path (`unprotected`: what then is not protected), as the
  workdir lock does; any other OSError is raised."""
  lock = FileLock(path)
  try:
    lock.acquire()
  except OSError as e:
    if e.errno not in NO_LOCKS_ERRNOS:
      raise
    lock = None
    if path not in _warned:
      _warned.add(path)
      print(f"warning: {path}: this filesystem has no file locks ({e}); {unprotected}", flush=True)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def _read_holder(fd) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}
