"""Formulations: a head size, a pure per-example loss and an age decoder, by name.

  name              paper                          head (num_outputs)     loss                  decode
  'oh'              Xing 3.2.1 NetOH, eq. 5        K softmax logits       one-hot CE            argmax
  'oh_expectation'  DEX (Rothe 2015)               K softmax logits       one-hot CE            expectation
  'ldl'             Xing 3.2.1 NetLDL, eqs. 6-8    K softmax logits       CE to Gaussian dist.  argmax
  'mse', 'mae'      Xing 3.2.2, eqs. 9-10          1 linear output        (yhat-y)^2, |yhat-y|  offset + scale*out
  'or'              Xing 3.2.3 NetOR, eq. 11       K-1 binary logits      sum of K-1 BCEs       count of logits > 0
  'coral'           Cao et al. 2020 (CORAL)        K-1 logits, CORAL head sum of K-1 BCEs       count of logits > 0
  'dldl_v2'         LAE eqs. 1-3 (Gao 2018)        K softmax logits       KL + lambda*|y-E|     expectation
  'lae_stage2'      LAE eq. 4 (classifier stage)   K softmax logits       KL + (|y-E| - mae)^2  expectation
  'am_softmax'      LAE 2.2 pre-training (CosFace) cosines to N identities AM-softmax (eq. 4)   identity: argmax

'am_softmax' is face-identity pre-training, not an age formulation: its task is 'identity' (it
reads the model's 'identity' output and the batch's 'identity' labels), the head is the
cosine head of models/heads.py over num_identities classes (filled in by training from the
identity build when 0), and the loss CosFace's with s = am_scale, m = am_margin (CosFace's 64
and 0.35 by default; LAE gives no values). Training reports identity top-1 accuracy instead of
MAE; an age run starts from it with config.model.init_from (the backbone loads, the head is fresh).

Bins: classification and ordinal heads cover the ages min_age .. min_age + K - 1
(K = config.formulation.num_classes, 101 as in LAE). Regression predicts
age = regression_offset + regression_scale * output: the defaults 33 and 20 are about the mean
and standard deviation of UTKFace's ages (33.3, 19.9), so a freshly initialised head (outputs
near 0) starts at the mean age with unit-scale outputs; the losses stay in years (eqs. 9-10).

Ordinal imbalance (Xing 3.2.3: task k has almost only negatives for large k). The paper's two
measures: (1) one network trains all K-1 tasks together (always the case here); (2) mini-batches
with as many positives as negatives per task, available as a loss weighting:
  or_class_balance  'none'    plain BCE;
                    'batch'   per task, positives and negatives get equal total weight within
                              each batch (a batch with padded examples counts them too);
                    'dataset' w+ = 1/(2 p_k), w- = 1/(2 (1 - p_k)), p_k the training fraction
                              above bin k (needs age_counts), capped at or_max_class_weight.
  or_task_weights   'uniform' lambda_k = 1;
                    'sqrt_count' lambda_k proportional to sqrt(N_k), N_k the training count of
                              bin k (Niu et al. 2016, OR-CNN), rescaled to mean 1 so the loss keeps
                              the scale of 'uniform' (needs age_counts).
`with_age_counts(cfg, ages)` fills config.formulation.age_counts from the training labels.

Long tail, softmax heads (Menon et al. 2021, logit adjustment; Ren et al. 2020, balanced
softmax), with the log prior log pi_k of the training ages (add-one smoothed counts, so an empty
bin stays finite):
  logit_adjustment  tau > 0: predictions (decode and spread) read logits - tau * log pi, which
                    moves probability from frequent ages to rare ones after training; -1: tau is
                    chosen on the validation split when training ends (train/posthoc.py).
  balanced_softmax  the loss reads logits + log pi (training time; predictions read the logits).

Long-tail terms (imbalanced regression), off by default, for every age formulation:
  lds_reweight  LDS (Yang et al. 2021, DIR): each example's loss is multiplied by its age bin's
                weight, 1 / (the training density, sqrt'ed for 'sqrt_inv', smoothed by the
                lds_kernel window), mean 1 over the training set (losses.lds_bin_weights; needs
                age_counts). Applied here, to the formulation's loss, so every multi-task kind and
                the head-only stage see it; Balanced MSE and RankSim are not weighted.
  bmse_weight   Balanced MSE (Ren et al. 2022, BMC) on the decoded age, added to the age loss by
                age_jax/objective.py (a batch-level loss: it needs the batch's mask).
  ranksim_*     RankSim (Gong et al. 2022) on the model's 'features', added by objective.py.
  fds, fds_*    FDS (DIR): during a head-only stage the age head reads each training example's
                features calibrated to its age bin's kernel-smoothed feature statistics (age_jax/fds.py;
                statistics of the frozen backbone computed once, train/fds_pass.py); evaluation reads
                the raw features, as DIR.

Hybrid multi-task nets (Xing eq. 13) fuse their groups' head outputs with `Formulation.fuse`
before decoding: regression outputs by their probability-weighted mean, softmax heads as the
mixture of the groups' distributions (its expectation is exactly sum_g p_g E_g), ordinal heads
as the mixture of each task's probability. The hybrid's end-to-end loss and its evaluation both
read the fused outputs, so training optimises what evaluation measures.

CORAL's rank consistency needs a head with one shared weight vector and K-1 biases:
logits_k = features . w + b_k (w: (D, 1), no bias; b: (K-1,)). `Formulation.head` says 'coral'
so the model can build that head instead of a plain Dense(num_outputs); the loss and decoder are
the ordinal ones.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from age_jax import ages as ages_lib
from age_jax import fds as fds_lib
from age_jax import inference_rules as rules
from age_jax import losses


@dataclasses.dataclass(frozen=True)
class Formulation:
  name: str
  num_outputs: int
  # (outputs (B, num_outputs) float32, ages (B,) float32) -> per-example loss (B,)
  loss: Callable
  # outputs (B, num_outputs) -> predicted ages (B,) float32
  decode: Callable
  # (group logits (B, G), per-group outputs (B, G, num_outputs)) -> the outputs (B, num_outputs)
  # of the groups' mixture (Xing eq. 13, fused before decoding; see fuse_groups)
  fuse: Callable = None
  # the output layer the model must provide: 'dense' = Dense(num_outputs);
  # 'coral' = shared Dense(1, no bias) + num_outputs biases (see the module docstring)
  head: str = "dense"
  # softmax heads: outputs -> standard deviation (years) of the predicted age distribution
  spread: Callable | None = None
  # what it predicts: the model output and batch label it reads, 'age' or 'identity'
  task: str = "age"


SOFTMAX = ("oh", "oh_expectation", "ldl", "dldl_v2", "lae_stage2")
REGRESSION = ("mse", "mae")
ORDINAL = ("or", "coral")
IDENTITY = ("am_softmax",)
AGE_NAMES = SOFTMAX + REGRESSION + ORDINAL
NAMES = AGE_NAMES + IDENTITY
DEFAULT_DECODE = {"oh": "argmax", "oh_expectation": "expectation", "ldl": "argmax",
                  "dldl_v2": "expectation", "lae_stage2": "expectation"}
DECODES = ("default", "argmax", "expectation")
OUT_OF_RANGE = ("clip", "error")
OR_TASK_WEIGHTS = ("uniform", "sqrt_count")
OR_CLASS_BALANCE = ("none", "batch", "dataset")
LAE_READINGS = ("per_example", "batch_mean")
CHOOSE_ON_VALIDATION = -1   # config.formulation.logit_adjustment: tau chosen when training ends
LDS_REWEIGHTS = losses.LDS_REWEIGHTS
LDS_KERNELS = losses.LDS_KERNELS


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "mae",                # one of NAMES
      "num_classes": 101,           # K: bins of classification / ordinal heads (LAE: 101)
      "min_age": 0,                 # age of bin 0
      "out_of_range": "clip",       # training ages outside the bins: 'clip' (with a warning) | 'error'
      "regression_offset": 33.0,    # 'mse'/'mae': predicted age = offset + scale * output
      "regression_scale": 20.0,
      "sigma": 1.0,                 # std (years) of the Gaussian label distribution (LAE 2.1: 1)
      "dldl_lambda": 1.0,           # 'dldl_v2': weight of L_er (LAE 3.3: 1)
      "lae_mae": -1.0,              # 'lae_stage2': mae of eq. 4/5; < 0: the previous stage's validation MAE
      "lae_reading": "per_example",  # 'lae_stage2': (L_er,i - mae)^2 per example | 'batch_mean' (losses.py)
      "decode": "default",          # softmax heads: 'default' | 'argmax' | 'expectation'
      "or_task_weights": "uniform",  # 'or'/'coral': task importance lambda_k
      "or_class_balance": "none",   # 'or'/'coral': per-task positive/negative weights
      "or_max_class_weight": 10.0,  # cap on 'dataset' class weights (rare tasks would explode)
      "age_counts": (),             # K training counts per bin, see with_age_counts()
      "logit_adjustment": 0.0,      # softmax heads: tau of the post-hoc adjustment; -1: chosen on validation
      "logit_adjustment_budget": 0.2,  # ... choosing: the most validation MAE (years) it may add
      "balanced_softmax": False,    # softmax heads: the loss reads logits + log prior
      "num_identities": 0,          # 'am_softmax': classes; 0 = the identity build's count (filled by training)
      "am_scale": 64.0,             # 'am_softmax': s of CosFace eq. 4 (CosFace: 64; LAE gives none)
      "am_margin": 0.35,            # 'am_softmax': m of CosFace eq. 4 (CosFace: 0.35)
      # Imbalanced regression (module docstring, "Long-tail terms"); all off by default.
      "lds_reweight": "none",       # LDS (DIR) loss weights: 'none' | 'sqrt_inv' (DIR's default) | 'inverse'
      "lds_kernel": "gaussian",     # LDS smoothing: 'gaussian' | 'triang' | 'laplace' | 'none' (plain re-weighting)
      "lds_ks": 5,                  # LDS kernel size, odd (DIR: 5)
      "lds_sigma": 2.0,             # LDS kernel sigma, in bins (DIR: 2)
      "bmse_weight": 0.0,           # Balanced MSE (BMC, Ren et al. 2022) on the decoded age: weight; 0 = off
      "bmse_sigma": 1.0,            # its noise sigma s, years, fixed (the paper's initial value; it also learns s)
      "ranksim_weight": 0.0,        # RankSim (Gong et al. 2022) on the features: gamma; 0 = off
      "ranksim_lambda": 2.0,        # RankSim's blackbox interpolation lambda (paper: 2)
      # FDS (DIR) on the features feeding the age head, head-only stages (train.trainable='head'):
      "fds": False,                 # calibrate each training example's features to its age bin's smoothed statistics
      "fds_kernel": "gaussian",     # its smoothing window over neighbouring ages: 'gaussian' | 'triang' | 'laplace'
      "fds_ks": 5,                  # kernel size, odd (DIR: 5)
      "fds_sigma": 2.0,             # kernel sigma, in bins (DIR: 2)
  })


def _fail(field, value, expected):
  raise ValueError(f"config.formulation.{field}={value!r}; expected {expected}")


def _check_choice(cfg, field, choices):
  if cfg[field] not in choices:
    _fail(field, cfg[field], f"one of {list(choices)}")


def _age_counts(cfg, why: str) -> np.ndarray:
  counts = np.asarray(cfg.age_counts, np.float64)
  if counts.shape != (cfg.num_classes,) or counts.sum() <= 0 or np.any(counts < 0):
    raise ValueError(
        f"config.formulation.age_counts has {counts.size} entries; {why} needs the training count of "
        f"each of the num_classes={cfg.num_classes} bins (fill it with "
        f"age_jax.formulations.with_age_counts(config.formulation, training_ages))")
  return counts


def _ordinal_weights(cfg):
  """(task_weights (K-1,) or None, class-weight mode, (pos_w, neg_w) or None), from config."""
  k = cfg.num_classes
  task_weights = None
  if cfg.or_task_weights == "sqrt_count":
    root = np.sqrt(_age_counts(cfg, "or_task_weights='sqrt_count'")[:k - 1])
    if root.sum() <= 0:
      raise ValueError("config.formulation.age_counts: no training ages in bins 0..K-2, so "
                       "or_task_weights='sqrt_count' gives every task weight 0")
    task_weights = (root / root.sum() * (k - 1)).astype(np.float32)
  fixed = None
  if cfg.or_class_balance == "dataset":
    counts = _age_counts(cfg, "or_class_balance='dataset'")
    above = counts[::-1].cumsum()[::-1][1:] / counts.sum()  # p_k = P(class > k), k = 0..K-2
    inside = (above > 0) & (above < 1)
    cap = float(cfg.or_max_class_weight)
    with np.errstate(divide="ignore"):
      pos = np.where(inside, np.minimum(0.5 / above, cap), 1.0)
      neg = np.where(inside, np.minimum(0.5 / (1.0 - above), cap), 1.0)
    fixed = (pos.astype(np.float32), neg.astype(np.float32))
  return task_weights, fixed


def _validate(cfg, need_mae: bool = True):
  if cfg.name not in NAMES:
    raise ValueError(f"config.formulation.name={cfg.name!r} is not a known formulation; known: {list(NAMES)}")
  if not isinstance(cfg.num_classes, int) or cfg.num_classes < 2:
    _fail("num_classes", cfg.num_classes, "an integer >= 2")
  _check_choice(cfg, "out_of_range", OUT_OF_RANGE)
  _check_choice(cfg, "decode", DECODES)
  _check_choice(cfg, "or_task_weights", OR_TASK_WEIGHTS)
  _check_choice(cfg, "or_class_balance", OR_CLASS_BALANCE)
  _check_choice(cfg, "lae_reading", LAE_READINGS)
  _validate_long_tail(cfg)
  if cfg.name not in SOFTMAX and cfg.decode != "default":
    _fail("decode", cfg.decode, f"'default' for formulation {cfg.name!r} (argmax / expectation need a softmax head)")
  if cfg.name in ("ldl", "dldl_v2", "lae_stage2") and not cfg.sigma > 0:
    _fail("sigma", cfg.sigma, "a positive number of years")
  if cfg.name in REGRESSION and cfg.regression_scale == 0:
    _fail("regression_scale", cfg.regression_scale, "a non-zero number")
  if need_mae and cfg.name == "lae_stage2" and not cfg.lae_mae >= 0:
    _fail("lae_mae", cfg.lae_mae, "the validation MAE of the stage-1 (representation) run, >= 0 (LAE eq. 5); "
          "< 0 takes it from the previous stage of config.stages")
  if not (cfg.logit_adjustment >= 0 or cfg.logit_adjustment == CHOOSE_ON_VALIDATION):
    _fail("logit_adjustment", cfg.logit_adjustment, f"tau >= 0, or {CHOOSE_ON_VALIDATION} to choose it on validation")
  if (cfg.logit_adjustment or cfg.balanced_softmax) and cfg.name not in SOFTMAX:
    field = "logit_adjustment" if cfg.logit_adjustment else "balanced_softmax"
    _fail(field, cfg[field], f"0 / False for formulation {cfg.name!r}: it adjusts a softmax head's logits")
  if not cfg.logit_adjustment_budget >= 0:
    _fail("logit_adjustment_budget", cfg.logit_adjustment_budget, "years >= 0")
  if cfg.name in ORDINAL and not cfg.or_max_class_weight >= 1:
    _fail("or_max_class_weight", cfg.or_max_class_weight, "a number >= 1")
  if cfg.name in IDENTITY:
    if not (isinstance(cfg.num_identities, int) and cfg.num_identities >= 0):
      _fail("num_identities", cfg.num_identities, "an integer >= 0 (0: the training data's identity count)")
    if not cfg.am_scale > 0:
      _fail("am_scale", cfg.am_scale, "a positive number (CosFace: 64)")
    if not 0 <= cfg.am_margin < 1:
      _fail("am_margin", cfg.am_margin, "a cosine margin in [0, 1) (CosFace: 0.35)")


def _validate_long_tail(cfg):
  _check_choice(cfg, "lds_reweight", LDS_REWEIGHTS)
  _check_choice(cfg, "lds_kernel", LDS_KERNELS)
  if not (isinstance(cfg.lds_ks, int) and cfg.lds_ks >= 1 and cfg.lds_ks % 2 == 1):
    _fail("lds_ks", cfg.lds_ks, "an odd integer >= 1 (DIR: 5)")
  if not cfg.lds_sigma > 0:
    _fail("lds_sigma", cfg.lds_sigma, "a positive number of bins (DIR: 2)")
  for field in ("bmse_weight", "ranksim_weight"):
    if not cfg[field] >= 0:
      _fail(field, cfg[field], "a number >= 0 (0: off)")
  if not cfg.bmse_sigma > 0:
    _fail("bmse_sigma", cfg.bmse_sigma, "a positive number of years")
  if not cfg.ranksim_lambda > 0:
    _fail("ranksim_lambda", cfg.ranksim_lambda, "a positive number (RankSim: 2)")
  if not isinstance(cfg.fds, bool):
    _fail("fds", cfg.fds, "True or False")
  _check_choice(cfg, "fds_kernel", fds_lib.KERNELS)
  if not (isinstance(cfg.fds_ks, int) and cfg.fds_ks >= 1 and cfg.fds_ks % 2 == 1):
    _fail("fds_ks", cfg.fds_ks, "an odd integer >= 1 (DIR: 5)")
  if cfg.fds_ks > 1 and cfg.fds_ks // 2 >= cfg.num_classes:
    _fail("fds_ks", cfg.fds_ks, f"a window whose half ({cfg.fds_ks // 2}) is below num_classes={cfg.num_classes}")
  if not cfg.fds_sigma > 0:
    _fail("fds_sigma", cfg.fds_sigma, "a positive number of bins (DIR: 2)")
  if cfg.name in IDENTITY:
    for field, off in (("lds_reweight", "none"), ("bmse_weight", 0), ("ranksim_weight", 0), ("fds", False)):
      if cfg[field] != off:
        _fail(field, cfg[field], f"{off!r}: formulation {cfg.name!r} trains on identities, not ages")


def check_fields(cfg) -> None:
  """The field checks of get_formulation, for a config whose counts training still fills in."""
  _validate(cfg, need_mae=False)


def _fuse_linear(group_logits, group_outputs):
  """Regression: sum_g p_g out_g. The decoder is affine, so this is eq. 13 on the ages."""
  return jnp.einsum("bg,bgk->bk", jax.nn.softmax(group_logits, axis=-1), group_outputs)


def _fuse_softmax(group_logits, group_outputs):
  """Softmax heads: the log of the mixture sum_g p_g softmax(out_g), a valid logit vector; its
  expectation is sum_g p_g E_g (eq. 13 exactly), its argmax the mixture's mode."""
  log_p = jax.nn.log_softmax(group_logits, axis=-1)[:, :, None]
  return jax.nn.logsumexp(log_p + jax.nn.log_softmax(group_outputs, axis=-1), axis=1)


