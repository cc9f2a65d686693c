"""Xing 2017 baseline (3.1.1, Fig. 2): shapes and parameter counts from the paper's layer sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import config as config_lib, models


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_paper_sized_baseline_has_the_hand_computed_parameter_count():
  cfg = config_lib.default_config().model
  model = models.get_model(cfg, num_outputs=1)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 227, 227, 3))))
  # 227 -> conv1 7x7/4 VALID: 56 -> pool 3/2: 27 -> conv2 (pad 2): 27 -> pool: 13
  #     -> conv3 (pad 1): 13 -> pool: 6, so FC1 sees 6*6*384 inputs.
  expected = ((7 * 7 * 3 * 96 + 96) + (5 * 5 * 96 * 256 + 256) + (3 * 3 * 256 * 384 + 384)
              + (6 * 6 * 384 * 512 + 512) + (512 * 512 + 512) + (512 * 1 + 1))
  assert _count(shapes["params"]) == expected == 8_855_553
  assert shapes["params"]["fc1"]["kernel"].shape == (6 * 6 * 384, 512)
  assert "batch_stats" not in shapes


def test_outputs_are_named_and_dropout_only_acts_in_training():
  cfg = config_lib.default_config().model
  cfg.conv_features, cfg.fc_features = (8, 8, 8), (16, 16)
  model = models.get_model(cfg, num_outputs=5)
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images)
  apply = jax.jit(model.apply, static_argnames="train")
  out = apply(variables, images, train=False)
  assert out["age"].shape == (2, 5) and out["features"].shape == (2, 16)
  again = apply(variables, images, train=False)
  np.testing.assert_array_equal(out["age"], again["age"])
  dropped = apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(out["features"], dropped["features"])
  assert np.mean(np.asarray(dropped["features"]) == 0) > np.mean(np.asarray(out["features"]) == 0)


def test_local_response_norm_matches_the_caffe_formula():
  from age_jax.models.layers import LocalResponseNorm
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7)) * 30
  y = LocalResponseNorm(size=5, alpha=1e-2, beta=0.75, k=2.0).apply({}, x)
  x = np.asarray(x, np.float64)
  expected = np.empty_like(x)
  for c in range(7):
    window = x[..., max(0, c - 2):c + 3]
    expected[..., c] = x[..., c] / (2.0 + 1e-2 / 5 * np.sum(window ** 2, axis=-1)) ** 0.75
  np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_unknown_model_name_lists_the_known_ones():
  cfg = config_lib.default_config().model
  cfg.name = "alexnet"
  with pytest.raises(ValueError, match=r"'alexnet' is not a known model; known: \[.*'xing_baseline'"):
    models.get_model(cfg, 1)
