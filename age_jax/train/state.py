"""The train state: a pytree of arrays only (step, params, batch_stats, opt_state, ema).

ema: the exponential moving average of params and batch_stats ({'params', 'batch_stats'}) when
config.train.ema_decay > 0, else {}; evaluation, prediction and export use it in place of the
raw weights (`eval_variables`)."""
import flax.struct
import jax
import jax.numpy as jnp


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array          # int32 array (not a Python int) so orbax can build abstract targets
  params: dict
  batch_stats: dict
  opt_state: object
  ema: dict = flax.struct.field(default_factory=dict)


def eval_variables(state: TrainState) -> tuple[dict, dict]:
  """(params, batch_stats) that evaluation reads: the moving average where the run keeps one."""
  if state.ema:
    return state.ema["params"], state.ema["batch_stats"]
  return state.params, state.batch_stats


def ema_decay_at(decay: float, step):
  """The average's decay after `step` updates: min(decay, (1 + step) / (10 + step)), so early
  steps (a young average of a fast-moving model) weigh more (timm's ModelEmaV3 warm-up)."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema: dict, params: dict, batch_stats: dict, decay) -> dict:
  """ema <- decay * ema + (1 - decay) * (params, batch_stats)."""
  current = {"params": params, "batch_stats": batch_stats}
  return jax.tree.map(lambda e, x: decay * e + (1.0 - decay) * x.astype(e.dtype), ema, current)


def fresh_ema(params: dict, batch_stats: dict) -> dict:
  """An average that starts at the given weights (separate buffers: the train step donates both)."""
  return jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})


def init_variables(model, rng, image_size: int):
  """Initial params and batch statistics for one dummy image (shapes only depend on image_size)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, images, train=False)
  return variables["params"], variables.get("batch_stats", {})


def create_for_inference(model, rng, image_size: int) -> TrainState:
  """A state without optimizer state (opt_state None): what evaluation and prediction restore."""
  params, batch_stats = init_variables(model, rng, image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=None)


def create(model, tx, rng, image_size: int, ema: bool = False) -> TrainState:
  params, batch_stats = init_variables(model, rng, image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema=fresh_ema(params, batch_stats) if ema else {})
