"""Feature distribution smoothing (FDS; Yang et al. 2021, "Delving into Deep Imbalanced
Regression", DIR, section 3.2), the statistics and the calibration, pure functions.

Per age bin b: the mean mu_b and variance var_b of the features that feed the age head; their
smoothed versions mu~_b, var~_b, each a kernel-weighted average over the neighbouring bins
(DIR's conv1d of the kernel window, normalised to sum 1, with 'reflect' padding at the ends of the
age range); and during training each example's features recalibrated as DIR's calibrate_mean_var:
    z' = (z - mu_b) * sqrt(clip(var~_b / var_b, 0.1, 10)) + mu~_b
(a feature dimension with var_b = 0 is left as it is, as DIR's code does). The statistics are
constants, so the gradient flows through z alone. One deviation from DIR, for bins without
training images (DIR smooths their initial mean 0 / variance 1 into their neighbours): the
window is renormalised over the populated bins, so an empty bin contributes nothing; with every
bin populated the two agree exactly.
The statistics come from train/fds_pass.py (the frozen backbone's features, computed once).
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from age_jax import losses

KERNELS = ("gaussian", "triang", "laplace")
CLIP = (0.1, 10.0)   # DIR's calibrate_mean_var: clip_min, clip_max of the variance ratio


def kernel_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
  """DIR's FDS window (fds.py _get_kernel_window): LDS's window (same shapes) normalised to sum 1."""
  if kernel not in KERNELS:
    raise ValueError(f"FDS kernel {kernel!r}; expected one of {list(KERNELS)}")
  window = losses.lds_kernel_window(kernel, ks, sigma)
  return window / window.sum()


def smooth(stat: np.ndarray, populated: np.ndarray, window: np.ndarray) -> np.ndarray:
  """(K, D) per-bin statistic -> its kernel average over neighbouring bins, 'reflect' padding at
  the ends (torch F.pad mode 'reflect', as DIR), over the populated bins only (see the module
  docstring); an unpopulated bin with no populated neighbour keeps its value."""
  half = (len(window) - 1) // 2
  stat = np.asarray(stat, np.float64)
  weight = np.asarray(populated, np.float64)[:, None]
  if half and len(stat) <= half:
    raise ValueError(f"FDS kernel size {len(window)} needs more than {half} age bins; got {len(stat)}")
  pad = lambda x: np.pad(x, ((half, half), (0, 0)), mode="reflect") if half else x
  padded_sum, padded_weight = pad(stat * weight), pad(np.broadcast_to(weight, stat.shape))
  total = sum(window[i] * padded_sum[i:i + len(stat)] for i in range(len(window)))
  norm = sum(window[i] * padded_weight[i:i + len(stat)] for i in range(len(window)))
  return np.where(norm > 0, total / np.where(norm > 0, norm, 1.0), stat)


@dataclasses.dataclass(frozen=True, eq=False)
class Statistics:
  """Per-bin feature statistics (K, D) and their smoothed versions, numpy float32; count (K,)."""
  mean: np.ndarray
  var: np.ndarray
  smoothed_mean: np.ndarray
  smoothed_var: np.ndarray
  count: np.ndarray

  def arrays(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def bin_statistics(features, bins, num_bins: int):
  """(mean (K, D), var (K, D), count (K,)) of the features of each bin; the variance unbiased as
  DIR's (torch.var), 0 for a bin of one example; an empty bin mean 0, var 1 (DIR's initial buffers)."""
  features = np.asarray(features, np.float64)
  bins = np.asarray(bins, np.int64)
  count = np.bincount(bins, minlength=num_bins).astype(np.float64)
  sums = np.zeros((num_bins, features.shape[1]))
  np.add.at(sums, bins, features)
  mean = sums / np.maximum(count, 1)[:, None]
  squares = np.zeros_like(sums)
  np.add.at(squares, bins, (features - mean[bins]) ** 2)
  var = np.where(count[:, None] > 1, squares / np.maximum(count - 1, 1)[:, None], 0.0)
  empty = count == 0
  var[empty] = 1.0
  return mean, var, count


def statistics(features, bins, num_bins: int, kernel: str = "gaussian", ks: int = 5,
               sigma: float = 2.0) -> Statistics:
  """The FDS statistics of features (N, D) whose age bins are bins (N,) in 0..num_bins-1."""
  mean, var, count = bin_statistics(features, bins, num_bins)
  window = kernel_window(kernel, ks, sigma)
  populated = count > 0
  f32 = lambda x: np.asarray(x, np.float32)
  return Statistics(f32(mean), f32(var), f32(smooth(mean, populated, window)),
                    f32(smooth(var, populated, window)), f32(count))


def calibrate(features, bins, stats: Statistics) -> jnp.ndarray:
  """z' of each example (B, D) from its bin's statistics (module docstring); examples of a bin
  without training images, and dimensions of zero variance, pass unchanged."""
  bins = jnp.asarray(bins, jnp.int32)
  z = jnp.asarray(features, jnp.float32)
  mean, var = jnp.asarray(stats.mean)[bins], jnp.asarray(stats.var)[bins]
  target_mean, target_var = jnp.asarray(stats.smoothed_mean)[bins], jnp.asarray(stats.smoothed_var)[bins]
  keep = (var > 0) & (jnp.asarray(stats.count)[bins] > 0)[:, None]
  ratio = jnp.clip(target_var / jnp.where(keep, var, 1.0), *CLIP)
  calibrated = (z - mean) * jnp.sqrt(ratio) + target_mean
  return jnp.where(keep, calibrated, z).astype(jnp.asarray(features).dtype)
