"""The training objective: model outputs + batch -> per-example loss and named terms.

`build(cfg)` makes one `Objective` from the formulation, multi-task and trainable settings; the
train and predict steps receive it, never the config. The train step calls `Objective.loss` and
averages over the batch with the mask; it never looks inside. Multi-task terms (Xing 2017, 3.3) join here:
  parallel / deep  eq. 12: L = L_age + alpha * L_gender + beta * L_race, softmax
                   cross-entropies; an example whose gender (race) is unknown (-1) adds
                   no gender (race) term.
  hybrid           three steps (3.3.3), chosen by config.multitask.stage:
                   'group'      group cross-entropy only (train shared conv1-2 + classifier);
                   'group_age'  each example trains only its own group's age estimator;
                   'end_to_end' / 'all'  age loss on the eq. 13 fusion + group_weight * group CE.
Eq. 13 fuses the group estimators' outputs before decoding (`formulation.fuse`: the mixture of
the groups' predictive distributions), so training's loss and evaluation's prediction read the
same fused output for every formulation.
A face-identity formulation (formulation.task == 'identity', LAE 2.2 pre-training) reads the
model's 'identity' output and the batch's 'identity' labels instead of the ages; its training
metric is top-1 identity accuracy instead of MAE.
Long-tail batch terms (config.formulation.bmse_* / ranksim_*, see `BatchTerms`) join every
kind's loss here, because they need the whole batch and its mask (padding is neither a target
nor a neighbour): Balanced MSE (BMC) is added to each age term, on the decoded age of the same
outputs (the hybrid's own-group estimator in 'group_age', the fusion end to end; none in
'group'); RankSim is added once per batch on outputs['features'], as the same value for every
example (the masked mean is then the regulariser itself). LDS weights live in the formulation's
loss (formulations.py). FDS (config.formulation.fds) acts on the model's inside: within
`Objective.head_inputs(batch)` the module named 'age_head' reads each example's features
calibrated to its age bin (age_jax/fds.py), through flax's method interception, so every model
with an 'age_head' takes part unchanged; training builds the statistics (`with_fds`).
`Objective.trainable_mask` gives the parameters a run trains (the age head alone for LAE's
classifier stage, each hybrid step its own parts): freeze the rest with
optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels) (optax.masked
alone passes the frozen leaves' gradients through unchanged).
"""
import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from age_jax import fds as fds_lib
from age_jax import formulations, losses
from age_jax.models import multitask as multitask_lib

# Hybrid step -> top-level parameter subtrees it trains (None: all of them).
_HYBRID_TRAINABLE = {
    "group": ("shared", "group_classifier", "group_head"),
    "group_age": None,   # the 'group_<k>' estimators, see hybrid_trainable_mask
    "end_to_end": None,
    "all": None,
}


def _multitask(cfg):
  mt = cfg.get("multitask", None)
  return mt if mt is not None else multitask_lib.default_config()


def cross_entropy(logits, labels):
  """Softmax cross-entropy per example; 0 where the label is unknown (< 0)."""
  known = labels >= 0
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return jnp.where(known, -picked, 0.0)


def _group_ids(batch, mt):
  gender = batch.get("gender", jnp.full(batch["age"].shape, -1, jnp.int32))
  race = batch.get("race", jnp.full(batch["age"].shape, -1, jnp.int32))
  return multitask_lib.group_ids(jnp.asarray(gender), jnp.asarray(race), mt.groups, mt.num_races)


@dataclasses.dataclass(frozen=True)
class BatchTerms:
  """The batch-level long-tail terms (config.formulation; 0 weights: off)."""
  bmse_weight: float = 0.0      # Balanced MSE (BMC) on the decoded age
  bmse_sigma: float = 1.0       # its fixed noise sigma, years
  age_range: tuple | None = None  # the head's (lowest, highest) age: BMC's targets are clipped into it
  ranksim_weight: float = 0.0   # RankSim's gamma
  ranksim_lambda: float = 2.0   # its blackbox interpolation lambda

  @classmethod
  def from_config(cls, fcfg) -> "BatchTerms":
    """fcfg: config.formulation."""
    return cls(float(fcfg.bmse_weight), float(fcfg.bmse_sigma), formulations.head_range(fcfg),
               float(fcfg.ranksim_weight), float(fcfg.ranksim_lambda))


NO_TERMS = BatchTerms()


def _valid(batch) -> jnp.ndarray:
  """(B,) bools: the batch's real examples (padding has mask 0)."""
  mask = batch.get("mask")
  return jnp.ones(batch["age"].shape, bool) if mask is None else jnp.asarray(mask) > 0


