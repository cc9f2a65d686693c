"""Formulations: head sizes, losses and decoders by hand, gradients against finite differences,
config errors and the out-of-range age check."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import config as config_lib
from age_jax import formulations

LN2 = math.log(2)


def _cfg(name, **fields):
  c = formulations.default_config()
  c.name = name
  c.lae_mae = 2.0 if name == "lae_stage2" else c.lae_mae
  for key, value in fields.items():
    c[key] = value
  return c


def _get(name, **fields):
  return formulations.get_formulation(_cfg(name, **fields))


@pytest.mark.parametrize("name,outputs,head", [
    ("oh", 7, "dense"), ("oh_expectation", 7, "dense"), ("ldl", 7, "dense"), ("dldl_v2", 7, "dense"),
    ("lae_stage2", 7, "dense"), ("mse", 1, "dense"), ("mae", 1, "dense"), ("or", 6, "dense"), ("coral", 6, "coral")])
def test_head_sizes(name, outputs, head):
  f = _get(name, num_classes=7)
  assert (f.name, f.num_outputs, f.head) == (name, outputs, head)


def test_default_config_is_valid_and_has_the_regression_fields():
  c = config_lib.validate(config_lib.default_config())
  assert (c.formulation.regression_offset, c.formulation.regression_scale) == (33.0, 20.0)
  assert c.formulation.num_classes == 101


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError) as err:
    _get("softmax")
  for name in formulations.NAMES:
    assert repr(name) in str(err.value)
  assert "config.formulation.name" in str(err.value)


@pytest.mark.parametrize("name,field,value,needle", [
    ("lae_stage2", "lae_mae", -1.0, "config.formulation.lae_mae"),
    ("lae_stage2", "lae_reading", "batch", "config.formulation.lae_reading"),
    ("ldl", "sigma", 0.0, "config.formulation.sigma"),
    ("mae", "decode", "argmax", "config.formulation.decode"),
    ("oh", "decode", "median", "config.formulation.decode"),
    ("oh", "num_classes", 1, "config.formulation.num_classes"),
    ("or", "or_class_balance", "dataset", "config.formulation.age_counts"),
    ("or", "or_task_weights", "sqrt_count", "config.formulation.age_counts"),
    ("oh", "out_of_range", "wrap", "config.formulation.out_of_range"),
])
def test_bad_fields_are_named(name, field, value, needle):
  with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
    _get(name, **{field: value})


# --- decoders ---

def test_decoders():
  logits = jnp.array([[0.0, math.log(3.0), -50.0]])  # p ~ [1/4, 3/4, 0]
  assert float(_get("oh", num_classes=3, min_age=10).decode(logits)[0]) == 11.0
  np.testing.assert_allclose(_get("oh_expectation", num_classes=3, min_age=10).decode(logits), [10.75], rtol=1e-6)
  np.testing.assert_allclose(_get("dldl_v2", num_classes=3).decode(logits), [0.75], rtol=1e-6)
  assert float(_get("ldl", num_classes=3).decode(logits)[0]) == 1.0
  np.testing.assert_allclose(_get("ldl", num_classes=3, decode="expectation").decode(logits), [0.75], rtol=1e-6)
  np.testing.assert_allclose(_get("mae").decode(jnp.array([[0.5], [-1.0]])), [43.0, 13.0])
  np.testing.assert_allclose(_get("mse", regression_offset=0.0, regression_scale=1.0).decode(jnp.array([[7.5]])), [7.5])
  # eq. 11: count the positive binary decisions (logit > 0 <=> p > 0.5), from min_age
  ordinal = jnp.array([[2.0, -1.0, 0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
  np.testing.assert_allclose(_get("or", num_classes=5, min_age=1).decode(ordinal), [3.0, 1.0])
  np.testing.assert_allclose(_get("coral", num_classes=5).decode(ordinal), [2.0, 0.0])
  for name in formulations.AGE_NAMES:
    f = _get(name, num_classes=5)
    decoded = jax.jit(f.decode)(jnp.zeros((2, f.num_outputs)))
    assert decoded.shape == (2,) and decoded.dtype == jnp.float32


# --- losses through the formulations ---

def test_oh_loss_uses_the_nearest_bin_from_min_age():
  f = _get("oh", num_classes=3, min_age=10)
  logits = jnp.array([[1.0, 2.0, 3.0]] * 3)
  got = f.loss(logits, jnp.array([12.0, 9.6, 30.0]))  # bins 2, 0 (clipped up), 2 (clipped down)
  expected = [math.log(1 + math.exp(-1) + math.exp(-2)), math.log(1 + math.e + math.e ** 2)]
  np.testing.assert_allclose(got, [expected[0], expected[1], expected[0]], rtol=1e-6)


def test_ldl_target_is_normalised_over_the_bins():
  # zero logits: -sum_k d_k log(1/K) = log K exactly when sum_k d_k = 1, also at the edge bin
  f = _get("ldl", num_classes=4, sigma=2.0)
  np.testing.assert_allclose(f.loss(jnp.zeros((2, 4)), jnp.array([0.0, 1.5])), [math.log(4)] * 2, rtol=1e-6)


def test_regression_losses_in_years():
  out = jnp.array([[0.5], [-0.25]])  # ages 43 and 28
  ages = jnp.array([40.0, 30.0])
  np.testing.assert_allclose(_get("mse").loss(out, ages), [9.0, 4.0], rtol=1e-6)
  np.testing.assert_allclose(_get("mae").loss(out, ages), [3.0, 2.0], rtol=1e-6)


def test_ordinal_loss_plain():
  f = _get("or", num_classes=4)
  # age 2 -> targets [1, 1, 0]; logits [0, 3, -1]: log 2 + softplus(-3) + softplus(-1)
  got = f.loss(jnp.array([[0.0, 3.0, -1.0]]), jnp.array([2.0]))
  sp = lambda x: math.log1p(math.exp(x))
  np.testing.assert_allclose(got, [LN2 + sp(-3) + sp(-1)], rtol=1e-6)


def test_ordinal_dataset_class_balance():
  plain = _cfg("or", num_classes=3, or_class_balance="dataset")
  assert formulations.needs_age_counts(plain) and not formulations.needs_age_counts(_cfg("or"))
  fcfg = formulations.with_age_counts(plain, np.array([0.0, 1.0, 1.0, 2.0]))
  assert fcfg.age_counts == (1, 2, 1) and not formulations.needs_age_counts(fcfg)
  f = formulations.get_formulation(fcfg)
  # p_0 = P(age > 0) = 3/4, p_1 = P(age > 1) = 1/4: w+ = 0.5/p = [2/3, 2], w- = 0.5/(1-p) = [2, 2/3]
  got = f.loss(jnp.zeros((3, 2)), jnp.array([2.0, 0.0, 1.0]))
  np.testing.assert_allclose(got, [(2 / 3 + 2) * LN2, (2 + 2 / 3) * LN2, (2 / 3 + 2 / 3) * LN2], rtol=1e-5)
  capped = formulations.get_formulation(formulations.with_age_counts(
      _cfg("or", num_classes=3, or_class_balance="dataset", or_max_class_weight=1.5), np.array([0.0, 1.0, 1.0, 2.0])))
  np.testing.assert_allclose(capped.loss(jnp.zeros((1, 2)), jnp.array([2.0])), [(2 / 3 + 1.5) * LN2], rtol=1e-5)


def test_ordinal_sqrt_count_task_weights():
  fcfg = _cfg("coral", num_classes=3, or_task_weights="sqrt_count")
  fcfg.age_counts = (1, 4, 9)
  f = formulations.get_formulation(fcfg)
  # tasks 0, 1 use the counts of bins 0, 1: sqrt = [1, 2], rescaled to mean 1 -> [2/3, 4/3]
  got = f.loss(jnp.array([[0.0, 10.0]]), jnp.array([0.0]))  # targets [0, 0]
  np.testing.assert_allclose(got, [2 / 3 * LN2 + 4 / 3 * math.log1p(math.exp(10.0))], rtol=1e-5)


def test_ordinal_batch_class_balance_couples_the_batch():
  f = _get("or", num_classes=3, or_class_balance="batch")
  # targets [[0,0],[1,1],[1,1]]: per task 2 positives, 1 negative -> w+ = 3/4, w- = 3/2
  got = f.loss(jnp.zeros((3, 2)), jnp.array([0.0, 2.0, 2.0]))
  np.testing.assert_allclose(got, [3 * LN2, 1.5 * LN2, 1.5 * LN2], rtol=1e-6)


def test_lae_stage2_uses_the_configured_validation_mae():
  a = _get("lae_stage2", num_classes=3, lae_mae=0.25).loss(jnp.zeros((1, 3)), jnp.array([2.0]))
  b = _get("dldl_v2", num_classes=3, dldl_lambda=0.0).loss(jnp.zeros((1, 3)), jnp.array([2.0]))
  np.testing.assert_allclose(a - b, [0.75 ** 2], rtol=1e-5)  # (|2 - 1| - 0.25)^2 on top of the KL


# --- gradients against central finite differences ---

@pytest.mark.parametrize("name", formulations.AGE_NAMES)
def test_gradients_match_finite_differences(name):
  f = _get(name, num_classes=6, lae_mae=0.7, sigma=1.5)
  rng = np.random.default_rng(0)
  outputs = rng.normal(size=(3, f.num_outputs)).astype(np.float32)
  if name in ("mse", "mae"):
    outputs = np.array([[0.3], [-0.4], [1.1]], np.float32)  # away from |.|'s kink at the true ages
  ages = jnp.array([1.0, 3.0, 4.6])
  total = lambda out: jnp.sum(f.loss(out, ages))
  grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(outputs)))
  eps = 1e-2
  for i, j in [(0, 0), (1, f.num_outputs - 1), (2, f.num_outputs // 2)]:
    up, down = outputs.copy(), outputs.copy()
    up[i, j] += eps
    down[i, j] -= eps
    numeric = (float(total(jnp.asarray(up))) - float(total(jnp.asarray(down)))) / (2 * eps)
    assert grad[i, j] == pytest.approx(numeric, rel=2e-2, abs=2e-3), (name, i, j)


def test_losses_are_float32_and_jit():
  for name in formulations.AGE_NAMES:
    f = _get(name, num_classes=5)
    loss = jax.jit(f.loss)(jnp.zeros((4, f.num_outputs)), jnp.array([0.0, 1.0, 4.0, 7.0]))
    assert loss.shape == (4,) and loss.dtype == jnp.float32 and np.all(np.isfinite(loss)), name


# --- training labels against the head's range ---

def test_check_ages_clips_with_a_warning(caplog):
  with caplog.at_level("WARNING"):
    got = formulations.check_ages(np.array([3.0, 105.0, 116.0, -1.0]), _cfg("dldl_v2"))
  np.testing.assert_array_equal(got, [3.0, 100.0, 100.0, 0.0])
  assert "3 training ages are outside" in caplog.text and "116" in caplog.text


def test_check_ages_rejects_naming_the_field_and_the_ages():
  with pytest.raises(ValueError) as err:
    formulations.check_ages(np.array([3.0, 105.0, 116.0, 116.0]), _cfg("oh", out_of_range="error"))
  message = str(err.value)
  assert "config.formulation.out_of_range" in message and "105 (x1)" in message and "116 (x2)" in message
  # in range: unchanged
  np.testing.assert_array_equal(formulations.check_ages(np.array([0.0, 100.0]), _cfg("oh", out_of_range="error")),
                                [0.0, 100.0])


def test_check_ages_regression_has_no_range_but_rejects_nan():
  np.testing.assert_array_equal(formulations.check_ages(np.array([116.0]), _cfg("mae", out_of_range="error")), [116.0])
  with pytest.raises(ValueError, match="not finite"):
    formulations.check_ages(np.array([20.0, np.nan]), _cfg("mae"))


def test_age_counts_round_and_clip_like_the_losses():
  assert formulations.age_counts(np.array([-1.0, 0.0, 3.6, 200.0, 2.5]), 5) == (2, 0, 0, 1, 2)  # 2.5 -> 3
  assert formulations.age_counts(np.array([11.0, 12.0]), 3, min_age=10) == (0, 1, 1)


def test_coral_bias_prior_predicts_the_mean_age_from_a_zero_logit():
  cfg = formulations.default_config()
  cfg.name = "coral"
  biases = formulations.coral_bias_init(cfg)
  assert biases.shape == (cfg.num_classes - 1,) and np.all(np.diff(biases) < 0)  # ordered thresholds
  f = formulations.get_formulation(cfg)
  # A shared logit of 0: the count of positive thresholds is the prior's mean, 33 (offset).
  assert float(f.decode(jnp.asarray(biases)[None, :])[0]) == pytest.approx(cfg.regression_offset, abs=1)


def test_age_formulations_refuse_unknown_ages_and_identity_pretraining_checks_its_labels():
  from age_jax import objective
  with pytest.raises(ValueError, match=r"none of the 2 training images has an age \(all -1, unknown\).*'am_softmax'"):
    formulations.check_ages(np.array([-1.0, -1.0]), _cfg("mae"))
  c = config_lib.default_config()
  c.formulation.name = "am_softmax"
  config_lib.validate(c)                    # num_identities = 0: training fills it in from the build
  with pytest.raises(ValueError, match="num_identities=0; expected at least 2 identities"):
    formulations.get_formulation(c.formulation)
  c.formulation.num_identities = 3
  objective.check_labels(c, {"identity": np.array([0, 2])})
  with pytest.raises(ValueError, match="has no 'identity' labels; use an identity dataset"):
    objective.check_labels(c, {"age": np.array([30.0])})
  with pytest.raises(ValueError, match=r"'identity' labels \[3\] are outside 0..2"):
    objective.check_labels(c, {"identity": np.array([0, 3])})
  c.formulation.am_margin = 1.5
  with pytest.raises(ValueError, match=r"config.formulation.am_margin=1.5; expected a cosine margin"):
    config_lib.validate(c)
  c.formulation.am_margin, c.multitask.kind = 0.35, "parallel"
  with pytest.raises(ValueError, match="face-identity pre-training has no age heads"):
    config_lib.validate(c)
