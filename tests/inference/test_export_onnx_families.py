"""ONNX export of every family: the ONNX graph (jaxpr_onnx's conversion of export.inference_function)
gives the jax function's ages to 1e-3 years on real UTKFace faces, its spread, intervals and
gender/race, at batch 1 and 5 from one file; and the converter itself, primitive by primitive."""
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from age_jax import conformal  # noqa: E402
from age_jax.inference import export_jax as export  # noqa: E402
from age_jax.inference import export_onnx, jaxpr_onnx  # noqa: E402
from launch.bench.random_weights import random_state, with_face_statistics  # noqa: E402  (no init to compile)
from tests.serving.conftest import real_faces  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

AGE_TOLERANCE = 1e-3  # years
TINY_BRANCH = {"multitask.branch_reduce": 8, "multitask.branch_features": (16, 16)}


def _session(model):
  return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, feeds):
  names = [o.name for o in session.get_outputs()]
  return dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def faces():
  """Five real faces at the tiny configs' load size (72), random pixels where UTKFace is absent."""
  from age_jax.data import pipeline
  paths = real_faces(5)
  if not paths:  # noise of different brightness and contrast per image: outputs that differ by image
    rng = np.random.default_rng(1)
    return np.stack([np.clip(rng.normal(60 + 30 * i, 20 + 10 * i, (72, 72, 3)), 0, 255).astype(np.uint8)
                     for i in range(5)])
  return np.stack([pipeline.decode_image(open(p, "rb").read(), 72) for p in paths])


def _calibration(method):
  """A synthetic calibration whose eight age groups have different quantiles."""
  rng = np.random.default_rng(2)
  ages = rng.uniform(0, 90, 400)
  spread = rng.uniform(1, 5, 400) if method in conformal.SPREAD_METHODS else None
  return conformal.calibrate(ages, ages + rng.normal(size=400) * (1 + ages / 8), spread, method=method)


def _check_family(faces, method, age_tolerance=AGE_TOLERANCE, relative=1e-5, **overrides):
  """The ONNX graph of a fresh model against the jitted jax function on the same faces."""
  from age_jax.data import pipeline
  cfg, exp = export.portable_experiment(tiny_config(**overrides))
  crops = faces[:, 4:68, 4:68].astype(np.float32)
  normalizer = pipeline.Normalizer("mean_image", crops.mean(0), 1 / 64)  # inputs that differ by face
  state = with_face_statistics(exp.model, random_state(exp.model, cfg.data.image_size), normalizer(crops))
  calibration = _calibration(method)
  want = {k: np.asarray(v) for k, v in jax.jit(export.inference_function(exp, cfg, state, normalizer, calibration,
                                                                          0.9))(faces).items()}
  session = _session(export_onnx.build_model(exp, cfg, state, normalizer, calibration, 0.9))
  assert str(session.get_inputs()[0].shape[0]) == "batch"  # one file for every batch size
  got, single = _run(session, {"faces": faces}), _run(session, {"faces": faces[:1]})
  assert sorted(got) == sorted(want)
  assert np.ptp(want["age"]) > 0.01, want["age"]  # faces get different ages: parity is not trivial
  for key, value in want.items():
    # ages to 1e-3 years; spread and interval ends, products of the spread, also to 1e-5 of their value
    # (random weights give random nets 30-year spreads and 100-year half-widths)
    atol, rtol = (0, 0) if value.dtype.kind == "i" else (age_tolerance, 0 if key == "age" else relative)
    np.testing.assert_allclose(got[key], value, atol=atol, rtol=rtol, err_msg=key)
    np.testing.assert_allclose(single[key], value[:1], atol=atol, rtol=rtol, err_msg=f"{key} at batch 1")
  low, high = calibration.intervals(got["age"], got.get("spread"), 0.9)  # conformal's own, on ONNX's ages
  np.testing.assert_allclose(got["low"], low, atol=1e-4)
  np.testing.assert_allclose(got["high"], high, atol=1e-4)
  return got