def _fuse_ordinal(group_logits, group_outputs):
  """Ordinal heads: per task, the logit of the mixture probability q_k = sum_g p_g sigmoid(out_gk)."""
  log_p = jax.nn.log_softmax(group_logits, axis=-1)[:, :, None]
  return (jax.nn.logsumexp(log_p + jax.nn.log_sigmoid(group_outputs), axis=1)
          - jax.nn.logsumexp(log_p + jax.nn.log_sigmoid(-group_outputs), axis=1))


def softmax_decode(cfg) -> str:
  """How a softmax head's outputs become an age: 'argmax' or 'expectation' (config.formulation.decode,
  'default' being the formulation's own, DEFAULT_DECODE)."""
  return DEFAULT_DECODE[cfg.name] if cfg.decode == "default" else cfg.decode


def _softmax_decoder(how, num_classes, min_age):
  bins = losses.bin_ages(num_classes, min_age)
  return lambda out: rules.softmax_age(out, bins, how, rules.jax_ops())


def _with_lds(formulation: Formulation, cfg) -> Formulation:
  """The formulation whose loss weighs each example by its age bin's LDS weight (DIR)."""
  weights = losses.lds_bin_weights(_age_counts(cfg, f"lds_reweight={cfg.lds_reweight!r}"), cfg.lds_reweight,
                                   cfg.lds_kernel, int(cfg.lds_ks), float(cfg.lds_sigma))
  k, min_age, unweighted = int(cfg.num_classes), float(cfg.min_age), formulation.loss
  loss = lambda out, ages: jnp.asarray(weights)[losses.age_to_class(ages, k, min_age)] * unweighted(out, ages)
  return dataclasses.replace(formulation, loss=loss)


