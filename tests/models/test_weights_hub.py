"""Pretrained starts by name: .pth files read without torch (zip and legacy formats, written here
as torch.save writes them), and the fetch against a loopback HTTP server: the right hash loads,
a wrong hash is refused and deleted, no server gives the offline message."""
import collections
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import sys
import threading
import types
import zipfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import config as config_lib
from age_jax.models import pretrained, torch_files, weights_hub
from age_jax.models.resnet import resnet
from age_jax.train import init_from

_DTYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _Tensor:
  """What torch.save sees of a tensor: a storage (key, values), an offset, a size and a stride."""

  def __init__(self, key, storage, offset, size, stride):
    self.key, self.storage, self.offset, self.size, self.stride = key, storage, offset, size, stride


def _fake_torch():
  """Stand-ins for torch's pickled names, so pickle writes the same GLOBAL opcodes torch does."""
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
  def _rebuild_tensor_v2(*args):
    raise AssertionError("only written here")
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in _DTYPES.values():
    setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
  torch._utils = utils
  return torch, utils


def _tensors(state):
  """Each array as torch stores it; 2-D ones column-major (a transposed view: stride (1, rows))
  so that reading must honour the stride, and 1-D ones at an offset in a longer storage."""
  out = collections.OrderedDict()
  for i, (key, value) in enumerate(state.items()):
    value = np.asarray(value)
    if value.ndim == 2:
      out[key] = _Tensor(str(i), np.ascontiguousarray(value.T).ravel(), 0, value.shape, (1, value.shape[0]))
    elif value.ndim == 1:
      out[key] = _Tensor(str(i), np.concatenate([np.zeros(3, value.dtype), value]), 3, value.shape, (1,))
    else:
      strides = tuple(s // value.itemsize for s in value.strides)
      out[key] = _Tensor(str(i), value.ravel(), 0, value.shape, strides)
  return out


class _Storage:
  """The storage a tensor names: pickled as torch's persistent id, its bytes stored beside."""

  def __init__(self, t):
    self.t = t


def write_torch_zip(path, state):
  tensors = _tensors(state)
  def pid(o, torch):
    if isinstance(o, _Storage):
      return ("storage", getattr(torch, _DTYPES[o.t.storage.dtype]), o.t.key, "cpu", o.t.storage.size)
    return None
  data = _pickle_with_storages(tensors, pid)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data)
    z.writestr("archive/version", "3\n")
    for t in tensors.values():
      z.writestr(f"archive/data/{t.key}", t.storage.tobytes())


def _pickle_with_storages(tensors, persistent_id):
  torch, utils = _fake_torch()
  with mock.patch.dict(sys.modules, {"torch": torch, "torch._utils": utils}):
    class Pickler(pickle.Pickler):
      def persistent_id(self, o):
        return persistent_id(o, torch)

      def reducer_override(self, o):
        if isinstance(o, _Tensor):
          return utils._rebuild_tensor_v2, (_Storage(o), o.offset, tuple(o.size), tuple(o.stride),
                                            False, collections.OrderedDict())
        return NotImplemented
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(tensors)
    return buf.getvalue()


def write_torch_legacy(path, state):
  tensors = _tensors(state)
  def pid(o, torch):
    if isinstance(o, _Storage):
      return ("storage", getattr(torch, _DTYPES[o.t.storage.dtype]), o.t.key, "cpu", o.t.storage.size, None)
    return None
  with open(path, "wb") as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(_pickle_with_storages(tensors, pid))
    pickle.dump([t.key for t in tensors.values()], f, protocol=2)
    for t in tensors.values():
      f.write(struct.pack("<q", t.storage.size) + t.storage.tobytes())


def _small_resnet_state(seed=0):
  model = resnet("resnet18", num_outputs=1000, width=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  state = pretrained.export_state_dict(variables, "resnet18")
  state["bn1.num_batches_tracked"] = np.array(7, np.int64)
  return variables, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), state


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy])
def test_pth_is_read_without_torch(writer, tmp_path):
  _, _, state = _small_resnet_state()
  path = str(tmp_path / "w.pth")
  writer(path, state)
  got = torch_files.read_state_dict(path)
  assert list(got) == list(state)
  for key in state:
    np.testing.assert_array_equal(got[key], state[key], err_msg=key)
    assert got[key].dtype == state[key].dtype and got[key].flags.c_contiguous


