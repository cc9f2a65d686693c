"""Xing 2017 multi-task networks (3.3, Fig. 4): exact parameter counts, outputs, eq. 13 fusion,
forward/backward, on the tiny Xing baseline and (shapes only) on VGG-16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import models
from age_jax.models import multitask
from tests.tiny import tiny_config


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _config(kind, **mt):
  c = tiny_config()
  c.multitask = multitask.default_config()
  c.multitask.kind = kind
  c.multitask.num_races = 2
  c.multitask.branch_reduce, c.multitask.branch_pool, c.multitask.branch_features = 4, 2, (8, 8)
  c.multitask.update(mt)
  return c


# Tiny baseline (conv 8,8,8; fc 16,16) at 64 px: 64 -> conv1 15 -> pool 7 -> conv2 7 -> pool 3
# -> conv3 3 -> pool 1, so FC1 has 8 inputs.
CONV12 = (7 * 7 * 3 * 8 + 8) + (5 * 5 * 8 * 8 + 8)
TOP = (3 * 3 * 8 * 8 + 8) + (8 * 16 + 16) + (16 * 16 + 16)
HEAD = 16 * 1 + 1


def _branch(classes):  # 1x1 reduce 8 -> 4, pool to 2x2, FC 8, FC 8, classifier
  return (8 * 4 + 4) + (2 * 2 * 4 * 8 + 8) + (8 * 8 + 8) + (8 * classes + classes)


@pytest.mark.parametrize("kind, expected", [
    ("parallel", CONV12 + TOP + HEAD + (16 * 2 + 2) + (16 * 2 + 2)),
    ("deep", CONV12 + TOP + HEAD + _branch(2) + _branch(2)),
    ("hybrid", CONV12 + TOP + (16 * 4 + 4) + 4 * (TOP + HEAD)),
])
def test_hand_computed_parameter_counts(kind, expected):
  cfg = _config(kind)
  model = models.get_model(cfg.model, 1, multitask=cfg.multitask)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert _count(shapes["params"]) == expected
  if kind == "hybrid":
    assert sorted(shapes["params"]) == ["group_0", "group_1", "group_2", "group_3", "group_classifier",
                                        "group_head", "shared"]
    assert set(shapes["params"]["shared"]) == {"conv1", "conv2"}
  else:  # the single-task names under 'trunk', so baseline weights carry over
    assert set(shapes["params"]["trunk"]) == {"conv1", "conv2", "conv3", "fc1", "fc2", "age_head"}


def test_net_vgg_hybrid_parameter_count():
  cfg = _config("hybrid")
  cfg.model.name = "vgg16"
  model = models.get_model(cfg.model, 1, multitask=cfg.multitask)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  shared = 1792 + 36928 + 73856 + 147584                   # conv1_1 .. conv2_2
  top = 138_357_544 - (4096 * 1000 + 1000) - shared        # torchvision VGG-16 less classifier and blocks 1-2
  assert _count(shapes["params"]) == shared + top + (4096 * 4 + 4) + 4 * (top + 4096 + 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parallel", "deep", "hybrid"])
def test_forward_backward_outputs(kind):
  cfg = _config(kind)
  model = models.get_model(cfg.model, 3, multitask=cfg.multitask)
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images)

  @jax.jit
  def grads(params):
    def loss(params):
      out = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(2)})
      return sum(jnp.sum(v.astype(jnp.float32) ** 2) for v in out.values()), out
    return jax.grad(loss, has_aux=True)(params)
  g, out = grads(variables["params"])
  assert out["gender"].shape == (2, 2) and out["race"].shape == (2, 2)
  assert out["group_age"].shape == (2, 4, 3) if kind == "hybrid" else out["age"].shape == (2, 3)
  for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), jax.tree_util.keystr(path)
  if kind == "hybrid":
    assert out["group"].shape == (2, 4)
    out = jax.jit(model.apply)(variables, images)
    p = np.asarray(jax.nn.softmax(out["group"]))
    # Gender and race are marginals of the race-major groups (race * 2 + gender).
    np.testing.assert_allclose(np.exp(out["gender"]), p.reshape(2, 2, 2).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.exp(out["race"]), p.reshape(2, 2, 2).sum(axis=2), rtol=1e-5)


def test_group_ids_are_race_major_and_unknown_stays_unknown():
  gender = np.array([0, 1, 0, 1, -1, 0])
  race = np.array([0, 0, 1, 1, 1, -1])
  np.testing.assert_array_equal(multitask.group_ids(gender, race, "gender_race", 2), [0, 1, 2, 3, -1, -1])
  np.testing.assert_array_equal(multitask.group_ids(gender, race, "gender", 2), [0, 1, 0, 1, -1, 0])
  np.testing.assert_array_equal(multitask.group_ids(gender, race, "race", 2), [0, 0, 1, 1, 1, -1])
  assert multitask.num_groups("gender_race", 5) == 10
  with pytest.raises(ValueError, match="config.multitask.groups='age'"):
    multitask.num_groups("age", 2)


def test_config_errors_name_the_field():
  cfg = _config("parallel")
  cfg.model.name = "resnet18"
  with pytest.raises(ValueError, match="config.model.name='resnet18' is not one of"):
    models.get_model(cfg.model, 1, multitask=cfg.multitask)
  for field, value, pattern in (("kind", "tree", "config.multitask.kind='tree'"),
                                ("stage", "group", "is a hybrid training step"),
                                ("alpha", -1.0, "config.multitask.alpha=-1.0")):
    cfg = _config("parallel")
    cfg.multitask[field] = value
    with pytest.raises(ValueError, match=pattern):
      multitask.validate(cfg.multitask)
  multitask.validate(_config("hybrid", stage="group_age").multitask)