def get_formulation(cfg) -> Formulation:
  """cfg: config.formulation. Raises ValueError naming the field when a value is invalid."""
  _validate(cfg)
  formulation = _get_formulation(cfg)
  return formulation if cfg.lds_reweight == "none" else _with_lds(formulation, cfg)


def _get_formulation(cfg) -> Formulation:
  name, k, min_age = cfg.name, int(cfg.num_classes), float(cfg.min_age)

  if name in IDENTITY:
    if cfg.num_identities < 2:
      _fail("num_identities", cfg.num_identities, "at least 2 identities (training fills it in from the "
            "identity build)")
    scale, margin = float(cfg.am_scale), float(cfg.am_margin)
    loss = lambda cosine, labels: losses.cosine_margin_loss(cosine, labels, scale, margin)
    decode = lambda cosine: jnp.argmax(cosine, axis=-1).astype(jnp.int32)
    return Formulation(name, int(cfg.num_identities), loss, decode, head="identity", task="identity")

  if name in REGRESSION:
    offset, scale = float(cfg.regression_offset), float(cfg.regression_scale)
    decode = lambda out: rules.regression_age(jnp.asarray(out), offset, scale, rules.jax_ops())
    error = losses.squared_error if name == "mse" else losses.absolute_error
    return Formulation(name, 1, lambda out, ages: error(decode(out), ages), decode, _fuse_linear)

  if name in ORDINAL:
    task_weights, fixed = _ordinal_weights(cfg)
    balance = cfg.or_class_balance

    def ordinal_loss(out, ages):
      targets = losses.ordinal_targets(losses.age_to_class(ages, k, min_age), k - 1)
      pos_w, neg_w = fixed if balance == "dataset" else (
          losses.batch_balanced_class_weights(targets) if balance == "batch" else (None, None))
      return losses.ordinal_binary_cross_entropy(out, targets, task_weights, pos_w, neg_w)

    # Xing eq. 11: yhat = 1 + sum_k f_k(x) with ages from 1; here bin 0 is min_age. logit > 0 <=> p > 0.5.
    decode = lambda out: rules.ordinal_age(jnp.asarray(out), min_age, rules.jax_ops())
    return Formulation(name, k - 1, ordinal_loss, decode, _fuse_ordinal,
                       head="coral" if name == "coral" else "dense")

  decode = _softmax_decoder(softmax_decode(cfg), k, min_age)
  spread = lambda out: losses.softmax_std(out, losses.bin_ages(k, min_age))
  sigma = float(cfg.sigma)
  if name in ("oh", "oh_expectation"):
    loss = lambda out, ages: losses.one_hot_cross_entropy(out, losses.age_to_class(ages, k, min_age))
  elif name == "ldl":
    loss = lambda out, ages: losses.label_distribution_cross_entropy(
        out, losses.gaussian_label_distribution(ages, k, sigma, min_age))
  elif name == "dldl_v2":
    lam = float(cfg.dldl_lambda)
    loss = lambda out, ages: losses.dldl_v2_loss(out, ages, sigma, lam, min_age)
  else:  # lae_stage2
    mae, batch_mean = float(cfg.lae_mae), cfg.lae_reading == "batch_mean"
    loss = lambda out, ages: losses.lae_stage2_loss(out, ages, sigma, mae, min_age, batch_mean)
  if cfg.balanced_softmax:
    loss = _balanced(loss, log_prior(cfg))
  if cfg.logit_adjustment > 0:
    decode, spread = (_adjusted(f, log_prior(cfg), float(cfg.logit_adjustment)) for f in (decode, spread))
  return Formulation(name, k, loss, decode, _fuse_softmax, spread=spread)


