"""Random weights for any of our models, drawn in numpy (nothing to compile), with BatchNorm
statistics measured on real faces: speed and export-parity checks need no trained run of every
family (bench_onnx, tests/inference). No absl flags, so tests can import it.
"""


def random_state(model, image_size, seed=3):
  """Random weights of every kind (He-scaled kernels, non-zero biases, BatchNorm statistics away
  from 0/1, CORAL's ordered thresholds) drawn in numpy: nothing to compile, face-dependent outputs."""
  import jax
  import numpy as np
  from age_jax.train import state as state_lib
  shapes = jax.eval_shape(lambda r: state_lib.init_variables(model, r, image_size), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    kind, noise = str(getattr(path[-1], "key", path[-1])), rng.normal(size=leaf.shape)
    if kind == "coral_bias" and getattr(model, "bias_init", None) is not None:
      value = np.asarray(model.bias_init)
    elif kind == "kernel":
      value = noise * np.sqrt(2 / np.prod(leaf.shape[:-1]))
    elif kind in ("scale", "var"):
      value = 1 + 0.1 * np.abs(noise)
    else:
      value = 0.1 * noise
    return value.astype(leaf.dtype)
  params, batch_stats = jax.tree_util.tree_map_with_path(draw, shapes)
  return state_lib.TrainState(step=np.int32(0), params=params, batch_stats=batch_stats, opt_state=None)


def with_face_statistics(model, state, images, momentum=0.9):
  """state with BatchNorm statistics measured on images (network inputs, B x S x S x 3): random
  weights keep realistic magnitudes at any depth (random statistics let deep residual stacks blow
  up). One train-mode call: its running averages are m * old + (1 - m) * batch, solved for batch."""
  import jax
  import numpy as np
  if not state.batch_stats:
    return state
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # no dropout or stochastic depth: the train-mode pass is then the eval pass with these statistics
  model = model.clone(**{k: 0.0 for k in ("dropout_rate", "stochastic_depth_rate") if hasattr(model, k)})
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(0)})[1]["batch_stats"])
  updated = step(variables, images)
  batch = jax.tree.map(lambda new, old: (np.asarray(new) - momentum * np.asarray(old)) / (1 - momentum),
                       updated, state.batch_stats)

  def floor(layer):  # a channel nearly constant over these few faces would amplify rounding |mean|/std-fold
    if isinstance(layer, dict) and set(layer) == {"mean", "var"}:
      return {"mean": layer["mean"].astype(np.float32),
              "var": np.maximum(layer["var"], np.maximum(1e-2, 0.01 * layer["mean"] ** 2)).astype(np.float32)}
    return {k: floor(v) for k, v in layer.items()}
  return state.replace(batch_stats=floor(jax.tree.map(np.asarray, batch, is_leaf=lambda x: x is None)))
