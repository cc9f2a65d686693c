"""Evaluation: restore a run, predict ages for a split or a folder, and report the metrics."""
import os
import time

import jax
import numpy as np

from age_jax import checkpoint, conformal, formulations, metrics, report as report_lib, storage
from age_jax.data import datasets, pipeline
from age_jax.data.builders import face_crops
from age_jax.train import experiment as experiment_lib
from age_jax.train import sharding, stages


class Evaluator:
  """Predicts every example of a record source exactly once, across all processes."""

  def __init__(self, exp, cfg, normalizer, split: str | None = None, records=None):
    records = experiment_lib.load_split(cfg, split) if records is None else records
    self.exp, self.cfg, self.normalizer = exp, cfg, normalizer
    self.source = experiment_lib.loaded_source(cfg, records)
    self.file_names = [_str(records[i].get("file_name", "")) for i in range(len(records))]
    self._predict = exp.jit_predict_step()

  def predict(self, state) -> dict[str, np.ndarray]:
    """Returns per-example arrays in record order: predicted 'age' (+ gender/race) and true labels."""
    return predict_source(self.exp, self.cfg, self.normalizer, self._predict, state, self.source)

  def summary(self, state) -> dict:
    return summarize(self.predict(state))

  def report(self, state, calibration: conformal.Calibration | None = None) -> dict:
    """The evaluation report; with a calibration, also interval coverage and widths."""
    p = self.predict(state)
    known = lambda key: p[key] if key in p and np.any(p[key] >= 0) else None
    result = report_lib.evaluation_report(
        p["pred_age"], p["age"], gender=known("gender"), race=known("race"),
        pred_gender=p.get("pred_gender"), pred_race=p.get("pred_race"), file_names=self.file_names)
    if calibration is not None:
      result["intervals"] = conformal.report_section(calibration, p, gender=known("gender"), race=known("race"))
    return result


def summarize(p: dict) -> dict:
  """MAE and AAR; for face-identity pre-training, top-1 identity accuracy."""
  if "pred_identity" in p:
    return {"accuracy": float(np.mean(p["pred_identity"] == p["identity"]))}
  return {"mae": metrics.mae(p["pred_age"], p["age"]), "aar": metrics.aar(p["pred_age"], p["age"])["aar"]}


def calibrate(exp, cfg, normalizer, state, workdir: str, split: str | None = None) -> dict:
  """Predicts the validation split (or `split`), stores the conformal calibration in the workdir
  (conformal.CALIBRATION_FILE) and returns the split's MAE and AAR."""
  split = split or cfg.data.val_split
  p = Evaluator(exp, cfg, normalizer, split).predict(state)
  calibration = conformal.calibrate_predictions(p, f"{cfg.data.name}:{split}", int(state.step))
  if jax.process_index() == 0:
    conformal.save(calibration, workdir)
  return summarize(p)


