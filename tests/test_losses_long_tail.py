"""Long-tail terms (issue 26): LDS weights (DIR), Balanced MSE (BMC) and RankSim, against hand
computations and independent numpy re-implementations of the papers' code (values and
gradients; RankSim's blackbox gradient against the paper's rule), their wiring into the
formulation / objective, and their config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import convolve1d

from age_jax import config as config_lib
from age_jax import formulations, losses, objective
from age_jax.models import multitask

# --- LDS ---


def _reflect(m, n):
  """scipy.ndimage 'reflect' border (d c b a | a b c d | d c b a) as an index in 0..n-1."""
  m = m % (2 * n)
  return m if m < n else 2 * n - 1 - m


def _dir_gaussian_window(ks, sigma):
  """DIR's gaussian window, gaussian_filter1d of a ks-tap delta, re-derived: a Gaussian of radius
  int(4 sigma + 0.5), normalised, correlated with the reflected delta; then peak-normalised."""
  radius = int(4 * sigma + 0.5)
  taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
  taps /= taps.sum()
  delta = np.zeros(ks)
  delta[(ks - 1) // 2] = 1
  out = np.array([sum(taps[k + radius] * delta[_reflect(i - k, ks)] for k in range(-radius, radius + 1))
                  for i in range(ks)])
  return out / out.max()


def test_lds_kernel_windows_match_dir_formulas():
  np.testing.assert_allclose(losses.lds_kernel_window("gaussian", 5, 2.0), _dir_gaussian_window(5, 2.0), rtol=1e-6)
  np.testing.assert_allclose(losses.lds_kernel_window("gaussian", 5, 2.0), [0.8583, 0.9458, 1, 0.9458, 0.8583],
                             atol=1e-4)   # DIR's flat window, not exp(-x^2/8)
  np.testing.assert_allclose(losses.lds_kernel_window("triang", 5, 2.0), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
  np.testing.assert_allclose(losses.lds_kernel_window("laplace", 3, 2.0), [np.exp(-0.5), 1, np.exp(-0.5)])


def test_lds_weights_by_hand():
  # sqrt_inv: density sqrt([4, 0, 16]) = [2, 0, 4]; triang(3) = [.5, 1, .5] smooths it to [2, 3, 4];
  # 1/density = [1/2, 1/3, 1/4]; mean over the 20 examples (4 * 1/2 + 16 * 1/4) / 20 = 0.3.
  np.testing.assert_allclose(losses.lds_bin_weights([4, 0, 16], "sqrt_inv", "triang", 3),
                             [0.5 / 0.3, 1 / 0.9, 0.25 / 0.3], rtol=1e-6)
  # inverse without smoothing: counts clipped to [5, 1000] -> [5, 5, 1000]; 1/x mean over
  # the examples: (2 * 1/5 + 2000 * 1/1000) / 2002.
  mean = (2 / 5 + 2) / 2002
  np.testing.assert_allclose(losses.lds_bin_weights([2, 0, 2000], "inverse", "none"),
                             [0.2 / mean, 0.2 / mean, 0.001 / mean], rtol=1e-6)


def _dir_prepare_weights(labels, reweight, kernel, ks, sigma, max_target):
  """DIR's _prepare_weights, per example, as its code reads (dict counts, scipy convolve1d)."""
  value_dict = {x: 0 for x in range(max_target)}
  for label in labels:
    value_dict[min(max_target - 1, int(label))] += 1
  if reweight == "sqrt_inv":
    value_dict = {k: np.sqrt(v) for k, v in value_dict.items()}
  else:
    value_dict = {k: np.clip(v, 5, 1000) for k, v in value_dict.items()}
  num_per_label = [value_dict[min(max_target - 1, int(label))] for label in labels]
  if kernel != "none":
    window = losses.lds_kernel_window(kernel, ks, sigma)  # checked above against DIR's formulas
    smoothed = convolve1d(np.asarray(list(value_dict.values()), np.float64), weights=window, mode="constant")
    num_per_label = [smoothed[min(max_target - 1, int(label))] for label in labels]
  weights = [np.float32(1 / x) for x in num_per_label]
  scaling = len(weights) / np.sum(weights)
  return np.array([scaling * x for x in weights])


@pytest.mark.parametrize("reweight,kernel", [("sqrt_inv", "gaussian"), ("inverse", "gaussian"),
                                             ("sqrt_inv", "laplace"), ("sqrt_inv", "none")])
