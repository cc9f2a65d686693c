"""The training loop: data -> jitted step -> logs, validation and checkpoints; resumable,
also mid-stage (see train/stages.py)."""
import collections
import time

import jax
import numpy as np

from age_jax import checkpoint, config as config_lib, evaluate, formulations, objective
from age_jax.data import datasets, pipeline
from age_jax.train import experiment as experiment_lib
from age_jax.train import optim, sharding, stages as stages_lib
from age_jax.train.logger import MetricLogger


def prefetch_to_mesh(batches, mesh, size: int):
  """Keeps `size` global batches in flight on the devices while the current step runs."""
  queue = collections.deque()
  for local in batches:
    queue.append(sharding.to_global(local, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _log(message: str):
  if jax.process_index() == 0:
    print(message, flush=True)


def train(cfg, workdir: str) -> dict:
  """Trains cfg (all its stages) in workdir, resuming from its latest checkpoint.

  Returns the last logged training metrics and the final validation metrics (val_*).
  """
  config_lib.validate(cfg)
  experiment_lib.prepare_dataset(cfg)
  train_records = experiment_lib.load_split(cfg, cfg.data.train_split)
  labels = datasets.split_labels(train_records)
  if formulations.needs_age_counts(cfg.formulation):  # stored in config.json: a resume rebuilds the same loss
    with cfg.unlocked():
      cfg.formulation = formulations.with_age_counts(cfg.formulation, labels["age"])
  plan = stages_lib.plan(cfg)
  for stage in plan:  # bad labels stop the run here, before any long work
    formulations.check_ages(labels["age"], stage.cfg.formulation)
    objective.check_labels(stage.cfg, labels)
  experiment_lib.save_config(cfg, workdir)

  t0 = time.time()
  train_source = experiment_lib.loaded_source(cfg, train_records)
  normalizer = experiment_lib.normalizer(cfg, workdir, train_source)
  _log(f"data: {len(train_source)} training images ready in {time.time() - t0:.1f}s")

  ckpt = checkpoint.Checkpointer(workdir, cfg.train.max_to_keep)
  total = stages_lib.total_steps(plan)
  logger = MetricLogger(workdir, total, cfg.train.batch_size, len(train_source) / cfg.train.batch_size)
  exp = state = None
  last = {}
  try:
    for stage in plan:
      latest = ckpt.latest_step() or 0
      if latest >= stage.last_step:
        continue
      exp = experiment_lib.build(stage.cfg)
      state = _initial_state(exp, stage, plan, ckpt, latest, state)
      state, last = _run_stage(exp, stage, state, ckpt, logger, train_source, labels, normalizer,
                               start=max(latest, stage.first_step), many_stages=len(plan) > 1)
  finally:  # also on an interruption: let a checkpoint being written finish, intact
    ckpt.wait()
  if state is not None and cfg.data.val_split:  # this call trained: report the final validation
    # Also calibrates the conformal age intervals on the validation split (age_jax/conformal.py).
    summary = evaluate.calibrate(exp, exp.cfg, normalizer, state, workdir)
    logger.write(total, summary, prefix="validation")
    _log("validation: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    last.update({f"val_{k}": v for k, v in summary.items()})
  logger.close()
  ckpt.close()
  return last


def _initial_state(exp, stage, plan, ckpt, latest: int, previous_state):
  """This stage's starting state: a fresh init, a mid-stage checkpoint, or the previous stage's
  parameters with a fresh optimizer."""
  if latest > stage.first_step:
    _log(f"resumed from step {latest} (stage {stage.name!r}) in {ckpt.directory}")
    return ckpt.restore(exp.abstract_state, latest)
  if latest == 0:
    return exp.init_state(jax.random.key(stage.cfg.seed))
  if previous_state is None:  # resuming exactly at a stage boundary
    before = plan[stage.index - 1]
    previous_state = ckpt.restore(experiment_lib.build(before.cfg).abstract_state, latest)
    _log(f"resumed from step {latest} (end of stage {before.name!r}) in {ckpt.directory}")
  fresh = jax.jit(exp.tx.init, out_shardings=exp.state_sharding.opt_state)(previous_state.params)
  return previous_state.replace(opt_state=fresh)


def _run_stage(exp, stage, state, ckpt, logger, train_source, labels, normalizer, *, start: int,
               many_stages: bool):
  """Runs the stage from global step `start`; returns (state, last logged metrics)."""
  cfg = exp.cfg
  if many_stages:
    _log(f"stage {stage.index + 1} {stage.name!r}: steps {stage.first_step + 1}..{stage.last_step}")
  local_batch = sharding.check_batch_size(cfg.train.batch_size, exp.mesh)
  train_step = exp.jit_train_step()
  batches = pipeline.train_batches(
      train_source, labels, cfg.data, local_batch_size=local_batch, seed=cfg.seed + 1000 * stage.index,
      normalizer=normalizer, start_step=start - stage.first_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  batches = prefetch_to_mesh(batches, exp.mesh, cfg.data.prefetch)
  schedule = optim.make_schedule(cfg.optim, cfg.train.num_steps)
  dropout_rng = jax.random.key(cfg.seed + 1)
  validator = None
  pending, last = [], {}  # device metrics since the last log line: fetched only at log time
  logger.restart_clock(start)
  for step in range(start + 1, stage.last_step + 1):
    state, metrics = train_step(state, next(batches), dropout_rng)
    pending.append(metrics)
    stage_step = step - stage.first_step
    if stage_step % cfg.train.log_every == 0 or step == stage.last_step:
      host = jax.device_get(pending)
      last = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      pending = []
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"loss is {last['loss']} at step {step}; lower config.optim.learning_rate")
      logger.progress(step, last, float(schedule(stage_step - 1)))
    if cfg.train.eval_every and stage_step % cfg.train.eval_every == 0 and step != stage.last_step:
      validator = validator or evaluate.Evaluator(exp, cfg, normalizer, cfg.data.val_split)
      summary = validator.summary(state)
      logger.write(step, summary, prefix="validation")
      _log(f"validation at step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
      logger.restart_clock(step)
    if stage_step % cfg.train.checkpoint_every == 0 or step == stage.last_step:
      ckpt.save(step, state)
  return state, last