def predict_source(exp, cfg, normalizer, predict_fn, state, source) -> dict[str, np.ndarray]:
  """Predictions for every example of a loaded source (decoded load_size images), in its order,
  with predict_fn = exp.jit_predict_step()."""
  batches = pipeline.eval_batches(source, cfg.data, global_batch_size=cfg.eval.batch_size,
                                  normalizer=normalizer, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  sharding.check_batch_size(cfg.eval.batch_size, exp.mesh, "config.eval.batch_size")
  collected = []
  for local in batches:
    batch = sharding.to_global(local, exp.mesh)
    collected.append(jax.device_get(predict_fn(state.params, state.batch_stats, batch)))
  out = {}
  for key in collected[0]:
    out[key] = np.concatenate([c[key] for c in collected])
  keep = out.pop("mask") > 0
  order = np.argsort(out["index"][keep], kind="stable")
  return {k: v[keep][order] for k, v in out.items()}


def _str(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def restore(workdir: str, step: int | None = None, attempts: int = 5):
  """(experiment, stage config, state, normalizer) of a training workdir's checkpoint.

  Safe on a workdir being trained: only finalised checkpoints are listed, and when the latest
  one fails to read (rotated away meanwhile) the new latest is read (up to `attempts` times).
  """
  cfg = experiment_lib.load_config(workdir)
  # The mesh is how a run executed, not part of the model: evaluate data-parallel on the devices here.
  cfg.mesh.data, cfg.mesh.fsdp = -1, 1
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  plan = stages.plan(cfg)
  try:
    for attempt in range(attempts):
      chosen = ckpt.latest_step() if step is None else step
      if chosen is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: has launch.train run in {workdir}?")
      stage = stages.stage_at(plan, chosen)  # the optimizer state differs by stage
      stage_cfg = experiment_lib.resolve_stage(plan, stage.index, workdir).cfg
      _check_predicts_ages(stage_cfg, workdir)
      exp = experiment_lib.build(stage_cfg)
      try:
        state = ckpt.restore(exp.abstract_state, chosen)
        break
      except (FileNotFoundError, KeyError, ValueError, OSError):
        if step is not None or attempt == attempts - 1:
          raise
        time.sleep(0.2)  # a rotation deletes the step's files one by one: look again
        ckpt.reload()
  finally:
    ckpt.close()
  return exp, stage_cfg, state, experiment_lib.normalizer(cfg, workdir)


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
                     mirror: bool | None = None) -> dict:
  """Evaluates a checkpoint and writes report.json and plots to out_dir; returns the report.

  Sources: a split of the run's own dataset (default: config.data.eval_split), images as it
  trained on them; or another dataset (`dataset`, built from manual_dir once; default split
  'test', else all its splits) or a labelled folder. For those two, faces='detect' finds and
  aligns each image's face onto the canonical crop (data/builders/face_crops.py; images without
  a face are left out and counted), faces='crops' uses the images as they are.
  With calibrate_first, first (re)calibrates the age intervals on the validation split; the
  report has interval coverage whenever the workdir holds a calibration. mirror overrides the
  run's config.eval.mirror (mirror-averaged predictions).
  """
  if faces not in ("detect", "crops"):
    raise ValueError(f"faces={faces!r}; expected 'detect' or 'crops'")
  if folder and dataset:
    raise ValueError("give a folder or a dataset to evaluate on, not both")
  exp, cfg, state, normalizer = restore(workdir, step)
  if mirror is not None:
    cfg.eval.mirror = bool(mirror)  # exp.cfg is cfg: the predict steps built below read it
  if calibrate_first:
    if not cfg.data.val_split:
      raise ValueError("calibration needs a validation split, and config.data.val_split is empty")
    calibrate(exp, cfg, normalizer, state, workdir)
  crop_size = face_crops.run_crop_size(cfg.data)
  face_counts = None
  if folder:
    records = datasets.folder_source(folder, crop_size=crop_size if faces == "detect" else 0)
    source_name, face_counts = folder, records.face_counts
  elif dataset:
    options = {"canonical_crop": True, "crop_size": crop_size} if faces == "detect" else {}
    built = datasets.prepare(dataset, manual_dir, experiment_lib.data_dir(cfg), **options)
    options["fingerprint"] = built["fingerprint"]  # the build of this source, not another one
    stored = datasets.stored_splits(dataset, experiment_lib.data_dir(cfg), **options)
    split = split or ("test" if "test" in stored else "+".join(stored))
    records = datasets.load_split(dataset, experiment_lib.data_dir(cfg), split, **options)
    source_name = f"{dataset}:{split}"
    if faces == "detect":
      face_counts = {k: built.get(k, 0) for k in ("detected_images", "several_faces")}
      face_counts["no_face"] = built["dropped"].get("no_face", 0)
  else:
    split = split or cfg.data.eval_split
    records, source_name = experiment_lib.load_split(cfg, split), f"{cfg.data.name}:{split}"
  if face_counts is not None:
    cfg.data.align = False  # the crops are aligned already
  evaluator = Evaluator(exp, cfg, normalizer, records=records)
  result = evaluator.report(state, conformal.load(workdir))
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

