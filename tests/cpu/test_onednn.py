"""oneDNN convolutions (age_jax/cpu/onednn.py): custom calls, sharding, the fallback.

That they compute XLA's convolution (forward and both gradients, every stride/padding case) is
tested with the other lowerings in test_lowerings.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from age_jax import models
from age_jax.cpu import lowerings, onednn


@pytest.fixture(autouse=True)
def onednn_on_every_map_size(monkeypatch):
  monkeypatch.setattr(lowerings, "_ONEDNN_MIN_AREA", {"forward": 1, "weight_grad": 1})


def test_onednn_takes_the_directions_it_runs_faster_by_output_map_area(monkeypatch):
  monkeypatch.undo()
  monkeypatch.setattr(lowerings, "_weight_grad_by_matmul", lambda: True)
  assert lowerings._engines("onednn", (56, 56), jnp.float32) == ("onednn", "onednn")
  assert lowerings._engines("onednn", (14, 14), jnp.float32) == ("xla", "onednn")
  assert lowerings._engines("onednn", (7, 7), jnp.float32) == ("xla", "matmul")
  assert lowerings._engines("onednn", (56, 56), jnp.bfloat16) == ("xla", "matmul")  # oneDNN: float32 only
  assert lowerings._engines("hybrid", (56, 56), jnp.float32) == ("xla", "matmul")


def _loss(lowering):
  convolution = models.get_lowering(lowering).convolution
  return lambda x, w: jnp.sum(jnp.sin(convolution(x, w, 2, "SAME", 1)))


def _inputs():
  kx, kw = jax.random.split(jax.random.key(5))
  return jax.random.normal(kx, (8, 12, 12, 6)), jax.random.normal(kw, (3, 3, 6, 10))


def test_onednn_runs_every_direction_as_a_custom_call_instead_of_xla_convolutions():
  x, w = _inputs()
  text = jax.jit(jax.value_and_grad(_loss("onednn"), (0, 1))).lower(x, w).compile().as_text()
  assert " convolution(" not in text
  for target in ("OnednnConvForward", "OnednnConvBackwardData", "OnednnConvBackwardWeights"):
    assert text.count(f'custom_call_target="age_jax_{target}"') == 1


def test_sharded_batch_runs_oneDNN_per_device_and_matches_one_device():
  x, w = _inputs()
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
  batch, replicated = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())
  step = jax.jit(jax.value_and_grad(_loss("onednn"), (0, 1)))
  xs, ws = jax.device_put(x, batch), jax.device_put(w, replicated)
  (loss, (dx, dw)) = step(xs, ws)
  (loss_ref, (dx_ref, dw_ref)) = jax.jit(jax.value_and_grad(_loss("xla"), (0, 1)))(x, w)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)
  assert dx.sharding.is_equivalent_to(batch, 4) and dw.sharding.is_equivalent_to(replicated, 4)
  # Each device convolves its own 1-image slice: no activation is gathered, and the weight
  # gradient's partial sums are all-reduced.
  text = step.lower(xs, ws).compile().as_text()
  assert "all-gather" not in text and "all-reduce" in text
  assert "f32[1,12,12,6]" in text and "f32[8,12,12,6]" not in text


def test_missing_onednn_or_compiler_gives_the_reason_and_auto_falls_back(monkeypatch, tmp_path):
  monkeypatch.setattr(onednn, "_onednn_root", lambda: None)
  assert "pip install onednn-cpu-gomp" in onednn._load.__wrapped__()
  monkeypatch.undo()
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setenv("AGE_JAX_KERNEL_CACHE", str(tmp_path / "kernels"))  # nothing built there yet
  assert "no-such-compiler" in onednn._load.__wrapped__()
  monkeypatch.setattr(onednn, "unavailable_reason", lambda: "oneDNN not found: reason")
  assert models.get_lowering("auto").name == "hybrid"
  with pytest.raises(ValueError, match="conv lowering 'onednn': oneDNN not found: reason"):
    models.get_lowering("onednn")
