"""The jitted train step: same numbers on 1 and 8 devices; masks; optimizer semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax.train import experiment, optim, sharding, step as step_lib
from tests.tiny import random_batches, tiny_config, train_steps


def _run(devices, num_steps=3):
  _, state, losses = train_steps(tiny_config(), devices, num_steps)
  return losses, jax.device_get(state.params)


def test_one_and_eight_devices_give_the_same_losses_and_params():
  assert len(jax.devices()) == 8, "tests/conftest.py should fake 8 CPU devices"
  losses_1, params_1 = _run(jax.devices()[:1])
  losses_8, params_8 = _run(jax.devices())
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5, atol=1e-5)
  assert losses_1[0] != losses_1[-1]  # it trains
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_1, params_8)


def test_padded_examples_do_not_change_the_loss():
  cfg = tiny_config(**{"model.dropout_rate": 0.0})
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.key(0))
  train_step = jax.jit(step_lib.make_train_step(exp.model, exp.tx, exp.objective))
  batch = next(random_batches(1, 8, 64))
  _, clean = train_step(state, batch, jax.random.key(1))
  padded = {k: np.concatenate([v, v[:4] * 0 + 7]) for k, v in batch.items()}
  padded["mask"] = np.array([1] * 8 + [0] * 4, np.float32)
  _, masked = train_step(state, padded, jax.random.key(1))
  np.testing.assert_allclose(clean["loss"], masked["loss"], rtol=1e-6)


def test_step_schedule_divides_by_ten_every_interval():
  cfg = tiny_config(**{"optim.schedule": "step", "optim.step_every": 10, "optim.learning_rate": 1e-3})
  schedule = optim.make_schedule(cfg.optim, 35)
  np.testing.assert_allclose([schedule(0), schedule(9), schedule(10), schedule(20), schedule(34)],
                             [1e-3, 1e-3, 1e-4, 1e-5, 1e-6], rtol=1e-6)


def test_sgd_applies_weight_decay_to_kernels_before_momentum():
  cfg = tiny_config(**{"optim.schedule": "constant", "optim.learning_rate": 0.1,
                       "optim.momentum": 0.9, "optim.weight_decay": 0.5})
  tx = optim.make_optimizer(cfg.optim, 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  grads = {"kernel": jnp.full((2, 2), 0.2), "bias": jnp.full((2,), 0.2)}
  opt_state = tx.init(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  # Caffe: v = g + wd * w (kernels only); update = -lr * v on the first step.
  np.testing.assert_allclose(updates["kernel"], -0.1 * (0.2 + 0.5 * 1.0), rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], -0.1 * 0.2, rtol=1e-6)
  updates, _ = tx.update(grads, opt_state, params)  # momentum: v2 = g' + 0.9 v1
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.7 * 1.9, rtol=1e-6)


def test_batch_not_divisible_by_devices_is_rejected():
  cfg = tiny_config(**{"train.batch_size": 12})
  mesh = sharding.make_mesh(cfg.mesh)
  with pytest.raises(ValueError, match="config.train.batch_size=12 is not divisible by the 8 devices"):
    sharding.check_batch_size(cfg.train.batch_size, mesh)


def test_mesh_that_does_not_match_the_devices_is_rejected():
  cfg = tiny_config(**{"mesh.data": 3})
  with pytest.raises(ValueError, match="config.mesh.data=3 does not match the 8 available devices"):
    sharding.make_mesh(cfg.mesh)


def test_coral_head_shares_one_weight_and_starts_from_the_bias_prior():
  from age_jax import formulations
  cfg = tiny_config(**{"formulation.name": "coral"})
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  params = exp.abstract_state.params
  assert params["coral_bias"].shape == (100,)
  assert params["backbone"]["age_head"]["kernel"].shape == (16, 1)  # one weight vector for all thresholds
  state = exp.init_state(jax.random.key(0))
  np.testing.assert_allclose(state.params["coral_bias"], formulations.coral_bias_init(cfg.formulation))


def test_mirror_averaging_is_the_mean_of_the_image_and_its_mirror_image():
  cfg = tiny_config(**{"formulation.name": "dldl_v2", "multitask.kind": "parallel"})
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.key(0))
  batch = next(random_batches(1, 8, 64))
  plain = jax.jit(step_lib.make_predict_step(exp.model, exp.objective))
  mirrored = jax.jit(step_lib.make_predict_step(exp.model, exp.objective, mirror=True))
  one = plain(state.params, state.batch_stats, batch)
  flipped = plain(state.params, state.batch_stats, {**batch, "image": batch["image"][:, :, ::-1]})
  both = mirrored(state.params, state.batch_stats, batch)
  assert np.abs(one["pred_age"] - flipped["pred_age"]).max() > 1e-3  # the net is not symmetric
  for key in ("pred_age", "pred_spread"):
    np.testing.assert_allclose(both[key], (one[key] + flipped[key]) / 2, rtol=1e-5, atol=1e-5)
  assert both["pred_gender"].shape == (8,) and both["pred_race"].shape == (8,)
  np.testing.assert_array_equal(both["age"], batch["age"])  # labels pass through once


def test_a_frozen_backbone_trains_only_the_head_on_the_features_it_is_evaluated_on():
  cfg = tiny_config(**{"model.name": "resnet18", "model.resnet_width": 8, "formulation.name": "dldl_v2",
                       "train.trainable": "head"})
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.key(0))
  # Running statistics unlike a batch's, as after stage 1: train-mode BatchNorm would not see them.
  stats = jax.tree.map(lambda s: s + 0.5, jax.device_get(state.batch_stats))
  state = state.replace(batch_stats=stats)
  before = jax.device_get(state.params)
  batch = next(random_batches(1, 16, 64))
  outputs = exp.model.apply({"params": before, "batch_stats": stats}, batch["image"], train=False)
  expected_loss = float(jnp.mean(exp.objective.loss(outputs, batch)[0]))
  new_state, metrics = exp.jit_train_step()(state, batch, jax.random.key(1))
  np.testing.assert_allclose(float(metrics["loss"]), expected_loss, rtol=1e-5)
  after = jax.device_get(new_state.params)
  flat_before = dict(jax.tree_util.tree_flatten_with_path(before)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(after)[0]:
    changed = not np.array_equal(value, flat_before[path])
    assert changed == ("age_head" in jax.tree_util.keystr(path)), jax.tree_util.keystr(path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.batch_stats), stats)