def test_lds_weights_match_dir_per_example(reweight, kernel):
  rng = np.random.default_rng(0)
  labels = np.concatenate([rng.integers(20, 40, 400), rng.integers(0, 101, 40), [100, 100]])
  counts = formulations.age_counts(labels, 101)
  mine = losses.lds_bin_weights(counts, reweight, kernel, 5, 2.0)[labels]
  np.testing.assert_allclose(mine, _dir_prepare_weights(labels, reweight, kernel, 5, 2.0, 101), rtol=1e-5)
  assert abs(mine.mean() - 1) < 1e-5 and mine.max() > 3 * mine.min()


def _fcfg(name, **fields):
  c = formulations.default_config()
  c.name = name
  c.update(fields)
  return c


@pytest.mark.parametrize("name", ["dldl_v2", "mse", "or", "lae_stage2"])
def test_lds_weighs_every_age_formulations_loss_by_its_bin(name):
  counts = tuple(int(c) for c in np.r_[np.full(30, 50), np.full(71, 2)])
  plain = formulations.get_formulation(_fcfg(name, lae_mae=5.0))
  weighted = formulations.get_formulation(_fcfg(name, lae_mae=5.0, lds_reweight="sqrt_inv", age_counts=counts))
  weights = losses.lds_bin_weights(counts, "sqrt_inv", "gaussian", 5, 2.0)
  out = jax.random.normal(jax.random.PRNGKey(1), (3, plain.num_outputs))
  ages = jnp.array([10.0, 70.4, 120.0])   # 120 clips into bin 100, as the losses do
  np.testing.assert_allclose(weighted.loss(out, ages), plain.loss(out, ages) * weights[[10, 70, 100]], rtol=1e-6)


def test_lds_needs_the_training_counts_and_names_bad_fields():
  assert formulations.needs_age_counts(_fcfg("dldl_v2", lds_reweight="sqrt_inv"))
  assert not formulations.needs_age_counts(_fcfg("dldl_v2"))
  with pytest.raises(ValueError, match="age_counts has 0 entries; lds_reweight='sqrt_inv'"):
    formulations.get_formulation(_fcfg("dldl_v2", lds_reweight="sqrt_inv"))
  for field, value in [("lds_reweight", "sqrt"), ("lds_kernel", "box"), ("lds_ks", 4), ("lds_sigma", 0.0),
                       ("bmse_weight", -1.0), ("bmse_sigma", 0.0), ("ranksim_weight", -0.1),
                       ("ranksim_lambda", 0.0)]:
    with pytest.raises(ValueError, match=f"config.formulation.{field}="):
      formulations.get_formulation(_fcfg("dldl_v2", **{field: value}))
  with pytest.raises(ValueError, match="config.formulation.ranksim_weight=.*identities"):
    formulations.check_fields(_fcfg("am_softmax", ranksim_weight=1.0))


# --- Balanced MSE (BMC) ---


def test_bmc_by_hand():
  # s = 1. Row 0: pred 0, targets 1, 3 -> logits -1/2, -9/2: L = 2 log(1 + e^-4).
  # Row 1: pred 2, both targets 1 away -> L = 2 log 2.
  got = losses.balanced_mse_bmc(jnp.array([0.0, 2.0]), jnp.array([1.0, 3.0]), 1.0)
  np.testing.assert_allclose(got, [2 * np.log1p(np.exp(-4)), 2 * np.log(2)], rtol=1e-5)


def _bmc_numpy(pred, y, s, valid):
  """Ren et al.'s bmc_loss per row over the valid targets, and d(sum of valid rows)/d pred."""
  pred, y = np.float64(pred), np.float64(y)
  idx = np.flatnonzero(valid)
  loss, grad = np.zeros(len(pred)), np.zeros(len(pred))
  for i in idx:
    logits = -(pred[i] - y[idx]) ** 2 / (2 * s * s)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    own = list(idx).index(i)
    loss[i] = -np.log(p[own]) * 2 * s * s
    # d/dpred_i of 2 s^2 (-logit_ii + logsumexp_j logit_ij), dlogit_ij/dpred_i = -(pred_i - y_j) / s^2
    grad[i] = 2 * ((pred[i] - y[i]) - np.sum(p * (pred[i] - y[idx])))
  return loss, grad