def log_prior(cfg) -> np.ndarray:
  """log pi_k of the training ages, add-one smoothed: log((n_k + 1) / (N + K))."""
  counts = _age_counts(cfg, "logit_adjustment / balanced_softmax")
  return np.log((counts + 1.0) / (counts.sum() + counts.size)).astype(np.float32)


def _balanced(loss, prior):
  return lambda out, ages: loss(jnp.asarray(out, jnp.float32) + prior, ages)


def _adjusted(read, prior, tau: float):
  return lambda out: read(jnp.asarray(out, jnp.float32) - tau * prior)


def coral_bias_init(cfg) -> np.ndarray:
  """Initial CORAL biases: a logistic prior on age with mean regression_offset and standard
  deviation regression_scale, b_k = (offset - t_k) / (scale * sqrt(3) / pi) for the thresholds
  t_k = min_age + k + 0.5. The shared logit starts near 0, so a fresh model predicts about the
  mean age; with zero biases every threshold starts tied and, at lr 1e-3, the biases take
  thousands of steps to spread over the +-5 logits the age range needs (BENCHMARK_RECORDS.md, the
  formulations table)."""
  thresholds = cfg.min_age + np.arange(cfg.num_classes - 1) + 0.5
  return ((cfg.regression_offset - thresholds) / (cfg.regression_scale * np.sqrt(3) / np.pi)).astype(np.float32)


