"""MTCNN weights: read from the mtcnn wheel only after a sha256 check, cached as npz, shaped as the nets need."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax.faces import nets, weights


@pytest.fixture(scope="module")
def wheel_dir():
  try:
    return weights.wheel_weights_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_a_tampered_weight_file_is_refused_before_it_is_unpickled(wheel_dir, tmp_path, monkeypatch):
  source = tmp_path / "weights"
  shutil.copytree(wheel_dir, source)
  data = bytearray((source / "pnet.lz4").read_bytes())
  data[len(data) // 2] ^= 1
  (source / "pnet.lz4").write_bytes(bytes(data))
  import joblib
  def never(*args, **kwargs):
    raise AssertionError("joblib.load reached for an unverified file")
  monkeypatch.setattr(joblib, "load", never)
  with pytest.raises(ValueError, match=r"pnet\.lz4 has sha256 .*refusing to unpickle"):
    weights.load("pnet", source_dir=str(source), cache=str(tmp_path / "cache"))
  assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_weights_are_converted_once_and_then_read_from_the_npz_alone(wheel_dir, tmp_path):
  source = tmp_path / "weights"
  shutil.copytree(wheel_dir, source)
  cache = tmp_path / "cache"
  first = weights.load("rnet", source_dir=str(source), cache=str(cache))
  assert [a.shape for a in first] == weights.SHAPES["rnet"]
  assert [p.name for p in cache.iterdir()] == [f"rnet-{weights.SHA256['rnet'][:12]}.npz"]
  shutil.rmtree(source)  # the wheel's file is no longer needed
  again = weights.load("rnet", source_dir=str(source), cache=str(cache))
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  with pytest.raises(ValueError, match="unknown MTCNN net"):
    weights.load("xnet", cache=str(cache))


def test_nets_take_the_converted_weights_and_give_the_expected_shapes():
  def shapes(net, batch):
    params = nets.params_from_arrays(net, weights.load(net))
    out = jax.eval_shape(nets.MODULES[net]().apply, params, jax.ShapeDtypeStruct(batch, jnp.float32))
    init = jax.eval_shape(nets.MODULES[net]().init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(batch, jnp.float32))
    # The converted tree has exactly the module's parameters.
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, params)
    return [o.shape for o in out]
  # 30x40 -> conv 28x38 -> pool 14x19 -> conv 12x17 -> conv 10x15: one 12-px window per 2 px.
  assert shapes("pnet", (2, 30, 40, 3)) == [(2, 10, 15), (2, 10, 15, 4)]
  assert shapes("rnet", (3, 24, 24, 3)) == [(3,), (3, 4)]
  assert shapes("onet", (3, 48, 48, 3)) == [(3,), (3, 4), (3, 10)]