def test_bmc_matches_numpy_values_and_gradients_and_ignores_padding():
  rng = np.random.default_rng(1)
  pred, y = rng.uniform(0, 80, 7), rng.integers(1, 90, 7).astype(np.float64)
  valid = np.array([1, 1, 0, 1, 1, 1, 0])
  ref_loss, ref_grad = _bmc_numpy(pred, y, 8.0, valid)
  loss = losses.balanced_mse_bmc(pred, y, 8.0, valid)
  grad = jax.grad(lambda p: jnp.sum(losses.balanced_mse_bmc(p, y, 8.0, valid)))(jnp.asarray(pred, jnp.float32))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-4)
  # the padded rows are 0 and the padded targets change nothing
  keep = valid > 0
  np.testing.assert_allclose(loss[keep], losses.balanced_mse_bmc(pred[keep], y[keep], 8.0), rtol=1e-5)
  assert np.all(np.asarray(loss)[~keep] == 0)


# --- RankSim ---


def test_normalised_rank_by_hand_and_ties_later_index_first():
  np.testing.assert_allclose(losses.normalised_rank(jnp.array([0.1, 0.5, 0.3]), 3.0), [1, 1 / 3, 2 / 3])
  np.testing.assert_allclose(losses.normalised_rank(jnp.array([1.0, 1.0]), 2.0), [1.0, 0.5])
  # -inf entries (left out) rank last, after the `count` entries that rank
  np.testing.assert_allclose(losses.normalised_rank(jnp.array([0.2, -jnp.inf, 0.9]), 2.0)[jnp.array([0, 2])], [1, 0.5])


def _rank_numpy(seq):
  """RankSim's rank_normalised on one row: argsort(argsort(seq).flip) + 1, over len."""
  order = np.argsort(seq, kind="stable")[::-1]
  return (np.argsort(order, kind="stable") + 1) / len(seq)


def test_blackbox_rank_gradient_is_the_papers_rule():
  seq = np.array([0.30, 0.10, 0.25, 0.90, 0.50])
  g = np.array([0.02, -0.10, -0.06, 0.05, 0.30])
  lam = 2.0
  ranks, vjp = jax.vjp(lambda s: losses.blackbox_rank(s, jnp.float32(5), lam), jnp.asarray(seq, jnp.float32))
  (grad,) = vjp(jnp.asarray(g, jnp.float32))
  expected = -(_rank_numpy(seq) - _rank_numpy(seq + lam * g)) / lam   # TrueRanker.backward
  np.testing.assert_allclose(ranks, _rank_numpy(seq), rtol=1e-6)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  assert np.count_nonzero(expected) >= 2   # the perturbation reorders: a real test of the rule


def _ranksim_numpy(features, ages, lam, valid):
  """RankSim's batchwise_ranking_regularizer (first valid example of each age), and its gradient
  with respect to the features by hand: blackbox rule, then through cos = n n^T, n = x / |x|."""
  x, y = np.float64(features), np.float64(ages)
  keep = []
  for i in range(len(y)):
    if valid[i] and not any(valid[j] and y[j] == y[i] for j in range(i)):
      keep.append(i)
  xs, ys, m = x[keep], y[keep], len(keep)
  norms = np.linalg.norm(xs, axis=1, keepdims=True)
  unit = xs / norms
  sim = unit @ unit.T
  loss, d_sim = 0.0, np.zeros((m, m))
  for i in range(m):
    label_ranks = _rank_numpy(-np.abs(ys[i] - ys))
    feature_ranks = _rank_numpy(sim[i])
    loss += np.mean((feature_ranks - label_ranks) ** 2)
    g = 2 * (feature_ranks - label_ranks) / m
    d_sim[i] = -(feature_ranks - _rank_numpy(sim[i] + lam * g)) / lam
  d_unit = (d_sim + d_sim.T) @ unit
  d_x = (d_unit - unit * np.sum(d_unit * unit, axis=1, keepdims=True)) / norms
  grad = np.zeros_like(x)
  grad[keep] = d_x
  return loss, grad


def test_ranksim_matches_the_papers_code_values_and_gradients_with_duplicates_and_padding():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(9, 6))
  ages = np.array([30, 12, 30, 55, 12, 70, 41, 8, 90], np.float32)   # repeated ages: first one counts
  valid = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0])                     # 90 is padding
  ref_loss, ref_grad = _ranksim_numpy(features, ages, 2.0, valid)
  value, grad = jax.value_and_grad(losses.ranksim_regularizer)(jnp.asarray(features, jnp.float32), ages, 2.0, valid)
  np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
  assert ref_loss > 0 and np.abs(ref_grad).max() > 0
  assert np.all(np.asarray(grad)[[2, 4, 8]] == 0)   # repeats and padding get no gradient