# (formulation, interval method, other overrides): every decoder, both interval branches
# ('normalized': one quantile times the spread; the mondrian ones: one quantile per age group).
HEADS = {
    "dldl_v2_mirror": ("dldl_v2", "normalized_mondrian", {"eval.mirror": True}),
    "oh_argmax": ("oh", "normalized", {}),
    "oh_expectation": ("oh_expectation", "normalized_mondrian", {}),
    "mse": ("mse", "mondrian", {}),
    "mae": ("mae", "mondrian", {}),
    "ordinal": ("or", "mondrian", {}),
    "coral_mirror": ("coral", "mondrian", {"eval.mirror": True}),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_on_the_xing_baseline(faces, head):
  name, method, extra = HEADS[head]
  _check_family(faces, method, **{"formulation.name": name, **extra})


@pytest.mark.parametrize("kind", ["parallel", "deep", "hybrid"])
def test_multitask_nets_give_ages_gender_and_race(faces, kind):
  got = _check_family(faces, "normalized", **{"multitask.kind": kind, "formulation.name": "dldl_v2", **TINY_BRANCH})
  assert got["gender"].dtype == np.int32 and set(got["gender"]) <= {0, 1} and set(got["race"]) <= set(range(5))


def test_resnet18(faces):
  _check_family(faces, "normalized", **{"model.name": "resnet18", "model.resnet_width": 8, "formulation.name": "dldl_v2"})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_deeper_resnets(faces, name):
  # a softmax head: random residual stacks grow their outputs with depth; the expectation stays an age
  _check_family(faces, "normalized_mondrian", **{"model.name": name, "model.resnet_width": 8,
                                                 "formulation.name": "dldl_v2"})


@pytest.mark.slow
def test_vgg16(faces):  # VGG's own widths (no width option): 40M parameters at 64 px
  _check_family(faces, "normalized", **{"model.name": "vgg16", "formulation.name": "dldl_v2"})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l"])
def test_efficientnetv2(faces, name):  # depthwise convolutions (feature_group_count), SiLU, squeeze-excite
  # 5e-3 years, spreads and interval ends to 5e-4 of their value: these random 40-100 block nets amplify
  # float32 rounding; on efficientnetv2_s XLA's own jit and op-by-op runs differ by 2e-4 of the logits,
  # as much as onnxruntime and the jit (1.1e-3 years; -L: 2e-4 of a 193-year interval end)
  _check_family(faces, "normalized", age_tolerance=5e-3, relative=5e-4,
                **{"model.name": name, "formulation.name": "dldl_v2"})


def test_bfloat16_networks_are_refused_with_the_reason():
  with pytest.raises(ValueError, match="bfloat16"):
    export_onnx._refuse(tiny_config(**{"model.dtype": "bfloat16"}))


# ---- the converter on its own ----

def _primitives(x):
  """One function touching the rules the networks do not: depthwise convolution, einsum, sort,
  cumsum, take, padding both ways, reverse, iota, dynamic_slice, stack, rsqrt, erf, ..."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  dw = rng.normal(size=(3, 3, 1, 8)).astype(np.float32)
  d = rng.normal(size=(32, 6)).astype(np.float32)
  x = x.astype(jnp.float32) / 255
  y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = lax.conv_general_dilated(y, dw, (2, 2), ((1, 0), (1, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               feature_group_count=8)
  y = jax.nn.gelu(y, approximate=False) + jnp.tanh(y) * jax.nn.sigmoid(y)
  y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  s = lax.reduce_window(y, 0., lax.add, (1, 1, 1, 3), (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (1, 1)))
  y = y + lax.pad(s, 0., ((0, 0, 0), (0, 0, 0), (1, -1, 0), (0, 0, 0)))
  flat = y.reshape(y.shape[0], -1) @ d
  am = jnp.argmax(flat, -1)
  mirrored = jnp.concatenate([flat, flat[:, ::-1]])
  return {"einsum": jnp.einsum("bk,bj->bkj", flat, flat).sum(-1), "sort": jnp.sort(flat, axis=-1),
          "cumsum": jnp.cumsum(flat, axis=1), "argmax": am.astype(jnp.int32), "take": jnp.take(jnp.arange(6.) * 2, am),
          "where": jnp.where(flat > 0, flat ** 3, jnp.clip(flat, -0.5, 0.5)),
          "mirror_mean": mirrored.reshape((2, x.shape[0], -1)).mean(0),
          "iota": lax.broadcasted_iota(jnp.int32, flat.shape, 1) * 2 + am[:, None],
          "dynamic_slice": lax.dynamic_slice_in_dim(flat, am[0], 2, axis=1),
          "stack": jnp.stack([flat.max(-1), flat.min(-1)], -1),
          "rsqrt": lax.rsqrt(jnp.abs(flat) + 1), "exp_log": jnp.exp(-flat) + jnp.log1p(jnp.abs(flat))}


def test_the_converter_matches_jax_on_every_rule_at_two_batch_sizes():
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("batch, 8, 8, 4"), jnp.uint8)
  session = _session(jaxpr_onnx.convert(_primitives, spec, input_names=["x"]))
  compiled = jax.jit(_primitives)
  for n in (1, 5):
    x = np.random.default_rng(n).integers(0, 256, (n, 8, 8, 4), np.uint8)
    got, want = _run(session, {"x": x}), compiled(x)
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_allclose(got[key], np.asarray(want[key]), rtol=1e-4, atol=1e-5, err_msg=f"{key}, batch {n}")


def test_an_unknown_primitive_is_named():
  def looped(x):
    return lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2), (0, x))[1]
  with pytest.raises(jaxpr_onnx.UnsupportedPrimitive, match="'while'.*@rule"):
    jaxpr_onnx.convert(looped, jax.ShapeDtypeStruct((2,), jnp.float32))


def test_symbolic_height_and_width_stay_symbolic():
  # A fully convolutional net (as a detector's proposal net) on any image size from one file:
  # shapes like floordiv(max(h - 2, 0) - 2, 2) + 1 are computed at run time.
  rng = np.random.default_rng(0)
  w1, w2 = rng.normal(size=(3, 3, 3, 10)).astype(np.float32) * 0.2, rng.normal(size=(1, 1, 10, 2)).astype(np.float32)
  slope = rng.uniform(0, 0.3, 10).astype(np.float32)

  def net(x):
    y = lax.conv_general_dilated(x, w1, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jnp.maximum(y, 0) + slope * jnp.minimum(y, 0)  # PReLU
    y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    y = lax.conv_general_dilated(y, w2, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return {"prob": jax.nn.softmax(y, axis=-1), "total": y.sum(axis=(1, 2))}
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("n, h, w, 3"), jnp.float32)
  session = _session(jaxpr_onnx.convert(net, spec, input_names=["image"]))
  assert session.get_inputs()[0].shape == ["n", "h", "w", 3]
  for shape in [(1, 12, 12, 3), (2, 31, 45, 3)]:
    x = rng.normal(size=shape).astype(np.float32)
    got, want = _run(session, {"image": x}), net(x)
    for key in want:
      np.testing.assert_allclose(got[key], np.asarray(want[key]), rtol=1e-4, atol=1e-5, err_msg=f"{key} {shape}")
