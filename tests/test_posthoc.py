"""Logit adjustment and balanced softmax (formulations.py) and the choice of tau on validation
(train/posthoc.py), against hand computations."""
import json

import jax
import numpy as np
import pytest

from age_jax import formulations, losses
from age_jax.train import posthoc

K = 5
COUNTS = (0, 9, 30, 9, 2)   # bin 0 empty: the add-one prior keeps it finite


def _formulation(**fields):
  cfg = formulations.default_config()
  cfg.update({"name": "dldl_v2", "num_classes": K, "age_counts": COUNTS, **fields})
  return cfg, formulations.get_formulation(cfg)


def test_log_prior_is_add_one_smoothed():
  cfg, _ = _formulation()
  np.testing.assert_allclose(formulations.log_prior(cfg), np.log((np.array(COUNTS) + 1) / (50 + 5)), rtol=1e-6)


def test_adjusted_decode_moves_mass_to_rare_ages_and_matches_the_numpy_sweep():
  logits = np.random.default_rng(0).normal(size=(4, K)).astype(np.float32)
  cfg, plain = _formulation()
  _, adjusted = _formulation(logit_adjustment=0.7)
  prior = formulations.log_prior(cfg)
  z = logits - 0.7 * prior
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  by_hand = p @ np.arange(K)
  np.testing.assert_allclose(adjusted.decode(logits), by_hand, rtol=1e-5)
  log_probs = np.asarray(jax.nn.log_softmax(logits))[:, None]   # one view
  np.testing.assert_allclose(posthoc.adjusted_ages(log_probs, prior, np.arange(K), 0.7), by_hand, rtol=1e-5)
  np.testing.assert_allclose(posthoc.adjusted_ages(log_probs, prior, np.arange(K), 0.0), plain.decode(logits), rtol=1e-5)
  # Two views: the mean of the views' adjusted ages.
  two = np.concatenate([log_probs, log_probs[::-1]], axis=1)
  np.testing.assert_allclose(posthoc.adjusted_ages(two, prior, np.arange(K), 0.7), (by_hand + by_hand[::-1]) / 2,
                             rtol=1e-5)
  # The rare bins gain: the adjusted expectation moves away from the frequent middle bin.
  uniform = np.zeros((1, K), np.float32)
  assert abs(float(adjusted.decode(uniform)[0]) - 2) > abs(float(plain.decode(uniform)[0]) - 2) - 1e-6
  assert float(adjusted.spread(uniform)[0]) > float(plain.spread(uniform)[0])


def test_balanced_softmax_adds_the_log_prior_to_the_loss_logits_only():
  cfg, plain = _formulation()
  _, balanced = _formulation(balanced_softmax=True)
  logits = np.random.default_rng(1).normal(size=(3, K)).astype(np.float32)
  ages = np.array([1.0, 2.0, 4.0], np.float32)
  np.testing.assert_allclose(balanced.loss(logits, ages), plain.loss(logits + formulations.log_prior(cfg), ages),
                             rtol=1e-6)
  np.testing.assert_allclose(balanced.decode(logits), plain.decode(logits))


def test_choose_takes_the_lowest_balanced_mae_within_the_budget():
  rows = [{"tau": 0.0, "mae": 5.0, "group_balanced_mae": 6.5},
          {"tau": 0.5, "mae": 5.1, "group_balanced_mae": 6.0},
          {"tau": 1.0, "mae": 5.2, "group_balanced_mae": 5.7},
          {"tau": 1.5, "mae": 5.4, "group_balanced_mae": 5.5}]   # over a 0.2 budget
  assert posthoc.choose(rows, 0.2) == 1.0
  assert posthoc.choose(rows, 0.5) == 1.5
  assert posthoc.choose(rows, 0.0) == 0.0
  with pytest.raises(ValueError, match="tau = 0"):
    posthoc.choose(rows[1:], 0.2)


def test_sweep_scores_each_tau_on_the_faces():
  cfg, _ = _formulation()
  log_probs = np.asarray(jax.nn.log_softmax(np.random.default_rng(2).normal(size=(6, 2, K))))
  true = np.array([1.0, 2, 2, 3, 4, 2])
  rows = posthoc.sweep(log_probs, true, formulations.log_prior(cfg), np.arange(K), taus=(0.0, 1.0))
  pred = posthoc.adjusted_ages(log_probs, formulations.log_prior(cfg), np.arange(K), 1.0)
  assert rows[1]["tau"] == 1.0 and rows[1]["mae"] == pytest.approx(np.mean(np.abs(pred - true)))


def test_chosen_tau_is_kept_per_step_and_a_missing_step_names_the_command(tmp_path):
  (tmp_path / posthoc.FILE).write_text(json.dumps({"100": {"tau": 0.8}, "200": {"tau": 1.1}}))
  assert posthoc.chosen_tau(str(tmp_path), 200) == 1.1
  with pytest.raises(FileNotFoundError, match=r"step 300 \(steps with one: 100, 200\).*--step=300 --choose_logit_adjustment"):
    posthoc.chosen_tau(str(tmp_path), 300)


def test_bad_values_name_the_field():
  with pytest.raises(ValueError, match="logit_adjustment"):
    _formulation(logit_adjustment=-0.5)
  with pytest.raises(ValueError, match="logit_adjustment"):
    _formulation(name="mae", logit_adjustment=1.0)
  cfg = formulations.default_config()
  cfg.update({"name": "dldl_v2", "logit_adjustment": -1.0})
  assert formulations.needs_age_counts(cfg)
  with pytest.raises(ValueError, match="age_counts"):
    cfg.logit_adjustment = 1.0
    formulations.get_formulation(cfg)
