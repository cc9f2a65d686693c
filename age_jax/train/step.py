"""The jitted train and eval steps: pure functions of (state, batch, rng).

Neither knows which model, formulation or mesh it runs: the model returns named outputs,
the objective turns them into a per-example loss, and shardings are given by the caller.
"""

import jax
import jax.numpy as jnp
import optax

from age_jax.train import state as state_lib


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _masked_mean(values, weights):
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


FINITE = "finite"  # the train step's flag: loss, gradient norm and new parameters all finite


def all_finite(loss, grad_norm, params):
  """One boolean for the step; the norm of the parameters is finite only if every one is."""
  return jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))


def make_train_step(model, tx, objective, prepare=None, ema_decay: float = 0.0):
  """objective: objective.Objective (loss, metrics, which parameters train: the others get no
  gradient, and so no backward pass); prepare: batch -> batch, traced at the start of the step
  (augmentation on the devices); ema_decay > 0: the state's moving average of the weights is
  updated after each step (state.ema)."""
  # A frozen backbone (LAE 2.4: only the classifier learns) runs as at inference: BatchNorm on
  # its running statistics, which stay as they are, and no dropout, so the head learns on the
  # features it will be evaluated on, whatever the sampler does to a batch's statistics.
  frozen_backbone = objective.frozen_backbone

  def loss_fn(params, batch_stats, batch, rng):
    with objective.head_inputs(batch):   # FDS: the age head reads calibrated features
      outputs, updates = model.apply(_variables(params, batch_stats), batch["image"], train=not frozen_backbone,
                                     rngs={"dropout": rng}, mutable=["batch_stats"])
    per_example, terms = objective.loss(outputs, batch)
    weights = batch.get("mask", jnp.ones_like(per_example))
    metrics = {name: _masked_mean(value, weights) for name, value in terms.items()}
    for name, value in objective.metrics(outputs, batch).items():
      metrics[name] = _masked_mean(value, weights)   # 'mae', or identity 'accuracy'
    new_stats = batch_stats if frozen_backbone else updates.get("batch_stats", batch_stats)
    return _masked_mean(per_example, weights), (new_stats, metrics)

  def train_step(state, batch, rng):
    if prepare is not None:
      batch = prepare(batch)
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
    trainable = objective.trainable_mask(state.params)   # Python bools, from the tree's paths
    if trainable is not None:  # unread gradients are compiled away
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics.update(loss=loss, grad_norm=grad_norm)
    metrics[FINITE] = all_finite(loss, grad_norm, params)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    if ema_decay:
      decay = state_lib.ema_decay_at(ema_decay, state.step.astype(jnp.float32))
      new_state = new_state.replace(ema=state_lib.update_ema(state.ema, params, batch_stats, decay))
    return new_state, metrics

  return train_step


def make_predict_step(model, objective, mirror: bool = False, view_log_probs: bool = False):
  """(params, batch_stats, batch) -> {'pred_age': years, 'pred_spread' (softmax heads),
  'pred_age_log_probs' (with view_log_probs, softmax heads: see Objective.predictions),
  'pred_gender'/'pred_race'/'pred_identity': argmax where the model has them, and the batch's other fields
  (labels, mask, index) passed through}; mirror: see Objective.predictions."""
  def predict_step(params, batch_stats, batch):
    apply = lambda images: model.apply(_variables(params, batch_stats), images, train=False)
    found = objective.predictions(apply, batch["image"], mirror, view_log_probs)
    result = {k: v for k, v in batch.items() if k != "image"}
    for key, value in found.items():
      result[f"pred_{key}"] = value if key in ("age", "spread", "age_log_probs") else jnp.argmax(value, axis=-1).astype(jnp.int32)
    return result
  return predict_step


def jit_train_step(train_step, state_sharding, batch_sharding, replicated, compiler_options=None):
  # The old state's buffers are donated: the step updates parameters in place.
  # compiler_options: Experiment.compiler_options, the conv lowering's.
  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                 compiler_options=compiler_options)


def jit_predict_step(predict_step, params_sharding, batch_stats_sharding, batch_sharding, replicated,
                     compiler_options=None):
  # Predictions come back replicated, so every process sees the whole global batch.
  return jax.jit(predict_step, in_shardings=(params_sharding, batch_stats_sharding, batch_sharding),
                 out_shardings=replicated, compiler_options=compiler_options)
