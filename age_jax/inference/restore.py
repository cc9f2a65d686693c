"""Restore a trained workdir for inference: the weights only, never the optimizer state.

Every inference path starts here (evaluation, the predictor, the exports, the web page).
"""
import time

from age_jax import checkpoint, config as config_lib, formulations, stages
from age_jax.data import run_data
from age_jax.train import experiment as experiment_lib
from age_jax.train import posthoc


def restore(workdir: str, step: int | None = None, attempts: int = 5, adjusted: bool = True):
  """(experiment, stage config, state, normalizer) of a training workdir's checkpoint, for
  inference: the experiment has no optimizer and the state no optimizer state (never read).
  A run whose logit adjustment is chosen on validation predicts with the tau recorded for the
  step (train/posthoc.py); adjusted=False: with the unadjusted formulation.

  Safe on a workdir being trained: only finalised checkpoints are listed, and when the latest
  one fails to read (rotated away meanwhile) the new latest is read (up to `attempts` times).
  """
  cfg = config_lib.load(workdir)
  # The mesh is how a run executed, not part of the model: evaluate data-parallel on the devices here.
  cfg.mesh.data, cfg.mesh.fsdp = -1, 1
  ckpt = _open_checkpoints(workdir, attempts)
  plan = stages.plan(cfg)
  try:
    for attempt in range(attempts):
      chosen = ckpt.latest_step() if step is None else step
      if chosen is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: has launch.train run in {workdir}?")
      stage = stages.stage_at(plan, chosen)  # the head may differ by stage
      stage_cfg = experiment_lib.resolve_stage(plan, stage.index, workdir).cfg
      _check_predicts_ages(stage_cfg, workdir)
      if adjusted and posthoc.needs_choice(stage_cfg):
        stage_cfg = posthoc.with_tau(stage_cfg, posthoc.chosen_tau(workdir, chosen))
      exp = experiment_lib.build(stage_cfg, inference=True)
      try:
        state = _restore_weights(ckpt, exp.abstract_state, chosen, stage_cfg.train.ema_decay > 0)
        break
      except (FileNotFoundError, KeyError, ValueError, OSError):
        if step is not None or attempt == attempts - 1:
          raise
        time.sleep(0.2)  # a rotation deletes the step's files one by one: look again
        ckpt.reload()
  finally:
    ckpt.close()
  return exp, stage_cfg, state, run_data.normalizer(cfg, workdir)


def _open_checkpoints(workdir: str, attempts: int):
  """The workdir's checkpoints, read-only; retried when a rotation deletes a step while orbax lists them."""
  for attempt in range(attempts):
    try:
      return checkpoint.Checkpointer(workdir, read_only=True)
    except FileNotFoundError:
      if attempt == attempts - 1:
        raise
      time.sleep(0.2)


def _restore_weights(ckpt, abstract, step: int, ema: bool):
  """The inference state at `step`: step, params and batch_stats, the moving average's where the
  run keeps one (train/state.py); the optimizer state is never read."""
  weights = {"params": abstract.params, "batch_stats": abstract.batch_stats}
  if not ema:
    return abstract.replace(**ckpt.restore_variables({"step": abstract.step, **weights}, step))
  restored = ckpt.restore_variables({"step": abstract.step, "ema": weights}, step)
  return abstract.replace(step=restored["step"], **restored["ema"])


def _check_predicts_ages(cfg, workdir: str) -> None:
  if cfg.formulation.name in formulations.IDENTITY:
    raise ValueError(f"{workdir} is a face-identity pre-training run (config.formulation.name="
                     f"{cfg.formulation.name!r}): it predicts no ages, so there is nothing to evaluate, "
                     "predict or export here. Its validation identity top-1 accuracy is in its "
                     "metrics.jsonl (split 'validation', 'accuracy'); train an age model from it with "
                     f"--config.model.init_from={workdir}")
