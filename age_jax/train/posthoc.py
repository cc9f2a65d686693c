"""Post-hoc logit adjustment (Menon et al. 2021) with tau chosen on the validation split, for
config.formulation.logit_adjustment = -1: when training ends, the validation faces are predicted
once (each view's log-probabilities), every tau of TAUS is scored in numpy, and the chosen tau is
kept per checkpoint step in the workdir (FILE); evaluation, prediction and export read it back.

The rule: the tau with the lowest group-balanced validation MAE (the mean of the LAE group MAEs)
among those whose validation MAE is at most logit_adjustment_budget years above tau = 0's. The
long tail's errors fall as far as the overall error allows.
"""
import json

import jax
import numpy as np

from age_jax import formulations, losses, metrics, storage
from age_jax.train.evaluator import Evaluator, predict_source

FILE = "logit_adjustment.json"   # {step: {'tau', 'chosen_on', 'budget', 'sweep': [{tau, mae, ...}]}}
TAUS = tuple(round(0.1 * i, 1) for i in range(21))   # 0 .. 2


def adjusted_ages(log_probs, log_prior, bin_ages, tau: float) -> np.ndarray:
  """(N,) ages: per view, the expectation of softmax(log_probs - tau * log_prior), then the mean
  over the views; log_probs (N, views, K). What the adjusted formulation predicts."""
  z = np.asarray(log_probs, np.float64) - tau * np.asarray(log_prior, np.float64)
  z -= z.max(axis=-1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(axis=-1, keepdims=True)
  return (p @ np.asarray(bin_ages, np.float64)).mean(axis=1)


def sweep(log_probs, true_ages, log_prior, bin_ages, taus=TAUS) -> list[dict]:
  """Per tau: {'tau', 'mae', 'group_balanced_mae', 'sigma'} on these faces."""
  rows = []
  for tau in taus:
    pred = adjusted_ages(log_probs, log_prior, bin_ages, tau)
    rows.append({"tau": float(tau), "mae": metrics.mae(pred, true_ages),
                 "group_balanced_mae": metrics.balanced(pred, true_ages)["group_balanced_mae"],
                 "sigma": metrics.aar(pred, true_ages)["sigma"]})
  return rows


def choose(rows: list[dict], budget: float) -> float:
  """The rule of the module docstring; rows[0] must be tau = 0."""
  if rows[0]["tau"] != 0:
    raise ValueError("the sweep must start at tau = 0, the unadjusted model")
  allowed = [r for r in rows if r["mae"] <= rows[0]["mae"] + budget]
  return min(allowed, key=lambda r: (r["group_balanced_mae"], r["tau"]))["tau"]


def choose_on_validation(exp, cfg, normalizer, state, workdir: str, split: str | None = None) -> dict:
  """Predicts the validation split, chooses tau and records it for the state's step; returns the
  record. exp must be built with the unadjusted formulation (logit_adjustment -1)."""
  split = split or cfg.data.val_split
  evaluator = Evaluator(exp, cfg, normalizer, split)
  p = predict_source(exp, cfg, normalizer, exp.jit_predict_step(view_log_probs=True), state, evaluator.source)
  f = cfg.formulation
  rows = sweep(p["pred_age_log_probs"], p["age"], formulations.log_prior(f), losses.bin_ages(f.num_classes, f.min_age))
  record = {"tau": choose(rows, f.logit_adjustment_budget), "chosen_on": f"{cfg.data.name}:{split}",
            "budget": float(f.logit_adjustment_budget), "sweep": rows}
  if jax.process_index() == 0:
    path = storage.path(workdir) / FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded[str(int(state.step))] = record   # other steps' choices stay
    storage.write_text(path, json.dumps(recorded, indent=1))
  return record


def chosen_tau(workdir: str, step: int) -> float:
  """The tau recorded for this checkpoint step; raises naming the command that records it."""
  path = storage.path(workdir) / FILE
  recorded = json.loads(path.read_text()) if path.exists() else {}
  if str(step) not in recorded:
    have = ", ".join(sorted(recorded, key=int)) or "none"
    raise FileNotFoundError(
        f"{path}: no logit adjustment chosen for step {step} (steps with one: {have}); the run's "
        "config.formulation.logit_adjustment=-1 chooses it on validation when training ends. Choose it "
        f"for this step with: python -m launch.evaluate --workdir={workdir} --step={step} --choose_logit_adjustment")
  return float(recorded[str(step)]["tau"])


def with_tau(cfg, tau: float):
  """A copy of cfg whose formulation predicts with this tau."""
  out = cfg.copy_and_resolve_references()
  out.formulation.logit_adjustment = float(tau)
  return out


def needs_choice(cfg) -> bool:
  return cfg.formulation.logit_adjustment == formulations.CHOOSE_ON_VALIDATION