def _age_term(formulation, terms: BatchTerms, out, ages, valid) -> tuple[jnp.ndarray, dict]:
  """The formulation's age loss on `out` (B, num_outputs), plus Balanced MSE on its decoded age."""
  loss = formulation.loss(out, ages)
  if not terms.bmse_weight:
    return loss, {}
  targets = ages if terms.age_range is None else jnp.clip(jnp.asarray(ages, jnp.float32), *terms.age_range)
  bmse = losses.balanced_mse_bmc(formulation.decode(out), targets, terms.bmse_sigma, valid)
  return loss + terms.bmse_weight * bmse, {"bmse_loss": bmse}


def per_example_loss(outputs: dict, batch: dict, formulation, mt, stage: str | None = None,
                     terms: BatchTerms = NO_TERMS) -> tuple[jnp.ndarray, dict]:
  """Returns (loss (B,), {term name: (B,) values}) for one batch; mt: config.multitask.

  stage: a hybrid training step; None reads mt.stage. terms: the batch-level long-tail terms.
  """
  loss, named = _task_loss(outputs, batch, formulation, mt, mt.stage if stage is None else stage, terms)
  if terms.ranksim_weight:
    if "features" not in outputs:
      raise ValueError("config.formulation.ranksim_weight > 0 needs the model's 'features' output; this "
                       f"model gives only {sorted(outputs)} (the hybrid multi-task net has none)")
    value = losses.ranksim_regularizer(outputs["features"], batch["age"], terms.ranksim_lambda, _valid(batch))
    ranksim = jnp.full(loss.shape, value)   # the same for all: the masked mean is the regulariser
    loss = loss + terms.ranksim_weight * ranksim
    named = {**named, "ranksim_loss": ranksim}
  return loss, named


def _task_loss(outputs, batch, formulation, mt, stage, terms):
  """per_example_loss without RankSim: the kind's (and hybrid step's) terms, BMC in each age term."""
  if mt.kind == "none" and formulation.task != "age":   # 'identity_loss': face-identity pre-training
    task = formulation.task
    task_loss = formulation.loss(outputs[task], batch[task])
    return task_loss, {f"{task}_loss": task_loss}
  valid = _valid(batch)
  if mt.kind == "none":
    age_loss, named = _age_term(formulation, terms, outputs["age"], batch["age"], valid)
    return age_loss, {"age_loss": age_loss, **named}
  if mt.kind in ("parallel", "deep"):
    age_loss, named = _age_term(formulation, terms, outputs["age"], batch["age"], valid)
    gender_loss = cross_entropy(outputs["gender"], batch["gender"])
    race_loss = cross_entropy(outputs["race"], batch["race"])
    loss = age_loss + mt.alpha * gender_loss + mt.beta * race_loss   # eq. 12
    return loss, {"age_loss": age_loss, "gender_loss": gender_loss, "race_loss": race_loss, **named}
  if mt.kind != "hybrid":
    raise ValueError(f"config.multitask.kind={mt.kind!r}; expected one of {list(multitask_lib.KINDS)}")
  groups = _group_ids(batch, mt)
  group_loss = cross_entropy(outputs["group"], groups)
  if stage == "group":
    return group_loss, {"group_loss": group_loss}
  if stage == "group_age":
    # The true group's estimator only: group k's parameters see group k's examples alone.
    own = jnp.take_along_axis(outputs["group_age"], jnp.maximum(groups, 0)[:, None, None], axis=1)[:, 0]
    own_loss, named = _age_term(formulation, terms, own, batch["age"], valid & (groups >= 0))
    own_loss = jnp.where(groups >= 0, own_loss, 0.0)
    return own_loss, {"group_age_loss": own_loss, **named}
  if stage in ("end_to_end", "all"):
    age_loss, named = _age_term(formulation, terms, age_outputs(outputs, formulation), batch["age"], valid)
    return age_loss + mt.group_weight * group_loss, {"age_loss": age_loss, "group_loss": group_loss, **named}
  raise ValueError(f"config.multitask.stage={stage!r}; expected one of {list(multitask_lib.STAGES)}")


def age_outputs(outputs: dict, formulation) -> jnp.ndarray:
  """The age head's outputs (B, num_outputs); for the hybrid, the eq. 13 fusion of its groups'."""
  if "group_age" not in outputs:
    return outputs["age"]
  return formulation.fuse(outputs["group"], outputs["group_age"])


def predicted_age(outputs: dict, formulation) -> jnp.ndarray:
  """Predicted ages (B,) in years: the decoded (fused) age outputs."""
  return formulation.decode(age_outputs(outputs, formulation))


def per_example_metrics(outputs: dict, batch: dict, formulation) -> dict:
  """The train step's per-example metric: {'mae': |predicted - true age|}, or for face-identity
  pre-training {'accuracy': 1 where the top-1 identity is right}."""
  if formulation.task == "identity":
    right = formulation.decode(outputs["identity"]) == batch["identity"]
    return {"accuracy": right.astype(jnp.float32)}
  return {"mae": jnp.abs(predicted_age(outputs, formulation) - batch["age"])}


