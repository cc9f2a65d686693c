"""Reading a PyTorch state dict file (.pth / .pt) without torch: numpy arrays by name.

torch.save writes a pickle whose tensors are calls to torch._utils._rebuild_tensor_v2 on
storages the pickle names by persistent id; the storages' bytes lie beside it:
- zip format (torch >= 1.6, torchvision's re-uploaded ResNets): '<root>/data.pkl' and
  '<root>/data/<key>', persistent id ('storage', storage type, key, location, numel);
- legacy format (torch < 1.6, e.g. torchvision's vgg16-397923af.pth): consecutive pickles (magic
  number, protocol 1001, system info, the object, the storage keys), then per key an int64
  element count and the raw bytes; persistent id (..., numel, view metadata).
The unpickler resolves only the few names a state dict uses (below) and refuses any other, so a
file cannot run code while it is read. Little-endian storages are assumed (every published file).
"""
import collections
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageType:
  def __init__(self, name):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_):
  """torch._utils._rebuild_tensor_v2: a strided view of the storage, copied."""
  itemsize = storage.dtype.itemsize
  if not size:
    return np.array(storage[offset])
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  # C order: np.array(view) would keep a transposed layout, which safetensors writes as memory.
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_):
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """rebuild: what a tensor becomes (default: the array, from a storage already read)."""

  def __init__(self, file, load_storage, rebuild=_rebuild_tensor):
    super().__init__(file)
    self._load_storage, self._rebuild = load_storage, rebuild

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return self._rebuild
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"a state dict does not hold {module}.{name}; refusing to load it")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    return self._load_storage(pid)


def _read_zip(path) -> dict:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a torch zip file holds one data.pkl, found {pickles}")
    root = pickles[0][: -len("data.pkl")]

    def load_storage(pid):
      _, storage_type, key, _location, numel = pid[:5]
      data = archive.read(f"{root}data/{key}")
      return np.frombuffer(data, storage_type.dtype, count=int(numel))

    with archive.open(pickles[0]) as f:
      return _Unpickler(f, load_storage).load()


class _Pending:
  """A legacy file's tensor, built once the storages after the object pickle are read."""

  def __init__(self, storage_key, offset, size, stride):
    self.args = (storage_key, offset, size, stride)


def _read_legacy(path) -> dict:
  with open(path, "rb") as f:
    plain = lambda: _Unpickler(f, lambda pid: None).load()
    if plain() != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a PyTorch file (no zip archive, no legacy magic number)")
    plain(), plain()   # protocol version, system info
    dtypes = {}        # storage key -> dtype, as the object pickle names them

    def load_storage(pid):
      _, storage_type, key, _location, _numel = pid[:5]
      if len(pid) > 5 and pid[5] is not None:
        raise ValueError(f"{path}: storage views (view metadata) are not supported")
      dtypes.setdefault(key, storage_type.dtype)
      return key

    obj = _Unpickler(f, load_storage, rebuild=lambda key, offset, size, stride, *_: _Pending(key, offset, size, stride)).load()
    storages = {}
    for key in plain():
      (numel,) = struct.unpack("<q", f.read(8))
      storages[key] = np.frombuffer(f.read(numel * dtypes[key].itemsize), dtypes[key], count=numel)
  return collections.OrderedDict(
      (k, _rebuild_tensor(storages[v.args[0]], *v.args[1:]) if isinstance(v, _Pending) else v)
      for k, v in obj.items())


def read_state_dict(path: str) -> dict:
  """{name: numpy array} of a torch.save'd state dict (zip or legacy format)."""
  state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]   # a training checkpoint around the weights
  if not isinstance(state, dict):
    raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
  out = {}
  for key, value in state.items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    out[key] = value
  return out
