"""The training loop: data -> jitted step -> logs, validation and checkpoints; resumable."""
import collections
import time

import jax
import numpy as np

from age_jax import checkpoint, evaluate, formulations
from age_jax.data import datasets, pipeline
from age_jax.train import experiment as experiment_lib
from age_jax.train import optim, sharding, step as step_lib
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


def train(cfg, workdir: str) -> dict:
  """Trains cfg in workdir, resuming from its latest checkpoint. Returns the last metrics."""
  exp = experiment_lib.build(cfg)
  local_batch = sharding.check_batch_size(cfg.train.batch_size, exp.mesh)

  experiment_lib.prepare_dataset(cfg)
  train_records = experiment_lib.load_split(cfg, cfg.data.train_split)
  labels = datasets.split_labels(train_records)
  formulations.check_ages(labels["age"], cfg.formulation)  # out-of-range ages: clip or fail, before training
  experiment_lib.save_config(cfg, workdir)

  t0 = time.time()
  train_source = experiment_lib.loaded_source(cfg, train_records)
  normalizer = experiment_lib.normalizer(cfg, workdir, train_source)
  if jax.process_index() == 0:
    print(f"data: {len(train_source)} training images ready in {time.time() - t0:.1f}s", flush=True)

  ckpt = checkpoint.Checkpointer(workdir, cfg.train.max_to_keep)
  start = ckpt.latest_step()
  if start is None:
    state = exp.init_state(jax.random.key(cfg.seed))
    start = 0
  else:
    state = ckpt.restore(exp.abstract_state, start)
    if jax.process_index() == 0:
      print(f"resumed from step {start} in {ckpt.directory}", flush=True)

  train_step = step_lib.jit_train_step(step_lib.make_train_step(exp.model, exp.tx, exp.formulation, cfg),
                                       exp.state_sharding, exp.batch_sharding, exp.replicated)
  batches = prefetch_to_mesh(
      _pipeline_batches(cfg, train_source, labels, normalizer, local_batch, start), exp.mesh, cfg.data.prefetch)
  steps_per_epoch = len(train_source) / cfg.train.batch_size
  logger = MetricLogger(workdir, cfg.train.num_steps, cfg.train.batch_size, steps_per_epoch)
  schedule = optim.make_schedule(cfg.optim, cfg.train.num_steps)
  dropout_rng = jax.random.key(cfg.seed + 1)

  pending = []  # device metrics since the last log line: fetched only at log time
  validator = None
  last = {}
  logger.restart_clock(start)
  for step in range(start + 1, cfg.train.num_steps + 1):
    state, metrics = train_step(state, next(batches), dropout_rng)
    pending.append(metrics)
    if step % cfg.train.log_every == 0 or step == cfg.train.num_steps:
      host = jax.device_get(pending)
      last = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      pending = []
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"loss is {last['loss']} at step {step}; lower config.optim.learning_rate")
      logger.progress(step, last, float(schedule(step - 1)))
    if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.num_steps:
      validator = validator or evaluate.Evaluator(exp, cfg, normalizer, cfg.data.val_split)
      logger.write(step, validator.summary(state), prefix="validation")
      logger.restart_clock(step)
    if step % cfg.train.checkpoint_every == 0 or step == cfg.train.num_steps:
      ckpt.save(step, state)
  ckpt.wait()
  if start < cfg.train.num_steps and cfg.data.val_split:
    validator = validator or evaluate.Evaluator(exp, cfg, normalizer, cfg.data.val_split)
    summary = validator.summary(state)
    logger.write(cfg.train.num_steps, summary, prefix="validation")
    last.update({f"val_{k}": v for k, v in summary.items()})
  logger.close()
  ckpt.close()
  return last


def _pipeline_batches(cfg, source, labels, normalizer, local_batch, start):
  return pipeline.train_batches(source, labels, cfg.data, local_batch_size=local_batch, seed=cfg.seed,
                                normalizer=normalizer, start_step=start, process_index=jax.process_index(),
                                process_count=jax.process_count())