def predicted_spread(outputs: dict, formulation):
  """(B,) spread in years of the predicted (fused) age distribution, or None where the head
  gives one number per face (regression, ordinal)."""
  if formulation.spread is None:
    return None
  return formulation.spread(age_outputs(outputs, formulation))


def predictions(apply, images, formulation, mirror: bool = False, view_log_probs: bool = False) -> dict:
  """{'age' (B,), 'spread' (B,) where the head has one, 'gender'/'race' logits where the model
  has them} of apply(images) -> model outputs; for face-identity pre-training {'identity': the
  (B, N) cosines}. images: (B, H, W, C), or (B, V, H, W, C) for V views of each face (shifted
  crops); each output is the mean over the views and, with mirror, their left-right mirror
  images (training flips faces, so both are faces the model knows). view_log_probs (softmax
  heads): also 'age_log_probs' (B, views, K), each view's log-softmax, unadjusted (train/posthoc.py)."""
  batch = images.shape[0]
  if images.ndim == 5:   # view-major, as the average below reads them
    images = jnp.swapaxes(images, 0, 1).reshape((-1,) + images.shape[2:])
  views = jnp.concatenate([images, images[:, :, ::-1]]) if mirror else images
  outputs = apply(views)
  num_views = views.shape[0] // batch
  average = lambda x: jnp.mean(x.reshape((num_views, batch) + x.shape[1:]), axis=0)
  if formulation.task == "identity":
    return {"identity": average(outputs["identity"])}
  result = {"age": average(predicted_age(outputs, formulation))}
  if view_log_probs and formulation.spread is not None:
    log_probs = jax.nn.log_softmax(age_outputs(outputs, formulation).astype(jnp.float32), axis=-1)
    result["age_log_probs"] = jnp.swapaxes(log_probs.reshape((num_views, batch, -1)), 0, 1)
  spread = predicted_spread(outputs, formulation)
  if spread is not None:
    result["spread"] = average(spread)
  for task in ("gender", "race"):
    if task in outputs:
      result[task] = average(outputs[task])
  return result


def hybrid_trainable_mask(params, stage: str):
  """Pytree of bools like `params`: True where the hybrid training `stage` updates the leaf.

  'group': shared conv1-2, group classifier and its head; 'group_age': the group_<k> age
  estimators; 'end_to_end' / 'all': everything.
  """
  if stage not in _HYBRID_TRAINABLE:
    raise ValueError(f"training stage {stage!r}; expected one of {list(_HYBRID_TRAINABLE)}")
  if stage in ("end_to_end", "all"):
    return jax.tree.map(lambda _: True, params)
  if "shared" not in params:
    raise ValueError(f"stage {stage!r} is a hybrid multi-task step, but the parameters have no 'shared' "
                     f"subtree (top-level: {sorted(params)}); use stage 'all'")
  if stage == "group":
    trains = lambda top: top in _HYBRID_TRAINABLE["group"]
  else:
    trains = lambda top: top.startswith("group_") and top[len("group_"):].isdigit()
  return {top: jax.tree.map(lambda _, t=trains(top): t, sub) for top, sub in params.items()}


def _is_head(path) -> bool:
  return any(getattr(k, "key", None) in ("age_head", "coral_bias") for k in path)


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureCalibration:
  """FDS on the age head's input: the statistics, and the bins the batch's ages fall in."""
  stats: fds_lib.Statistics
  num_bins: int
  min_age: float

  def __call__(self, features, ages):
    return fds_lib.calibrate(features, losses.age_to_class(ages, self.num_bins, self.min_age), self.stats)


