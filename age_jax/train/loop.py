"""The training loop: data -> jitted step -> logs, validation and checkpoints; resumable,
also mid-stage (see age_jax/stages.py)."""
import collections
import json
import time

import jax
import numpy as np

from age_jax import checkpoint, config as config_lib, formulations, objective, storage
from age_jax import stages as stages_lib
from age_jax.data import datasets, pipeline, run_data
from age_jax.train import evaluator as evaluator_lib, experiment as experiment_lib
from age_jax.train import fds_pass, init_from, optim, posthoc, preemption, sharding, state as state_lib, step as step_lib
from age_jax.train import workdir as workdir_lib
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

  Returns the last logged training metrics and the final validation metrics (val_*). Refuses a
  workdir another trainer holds or one trained with another config; on SIGTERM/SIGINT saves the
  current step and raises preemption.Stopped.
  """
  config_lib.validate(cfg)
  plan = stages_lib.plan(cfg)
  mesh = sharding.make_mesh(cfg.mesh)  # batch sizes the devices cannot split fail before any data work
  for stage in plan:
    sharding.check_batch_size(stage.cfg.train.batch_size, mesh)
    if stage.cfg.data.val_split:
      sharding.check_batch_size(stage.cfg.eval.batch_size, mesh, "config.eval.batch_size")
  held = workdir_lib.lock(workdir)
  try:
    with preemption.StopRequests(workdir) as stop:
      return _train(cfg, workdir, stop)
  finally:
    if held:
      held.release()


def _train(cfg, workdir: str, stop) -> dict:
  saved = workdir_lib.check_resume(cfg, workdir)  # before anything is written
  if saved is not None and saved.data.fingerprint and not cfg.data.fingerprint:
    with cfg.unlocked():  # a resume reads the build this run trained on
      cfg.data.fingerprint = saved.data.fingerprint
  with stop.during("the dataset build"):  # a signal stops every phase but the step loop at once
    report = run_data.prepare_dataset(cfg)
  with cfg.unlocked():
    cfg.data.fingerprint = report["fingerprint"]
  train_records = run_data.load_split(cfg, cfg.data.train_split)
  labels = datasets.split_labels(train_records)
  if formulations.needs_age_counts(cfg.formulation):  # stored in config.json: a resume rebuilds the same loss
    with cfg.unlocked():
      cfg.formulation = formulations.with_age_counts(cfg.formulation, labels["age"])
  if not cfg.train.train_size:  # turns train.num_epochs into steps; stored in config.json
    cfg.train.train_size = len(train_records)
  if formulations.needs_num_identities(cfg.formulation):  # the identity head's size, from the build
    if "num_identities" not in report:
      raise ValueError(f"config.formulation.name={cfg.formulation.name!r} trains on face identities, but "
                       f"dataset {cfg.data.name!r} has none; use config.data.name='identity_folder'")
    cfg.formulation.num_identities = int(report["num_identities"])
  plan = stages_lib.plan(cfg)
  for stage in plan:  # bad labels stop the run here, before any long work
    formulations.check_ages(labels["age"], stage.cfg.formulation)
    objective.check_labels(stage.cfg, labels)
  config_lib.save(cfg, workdir)

  t0 = time.time()
  with stop.during("the decode-once pass"):
    train_source = run_data.loaded_source(cfg, train_records)
    normalizer = run_data.normalizer(cfg, workdir, train_source)
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
      if stages_lib.needs_previous_mae(stage) and stage.index > 0:
        mae = _previous_validation_mae(plan[stage.index - 1], workdir, ckpt, normalizer,
                                       exp if state is not None else None, state)
        stage = plan[stage.index] = stages_lib.with_lae_mae(stage, mae)
        _log(f"stage {stage.name!r}: lae_mae={stage.cfg.formulation.lae_mae:.4f}, the validation MAE "
             f"of stage {plan[stage.index - 1].name!r} (LAE eq. 5)")
      from_init = stages_lib.needs_previous_mae(stage)  # a first stage: the weights of model.init_from
      exp = experiment_lib.build(stages_lib.with_lae_mae(stage, 0.0).cfg if from_init else stage.cfg)
      state = _initial_state(exp, stage, plan, ckpt, latest, state)
      if from_init:  # measured with a placeholder mae: evaluation does not read it
        mae = _init_from_validation_mae(exp, state, workdir, normalizer)
        stage = plan[0] = stages_lib.with_lae_mae(stage, mae)
        exp = experiment_lib.build(stage.cfg)
        _log(f"stage {stage.name!r}: lae_mae={mae:.4f}, the validation MAE of the weights of "
             f"model.init_from={stage.cfg.model.init_from!r} (LAE eq. 5)")
      if exp.objective.fds:   # the frozen backbone's per-age feature statistics (FDS), once per stage
        with stop.during("the FDS statistics pass"):
          exp = fds_pass.with_statistics(exp, state, train_source, normalizer, workdir, stage.first_step)
        _log(f"stage {stage.name!r}: FDS statistics of {int(exp.objective.calibration.stats.count.sum())} "
             "training images")
      with stop.between_steps():
        state, last = _run_stage(exp, stage, state, ckpt, logger, train_source, labels, normalizer, stop,
                                 start=max(latest, stage.first_step), many_stages=len(plan) > 1)
    if state is None and cfg.data.val_split and not _final_validation_logged(workdir, total):
      # Trained to the end by an earlier call stopped during its final validation: do it now.
      stage = plan[-1]  # an LAE stage's lae_mae only weighs its loss: a placeholder serves to predict
      exp = experiment_lib.build(stages_lib.with_lae_mae(stage, 0.0).cfg if stages_lib.needs_previous_mae(stage)
                                 else stage.cfg)
      state = ckpt.restore(exp.abstract_state, ckpt.latest_step())
  finally:  # also on an interruption: let a checkpoint being written finish, intact
    ckpt.wait()
  if state is not None and cfg.data.val_split:  # this call trained: report the final validation
    with stop.during("the final validation and calibration"):
      if exp.formulation.task == "age":
        if posthoc.needs_choice(exp.cfg):  # tau of the logit adjustment, before the intervals use it
          record = posthoc.choose_on_validation(exp, exp.cfg, normalizer, state, workdir)
          _log(f"logit adjustment: tau={record['tau']:g} chosen on {record['chosen_on']} (validation MAE "
               f"within {record['budget']:g} y of tau=0's, lowest group-balanced MAE)")
          exp = experiment_lib.build(posthoc.with_tau(exp.cfg, record["tau"]))
        # Also calibrates the conformal age intervals on the validation split (age_jax/conformal.py).
        summary = evaluator_lib.calibrate(exp, exp.cfg, normalizer, state, workdir)
      else:  # face-identity pre-training: top-1 identity accuracy, no ages to calibrate
        summary = evaluator_lib.Evaluator(exp, exp.cfg, normalizer, cfg.data.val_split).summary(state)
      logger.write(total, summary, prefix="validation")  # written last: marks the run complete
    _log("validation: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    last.update({f"val_{k}": v for k, v in summary.items()})
  logger.close()
  ckpt.close()
  return last


def _final_validation_logged(workdir: str, total: int) -> bool:
  """Whether metrics.jsonl holds the final validation (step `total`; step-loop validations skip
  each stage's last step), the last thing a completed run writes."""
  try:
    lines = storage.path(workdir).joinpath("metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return False
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:  # a line cut short by a crash
      continue
    if record.get("step") == total and record.get("split") == "validation":
      return True
  return False


def _previous_validation_mae(stage, workdir, ckpt, normalizer, exp=None, state=None) -> float:
  """The finished `stage`'s validation MAE: as recorded in the workdir, else measured now (on its
  final checkpoint unless its state is at hand) and recorded, so a resume reuses the same value."""
  recorded = experiment_lib.load_stage_metrics(workdir).get(stage.name, {})
  if "val_mae" in recorded:
    return recorded["val_mae"]
  if state is None:
    exp = experiment_lib.build(stage.cfg)
    state = ckpt.restore(exp.abstract_state, stage.last_step)
  mae = evaluator_lib.Evaluator(exp, exp.cfg, normalizer, exp.cfg.data.val_split).summary(state)["mae"]
  experiment_lib.record_stage_metrics(workdir, stage.name, {"val_mae": mae})
  return mae


def _init_from_validation_mae(exp, state, workdir, normalizer) -> float:
  """The validation MAE of the weights a run starts from, as recorded in the workdir, else
  measured on the initial state and recorded before the first step (a resume reuses it)."""
  key = experiment_lib.INIT_FROM_METRICS
  recorded = experiment_lib.load_stage_metrics(workdir).get(key, {})
  if "val_mae" in recorded:
    return recorded["val_mae"]
  mae = evaluator_lib.Evaluator(exp, exp.cfg, normalizer, exp.cfg.data.val_split).summary(state)["mae"]
  experiment_lib.record_stage_metrics(workdir, key, {"val_mae": mae})
  return mae


def _initial_state(exp, stage, plan, ckpt, latest: int, previous_state):
  """This stage's starting state: a fresh init, a mid-stage checkpoint, or the previous stage's
  parameters with a fresh optimizer."""
  if latest > stage.first_step:
    _log(f"resumed from step {latest} (stage {stage.name!r}) in {ckpt.directory}")
    return ckpt.restore(exp.abstract_state, latest)
  if latest == 0:
    state = exp.init_state(jax.random.key(stage.cfg.seed))
    source = init_from.start_source(stage.cfg.model)   # init_from, or the fetched pretrained file
    if not source:
      return state
    variables, summary = init_from.load_variables(source, _host_variables(state), stage.cfg.model.name)
    _log(summary)
    return _with_variables(exp, state, variables)
  if previous_state is None:  # resuming exactly at a stage boundary
    before = plan[stage.index - 1]
    previous_state = ckpt.restore(experiment_lib.build(before.cfg).abstract_state, latest)
    _log(f"resumed from step {latest} (end of stage {before.name!r}) in {ckpt.directory}")
  if _shapes(previous_state.params) != _shapes(exp.abstract_state.params):
    # The head changed (e.g. identity pre-training -> age): carry every leaf that still fits.
    fresh = exp.init_state(jax.random.key(stage.cfg.seed + stage.index))
    variables, _, kept, _ = init_from.copy_variables(_host_variables(fresh), _host_variables(previous_state))
    _log(f"stage {stage.name!r}: parameters carried over from the previous stage except "
         f"{[p for p, _ in kept]} (fresh)")
    return _with_variables(exp, previous_state, variables)
  opt_state = jax.jit(exp.tx.init, out_shardings=exp.state_sharding.opt_state)(previous_state.params)
  return previous_state.replace(opt_state=opt_state)


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


def _host_variables(state) -> dict:
  return {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}


def _with_variables(exp, state, variables: dict):
  """state with host `variables` placed on the state's shardings and a fresh optimizer state."""
  place = lambda tree, shardings: jax.tree.map(
      lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda index, x=x: np.asarray(x)[index]),
      tree, shardings)
  params = place(variables["params"], exp.state_sharding.params)
  batch_stats = place(variables["batch_stats"], exp.state_sharding.batch_stats)
  opt_state = jax.jit(exp.tx.init, out_shardings=exp.state_sharding.opt_state)(params)
  ema = {}
  if state.ema:  # the average restarts at the new weights
    ema = jax.jit(state_lib.fresh_ema, out_shardings=exp.state_sharding.ema)(params, batch_stats)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema)


