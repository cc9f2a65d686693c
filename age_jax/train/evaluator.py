"""Predicting every example of a split exactly once across processes, for validation during
training (train/loop.py) and for evaluation after it (age_jax/evaluate.py, age_jax/inference)."""
import jax
import numpy as np

from age_jax import conformal, metrics, report as report_lib
from age_jax.data import pipeline, run_data
from age_jax.train import sharding, state as state_lib


class Evaluator:
  """Predicts every example of a record source exactly once, across all processes."""

  def __init__(self, exp, cfg, normalizer, split: str | None = None, records=None, train_counts=None):
    """train_counts: the run's training images per whole-year age, for the report's
    many/medium/few-shot MAEs (run_data.training_age_counts)."""
    records = run_data.load_split(cfg, split) if records is None else records
    self.exp, self.cfg, self.normalizer, self.train_counts = exp, cfg, normalizer, train_counts
    self.source = run_data.loaded_source(cfg, records)
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
        pred_gender=p.get("pred_gender"), pred_race=p.get("pred_race"), file_names=self.file_names,
        train_counts=self.train_counts)
    if calibration is not None:
      result["intervals"] = conformal.report_section(calibration, p, gender=known("gender"), race=known("race"))
    return result


def summarize(p: dict) -> dict:
  """MAE, group-balanced MAE and AAR; for face-identity pre-training, top-1 identity accuracy."""
  if "pred_identity" in p:
    return {"accuracy": float(np.mean(p["pred_identity"] == p["identity"]))}
  return {"mae": metrics.mae(p["pred_age"], p["age"]),
          "group_balanced_mae": metrics.balanced(p["pred_age"], p["age"])["group_balanced_mae"],
          "aar": metrics.aar(p["pred_age"], p["age"])["aar"]}


def calibrate(exp, cfg, normalizer, state, workdir: str, split: str | None = None,
              method: str | None = None) -> dict:
  """Predicts the validation split (or `split`) as evaluation reads it (faces 'chips'), stores the
  conformal calibration of these weights (step, config.eval.mirror) in the workdir's
  calibrations/ (conformal.save: other steps' are kept) and returns the split's MAE and AAR."""
  split = split or cfg.data.val_split
  p = Evaluator(exp, cfg, normalizer, split).predict(state)
  calibration = conformal.calibrate_predictions(p, f"{cfg.data.name}:{split}", int(state.step),
                                                bool(cfg.eval.mirror), "chips", method)
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
    collected.append(jax.device_get(predict_fn(*state_lib.eval_variables(state), batch)))
  out = {}
  for key in collected[0]:
    out[key] = np.concatenate([c[key] for c in collected])
  keep = out.pop("mask") > 0
  order = np.argsort(out["index"][keep], kind="stable")
  return {k: v[keep][order] for k, v in out.items()}


def _str(value):
  return value.decode() if isinstance(value, bytes) else str(value)
