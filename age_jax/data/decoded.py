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
import os
import re
from typing import Callable

import numpy as np

DIR = "decoded"
VERSION = 1  # bump when decoding changes, so old files are not reused
CHUNK = 1024


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
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    list(pool.map(fill, range(len(records)) if indices is None else indices))
  return out


class RowFile:
  """The rows of a uint8 .npy file, indexed like an array (an int or an array of ints), each
  row read with one positioned read straight into the result. A memory map costs a page fault
  per 4 KiB of every image instead, several times the host CPU time per image. Safe to share
  between threads; the descriptor is reopened after pickling (grain worker processes)."""

  def __init__(self, path: str):
    header = np.load(path, mmap_mode="r")
    self.path, self.shape, self.offset = path, header.shape, header.offset
    self.dtype, self.row_bytes = np.dtype(np.uint8), int(np.prod(header.shape[1:]))
    self._fd = None

  def __len__(self):
    return self.shape[0]

  def __getstate__(self):
    return {**self.__dict__, "_fd": None}

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)

  def __getitem__(self, index):
    if self._fd is None:
      self._fd = os.open(self.path, os.O_RDONLY)
    rows = np.asarray(index, np.int64)
    out = np.empty((*rows.shape, *self.shape[1:]), np.uint8)
    flat = out.reshape(-1, self.row_bytes)
    for k, row in enumerate(rows.reshape(-1)):
      if not -self.shape[0] <= row < self.shape[0]:
        raise IndexError(f"row {row} of {self.path}, which has {self.shape[0]}")
      position = self.offset + (int(row) % self.shape[0]) * self.row_bytes
      if os.preadv(self._fd, [flat[k]], position) != self.row_bytes:
        raise OSError(f"{self.path} ended before row {row}: truncated since it was written?")
    return out


class _Subset:
  """Rows `indices` of an array, indexed like an array of their own."""

  def __init__(self, array, indices):
    self.array, self.indices = array, np.asarray(indices, np.int64)
    self.shape = (len(self.indices), *array.shape[1:])

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.array[self.indices[i]]
