"""MTCNN's P-, R- and O-Net weights: read once from the `mtcnn` wheel, verified, cached as npz.

The weights ship inside the `mtcnn` 1.0.0 wheel as joblib (pickle) files. Importing `mtcnn`
itself needs TensorFlow, so the files are found through the import system without importing it.
Pickle can run code, so each file's sha256 is checked against a pinned value before it is
unpickled; the arrays are then written once to a plain .npz (loaded without pickle afterwards).

The weights are redistributed under the `mtcnn` package's licence:

  MIT License

  Copyright (c) 2019-2024 Iván de Paz Centeno

  Permission is hereby granted, free of charge, to any person obtaining a copy
  of this software and associated documentation files (the "Software"), to deal
  in the Software without restriction, including without limitation the rights
  to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
  copies of the Software, and to permit persons to whom the Software is
  furnished to do so, subject to the following conditions:

  The above copyright notice and this permission notice shall be included in all
  copies or substantial portions of the Software.

  THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
  IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
  FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
  AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
  LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
  OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
  SOFTWARE.
"""
import hashlib
import importlib.util
import os
import tempfile

import numpy as np

NETS = ("pnet", "rnet", "onet")
# sha256 of mtcnn 1.0.0's mtcnn/assets/weights/<net>.lz4.
SHA256 = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}
# Keras layouts: conv kernels HWIO, PReLU slopes (1, 1, C) or (C,), dense kernels (in, out).
SHAPES = {
    "pnet": [(3, 3, 3, 10), (10,), (1, 1, 10), (3, 3, 10, 16), (16,), (1, 1, 16), (3, 3, 16, 32), (32,),
             (1, 1, 32), (1, 1, 32, 4), (4,), (1, 1, 32, 2), (2,)],
    "rnet": [(3, 3, 3, 28), (28,), (1, 1, 28), (3, 3, 28, 48), (48,), (1, 1, 48), (2, 2, 48, 64), (64,),
             (1, 1, 64), (576, 128), (128,), (128,), (128, 4), (4,), (128, 2), (2,)],
    "onet": [(3, 3, 3, 32), (32,), (1, 1, 32), (3, 3, 32, 64), (64,), (1, 1, 64), (3, 3, 64, 64), (64,),
             (1, 1, 64), (2, 2, 64, 128), (128,), (1, 1, 128), (1152, 256), (256,), (256,), (256, 4), (4,),
             (256, 10), (10,), (256, 2), (2,)],
}
CACHE_ENV = "AGE_JAX_MTCNN_CACHE"


def wheel_weights_dir() -> str:
  """The folder holding the installed `mtcnn` wheel's weight files (the package is not imported)."""
  spec = importlib.util.find_spec("mtcnn")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the MTCNN weights come from the `mtcnn` package: pip install mtcnn==1.0.0")
  return os.path.join(list(spec.submodule_search_locations)[0], "assets", "weights")


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "age_jax", "mtcnn")


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _check_arrays(net: str, arrays: list, origin: str) -> list:
  shapes = [tuple(np.shape(a)) for a in arrays]
  if shapes != SHAPES[net]:
    raise ValueError(f"{origin}: {net} weights have shapes {shapes}, expected {SHAPES[net]}")
  return [np.asarray(a, np.float32) for a in arrays]


def read_verified(net: str, source_dir: str | None = None) -> list:
  """The net's arrays from the wheel's <net>.lz4, unpickled only after its sha256 matches."""
  path = os.path.join(source_dir or wheel_weights_dir(), f"{net}.lz4")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MTCNN weight file {path} is missing (pip install mtcnn==1.0.0)")
  digest = _sha256(path)
  if digest != SHA256[net]:
    raise ValueError(f"MTCNN weight file {path} has sha256 {digest}, expected {SHA256[net]} "
                     "(mtcnn 1.0.0); refusing to unpickle it")
  import joblib  # pickle-based: reached only for a file whose hash is pinned above
  return _check_arrays(net, joblib.load(path), path)


def _write_npz_atomically(path: str, arrays: list) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, *arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load(net: str, source_dir: str | None = None, cache: str | None = None) -> list:
  """The net's float32 arrays in the Keras order of SHAPES[net], from the npz cache (made on first use)."""
  if net not in NETS:
    raise ValueError(f"unknown MTCNN net {net!r}; expected one of {NETS}")
  path = os.path.join(cache or cache_dir(), f"{net}-{SHA256[net][:12]}.npz")
  if not os.path.isfile(path):
    _write_npz_atomically(path, read_verified(net, source_dir))
  with np.load(path, allow_pickle=False) as data:
    return _check_arrays(net, [data[f"arr_{i}"] for i in range(len(data.files))], path)
