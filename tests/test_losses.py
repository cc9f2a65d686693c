"""Losses against values worked out by hand on tiny inputs (formulas written out in each test)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import losses

E = math.exp


def test_age_to_class_rounds_and_clips_never_wraps():
  classes = losses.age_to_class(jnp.array([-3.0, 0.4, 2.6, 150.0, 12.0]), num_classes=5)
  np.testing.assert_array_equal(classes, [0, 0, 3, 4, 4])
  # min_age shifts the bins: age 12 is bin 2 of 10..14
  np.testing.assert_array_equal(losses.age_to_class(jnp.array([12.0, 9.0]), 5, min_age=10), [2, 0])


def test_one_hot_cross_entropy_is_minus_log_softmax_of_the_label():
  logits = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
  got = losses.one_hot_cross_entropy(logits, jnp.array([2, 0]))
  # -log(e^3 / (e + e^2 + e^3)) = log(1 + e^-1 + e^-2); class 0: log(1 + e + e^2)
  np.testing.assert_allclose(got, [math.log(1 + E(-1) + E(-2)), math.log(1 + E(1) + E(2))], rtol=1e-6)


def test_gaussian_label_distribution_is_normalised_over_the_bins():
  d = np.asarray(losses.gaussian_label_distribution(jnp.array([2.0, 0.0, 9.0]), num_classes=5, sigma=1.0))
  z = 1 + 2 * E(-0.5) + 2 * E(-2)  # eq. 7 for y=2: exp(-(k-2)^2/2) over k = 0..4
  np.testing.assert_allclose(d[0], [E(-2) / z, E(-0.5) / z, 1 / z, E(-0.5) / z, E(-2) / z], rtol=1e-6)
  # at the edge the Gaussian's mass is cut: normalised over the 5 bins, not by sigma*sqrt(2 pi)
  edge = np.array([1, E(-0.5), E(-2), E(-4.5), E(-8)])
  np.testing.assert_allclose(d[1], edge / edge.sum(), rtol=1e-6)
  np.testing.assert_allclose(d.sum(axis=1), 1.0, rtol=1e-6)
  # age 9 lies beyond the last bin (4): clipped, so it gets bin 4's distribution, not NaN
  np.testing.assert_allclose(d[2], edge[::-1] / edge.sum(), rtol=1e-6)


def test_gaussian_label_distribution_follows_min_age_and_sigma():
  shifted = losses.gaussian_label_distribution(jnp.array([12.5]), 5, sigma=2.0, min_age=10)
  w = np.array([E(-(k - 2.5) ** 2 / 8) for k in range(5)])
  np.testing.assert_allclose(shifted[0], w / w.sum(), rtol=1e-6)


def test_label_distribution_cross_entropy_and_kl():
  target = jnp.array([[0.5, 0.5], [1.0, 0.0]])
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])  # p = [1/4, 3/4] and [1/2, 1/2]
  ce = losses.label_distribution_cross_entropy(logits, target)
  np.testing.assert_allclose(ce, [-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), math.log(2)], rtol=1e-6)
  kl = losses.kl_divergence(logits, target)
  # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); the second has a 0 log 0 = 0 term
  np.testing.assert_allclose(kl, [0.5 * math.log(4 / 3), math.log(2)], rtol=1e-6)
  assert np.all(np.isfinite(kl))
  perfect = losses.kl_divergence(jnp.log(jnp.array([[0.2, 0.3, 0.5]])), jnp.array([[0.2, 0.3, 0.5]]))
  np.testing.assert_allclose(perfect, [0.0], atol=1e-6)


def test_softmax_expectation():
  got = losses.softmax_expectation(jnp.array([[0.0, math.log(3.0)]]), np.array([10.0, 11.0]))
  np.testing.assert_allclose(got, [0.25 * 10 + 0.75 * 11], rtol=1e-6)


def _kl_uniform_prediction(y, k, sigma=1.0):
  w = np.array([E(-(j - y) ** 2 / (2 * sigma ** 2)) for j in range(k)])
  z = w / w.sum()
  return float(np.sum(z * np.log(z)) + math.log(k))  # KL(z || uniform)


def test_dldl_v2_loss_is_kl_plus_lambda_l1_of_the_expectation():
  # zero logits over ages 0, 1, 2: uniform prediction, expectation 1
  got = losses.dldl_v2_loss(jnp.zeros((2, 3)), jnp.array([2.0, 1.0]), sigma=1.0, lam=0.5)
  np.testing.assert_allclose(got, [_kl_uniform_prediction(2, 3) + 0.5 * 1.0, _kl_uniform_prediction(1, 3) + 0.0],
                             rtol=1e-5)


def test_lae_stage2_loss_is_per_example():
  got = losses.lae_stage2_loss(jnp.zeros((2, 3)), jnp.array([2.0, 1.0]), sigma=1.0, validation_mae=0.25)
  # |2 - 1| = 1 -> (1 - 0.25)^2; |1 - 1| = 0 -> (0 - 0.25)^2
  np.testing.assert_allclose(got, [_kl_uniform_prediction(2, 3) + 0.75 ** 2, _kl_uniform_prediction(1, 3) + 0.25 ** 2],
                             rtol=1e-5)
  one = losses.lae_stage2_loss(jnp.zeros((1, 3)), jnp.array([2.0]), 1.0, 0.25)
  np.testing.assert_allclose(one[0], got[0], rtol=1e-6)  # no coupling across the batch


def test_lae_stage2_batch_mean_reading_has_the_batch_formula_value_and_gradient():
  logits = jax.random.normal(jax.random.key(0), (5, 7))
  ages = jnp.array([0.0, 2.0, 3.5, 6.0, 9.0])   # 9 is beyond the last bin: clipped like eq. 2

  def by_hand(logits):  # mean KL + (mean_i |y_i - E_i| - mae)^2, the batch read literally
    expected = jax.nn.softmax(logits) @ jnp.arange(7.0)
    return jnp.mean(losses.kl_divergence(logits, losses.gaussian_label_distribution(ages, 7, 1.0))) + (
        jnp.mean(jnp.abs(jnp.minimum(ages, 6.0) - expected)) - 1.5) ** 2

  ours = lambda logits: jnp.mean(losses.lae_stage2_loss(logits, ages, 1.0, 1.5, batch_mean=True))
  np.testing.assert_allclose(ours(logits), by_hand(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(by_hand)(logits), rtol=1e-4, atol=1e-6)
  per_example = losses.lae_stage2_loss(logits, ages, 1.0, 1.5)
  assert not np.allclose(jnp.mean(per_example), ours(logits))  # the two readings differ


def test_regression_errors():
  np.testing.assert_allclose(losses.squared_error(jnp.array([30.0, 18.5]), jnp.array([27.0, 20.0])), [9.0, 2.25])
  np.testing.assert_allclose(losses.absolute_error(jnp.array([30.0, 18.5]), jnp.array([27.0, 20.0])), [3.0, 1.5])


def test_ordinal_targets():
  got = losses.ordinal_targets(jnp.array([0, 2, 4]), num_tasks=4)
  np.testing.assert_array_equal(got, [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def test_ordinal_binary_cross_entropy_weights():
  targets = jnp.array([[1.0, 1.0, 0.0, 0.0]])
  ln2 = math.log(2)
  zeros = jnp.zeros((1, 4))
  np.testing.assert_allclose(losses.ordinal_binary_cross_entropy(zeros, targets), [4 * ln2], rtol=1e-6)
  np.testing.assert_allclose(
      losses.ordinal_binary_cross_entropy(zeros, targets, task_weights=jnp.array([1.0, 2.0, 0.0, 0.0])),
      [3 * ln2], rtol=1e-6)
  np.testing.assert_allclose(
      losses.ordinal_binary_cross_entropy(zeros, targets, pos_weights=jnp.full(4, 2.0), neg_weights=jnp.full(4, 0.5)),
      [(2 * 2 + 2 * 0.5) * ln2], rtol=1e-6)
  # stable for large logits: -log(1 - sigmoid(100)) = softplus(100) ~ 100, not inf
  big = losses.ordinal_binary_cross_entropy(jnp.array([[100.0, -100.0, 0.0, 0.0]]), jnp.array([[0.0, 1.0, 1.0, 0.0]]))
  np.testing.assert_allclose(big, [200 + 2 * ln2], rtol=1e-5)


def test_batch_balanced_class_weights_equalise_the_classes_of_each_task():
  targets = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
  pos_w, neg_w = losses.batch_balanced_class_weights(targets)
  # task 0: 2 positives, 1 negative in a batch of 3 -> 3/(2*2) and 3/(2*1); task 1: no positive -> 1, 1
  np.testing.assert_allclose(pos_w, [0.75, 1.0])
  np.testing.assert_allclose(neg_w, [1.5, 1.0])
  assert float(2 * pos_w[0]) == pytest.approx(float(1 * neg_w[0]))  # equal total weight per class
