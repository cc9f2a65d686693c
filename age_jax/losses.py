"""Pure per-example loss functions of Xing 2017 (3.2) and LAE (Bao 2021, 2.4), and their targets.

Every function maps (B, ...) arrays to a (B,) float32 loss; masking, weighting by the batch and
averaging belong to the train step. Exceptions, at the end: LDS's per-bin weights (numpy, built
once from the training counts) and RankSim's batch-level scalar. No framework state: safe under jit, grad and vmap.
Bins: a classification / ordinal head covers the ages `bin_ages` = min_age + 0..K-1.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from age_jax import inference_rules
from age_jax.ages import whole_years


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def bin_ages(num_classes: int, min_age: float = 0.0) -> np.ndarray:
  """The age (years) each of the K classification bins stands for. numpy, so that building a
  formulation starts no JAX backend (jax.distributed.initialize must come first)."""
  return (min_age + np.arange(num_classes)).astype(np.float32)


def clip_to_bins(ages, num_classes: int, min_age: float = 0.0) -> jnp.ndarray:
  """Ages clipped into the head's range [min_age, min_age + K - 1]: out-of-range ages never wrap
  or vanish (a one-hot of an index >= K is all zeros and would silently give a zero loss)."""
  return jnp.clip(_f32(ages), min_age, min_age + num_classes - 1)


def age_to_class(ages, num_classes: int, min_age: float = 0.0) -> jnp.ndarray:
  """Class index of the nearest bin (ages.whole_years: halves up)."""
  return whole_years(clip_to_bins(ages, num_classes, min_age) - min_age, jnp).astype(jnp.int32)


# --- classification: one-hot (Xing eq. 5) and label distributions (Xing eqs. 6-8, LAE eq. 1) ---

def one_hot_cross_entropy(logits, class_index) -> jnp.ndarray:
  """Softmax loss against a one-hot label, Xing eq. 5 per example: -log p_{y_i}."""
  log_p = jax.nn.log_softmax(_f32(logits), axis=-1)
  return -jnp.take_along_axis(log_p, jnp.asarray(class_index, jnp.int32)[:, None], axis=-1)[:, 0]


def gaussian_label_distribution(ages, num_classes: int, sigma: float, min_age: float = 0.0) -> jnp.ndarray:
  """Gaussian label distribution over the K bins, normalised to sum to 1 (Xing eqs. 6-7).

  d_k = exp(-(a_k - y)^2 / 2 sigma^2) / sum_j exp(-(a_j - y)^2 / 2 sigma^2); the 1/(sigma sqrt(2 pi))
  factors of eq. 6 cancel against Z of eq. 7. Computed as a softmax so that it stays finite for any
  y. Ages are clipped into the bins first: outside them, every bin would get ~0 mass.
  """
  y = clip_to_bins(ages, num_classes, min_age)
  sq = (bin_ages(num_classes, min_age)[None, :] - y[:, None]) ** 2
  return jax.nn.softmax(-sq / (2.0 * sigma ** 2), axis=-1)


def label_distribution_cross_entropy(logits, target) -> jnp.ndarray:
  """Xing eq. 8 per example: -sum_k d_k log p_k (the NetLDL objective)."""
  return -jnp.sum(_f32(target) * jax.nn.log_softmax(_f32(logits), axis=-1), axis=-1)


def kl_divergence(logits, target) -> jnp.ndarray:
  """LAE eq. 1 per example: sum_k z_k log(z_k / zhat_k), with 0 log 0 = 0.

  Equals the cross-entropy of eq. 8 minus the target's entropy: same gradient, but 0 at a
  perfect prediction."""
  target = _f32(target)
  return jnp.sum(jax.scipy.special.xlogy(target, target), axis=-1) + label_distribution_cross_entropy(
      logits, target)


def softmax_expectation(logits, ages_of_bins) -> jnp.ndarray:
  """Expected age under the softmax (DEX; LAE: yhat = sum_k k zhat_k)."""
  return inference_rules.softmax_age(logits, _f32(ages_of_bins), "expectation",
                                     inference_rules.jax_ops())


def softmax_std(logits, ages_of_bins) -> jnp.ndarray:
  """Standard deviation (years) of the age distribution the softmax predicts."""
  return inference_rules.softmax_spread(logits, _f32(ages_of_bins), inference_rules.jax_ops())


def dldl_v2_loss(logits, ages, sigma: float, lam: float, min_age: float = 0.0) -> jnp.ndarray:
  """LAE eq. 3 (DLDL-v2): L_ld + lambda * L_er, with L_ld the KL of eq. 1 and L_er = |y - yhat| (eq. 2).
  The age in L_er is clipped into the bins like the target distribution (the head cannot go beyond)."""
  num_classes = logits.shape[-1]
  target = gaussian_label_distribution(ages, num_classes, sigma, min_age)
  expected = softmax_expectation(logits, bin_ages(num_classes, min_age))
  l_er = jnp.abs(clip_to_bins(ages, num_classes, min_age) - expected)
  return kl_divergence(logits, target) + lam * l_er


def lae_stage2_loss(logits, ages, sigma: float, validation_mae: float, min_age: float = 0.0,
                    batch_mean: bool = False) -> jnp.ndarray:
  """LAE eq. 4, the classifier-stage loss: L_ld + (L_er - mae)^2, `mae` a constant (stage 1's
  validation MAE, eq. 5). Two readings, as eq. 4 does not say where the square is taken:

  per example (default)  (L_er,i - mae)^2: pulls every example's absolute error towards mae,
                         accurate predictions' errors up as well as poor ones' down;
  batch_mean=True        (mean_i L_er,i - mae)^2: only the batch's MAE (class-balanced batches:
                         the MAE over ages weighted equally) is pulled to mae. Returned per
                         example as sg((m - mae)^2) + 2 sg(m - mae) (L_er,i - sg(m)), m the
                         batch mean, whose batch mean has that value and gradient exactly.
  """
  num_classes = logits.shape[-1]
  target = gaussian_label_distribution(ages, num_classes, sigma, min_age)
  expected = softmax_expectation(logits, bin_ages(num_classes, min_age))
  l_er = jnp.abs(clip_to_bins(ages, num_classes, min_age) - expected)
  if not batch_mean:
    return kl_divergence(logits, target) + (l_er - validation_mae) ** 2
  mean = jax.lax.stop_gradient(jnp.mean(l_er))
  gap = mean - validation_mae
  return kl_divergence(logits, target) + gap ** 2 + 2 * gap * (l_er - mean)


# --- regression (Xing eqs. 9-10) ---

def squared_error(predicted_ages, ages) -> jnp.ndarray:
  """Xing eq. 9 per example: (yhat - y)^2, in years^2."""
  return (_f32(predicted_ages) - _f32(ages)) ** 2


def absolute_error(predicted_ages, ages) -> jnp.ndarray:
  """Xing eq. 10 per example: |yhat - y|, in years."""
  return jnp.abs(_f32(predicted_ages) - _f32(ages))


# --- ordinal regression (Xing eq. 11 and 3.2.3; Niu et al. 2016; CORAL, Cao et al. 2020) ---

def ordinal_targets(class_index, num_tasks: int) -> jnp.ndarray:
  """(B, K-1) binary labels: task k asks 'is the age above bin k?' (Xing 3.2.3, y_i^k)."""
  return (jnp.asarray(class_index, jnp.int32)[:, None] > jnp.arange(num_tasks)[None, :]).astype(jnp.float32)


def batch_balanced_class_weights(targets):
  """Per-task (positive, negative) weights that give both classes of every task the same total
  weight within this batch, B/2 each: the loss-side equivalent of Xing's 'same amount of positive
  and negative samples for each task' in a mini-batch (3.2.3). A task whose batch holds only one
  class keeps weight 1 (there is nothing to balance). Weights are constants (no gradient)."""
  targets = jax.lax.stop_gradient(_f32(targets))
  batch = targets.shape[0]
  positives = jnp.sum(targets, axis=0)
  negatives = batch - positives
  both = (positives > 0) & (negatives > 0)
  pos_w = jnp.where(both, batch / (2.0 * jnp.maximum(positives, 1.0)), 1.0)
  neg_w = jnp.where(both, batch / (2.0 * jnp.maximum(negatives, 1.0)), 1.0)
  return pos_w, neg_w


def ordinal_binary_cross_entropy(logits, targets, task_weights=None, pos_weights=None,
                                 neg_weights=None) -> jnp.ndarray:
  """sum_k lambda_k w_ik BCE(sigmoid(logit_ik), y_ik): the K-1 binary tasks trained jointly in one
  network (Xing 3.2.3), with task importance lambda_k (Niu et al. 2016, eq. 1) and per-task class
  weights w (positive / negative). All weights default to 1; the sum (not the mean) over tasks
  matches K-1 separate unit-weight loss layers."""
  logits, targets = _f32(logits), _f32(targets)
  # -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x): stable for large |x|.
  pos_term = targets * jax.nn.softplus(-logits)
  neg_term = (1.0 - targets) * jax.nn.softplus(logits)
  if pos_weights is not None:
    pos_term = pos_term * _f32(pos_weights)
  if neg_weights is not None:
    neg_term = neg_term * _f32(neg_weights)
  per_task = pos_term + neg_term
  if task_weights is not None:
    per_task = per_task * _f32(task_weights)
  return jnp.sum(per_task, axis=-1)


# --- face-identity pre-training (LAE 2.2: AM-softmax / CosFace, Wang et al. 2018) ---

def cosine_similarity(features, class_weights) -> jnp.ndarray:
  """(B, C) cosines between each example's features (B, D) and each class's weight column (D, C);
  both are L2-normalised first, so only angles count."""
  f = _f32(features)
  w = _f32(class_weights)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
  return f @ w


def cosine_margin_loss(cosine, labels, scale: float = 64.0, margin: float = 0.35) -> jnp.ndarray:
  """CosFace eq. 4 on given cosines (B, C): softmax cross-entropy of s (cos t_j - m [j = y])."""
  cosine = _f32(cosine)
  labels = jnp.asarray(labels, jnp.int32)
  margins = margin * jax.nn.one_hot(labels, cosine.shape[-1], dtype=jnp.float32)
  return one_hot_cross_entropy(scale * (cosine - margins), labels)


def am_softmax_loss(features, class_weights, labels, scale: float = 64.0, margin: float = 0.35
                    ) -> jnp.ndarray:
  """Large-margin cosine loss per example (CosFace eq. 4):
  -log(e^{s (cos t_y - m)} / (e^{s (cos t_y - m)} + sum_{j != y} e^{s cos t_j})),
  cos t_j the cosine between the example's features (B, D) and class j's weight column (D, C).
  Both are L2-normalised here, so the loss depends on angles alone; s and m default to CosFace's
  64 and 0.35 (LAE cites it for the pre-training loss without giving values). The identity
  formulation computes the cosines in the model (models/heads.py: IdentityHead) and applies
  cosine_margin_loss to them: the same function, split where the parameters live."""
  return cosine_margin_loss(cosine_similarity(features, class_weights), labels, scale, margin)


# --- imbalanced regression: LDS (Yang et al. 2021, DIR), Balanced MSE (Ren et al. 2022), RankSim
# (Gong et al. 2022). LDS gives constant per-bin weights (numpy, built once); the other two are
# batch-level: every example's value depends on the whole batch, `valid` marks the real examples. ---

LDS_REWEIGHTS = ("none", "inverse", "sqrt_inv")
LDS_KERNELS = ("gaussian", "triang", "laplace", "none")


def lds_kernel_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
  """DIR's symmetric smoothing window (utils.get_lds_kernel_window), peak 1, ks taps (odd).

  'gaussian' is DIR's gaussian_filter1d of a ks-tap delta (scipy's 'reflect' border, truncate 4),
  not a sampled Gaussian: with ks 5 and sigma 2 it is [0.858, 0.946, 1, 0.946, 0.858], flatter
  than exp(-x^2 / 8) = [0.607, 0.882, 1, ...]; kept as DIR ran it. 'triang': scipy's triang(ks);
  'laplace': exp(-|x| / sigma)."""
  from scipy import ndimage, signal   # jax's own dependency; imported only when LDS is used
  half = (ks - 1) // 2
  if kernel == "gaussian":
    window = ndimage.gaussian_filter1d(np.eye(1, ks, half)[0], sigma=sigma)
  elif kernel == "triang":
    window = signal.windows.triang(ks)
  elif kernel == "laplace":
    window = np.exp(-np.abs(np.arange(-half, half + 1)) / sigma)
  else:
    raise ValueError(f"LDS kernel {kernel!r}; expected one of {list(LDS_KERNELS[:3])}")
  return np.asarray(window, np.float64) / np.max(window)


def lds_bin_weights(counts, reweight: str = "sqrt_inv", kernel: str = "gaussian", ks: int = 5,
                    sigma: float = 2.0) -> np.ndarray:
  """Per-bin loss weights (K,) of DIR's re-weighting with label distribution smoothing
  (AgeDB/IMDB-WIKI datasets' _prepare_weights), from the K training counts per bin:
    'sqrt_inv'  density sqrt(count);   'inverse'  density count clipped to [5, 1000] (DIR's clip);
  the density is convolved with the kernel window (zeros beyond the bins; kernel 'none': plain
  re-weighting) and each bin weighs 1 / smoothed density, scaled so that the mean weight over the
  training examples is 1 (the loss keeps its scale). A bin with no smoothed mass holds no training
  age; it gets the largest weight rather than infinity."""
  if reweight not in ("sqrt_inv", "inverse"):
    raise ValueError(f"LDS re-weighting {reweight!r}; expected 'inverse' or 'sqrt_inv'")
  counts = np.asarray(counts, np.float64)
  density = np.sqrt(counts) if reweight == "sqrt_inv" else np.clip(counts, 5, 1000)
  if kernel != "none":
    # The window is symmetric, so convolution and correlation agree; zeros beyond the bins.
    density = np.convolve(np.pad(density, (ks - 1) // 2), lds_kernel_window(kernel, ks, sigma), mode="valid")
  positive = density > 0
  inverse = 1.0 / np.where(positive, density, 1.0)
  inverse = np.where(positive, inverse, inverse[positive].max())
  scale = counts.sum() / np.sum(counts * inverse)
  return (inverse * scale).astype(np.float32)


def balanced_mse_bmc(predicted_ages, ages, sigma: float, valid=None) -> jnp.ndarray:
  """Balanced MSE, batch-based Monte-Carlo form (Ren et al. 2022, BMC, Alg. 1), per example:
    L_i = -log softmax_j(-(yhat_i - y_j)^2 / 2 s^2)[j = i] * 2 s^2,
  the batch's targets y_j standing in for the training label distribution; s the (fixed) noise
  sigma in years. The 2 s^2 factor restores MSE's scale (as the paper's code). valid (B,): only
  real examples count as targets j; an invalid row i returns 0."""
  pred, y = _f32(predicted_ages), _f32(ages)
  batch = y.shape[0]
  valid = jnp.ones((batch,), bool) if valid is None else jnp.asarray(valid) > 0
  logits = -((pred[:, None] - y[None, :]) ** 2) / (2.0 * sigma ** 2)
  # Row i always keeps its own target, so it stays finite even when i itself is padding.
  columns = valid[None, :] | jnp.eye(batch, dtype=bool)
  log_p = jax.nn.log_softmax(jnp.where(columns, logits, -jnp.inf), axis=-1)
  return jnp.where(valid, -jnp.diagonal(log_p) * (2.0 * sigma ** 2), 0.0)


def _descending_rank(seq) -> jnp.ndarray:
  """0-based rank of each entry along the last axis, largest first; ties: the later index first
  (RankSim's rank(): argsort(argsort(seq).flip)), -inf entries last."""
  order = jnp.argsort(seq, axis=-1, stable=True)[..., ::-1]
  return jnp.argsort(order, axis=-1, stable=True)


def normalised_rank(seq, count) -> jnp.ndarray:
  """RankSim's rank_normalised: (descending rank + 1) / count, count the entries that rank
  (the rest are -inf and rank after them)."""
  return (_descending_rank(seq) + 1).astype(jnp.float32) / count


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def blackbox_rank(seq, count, lambda_val: float) -> jnp.ndarray:
  """normalised_rank, differentiable by blackbox differentiation (Vlastelica et al. 2020, as
  RankSim's TrueRanker): for the incoming gradient g, d/dseq = -(rank(seq) - rank(seq + lambda g))
  / lambda, the gradient of a piecewise-linear interpolation of the rank; lambda sets its width."""
  return normalised_rank(seq, count)


def _blackbox_rank_fwd(seq, count, lambda_val):
  ranks = normalised_rank(seq, count)
  return ranks, (seq, count, ranks)


def _blackbox_rank_bwd(lambda_val, saved, g):
  seq, count, ranks = saved
  perturbed = normalised_rank(seq + lambda_val * g, count)
  return -(ranks - perturbed) / (lambda_val + 1e-8), jnp.zeros_like(count)


blackbox_rank.defvjp(_blackbox_rank_fwd, _blackbox_rank_bwd)


def ranksim_regularizer(features, ages, lambda_val: float = 2.0, valid=None) -> jnp.ndarray:
  """RankSim (Gong et al. 2022, eq. 2 and its code's batchwise_ranking_regularizer), a scalar:
  over a subset of the batch holding each age once, sum over anchors i of the mean over j of
  (rank_j(cos(z_i, z_j)) - rank_j(-|y_i - y_j|))^2, normalised ranks, the feature ranks
  differentiated by blackbox_rank with interpolation lambda. The paper draws one example per
  age at random; here the first valid one of each age (batches come shuffled, so that is a
  random draw too). valid (B,): padding never enters."""
  f = _f32(features).reshape(features.shape[0], -1)
  y = _f32(ages)
  batch = y.shape[0]
  valid = jnp.ones((batch,), bool) if valid is None else jnp.asarray(valid) > 0
  earlier = jnp.tril(jnp.ones((batch, batch), bool), k=-1)   # [i, j]: j comes before i
  repeated = jnp.any((y[:, None] == y[None, :]) & earlier & valid[None, :], axis=1)
  keep = valid & ~repeated
  count = jnp.sum(keep).astype(jnp.float32)
  unit = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  similarity = jnp.where(keep[None, :], unit @ unit.T, -jnp.inf)
  label_similarity = jnp.where(keep[None, :], -jnp.abs(y[:, None] - y[None, :]), -jnp.inf)
  feature_ranks = blackbox_rank(similarity, count, float(lambda_val))
  label_ranks = normalised_rank(label_similarity, count)
  pairs = keep[:, None] & keep[None, :]
  squared = jnp.where(pairs, (feature_ranks - label_ranks) ** 2, 0.0)
  return jnp.sum(squared) / jnp.maximum(count, 1.0)
