"""Evaluation: restore a run, predict ages for a split or a folder, and report the metrics."""
import os
import time

import jax
from absl import logging

from age_jax import checkpoint, config as config_lib, conformal, formulations, report as report_lib, stages, storage
from age_jax.data import datasets, run_data
from age_jax.data.builders import face_crops
from age_jax.train import experiment as experiment_lib
from age_jax.train import posthoc
from age_jax.train.evaluator import Evaluator, calibrate


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


def evaluate_workdir(workdir: str, *, split: str | None = None, folder: str | None = None,
                     dataset: str | None = None, manual_dir: str = "", faces: str = "detect",
                     out_dir: str | None = None, step: int | None = None, calibrate_first: bool = False,
                     mirror: bool | None = None, views: int | None = None,
                     choose_logit_adjustment: bool = False, calibration_method: str | None = None) -> dict:
  """Evaluates a checkpoint and writes report.json and plots to out_dir; returns the report.

  Sources: a split of the run's own dataset (default: config.data.eval_split), images as it
  trained on them; or another dataset (`dataset`, built from manual_dir once; default split
  'test', else all its splits) or a labelled folder. For those two, faces='detect' finds and
  aligns each image's face onto the canonical crop (data/builders/face_crops.py; images without
  a face are left out and counted), faces='crops' uses the images as they are.
  With calibrate_first, first (re)calibrates the age intervals of this step and mirror on the
  validation split (calibration_method: conformal.METHODS, default by the head). The report has
  interval coverage whenever the workdir holds a calibration of these weights (chips preferred
  for the run's own splits, faces detected or pasted for faces='detect'); it refuses
  (conformal.CalibrationMismatch) when the workdir holds calibrations of other weights only.
  mirror overrides the run's config.eval.mirror (mirror-averaged predictions), views its
  config.data.eval_views (1 or 5 shifted crops averaged). choose_logit_adjustment: first
  (re)chooses the logit adjustment's tau on the validation split (train/posthoc.py), for a run
  with config.formulation.logit_adjustment=-1.
  """
  if faces not in ("detect", "crops"):
    raise ValueError(f"faces={faces!r}; expected 'detect' or 'crops'")
  if folder and dataset:
    raise ValueError("give a folder or a dataset to evaluate on, not both")
  exp, cfg, state, normalizer = restore(workdir, step, adjusted=not choose_logit_adjustment)
  if mirror is not None:
    cfg.eval.mirror = bool(mirror)  # exp.cfg is cfg: the predict steps built below read it
  if views is not None:
    cfg.data.eval_views = int(views)
  if choose_logit_adjustment:
    if not posthoc.needs_choice(cfg):
      raise ValueError(f"{workdir}: config.formulation.logit_adjustment={cfg.formulation.logit_adjustment} is "
                       "fixed; choosing it on validation is for runs trained with -1")
    record = posthoc.choose_on_validation(exp, cfg, normalizer, state, workdir)
    cfg = posthoc.with_tau(cfg, record["tau"])
    exp = experiment_lib.build(cfg, inference=True)
  if calibrate_first:
    if not cfg.data.val_split:
      raise ValueError("calibration needs a validation split, and config.data.val_split is empty")
    calibrate(exp, cfg, normalizer, state, workdir, method=calibration_method)
  detected = bool(folder or dataset) and faces == "detect"
  try:
    calibration = conformal.load(workdir, int(state.step), bool(cfg.eval.mirror),
                                 ("detected", "pasted", "chips") if detected else ("chips", "detected", "pasted"))
  except conformal.CalibrationMismatch as e:  # the metrics stand without intervals; say why they are missing
    logging.warning("no interval coverage in this report: %s", e)
    calibration = None
  crop_size = face_crops.run_crop_size(cfg.data)
  face_counts = None
  if folder:
    records = datasets.folder_source(folder, crop_size=crop_size if faces == "detect" else 0)
    source_name, face_counts = folder, records.face_counts
  elif dataset:
    options = {"canonical_crop": True, "crop_size": crop_size} if faces == "detect" else {}
    built = datasets.prepare(dataset, manual_dir, run_data.data_dir(cfg), **options)
    options["fingerprint"] = built["fingerprint"]  # the build of this source, not another one
    stored = datasets.stored_splits(dataset, run_data.data_dir(cfg), **options)
    split = split or ("test" if "test" in stored else "+".join(stored))
    records = datasets.load_split(dataset, run_data.data_dir(cfg), split, **options)
    source_name = f"{dataset}:{split}"
    if faces == "detect":
      face_counts = {k: built.get(k, 0) for k in ("detected_images", "several_faces")}
      face_counts["no_face"] = built["dropped"].get("no_face", 0)
  else:
    split = split or cfg.data.eval_split
    records, source_name = run_data.load_split(cfg, split), f"{cfg.data.name}:{split}"
  if face_counts is not None:
    cfg.data.align = False  # the crops are aligned already
  evaluator = Evaluator(exp, cfg, normalizer, records=records, train_counts=run_data.training_age_counts(cfg))
  result = evaluator.report(state, calibration)
  result["source"] = source_name
  if face_counts is not None:
    result["faces"] = face_counts
  result["step"] = int(state.step)
  result["workdir"] = str(storage.path(workdir))
  out_dir = out_dir or os.path.join(workdir, "eval", _slug(source_name))
  if jax.process_index() == 0:
    report_lib.write_report(result, out_dir)
  return result


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")[-80:]

