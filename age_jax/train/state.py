"""The train state: a pytree of arrays only (step, params, batch_stats, opt_state)."""
import flax.struct
import jax
import jax.numpy as jnp


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array          # int32 array (not a Python int) so orbax can build abstract targets
  params: dict
  batch_stats: dict
  opt_state: object


def init_variables(model, rng, image_size: int):
  """Initial params and batch statistics for one dummy image (shapes only depend on image_size)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, images, train=False)
  return variables["params"], variables.get("batch_stats", {})


def create_for_inference(model, rng, image_size: int) -> TrainState:
  """A state without optimizer state (opt_state None): what evaluation and prediction restore."""
  params, batch_stats = init_variables(model, rng, image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=None)


def create(model, tx, rng, image_size: int) -> TrainState:
  params, batch_stats = init_variables(model, rng, image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))
