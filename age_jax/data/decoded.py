"""Decode once: a split's images as one uint8 array file (.npy) beside its prepared dataset.

The file sits in the build's directory, so a rebuilt dataset (changed source or build
options) starts without it; its name carries the split, the load size and whether faces are
aligned, so each distinct decoding is made once and reused by every later run. It is
written in chunks through a memory map into a temporary file renamed into place when
complete: a crash never leaves a half-written file under the final name. Reading goes
through `RowFile` (one positioned read per image, so a 10M-face split never has to fit in RAM),
or, with in_memory=True, reads the file whole. Sources without a build directory (a plain labelled
folder) are decoded into RAM with in_memory=True, else on every read.
"""
import concurrent.futures
import mmap
import os
import re
import threading
from typing import Callable

import numpy as np

DIR = "decoded"
VERSION = 1  # bump when decoding changes, so old files are not reused
CHUNK = 1024
_BLOCK = 4096   # O_DIRECT's alignment of offsets, lengths and buffers


def path_for(records, tag: str) -> str | None:
  """Where the decoded file of these records lives, or None when they have no build directory."""
  labels_dir = getattr(records, "labels_dir", None)
  if not labels_dir:
    return None
  split = re.sub(r"[^A-Za-z0-9.+\-\[\]:%]", "_", records.split)
  return os.path.join(os.path.dirname(labels_dir), DIR, f"{split}_{tag}_v{VERSION}.npy")


def images(records, decode: Callable[[dict], np.ndarray], shape: tuple, num_threads: int = 2,
           in_memory: bool = False, tag: str = "") -> np.ndarray:
  """uint8 (len(records), *shape) images of the records (decode(record) -> image), made once."""
  path = path_for(records, tag)
  if path is None:  # nowhere to keep a file: into RAM if asked, else decode on every read (None)
    if not in_memory:
      return None
    return _decode_into(np.empty((len(records), *shape), np.uint8), records, decode, num_threads)
  stored = _stored_split(records)
  if not _is_valid(path, (len(stored), *shape)):
    try:
      _write(path, (len(stored), *shape), stored, decode, num_threads)
    except OSError as e:  # e.g. a read-only data_dir: decode into RAM instead
      print(f"[age_jax] cannot write {path} ({e}); decoding into RAM")
      return _decode_into(np.empty((len(records), *shape), np.uint8), records, decode, num_threads)
  array = np.load(path) if in_memory else RowFile(path)
  return array if records.indices is None else _Subset(array, records.indices)


def _stored_split(records):
  """The whole stored split behind records (a fold is a subset of it): what the file holds."""
  if records.indices is None:
    return records
  return type(records)(records.source, records.split, records.labels_dir)


def _is_valid(path, shape) -> bool:
  if not os.path.isfile(path):
    return False
  array = np.load(path, mmap_mode="r")
  if array.shape != shape or array.dtype != np.uint8:
    print(f"[age_jax] {path} holds {array.shape} {array.dtype}, not {shape} uint8; decoding again")
    return False
  return True


def _write(path, shape, records, decode, num_threads):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  print(f"[age_jax] decoding {shape[0]} images at {shape[1]}x{shape[2]} once, into {path}", flush=True)
  try:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    for start in range(0, shape[0], CHUNK):
      _decode_into(out, records, decode, num_threads, range(start, min(shape[0], start + CHUNK)))
    out.flush()
    del out
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _decode_into(out, records, decode, num_threads, indices=None):
  def fill(i):
    out[i] = decode(records[i])
  pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads))
  try:
    list(pool.map(fill, range(len(records)) if indices is None else indices))
  finally:  # on a stop (preemption.Stopped), drop the queued images instead of decoding them all
    pool.shutdown(wait=True, cancel_futures=True)
  return out


class RowFile:
  """The rows of a uint8 .npy file, indexed like an array (an int or an array of ints), each row
  read with one positioned read. A memory map would fault in each 4 KiB page of every image, several
  times the host CPU time per image.

  direct (default: when the file is larger than half the available RAM, so the page cache cannot
  keep it): read with O_DIRECT, the disk writing into our buffer without the page cache, whose
  filling costs the host more CPU than the read itself; a file the page cache can hold is read
  through it, so every epoch after the first comes from RAM. Safe to share between threads; the
  descriptor is reopened after pickling (grain worker processes)."""

  def __init__(self, path: str, direct: bool | None = None):
    header = np.load(path, mmap_mode="r")
    self.path, self.shape, self.offset = path, header.shape, header.offset
    self.dtype, self.row_bytes = np.dtype(np.uint8), int(np.prod(header.shape[1:]))
    self.direct = os.path.getsize(path) > _available_memory() / 2 if direct is None else direct
    self._fd, self._lock, self._buffers = None, threading.Lock(), threading.local()

  def __len__(self):
    return self.shape[0]

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_lock", "_buffers")}

  def __setstate__(self, state):
    self.__dict__.update(state, _fd=None, _lock=threading.Lock(), _buffers=threading.local())

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)

  def _open(self) -> int:
    with self._lock:
      if self._fd is None:
        try:
          self._fd = os.open(self.path, os.O_RDONLY | (os.O_DIRECT if self.direct else 0))
        except OSError:  # a filesystem without O_DIRECT (tmpfs): through the page cache
          self.direct, self._fd = False, os.open(self.path, os.O_RDONLY)
    return self._fd

  def _read_direct(self, fd: int, position: int, out: np.ndarray) -> int:
    """O_DIRECT reads whole aligned blocks into an aligned buffer: read the blocks around the row."""
    start = position // _BLOCK * _BLOCK
    span = -(-(position + self.row_bytes - start) // _BLOCK) * _BLOCK
    buffer = getattr(self._buffers, "block", None)
    if buffer is None or len(buffer) < span:
      buffer = self._buffers.block = mmap.mmap(-1, span)   # anonymous maps are page-aligned
    got = os.preadv(fd, [memoryview(buffer)[:span]], start)
    n = max(0, min(self.row_bytes, got - (position - start)))
    out[:n] = np.frombuffer(buffer, np.uint8, n, position - start)
    return n

  def __getitem__(self, index):
    fd = self._fd if self._fd is not None else self._open()
    rows = np.asarray(index, np.int64)
    out = np.empty((*rows.shape, *self.shape[1:]), np.uint8)
    flat = out.reshape(-1, self.row_bytes)
    for k, row in enumerate(rows.reshape(-1)):
      if not -self.shape[0] <= row < self.shape[0]:
        raise IndexError(f"row {row} of {self.path}, which has {self.shape[0]}")
      position = self.offset + (int(row) % self.shape[0]) * self.row_bytes
      got = self._read_direct(fd, position, flat[k]) if self.direct else os.preadv(fd, [flat[k]], position)
      if got != self.row_bytes:
        raise OSError(f"{self.path} ended before row {row}: truncated since it was written?")
    return out


def _available_memory() -> int:
  try:
    with open("/proc/meminfo") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
  except (OSError, StopIteration):
    return 1 << 62   # unknown (not Linux): keep using the page cache


class _Subset:
  """Rows `indices` of an array, indexed like an array of their own."""

  def __init__(self, array, indices):
    self.array, self.indices = array, np.asarray(indices, np.int64)
    self.shape = (len(self.indices), *array.shape[1:])

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.array[self.indices[i]]