@dataclasses.dataclass(frozen=True)
class Objective:
  """One run's objective: its formulation, multi-task setting (config.multitask) and which
  parameters train (config.train.trainable). Built once by `build`; the steps receive it."""
  formulation: formulations.Formulation
  multitask: ml_collections.ConfigDict
  trainable: str = "all"
  terms: BatchTerms = NO_TERMS     # Balanced MSE / RankSim (config.formulation)
  fds: bool = False                # config.formulation.fds: training needs `calibration`
  calibration: FeatureCalibration | None = None   # FDS statistics, from with_fds

  def with_fds(self, stats: fds_lib.Statistics, num_bins: int, min_age: float) -> "Objective":
    """This objective with the FDS statistics its training steps read."""
    return dataclasses.replace(self, calibration=FeatureCalibration(stats, int(num_bins), float(min_age)))

  def head_inputs(self, batch: dict):
    """A context for the training forward pass: with FDS, the 'age_head' module's input
    features are calibrated to each example's age bin (batch['age']); otherwise nothing changes.
    Evaluation never enters it (DIR calibrates in training only)."""
    if not self.fds:
      return contextlib.nullcontext()
    if self.calibration is None:
      raise ValueError("config.formulation.fds=True, but the objective has no FDS statistics; training "
                       "computes them (train/fds_pass.py) and passes them with Objective.with_fds")
    ages, calibration = batch["age"], self.calibration

    def calibrate_head_input(next_fun, args, kwargs, context):
      if context.module.name == "age_head" and context.method_name == "__call__":
        args = (calibration(args[0], ages),) + tuple(args[1:])
      return next_fun(*args, **kwargs)
    return nn.intercept_methods(calibrate_head_input)

  @property
  def frozen_backbone(self) -> bool:
    """LAE 2.4's classifier stage: only the age head learns; the backbone runs as at inference."""
    return self.trainable == "head"

  def loss(self, outputs: dict, batch: dict, stage: str | None = None) -> tuple[jnp.ndarray, dict]:
    return per_example_loss(outputs, batch, self.formulation, self.multitask, stage, self.terms)

  def metrics(self, outputs: dict, batch: dict) -> dict:
    return per_example_metrics(outputs, batch, self.formulation)

  def predictions(self, apply, images, mirror: bool = False, view_log_probs: bool = False) -> dict:
    return predictions(apply, images, self.formulation, mirror, view_log_probs)

  def trainable_mask(self, params):
    """Pytree of bools like `params` (True = trained), or None when everything trains: the age
    head alone with a frozen backbone, a hybrid step's own parts (Xing 3.3.3), or both."""
    masks = []
    if self.frozen_backbone:
      masks.append(jax.tree_util.tree_map_with_path(lambda path, _: _is_head(path), params))
    if self.multitask.kind == "hybrid" and self.multitask.stage != "all":
      masks.append(hybrid_trainable_mask(params, self.multitask.stage))
    if not masks:
      return None
    return jax.tree.map(lambda *m: all(m), *masks)


def build(cfg, formulation: formulations.Formulation | None = None) -> Objective:
  """cfg: a (stage) config; formulation: config.formulation's, when already built."""
  formulation = formulation or formulations.get_formulation(cfg.formulation)
  terms = NO_TERMS if formulation.task != "age" else BatchTerms.from_config(cfg.formulation)
  fds = formulation.task == "age" and bool(cfg.formulation.get("fds", False))
  return Objective(formulation, _multitask(cfg), cfg.train.trainable, terms, fds)


def _required_labels(mt) -> tuple[str, ...]:
  if mt.kind in ("parallel", "deep"):
    return ("gender", "race")
  if mt.kind == "hybrid":
    return {"gender_race": ("gender", "race"), "gender": ("gender",), "race": ("race",)}[mt.groups]
  return ()


def _check_identities(cfg, labels: dict) -> None:
  values = labels.get("identity")
  if values is None:
    raise ValueError(f"config.formulation.name={cfg.formulation.name!r} trains on face identities, but the "
                     "dataset has no 'identity' labels; use an identity dataset (config.data.name="
                     "'identity_folder')")
  values = np.asarray(values)
  bad = values[(values < 0) | (values >= cfg.formulation.num_identities)]
  if bad.size:
    raise ValueError(f"'identity' labels {sorted(set(bad.tolist()))[:10]} are outside 0.."
                     f"{cfg.formulation.num_identities - 1} (config.formulation.num_identities)")


def check_labels(cfg, labels: dict) -> None:
  """Raises ValueError when a multi-task config meets a dataset without the labels it needs
  (missing or all -1), or with gender/race values outside the configured classes, and when
  face-identity pre-training meets a dataset without identities in its head's range."""
  if cfg.formulation.name in formulations.IDENTITY:
    _check_identities(cfg, labels)
  mt = _multitask(cfg)
  limits = {"gender": multitask_lib.NUM_GENDERS, "race": mt.num_races}
  for name in _required_labels(mt):
    values = labels.get(name)
    if values is None or not np.any(np.asarray(values) >= 0):
      why = "has no such field" if values is None else "has only unknown (-1) values"
      raise ValueError(f"config.multitask.kind={mt.kind!r} needs '{name}' labels, but the dataset {why}; "
                       f"use a dataset with {name} labels or set config.multitask.kind='none'")
    values = np.asarray(values)
    bad = values[(values < -1) | (values >= limits[name])]
    if bad.size:
      field = "config.multitask.num_races" if name == "race" else "the 2 genders"
      raise ValueError(f"'{name}' labels {sorted(set(bad.tolist()))[:10]} are outside 0..{limits[name] - 1} "
                       f"({field}); -1 marks unknown")