def _run_stage(exp, stage, state, ckpt, logger, train_source, labels, normalizer, stop, *, start: int,
               many_stages: bool):
  """Runs the stage from global step `start`; returns (state, last logged metrics)."""
  cfg = exp.cfg
  if many_stages:
    _log(f"stage {stage.index + 1} {stage.name!r}: steps {stage.first_step + 1}..{stage.last_step}")
  local_batch = sharding.check_batch_size(cfg.train.batch_size, exp.mesh)
  seed = cfg.seed + 1000 * stage.index
  train_step = exp.jit_train_step(prepare=pipeline.train_view(cfg.data, normalizer, seed))
  batches = pipeline.train_batches(
      train_source, labels, cfg.data, local_batch_size=local_batch, seed=seed,
      start_step=start - stage.first_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  batches = prefetch_to_mesh(batches, exp.mesh, cfg.data.prefetch)
  schedule = optim.make_schedule(cfg.optim, cfg.train.num_steps, cfg.train.batch_size)
  dropout_rng = jax.random.key(cfg.seed + 1)
  validator = None
  # Device metrics are fetched only at log, validation and checkpoint steps (no per-step host
  # sync); every step's finite flag is checked then, before the state is used or written.
  pending, unchecked, last = [], [], {}
  logger.restart_clock(start)
  for step in range(start + 1, stage.last_step + 1):
    if step == start + 1:  # the first call compiles (minutes on big models): a signal stops it at once
      with stop.during("compilation"):
        state, metrics = train_step(state, next(batches), dropout_rng)
    else:
      state, metrics = train_step(state, next(batches), dropout_rng)
    pending.append(metrics)
    unchecked.append((step, metrics))
    stage_step = step - stage.first_step
    stopping = stop.reached(step)
    if stage_step % cfg.train.log_every == 0 or step == stage.last_step:
      _check_finite(unchecked, ckpt)
      host = jax.device_get(pending)
      last = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != step_lib.FINITE}
      pending = []
      logger.progress(step, last, float(schedule(stage_step - 1)))
    if cfg.train.eval_every and stage_step % cfg.train.eval_every == 0 and step != stage.last_step \
        and not stopping:
      _check_finite(unchecked, ckpt)
      try:
        with stop.during("validation"):
          validator = validator or evaluator_lib.Evaluator(exp, cfg, normalizer, cfg.data.val_split)
          summary = validator.summary(state)
      except preemption.Stopped:  # the state after this step is sound: keep it (the watchdog permitting)
        ckpt.save(step, state)
        ckpt.wait()
        raise stop.stopped(step, ckpt.directory) from None
      logger.write(step, summary, prefix="validation")
      _log(f"validation at step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
      logger.restart_clock(step)
    if stage_step % cfg.train.checkpoint_every == 0 or step == stage.last_step or stopping:
      _check_finite(unchecked, ckpt)
      ckpt.save(step, state)
    if stopping:
      ckpt.wait()
      raise stop.stopped(step, ckpt.directory)
  return state, last


def _check_finite(unchecked: list, ckpt) -> None:
  """Raises FloatingPointError at the first step whose loss, gradient or parameters are not
  finite (nothing from it on is saved); empties `unchecked`, a list of (step, device metrics)."""
  flags = jax.device_get([m[step_lib.FINITE] for _, m in unchecked])
  bad = next((i for i, ok in enumerate(flags) if not ok), None)
  if bad is not None:
    step, metrics = unchecked[bad][0], jax.device_get(unchecked[bad][1])
    saved = ckpt.latest_step()
    raise FloatingPointError(
        f"training diverged at step {step}: loss={float(metrics['loss']):.4g} "
        f"grad_norm={float(metrics['grad_norm']):.4g}; nothing from step {step} on was saved "
        f"(last checkpoint: {f'step {saved}' if saved else 'none'}). Lower config.optim.learning_rate "
        "(a resume may change it) or set config.optim.grad_clip_norm in a new workdir")
  unchecked.clear()
