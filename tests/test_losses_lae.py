"""LAE's losses at the paper's K = 101, ages outside the head, AM-softmax (LAE 2.2) and its
identity head, and the ordinal loss against coral-pytorch's published example."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from age_jax import formulations, losses, models, objective
from age_jax.models import heads, multitask
from tests.tiny import tiny_config


def _gaussian(age, k, sigma=1.0):
  d = np.exp(-(np.arange(k) - np.clip(age, 0, k - 1)) ** 2 / (2 * sigma ** 2))
  return d / d.sum()


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_dldl_v2_and_stage2_at_k_101_match_a_numpy_evaluation():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 101)).astype(np.float32) * 3
  ages = np.array([0.0, 23.0, 67.0, 100.0], np.float32)
  p = _softmax(logits)
  kl = np.array([np.sum(t[t > 0] * np.log(t[t > 0] / q[t > 0]))
                 for t, q in zip((_gaussian(a, 101) for a in ages), p)])
  l_er = np.abs(ages - p @ np.arange(101))
  np.testing.assert_allclose(losses.dldl_v2_loss(logits, ages, 1.0, 1.0), kl + l_er, rtol=2e-4)
  np.testing.assert_allclose(losses.lae_stage2_loss(logits, ages, 1.0, 5.0), kl + (l_er - 5.0) ** 2,
                             rtol=2e-4)


def test_ages_outside_the_head_are_clipped_and_keep_finite_gradients():
  logits = jnp.zeros((3, 101))
  inside = jnp.array([0.0, 100.0, 100.0])
  outside = jnp.array([-4.0, 105.0, 1e6])
  for loss in (lambda l, a: losses.dldl_v2_loss(l, a, 1.0, 1.0),
               lambda l, a: losses.lae_stage2_loss(l, a, 1.0, 5.0)):
    np.testing.assert_allclose(loss(logits, outside), loss(logits, inside), rtol=1e-6)
    grad = jax.grad(lambda l: jnp.sum(loss(l, outside)))(logits)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_ordinal_loss_matches_coral_pytorchs_published_example():
  # coral_pytorch.losses.coral_loss docstring: mean over the batch = 0.6920.
  levels = jnp.array([[1., 1., 0., 0.], [1., 0., 0., 0.], [1., 1., 1., 1.]])
  logits = jnp.array([[2.1, 1.8, -2.1, -1.8], [1.9, -1., -1.5, -1.3], [1.9, 1.8, 1.7, 1.6]])
  loss = losses.ordinal_binary_cross_entropy(logits, levels)
  np.testing.assert_allclose(float(jnp.mean(loss)), 0.6920, atol=5e-5)


def _am_softmax_by_loops(features, weights, labels, s, m):
  out = []
  for f, y in zip(features, labels):
    cos = [float(np.dot(f, w) / (np.linalg.norm(f) * np.linalg.norm(w))) for w in weights.T]
    target = np.exp(s * (cos[y] - m))
    others = sum(np.exp(s * c) for j, c in enumerate(cos) if j != y)
    out.append(-np.log(target / (target + others)))
  return np.array(out)


def test_am_softmax_matches_the_cosface_formula():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(5, 8))
  weights = rng.normal(size=(8, 7))
  labels = np.array([0, 3, 6, 3, 1])
  for s, m in ((64.0, 0.35), (30.0, 0.2), (1.0, 0.0)):
    np.testing.assert_allclose(losses.am_softmax_loss(features, weights, labels, s, m),
                               _am_softmax_by_loops(features, weights, labels, s, m), rtol=1e-4)


class _Features(nn.Module):
  """A stand-in backbone whose input is its features."""

  @nn.compact
  def __call__(self, x, train=False):
    return {"features": x}


def test_the_identity_head_and_formulation_give_am_softmax_of_the_features():
  # By hand: features (3, 4) and (1, 0); class columns (1, 0), (0, 2), (1, 1) -> cosines
  # (0.6, 0.8, 0.98995) and (1, 0, 0.70711); s = 4, m = 0.5, labels 2 and 1:
  # row 0: logits 4 * (0.6, 0.8, 0.98995 - 0.5) -> -log softmax_2 = 1.79331;
  # row 1: logits 4 * (1, 0 - 0.5, 0.70711)     -> -log softmax_1 = 6.27183.
  features = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
  weights = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]], np.float32)
  labels = np.array([2, 1])
  outputs = heads.IdentityHead(_Features(), num_identities=3).apply({"params": {"identity_head": weights}}, features)
  np.testing.assert_allclose(outputs["identity"], [[0.6, 0.8, 0.98995], [1.0, 0.0, 0.70711]], atol=1e-5)
  cfg = formulations.default_config()
  cfg.name, cfg.num_identities, cfg.am_scale, cfg.am_margin = "am_softmax", 3, 4.0, 0.5
  form = formulations.get_formulation(cfg)
  assert (form.task, form.num_outputs, form.head) == ("identity", 3, "identity")
  batch = {"identity": labels, "age": np.full(2, -1.0, np.float32)}
  loss, terms = objective.Objective(form, multitask.default_config()).loss(outputs, batch)
  np.testing.assert_allclose(loss, [1.79331, 6.27183], rtol=1e-5)
  np.testing.assert_allclose(loss, _am_softmax_by_loops(features, weights, labels, 4.0, 0.5), rtol=1e-5)
  np.testing.assert_allclose(terms["identity_loss"], losses.am_softmax_loss(features, weights, labels, 4.0, 0.5))
  np.testing.assert_array_equal(objective.per_example_metrics(outputs, batch, form)["accuracy"], [1.0, 0.0])


def test_the_identity_model_keeps_the_age_models_backbone_paths():
  cfg = tiny_config()
  shapes = lambda model: jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  age = shapes(models.get_model(cfg.model, 1))
  identity = shapes(models.get_model(cfg.model, 5, head="identity"))
  assert set(identity) == set(age) - {"age_head"} | {"identity_head"}
  assert identity["identity_head"].shape == (16, 5)
  same = lambda a, b: jax.tree.map(lambda x, y: x.shape == y.shape, a, b)
  assert all(jax.tree.leaves(same({k: identity[k] for k in age if k != "age_head"},
                                  {k: age[k] for k in age if k != "age_head"})))


def test_am_softmax_is_scale_invariant_and_the_margin_raises_the_loss():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(4, 6)).astype(np.float32)
  weights = rng.normal(size=(6, 5)).astype(np.float32)
  labels = jnp.array([1, 2, 0, 4])
  base = losses.am_softmax_loss(features, weights, labels, 30.0, 0.35)
  np.testing.assert_allclose(losses.am_softmax_loss(7 * features, 0.1 * weights, labels, 30.0, 0.35),
                             base, rtol=1e-5)
  assert np.all(np.asarray(base) > np.asarray(losses.am_softmax_loss(features, weights, labels, 30.0, 0.0)))
  grad = jax.grad(lambda f: jnp.sum(losses.am_softmax_loss(f, weights, labels)))(jnp.asarray(features))
  assert np.all(np.isfinite(grad))