def test_a_pth_that_would_run_code_is_refused(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo hi'\ntR.")
  with pytest.raises(pickle.UnpicklingError, match="os.system"):
    torch_files.read_state_dict(str(path))


class _Server:
  """Serves {url path: bytes} on 127.0.0.1 only."""

  def __init__(self, files):
    outer = self
    self.files, self.requests = files, []

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        outer.requests.append(self.path)
        data = outer.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.end_headers()
        if data is not None:
          self.wfile.write(data)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_port}"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def served(tmp_path, monkeypatch):
  """A generated state dict as a torchvision-style file whose name carries its sha256 prefix."""
  variables, zeros, state = _small_resnet_state()
  path = str(tmp_path / "gen.pth")
  write_torch_zip(path, state)
  data = open(path, "rb").read()
  name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
  monkeypatch.setitem(weights_hub.WEIGHTS, "torchvision:resnet18",
                      ("resnet18", f"https://download.pytorch.org/models/{name}"))
  server = _Server({f"/models/{name}": data})
  yield server, name, data, variables, zeros
  server.close()


def test_right_hash_loads_once_and_converts(served, tmp_path):
  server, name, _, variables, zeros = served
  cache = str(tmp_path / "cache")
  path = weights_hub.fetch("torchvision:resnet18", directory=cache, mirror=server.url)
  assert path == os.path.join(cache, name.replace(".pth", ".safetensors")) and server.requests == [f"/models/{name}"]
  loaded = pretrained.load_pretrained(path, zeros, "resnet18", skip_head=False)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  assert weights_hub.fetch("torchvision:resnet18", directory=cache, mirror=server.url) == path
  assert len(server.requests) == 1   # converted once, not fetched again


def test_wrong_hash_is_refused_and_deleted(served, tmp_path):
  server, name, data, _, _ = served
  server.files[f"/models/{name}"] = data + b"tampered"
  cache = str(tmp_path / "cache")
  with pytest.raises(ValueError, match=r"published one starts with [0-9a-f]{8}.*deleted"):
    weights_hub.fetch("torchvision:resnet18", directory=cache, mirror=server.url)
  assert os.listdir(cache) == []


def test_no_server_says_where_to_put_the_file(served, tmp_path, monkeypatch):
  _, name, data, variables, zeros = served
  cache = str(tmp_path / "cache")
  with pytest.raises(weights_hub.WeightsUnavailable, match=rf"put it by hand at {cache}/{name}"):
    weights_hub.fetch("torchvision:resnet18", directory=cache, mirror=f"http://127.0.0.1:{_free_port()}",
                      timeout_s=5)
  # Put there by hand, the file is checked and used without the network; through the config too.
  with open(os.path.join(cache, name), "wb") as f:
    f.write(data)
  monkeypatch.setenv("AGE_JAX_WEIGHTS_DIR", cache)
  monkeypatch.setenv("AGE_JAX_WEIGHTS_MIRROR", f"http://127.0.0.1:{_free_port()}")
  cfg = config_lib.default_config()
  cfg.model.name, cfg.model.pretrained = "resnet18", "torchvision:resnet18"
  loaded, summary = init_from.load_variables(init_from.start_source(cfg.model), zeros, "resnet18")
  np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])
  assert "backbone loaded" in summary


def test_config_names_the_weights_that_do_not_fit():
  cfg = config_lib.default_config()
  cfg.model.pretrained = "torchvision:resnet50"
  with pytest.raises(ValueError, match="set --config.model.name=resnet50"):
    config_lib.validate(cfg)
  cfg.model.name, cfg.model.init_from = "resnet50", "/some/run"
  with pytest.raises(ValueError, match="give one start"):
    config_lib.validate(cfg)
  cfg.model.pretrained, cfg.model.init_from = "torchvision:resnet51", ""
  with pytest.raises(ValueError, match="known weights name"):
    config_lib.validate(cfg)
  assert all(weights_hub.expected_hash(url) for _, url in weights_hub.WEIGHTS.values())