def head_range(cfg):
  """(lowest, highest) age the head can output, or None for regression (unbounded)."""
  if cfg.name in REGRESSION:
    return None
  return float(cfg.min_age), float(cfg.min_age + cfg.num_classes - 1)


def check_ages(ages: np.ndarray, cfg) -> np.ndarray:
  """Checks the training labels against the head's range before training.

  Non-finite ages always raise. Ages outside [min_age, min_age + K - 1] raise when
  config.formulation.out_of_range='error'; with 'clip' they are clipped (the losses clip the
  same way inside, so training sees exactly these values) and a warning says how many.
  """
  _validate(cfg, need_mae=False)  # stage 2's mae may still come from the previous stage
  ages = np.asarray(ages, np.float32)
  if cfg.name in IDENTITY:  # trains on identities; the ages are not read
    return ages
  if not np.all(np.isfinite(ages)):
    bad = np.flatnonzero(~np.isfinite(ages))
    raise ValueError(f"training ages at indices {bad[:10].tolist()} are not finite ({ages[bad[:10]].tolist()})")
  if ages.size and np.all(ages < 0):   # unknown (-1) everywhere: an identity dataset
    raise ValueError(f"none of the {ages.size} training images has an age (all -1, unknown), which "
                     f"formulation {cfg.name!r} needs; an identity dataset trains "
                     "config.formulation.name='am_softmax'")
  limits = head_range(cfg)
  if limits is None:
    return ages
  lo, hi = limits
  outside = (ages < lo) | (ages > hi)
  if not outside.any():
    return ages
  values, counts = np.unique(ages[outside], return_counts=True)
  listed = ", ".join(f"{v:g} (x{c})" for v, c in zip(values[:20], counts[:20]))
  message = (f"{int(outside.sum())} training ages are outside the head's range [{lo:g}, {hi:g}] "
             f"(config.formulation.min_age={cfg.min_age}, num_classes={cfg.num_classes}): {listed}")
  if cfg.out_of_range == "error":
    raise ValueError(f"{message}; config.formulation.out_of_range='error' (set it to 'clip' or widen "
                     f"num_classes / min_age)")
  logging.warning("%s; clipped to the range (config.formulation.out_of_range='clip')", message)
  return np.clip(ages, lo, hi)


