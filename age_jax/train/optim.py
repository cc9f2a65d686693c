"""Optimizers and learning-rate schedules from config.optim (optax chains)."""
import jax
import optax


def learning_rate(cfg, batch_size: int) -> float:
  """The base rate, scaled linearly with the global batch when lr_reference_batch is set
  (LAE 3.3: base x BatchSize / 256)."""
  if cfg.lr_reference_batch:
    return cfg.learning_rate * batch_size / cfg.lr_reference_batch
  return cfg.learning_rate


def make_schedule(cfg, num_steps: int, batch_size: int = 0) -> optax.Schedule:
  lr = learning_rate(cfg, batch_size)
  if cfg.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif cfg.schedule == "step":
    # Xing 4.1: divide by 10 every 10,000 iterations.
    boundaries = {b: cfg.step_factor for b in range(cfg.step_every, num_steps, cfg.step_every)}
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  elif cfg.schedule == "multistep":
    # LAE 3.3 pre-training: MultiStepLR, milestones given as fractions of the stage.
    boundaries = {max(1, round(m * num_steps)): cfg.step_factor for m in cfg.milestones}
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  elif cfg.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(1, num_steps - cfg.warmup_steps))
  elif cfg.schedule == "onecycle":  # LAE 3.1
    return optax.cosine_onecycle_schedule(num_steps, lr)
  else:
    raise ValueError(f"config.optim.schedule={cfg.schedule!r}; expected step, multistep, cosine, "
                     "onecycle or constant")
  if cfg.warmup_steps:
    warmup = optax.linear_schedule(0.0, lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, schedule], [cfg.warmup_steps])
  return schedule


def _decay_mask(params):
  # Weight decay on kernels only, not on biases or normalisation scales.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, num_steps: int, trainable_mask=None, batch_size: int = 0
                   ) -> optax.GradientTransformation:
  schedule = make_schedule(cfg, num_steps, batch_size)
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "sgd":
    # Caffe semantics: the L2 term joins the gradient before momentum.
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask))
  else:
    raise ValueError(f"config.optim.name={cfg.name!r}; expected 'sgd' or 'adamw'")
  tx = optax.chain(*parts)
  if trainable_mask is not None:
    # Frozen parameters (e.g. LAE stage 2, hybrid stages) get no update at all.
    tx = optax.multi_transform({True: tx, False: optax.set_to_zero()},
                               lambda params: trainable_mask)
  return tx