# --- wiring: objective and config ---


def test_objective_adds_bmse_on_the_decoded_age_and_ranksim_once_per_batch():
  fcfg = _fcfg("dldl_v2", num_classes=11, bmse_weight=0.5, bmse_sigma=3.0, ranksim_weight=4.0)
  form = formulations.get_formulation(fcfg)
  terms = objective.BatchTerms.from_config(fcfg)
  logits = jax.random.normal(jax.random.PRNGKey(3), (4, 11))
  features = jax.random.normal(jax.random.PRNGKey(4), (4, 5))
  batch = {"age": jnp.array([2.0, 9.0, 14.0, 5.0]), "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
  loss, named = objective.per_example_loss({"age": logits, "features": features}, batch, form,
                                           multitask.default_config(), terms=terms)
  valid = np.array([1, 1, 1, 0])
  bmc = losses.balanced_mse_bmc(form.decode(logits), jnp.array([2.0, 9.0, 10.0, 5.0]), 3.0, valid)  # 14 -> bin 10
  rank = losses.ranksim_regularizer(features, batch["age"], 2.0, valid)
  np.testing.assert_allclose(named["bmse_loss"], bmc, rtol=1e-6)
  np.testing.assert_allclose(named["ranksim_loss"], np.full(4, rank), rtol=1e-6)
  np.testing.assert_allclose(loss, form.loss(logits, batch["age"]) + 0.5 * bmc + 4.0 * rank, rtol=1e-6)
  # defaults: the loss is the formulation's alone, with its usual term names
  plain, named = objective.per_example_loss({"age": logits}, batch, form, multitask.default_config())
  np.testing.assert_allclose(plain, form.loss(logits, batch["age"]))
  assert set(named) == {"age_loss"}


def test_objective_bmse_joins_the_multitask_age_term():
  fcfg = _fcfg("mae", bmse_weight=1.0, bmse_sigma=5.0)
  form = formulations.get_formulation(fcfg)
  mt = multitask.default_config()
  mt.kind, mt.num_races = "parallel", 2
  out = jnp.array([[0.1], [-0.4], [0.7]])
  outputs = {"age": out, "gender": jnp.zeros((3, 2)), "race": jnp.zeros((3, 2))}
  batch = {"age": jnp.array([30.0, 20.0, 50.0]), "gender": jnp.array([0, 1, -1]), "race": jnp.array([1, 0, 0])}
  loss, named = objective.per_example_loss(outputs, batch, form, mt, terms=objective.BatchTerms.from_config(fcfg))
  bmc = losses.balanced_mse_bmc(33 + 20 * out[:, 0], batch["age"], 5.0)
  np.testing.assert_allclose(named["age_loss"], form.loss(out, batch["age"]) + bmc, rtol=1e-6)
  np.testing.assert_allclose(loss, named["age_loss"] + named["gender_loss"] + named["race_loss"], rtol=1e-6)


def test_config_refuses_ranksim_where_there_are_no_features_to_train():
  from tests.tiny import tiny_config
  cfg = tiny_config()
  cfg.formulation.ranksim_weight = 1.0
  cfg.train.trainable = "head"
  with pytest.raises(ValueError, match="ranksim_weight > 0 with config.train.trainable='head'"):
    config_lib.validate(cfg)
  cfg.train.trainable = "all"
  cfg.multitask.kind = "hybrid"
  with pytest.raises(ValueError, match="ranksim_weight > 0 with config.multitask.kind='hybrid'"):
    config_lib.validate(cfg)


def test_config_refuses_a_later_stages_lds_whose_counts_training_would_not_fill():
  from tests.tiny import tiny_config
  cfg = tiny_config()
  cfg.stages = {"a": {}, "b": {"formulation": {"lds_reweight": "sqrt_inv"}}}
  with pytest.raises(ValueError, match="stage 'b' needs config.formulation.age_counts"):
    config_lib.validate(cfg)
  cfg.formulation.lds_reweight = "sqrt_inv"   # the top level needs them too: training fills them
  config_lib.validate(cfg)
