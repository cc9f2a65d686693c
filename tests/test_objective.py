"""The objective: eq. 12 (parallel / deep), the hybrid's three training steps and eq. 13,
trainable masks per step, and label checks, against hand computations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from age_jax import formulations, objective
from age_jax.models import multitask
from age_jax.models.baseline import XingBaseline
from tests.tiny import tiny_config


def _config(kind="none", **mt):
  c = tiny_config()
  c.multitask = multitask.default_config()
  c.multitask.kind, c.multitask.num_races = kind, 2
  c.multitask.update(mt)
  return c


MAE = formulations.get_formulation(formulations.default_config())  # age = 33 + 20 * output


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def test_single_task_loss_is_the_formulation_loss_also_without_a_multitask_section():
  cfg = tiny_config()  # no config.multitask yet: single task
  outputs = {"age": jnp.array([[0.0], [1.0]])}
  loss, terms = objective.build(cfg, MAE).loss(outputs, {"age": jnp.array([30.0, 50.0])})
  np.testing.assert_allclose(loss, [3.0, 3.0])
  assert set(terms) == {"age_loss"}


def test_equation_12_with_unknown_labels_masked():
  cfg = _config("parallel", alpha=0.5, beta=2.0)
  outputs = {"age": jnp.array([[0.1], [-0.2], [0.0]]),
             "gender": jnp.array([[2.0, -1.0], [0.5, 0.5], [0.0, 3.0]]),
             "race": jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])}
  batch = {"age": jnp.array([30.0, 40.0, 33.0]), "gender": jnp.array([0, 1, -1]),
           "race": jnp.array([1, -1, 0])}
  loss, terms = objective.build(cfg, MAE).loss(outputs, batch)
  age = np.abs(33 + 20 * np.array([0.1, -0.2, 0.0]) - [30, 40, 33])       # |35-30|, |29-40|, 0
  g = -_log_softmax(outputs["gender"])
  r = -_log_softmax(outputs["race"])
  gender = np.array([g[0, 0], g[1, 1], 0.0])
  race = np.array([r[0, 1], 0.0, r[2, 0]])
  np.testing.assert_allclose(terms["age_loss"], [5.0, 11.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(terms["gender_loss"], gender, rtol=1e-6)
  np.testing.assert_allclose(loss, age + 0.5 * gender + 2.0 * race, rtol=1e-6)


def _hybrid_outputs():
  # B = 2, G = 4 (race-major: race * 2 + gender), one regression output per group.
  group = jnp.array([[1.0, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
  group_age = jnp.array([[[0.0], [0.5], [-0.5], [1.0]], [[0.1], [0.2], [0.3], [0.4]]])
  return {"group": group, "group_age": group_age}


def test_hybrid_stage_losses():
  cfg = _config("hybrid", group_weight=0.3)
  outputs = _hybrid_outputs()
  batch = {"age": jnp.array([50.0, 40.0]), "gender": jnp.array([1, 0]), "race": jnp.array([1, -1])}
  ce = -_log_softmax(outputs["group"])
  # Example 0 is group 3 (race 1, gender 1); example 1's race is unknown: no group.
  loss, terms = objective.build(cfg, MAE).loss(outputs, batch, stage="group")
  np.testing.assert_allclose(loss, [ce[0, 3], 0.0], rtol=1e-6)
  loss, terms = objective.build(cfg, MAE).loss(outputs, batch, stage="group_age")
  np.testing.assert_allclose(loss, [abs(33 + 20 * 1.0 - 50), 0.0], rtol=1e-6)   # group 3's estimator
  cfg.multitask.stage = "end_to_end"
  loss, terms = objective.build(cfg, MAE).loss(outputs, batch)
  p = np.exp(_log_softmax(outputs["group"]))
  fused = 33 + 20 * np.sum(p * np.asarray(outputs["group_age"])[..., 0], axis=1)
  np.testing.assert_allclose(terms["age_loss"], np.abs(fused - [50, 40]), rtol=1e-5)
  np.testing.assert_allclose(loss, np.abs(fused - [50, 40]) + 0.3 * np.array([ce[0, 3], 0.0]), rtol=1e-5)


def test_group_age_step_sends_gradient_only_to_the_examples_own_group():
  cfg = _config("hybrid")
  outputs = _hybrid_outputs()
  batch = {"age": jnp.array([50.0, 40.0]), "gender": jnp.array([0, 1]), "race": jnp.array([0, 1])}
  grad = jax.grad(lambda ga: jnp.sum(objective.build(cfg, MAE).loss(
      {**outputs, "group_age": ga}, batch, stage="group_age")[0]))(outputs["group_age"])
  nonzero = np.argwhere(np.asarray(grad)[..., 0] != 0).tolist()
  assert nonzero == [[0, 0], [1, 3]]


def test_equation_13_for_regression_is_the_weighted_mean_of_the_groups_ages():
  outputs = _hybrid_outputs()
  p = np.exp(_log_softmax(outputs["group"]))
  ages = 33 + 20 * np.asarray(outputs["group_age"])[..., 0]
  np.testing.assert_allclose(objective.predicted_age(outputs, MAE), np.sum(p * ages, axis=1), rtol=1e-5)


def _dldl_v2(k=5):
  cfg = formulations.default_config()
  cfg.name, cfg.num_classes = "dldl_v2", k
  return formulations.get_formulation(cfg)


def test_hybrid_distribution_head_trains_on_what_evaluation_predicts():
  # Two groups of a 5-bin DLDL-v2 head: training's L_er must use evaluation's fused age.
  form = _dldl_v2()
  group = jnp.array([[0.3, -0.4], [1.5, 0.0]])
  group_age = jnp.array([[[4.0, 1.0, 0.0, -1.0, 0.0], [0.0, 0.0, 1.0, 2.0, 5.0]],
                         [[0.0, 3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]]])
  outputs = {"group": group, "group_age": group_age}
  batch = {"age": jnp.array([3.0, 1.0]), "gender": jnp.array([0, 1]), "race": jnp.array([0, 0])}
  cfg = _config("hybrid", group_weight=0.0, stage="end_to_end")
  loss, terms = objective.build(cfg, form).loss(outputs, batch)
  # By hand: the mixture of the groups' softmaxes, its KL to the Gaussian target, its expectation.
  p = np.exp(_log_softmax(group))
  mixture = np.einsum("bg,bgk->bk", p, np.exp(_log_softmax(group_age)))
  expected_age = mixture @ np.arange(5.0)
  target = np.exp(-(np.arange(5.0)[None] - np.array([[3.0], [1.0]])) ** 2 / 2)
  target /= target.sum(1, keepdims=True)
  kl = np.sum(target * np.log(target / mixture), axis=1)
  np.testing.assert_allclose(objective.predicted_age(outputs, form), expected_age, rtol=1e-5)
  np.testing.assert_allclose(terms["age_loss"], kl + np.abs([3.0, 1.0] - expected_age), rtol=1e-4)
  # Eq. 13 as written (sum_g p_g * E_g) is the same age: expectation is linear in the mixture.
  per_group = np.exp(_log_softmax(group_age)) @ np.arange(5.0)
  np.testing.assert_allclose(expected_age, np.sum(p * per_group, axis=1), rtol=1e-5)


def test_hybrid_ordinal_head_fuses_task_probabilities():
  cfg = formulations.default_config()
  cfg.name, cfg.num_classes = "or", 4
  form = formulations.get_formulation(cfg)
  group = jnp.array([[0.0, 0.0]])
  # group 0 is sure the age is above bins 0, 1 (age 2); group 1 only above bin 0 (age 1).
  group_age = jnp.array([[[9.0, 9.0, -9.0], [9.0, -9.0, -9.0]]])
  fused = np.asarray(objective.age_outputs({"group": group, "group_age": group_age}, form))
  sigmoid = 1 / (1 + np.exp(-fused))
  np.testing.assert_allclose(sigmoid, [[1.0, 0.5, 0.0]], atol=1e-3)
  np.testing.assert_allclose(form.loss(jnp.asarray(fused), jnp.array([2.0])),
                             [-np.log(sigmoid[0, 0]) - np.log(sigmoid[0, 1]) - np.log(1 - sigmoid[0, 2])],
                             rtol=1e-4)


def _hybrid_params():
  trunk = functools.partial(XingBaseline, conv_features=(4, 4, 4), fc_features=(8, 8))
  model = multitask.Hybrid(trunk, None, num_races=2, groups="gender")
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]


def test_trainable_masks_per_hybrid_step():
  params = _hybrid_params()
  def trained(stage):
    mask = objective.hybrid_trainable_mask(params, stage)
    return sorted({path[0].key for path, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m})
  assert trained("group") == ["group_classifier", "group_head", "shared"]
  assert trained("group_age") == ["group_0", "group_1"]
  assert trained("end_to_end") == sorted(params)
  # optax.masked alone passes frozen gradients through unchanged; multi_transform with
  # set_to_zero freezes them.
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape), params)
  labels = jax.tree.map(lambda t: "train" if t else "freeze", objective.hybrid_trainable_mask(params, "group_age"))
  tx = optax.multi_transform({"train": optax.sgd(1.0), "freeze": optax.set_to_zero()}, labels)
  grads = jax.tree.map(jnp.ones_like, zeros)
  updates, _ = tx.update(grads, tx.init(zeros), zeros)
  assert float(jnp.abs(updates["shared"]["conv1"]["kernel"]).sum()) == 0
  np.testing.assert_array_equal(updates["group_1"]["fc2"]["bias"], -1.0)
  with pytest.raises(ValueError, match="no 'shared' subtree"):
    objective.hybrid_trainable_mask({"conv1": {}}, "group")
  with pytest.raises(ValueError, match="training stage 'warmup'"):
    objective.hybrid_trainable_mask(params, "warmup")


def test_check_labels_names_the_missing_label():
  good = {"gender": np.array([0, 1, -1]), "race": np.array([1, 0, 0])}
  objective.check_labels(_config("parallel"), good)
  objective.check_labels(_config("none"), {})  # single task needs nothing
  with pytest.raises(ValueError, match="needs 'race' labels, but the dataset has only unknown"):
    objective.check_labels(_config("deep"), {"gender": good["gender"], "race": np.full(3, -1)})
  with pytest.raises(ValueError, match="needs 'gender' labels, but the dataset has no such field"):
    objective.check_labels(_config("hybrid", groups="gender"), {"race": good["race"]})
  objective.check_labels(_config("hybrid", groups="race"), {"race": good["race"]})
  with pytest.raises(ValueError, match=r"'race' labels \[4\] are outside 0..1 \(config.multitask.num_races\)"):
    objective.check_labels(_config("parallel"), {"gender": good["gender"], "race": np.array([0, 4])})


def test_predictions_average_every_view_and_its_mirror():
  # A toy 'model' whose age is the mean pixel of the left half: a mirror image changes it.
  apply = lambda images: {"age": jnp.mean(images[:, :, :2], axis=(1, 2, 3))[:, None]}
  mae = formulations.get_formulation(tiny_config(**{"formulation.name": "mae"}).formulation)
  images = np.random.default_rng(0).normal(size=(3, 4, 4, 4, 1)).astype(np.float32)   # 3 faces x 4 views
  decode = lambda x: 33.0 + 20.0 * x   # the 'mae' head's decoder (offset 33, scale 20)
  left = lambda v: np.mean(v[:, :, :2], axis=(1, 2, 3))
  by_hand = np.mean([decode(left(images[:, v])) for v in range(4)], axis=0)
  got = objective.predictions(apply, jnp.asarray(images), mae)["age"]
  np.testing.assert_allclose(got, by_hand, rtol=1e-5)
  mirrored = np.mean([decode(left(images[:, v])) for v in range(4)]
                     + [decode(left(images[:, v, :, ::-1])) for v in range(4)], axis=0)
  np.testing.assert_allclose(objective.predictions(apply, jnp.asarray(images), mae, mirror=True)["age"],
                             mirrored, rtol=1e-5)