def age_counts(ages: np.ndarray, num_classes: int, min_age: float = 0) -> tuple:
  """Training count of each bin (ages rounded to the nearest bin and clipped like the losses do)."""
  clipped = np.clip(np.asarray(ages, np.float64) - min_age, 0, num_classes - 1)
  index = ages_lib.whole_years(clipped).astype(np.int64)  # as losses.age_to_class
  return tuple(int(c) for c in np.bincount(index, minlength=num_classes))


def needs_num_identities(cfg) -> bool:
  """Whether get_formulation(cfg) needs num_identities, still 0 (training fills it in)."""
  return cfg.name in IDENTITY and cfg.num_identities == 0


def needs_age_counts(cfg) -> bool:
  """Whether get_formulation(cfg) needs config.formulation.age_counts (and it is still empty)."""
  uses = cfg.name in ORDINAL and (cfg.or_task_weights == "sqrt_count" or cfg.or_class_balance == "dataset")
  uses = uses or (cfg.name in SOFTMAX and bool(cfg.logit_adjustment or cfg.balanced_softmax))
  uses = uses or cfg.lds_reweight != "none"
  return uses and len(cfg.age_counts) == 0


def with_age_counts(cfg, ages: np.ndarray) -> ml_collections.ConfigDict:
  """A copy of config.formulation with age_counts filled from the training ages (needed by
  or_task_weights='sqrt_count', or_class_balance='dataset' and lds_reweight; stored in the run's config so a
  resume rebuilds the same loss)."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.age_counts = age_counts(ages, cfg.num_classes, cfg.min_age)
  return out
