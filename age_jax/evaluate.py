"""Evaluation: restore a run, predict ages for a split or a folder, and report the metrics.

Above the inference layer (it restores through age_jax/inference/restore.py and reads the same
calibrations), below nothing: only launchers and the FAEB protocol call it.
"""
import os

import jax
from absl import logging

from age_jax import config as config_lib, conformal, report as report_lib, storage
from age_jax.data import datasets, run_data
from age_jax.faces import run_crop_size
from age_jax.inference import intervals
from age_jax.inference.restore import restore
from age_jax.train import experiment as experiment_lib
from age_jax.train import posthoc
from age_jax.train.evaluator import Evaluator, calibrate


def evaluate_workdir(workdir: str, *, split: str | None = None, folder: str | None = None,
                     dataset: str | None = None, manual_dir: str = "", faces: str = "detect",
                     out_dir: str | None = None, step: int | None = None, calibrate_first: bool = False,
                     mirror: bool | None = None, views: int | None = None,
                     choose_logit_adjustment: bool = False, calibration_method: str | None = None) -> dict:
  """Evaluates a checkpoint and writes report.json and plots to out_dir; returns the report.

  Sources: a split of the run's own dataset (default: config.data.eval_split), images as it
  trained on them; or another dataset (`dataset`, built from manual_dir once; default split
  'test', else all its splits) or a labelled folder. For those two, faces='detect' finds and
  aligns each image's face onto the canonical crop (faces/find.py's rule; images without
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
    calibration = intervals.load(workdir, int(state.step), bool(cfg.eval.mirror), "detect" if detected else "crops")
  except conformal.CalibrationMismatch as e:  # the metrics stand without intervals; say why they are missing
    logging.warning("no interval coverage in this report: %s", e)
    calibration = None
  crop_size = run_crop_size(cfg.data)
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
  out_dir = out_dir or report_dir(workdir, source_name)
  if jax.process_index() == 0:
    report_lib.write_report(result, out_dir)
  return result


def report_dir(workdir: str, source_name: str) -> str:
  """Where evaluate_workdir writes a source's report by default: WORKDIR/eval/<source, slugged>."""
  return os.path.join(workdir, "eval", _slug(source_name))


def own_report_dir(workdir: str) -> str:
  """The folder of the run's own report, the one `launch.evaluate --workdir=W` writes (config.data.eval_split)."""
  cfg = config_lib.load(workdir)
  return report_dir(workdir, f"{cfg.data.name}:{cfg.data.eval_split}")


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")[-80:]

