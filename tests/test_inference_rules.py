"""The one implementation of preprocessing, decoders and intervals (age_jax/inference_rules.py)
gives the same numbers in numpy, in JAX and as ONNX (the JAX rules converted by jaxpr_onnx, as the
ONNX export does), with
values checked by hand at the group edges; conformal's intervals are these rules."""
import numpy as np
import pytest

from age_jax import ages, conformal, inference_rules as rules

BINS = np.arange(101, dtype=np.float32)
# Ages on and around every group edge (10 is group 0, 10.01 group 1, ..., above 70 group 7).
EDGE_AGES = np.array([0.0, 0.5, 10.0, 10.01, 19.99, 20.0, 20.5, 40.0, 60.0, 70.0, 70.01, 95.0], np.float32)


def test_group_index_and_intervals_by_hand():
  np.testing.assert_array_equal(ages.group_index(EDGE_AGES), [0, 0, 0, 1, 1, 1, 2, 3, 5, 6, 7, 7])
  q = np.arange(1.0, 9.0)  # group g's quantile is g + 1 years
  low, high = rules.interval(EDGE_AGES, None, q, False, 0.5)
  np.testing.assert_allclose(high - EDGE_AGES, [1, 1, 1, 2, 2, 2, 3, 4, 6, 7, 8, 8])
  assert low[0] == 0.0 and low[1] == 0.0  # never below 0 years
  spread = np.full(EDGE_AGES.shape, 0.1, np.float32)  # under the floor: half-width q * 0.5
  low, high = rules.interval(EDGE_AGES, spread, q, True, 0.5)
  np.testing.assert_allclose(high - EDGE_AGES, 0.5 * np.array([1, 1, 1, 2, 2, 2, 3, 4, 6, 7, 8, 8]), rtol=1e-6)


def test_conformal_intervals_are_the_rules():
  rng = np.random.default_rng(0)
  pred = rng.uniform(0, 90, 500)
  cal = conformal.calibrate(pred, pred + rng.normal(size=500) * (1 + pred / 20))  # mondrian
  q = cal.quantiles(0.9)[0]
  np.testing.assert_allclose(cal.intervals(EDGE_AGES, None, 0.9), rules.interval(EDGE_AGES, None, q, False, 0.5))


def _onnx_run(fn, inputs):
  """Runs fn(*JAX arrays) -> {name: array} converted to ONNX (jaxpr_onnx), on the inputs."""
  ort = pytest.importorskip("onnxruntime")
  pytest.importorskip("onnx")
  import jax
  from age_jax.inference import jaxpr_onnx
  specs = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in inputs.values()]
  model = jaxpr_onnx.convert(fn, *specs, input_names=[f"in_{n}" for n in inputs])
  names = [o.name for o in model.graph.output]
  feeds = {f"in_{n}": v for n, v in inputs.items()}
  return dict(zip(names, ort.InferenceSession(model.SerializeToString()).run(names, feeds)))


def _every_rule(xp, logits, ordinal, one, age, spread):
  q = np.linspace(2.0, 9.0, 8).astype(np.float32)
  out = {"expectation": rules.softmax_age(logits, BINS, "expectation", xp),
         "argmax": rules.softmax_age(logits, BINS, "argmax", xp),
         "spread": rules.softmax_spread(logits, BINS, xp),
         "ordinal": rules.ordinal_age(ordinal, 0.0, xp),
         "regression": rules.regression_age(one, 33.0, 20.0, xp)}
  out["mondrian_low"], out["mondrian_high"] = rules.interval(age, None, q, False, 0.5, xp)
  out["normalized_low"], out["normalized_high"] = rules.interval(age, spread, q, True, 0.5, xp)
  return out


def test_numpy_jax_and_onnx_compute_the_same_rules():
  rng = np.random.default_rng(1)
  n = EDGE_AGES.size
  inputs = {"logits": (rng.normal(size=(n, 101)) * 3).astype(np.float32),
            "ordinal": rng.normal(size=(n, 100)).astype(np.float32),
            "one": rng.normal(size=(n, 1)).astype(np.float32), "age": EDGE_AGES,
            "spread": rng.uniform(0.1, 6, n).astype(np.float32)}
  want = _every_rule(rules.NUMPY, *inputs.values())
  got_jax = _every_rule(rules.jax_ops(), *inputs.values())
  got_onnx = _onnx_run(lambda *t: _every_rule(rules.jax_ops(), *t), inputs)
  # by hand: the ordinal count and the argmax
  np.testing.assert_array_equal(want["ordinal"], (inputs["ordinal"] > 0).sum(1))
  np.testing.assert_array_equal(want["argmax"], inputs["logits"].argmax(1))
  for name, value in want.items():
    np.testing.assert_allclose(np.asarray(got_jax[name]), value, atol=1e-4, err_msg=f"jax {name}")
    np.testing.assert_allclose(got_onnx[name], value, atol=1e-4, err_msg=f"onnx {name}")


def test_center_crop_and_normalize_in_onnx():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (2, 9, 9, 3)).astype(np.float32)
  mean, scale = rng.uniform(0, 255, (5, 5, 3)).astype(np.float32), np.float32(1 / 255)
  want = (images[:, 2:7, 2:7] - mean) * scale
  np.testing.assert_allclose(rules.normalize(rules.center_crop(images, 5), mean, scale), want, rtol=1e-6)

  build = lambda x: {"x": rules.normalize(rules.center_crop(x, 5), mean, scale)}
  np.testing.assert_allclose(_onnx_run(build, {"x": images})["x"], want, rtol=1e-6)
