"""Advisory file locks (fcntl.flock) that say who holds them.

The kernel releases a flock when its holder dies, however it dies, so a lock left behind by a
killed process is never stale: the next taker simply gets it and rewrites the holder line.
"""
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


def _read_holder(fd) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}
