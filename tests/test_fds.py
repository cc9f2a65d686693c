"""Feature distribution smoothing (FDS, DIR; age_jax/fds.py): windows, per-bin statistics, smoothing
and calibration against hand computations and a loop-by-loop numpy re-implementation of DIR's
fds.py / calibrate_mean_var; the gradient through the calibration; the age head reading calibrated
features inside Objective.head_inputs; the config's errors; and (slow) a head-only FDS run resumed
mid-stage against one never stopped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import config as config_lib
from age_jax import fds, formulations, losses, objective
from age_jax.models import get_model
from tests.tiny import tiny_config


def _dir_window(kernel, ks, sigma):
  """DIR's FDS._get_kernel_window, with the Gaussian taps derived from scratch (scipy's
  gaussian_filter1d of a ks-tap delta: radius int(4 sigma + 0.5), 'reflect' border)."""
  half = (ks - 1) // 2
  if kernel == "gaussian":
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    reflect = lambda m: (m % (2 * ks)) if (m % (2 * ks)) < ks else 2 * ks - 1 - (m % (2 * ks))
    delta = np.eye(1, ks, half)[0]
    window = np.array([sum(taps[k + radius] * delta[reflect(i - k)] for k in range(-radius, radius + 1))
                       for i in range(ks)])
  elif kernel == "triang":   # scipy triang, odd ks: 1 - |n| / ((ks + 1) / 2)
    window = 1 - np.abs(np.arange(-half, half + 1)) / ((ks + 1) / 2)
  else:
    window = np.exp(-np.abs(np.arange(-half, half + 1)) / sigma) / (2 * sigma)
  return window / window.sum()


def _dir_smooth(stat, window):
  """DIR's _update_last_epoch_stats: F.conv1d over the bins after F.pad(mode='reflect'), as loops."""
  k, half = len(stat), (len(window) - 1) // 2
  reflect = lambda i: -i if i < 0 else (2 * (k - 1) - i if i >= k else i)   # torch 'reflect': no edge repeat
  return np.array([[sum(window[j] * stat[reflect(b + j - half)][d] for j in range(len(window)))
                    for d in range(stat.shape[1])] for b in range(k)])


def _dir_calibrate(matrix, m1, v1, m2, v2, clip_min=0.1, clip_max=10):
  """DIR's utils.calibrate_mean_var for the rows of one bin."""
  matrix = matrix.copy()
  if np.sum(v1) < 1e-10:
    return matrix
  valid = v1 != 0
  factor = np.clip(v2[valid] / v1[valid], clip_min, clip_max)
  matrix[:, valid] = (matrix[:, valid] - m1[valid]) * np.sqrt(factor) + m2[valid]
  return matrix


@pytest.mark.parametrize("kernel,ks,sigma", [("gaussian", 5, 2.0), ("triang", 5, 2.0), ("laplace", 7, 1.5)])
def test_windows_match_dir(kernel, ks, sigma):
  np.testing.assert_allclose(fds.kernel_window(kernel, ks, sigma), _dir_window(kernel, ks, sigma), rtol=1e-6)


def test_bin_statistics_by_hand():
  features = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 1.0]])
  mean, var, count = fds.bin_statistics(features, [0, 0, 2, 0], 4)
  np.testing.assert_allclose(count, [3, 0, 1, 0])
  np.testing.assert_allclose(mean[0], [11 / 3, 1.0])
  # unbiased: ((1 - 11/3)^2 + (3 - 11/3)^2 + (7 - 11/3)^2) / 2 = 28/3; (1 + 1 + 0) / 2 = 1
  np.testing.assert_allclose(var[0], [28 / 3, 1.0])
  np.testing.assert_allclose(mean[2], [5, 5])
  np.testing.assert_allclose(var[2], [0, 0])               # one example: torch.var(unbiased=False) = 0
  np.testing.assert_allclose(mean[[1, 3]], 0)              # empty: DIR's initial buffers
  np.testing.assert_allclose(var[[1, 3]], 1)


def test_smoothing_by_hand_and_against_dir():
  # triang(3) / sum = [1/4, 1/2, 1/4]; bins [0, 4, 8, 4] reflect-padded to [4 | 0 4 8 4 | 8]:
  # bin 0 = 4/4 + 0/2 + 4/4 = 2; bin 1 = 0/4 + 4/2 + 8/4 = 4; bin 2 = 4/4 + 8/2 + 4/4 = 6; bin 3 = 8/4 + 4/2 + 8/4 = 6
  window = fds.kernel_window("triang", 3, 1.0)
  stat = np.array([[0.0], [4.0], [8.0], [4.0]])
  np.testing.assert_allclose(fds.smooth(stat, np.ones(4, bool), window)[:, 0], [2, 4, 6, 6])
  rng = np.random.default_rng(0)
  stat = rng.normal(size=(12, 3))
  for kernel, ks in (("gaussian", 5), ("laplace", 3), ("triang", 7)):
    window = fds.kernel_window(kernel, ks, 2.0)
    np.testing.assert_allclose(fds.smooth(stat, np.ones(12, bool), window), _dir_smooth(stat, window), rtol=1e-10)
  # An empty bin (1) adds nothing: bin 0 = (4/4 + 4/4) / (1/4 + 1/4 + 0) ... padded [0 | 4 0 8 4 | 8] with
  # weights [0 | 1 0 1 1 | 1]: bin 0 = (0 + 4/2 + 0) / (1/2) = 4; bin 1 = (4/4 + 8/4) / (1/4 + 1/4) = 6;
  # bin 2 = (8/2 + 4/4) / (1/2 + 1/4) = 20/3; bin 3 = (8/4 + 4/2 + 8/4) / 1 = 6.
  stat = np.array([[4.0], [123.0], [8.0], [4.0]])
  np.testing.assert_allclose(fds.smooth(stat, np.array([1, 0, 1, 1], bool), window=fds.kernel_window("triang", 3, 1))[:, 0],
                             [4, 6, 20 / 3, 6])


def test_calibration_against_dir_and_by_hand():
  rng = np.random.default_rng(1)
  num_bins, dim = 6, 4
  features = rng.normal(size=(40, dim)) * rng.uniform(0.5, 3, size=dim)
  bins = rng.integers(0, num_bins, size=40)
  bins[bins == 4] = 3                     # bin 4 empty
  features[:, 2] = np.where(bins == 1, 0.5, features[:, 2])   # bin 1, dim 2: zero variance
  stats = fds.statistics(features, bins, num_bins, "gaussian", 5, 2.0)
  # DIR's smoothing where every bin is populated; here bin 4 is empty, so rebuild the reference
  # with the same renormalised statistics and check the per-bin calibration rule alone.
  queries = rng.normal(size=(30, dim)) * 2
  query_bins = rng.integers(0, num_bins, size=30)
  got = np.asarray(fds.calibrate(queries.astype(np.float32), query_bins, stats))
  for b in range(num_bins):
    rows = query_bins == b
    if b == 4:   # no training images of this age: unchanged
      np.testing.assert_array_equal(got[rows], queries[rows].astype(np.float32))
      continue
    expected = _dir_calibrate(queries[rows], stats.mean[b], stats.var[b], stats.smoothed_mean[b],
                              stats.smoothed_var[b])
    np.testing.assert_allclose(got[rows], expected, rtol=1e-5, atol=1e-5)
  # by hand, one dimension: z = 3, mu = 1, var = 4, mu~ = 2, var~ = 1 -> (3 - 1) * sqrt(1/4) + 2 = 3;
  # var~ = 100 clips the ratio at 10: (3 - 1) * sqrt(10) + 2
  one = lambda m, v, sm, sv: fds.Statistics(*(np.array([[x]], np.float32) for x in (m, v, sm, sv)),
                                            count=np.array([5.0], np.float32))
  np.testing.assert_allclose(fds.calibrate(np.array([[3.0]]), [0], one(1, 4, 2, 1)), [[3.0]])
  np.testing.assert_allclose(fds.calibrate(np.array([[3.0]]), [0], one(1, 4, 2, 100)), [[2 * np.sqrt(10) + 2]],
                             rtol=1e-6)


def test_full_statistics_match_dir_when_every_bin_is_populated():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(60, 3))
  bins = np.arange(60) % 10
  stats = fds.statistics(features, bins, 10, "gaussian", 5, 2.0)
  window = _dir_window("gaussian", 5, 2.0)
  mean = np.array([features[bins == b].mean(0) for b in range(10)])
  var = np.array([features[bins == b].var(0, ddof=1) for b in range(10)])
  np.testing.assert_allclose(stats.smoothed_mean, _dir_smooth(mean, window), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.smoothed_var, _dir_smooth(var, window), rtol=1e-5, atol=1e-6)


def test_gradient_flows_through_the_features_alone():
  rng = np.random.default_rng(3)
  stats = fds.statistics(rng.normal(size=(30, 3)) * [1, 2, 3], np.arange(30) % 5, 5, "triang", 3, 1.0)
  z = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  bins = np.array([0, 1, 2, 4])
  g = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  _, vjp = jax.vjp(lambda x: fds.calibrate(x, bins, stats), z)
  ratio = np.clip(stats.smoothed_var[bins] / stats.var[bins], 0.1, 10)
  np.testing.assert_allclose(vjp(g)[0], np.asarray(g) * np.sqrt(ratio), rtol=1e-5)   # diagonal Jacobian
  assert not any(isinstance(x, jax.Array) for x in stats.arrays().values())   # constants: nothing to differentiate


def test_the_age_head_reads_calibrated_features_inside_head_inputs():
  cfg = tiny_config(**{"formulation.fds": True, "train.trainable": "head"})
  model = get_model(cfg.model, 1)
  images = jnp.asarray(np.random.default_rng(4).normal(size=(6, 64, 64, 3)), jnp.float32)
  ages = jnp.array([3.0, 20.0, 20.4, 55.0, 90.0, 100.0])
  variables = model.init(jax.random.key(0), images, train=False)
  plain = model.apply(variables, images, train=False)
  rng = np.random.default_rng(5)
  num_bins, dim = cfg.formulation.num_classes, plain["features"].shape[1]
  stats = fds.statistics(rng.normal(size=(500, dim)) + 1, rng.integers(0, num_bins, 500), num_bins)
  obj = objective.build(cfg).with_fds(stats, num_bins, 0)
  with obj.head_inputs({"age": ages}):
    calibrated = model.apply(variables, images, train=False)
  head = variables["params"]["age_head"]
  z = fds.calibrate(plain["features"], losses.age_to_class(ages, num_bins), stats)
  np.testing.assert_allclose(calibrated["age"], z @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(calibrated["features"], plain["features"])   # 'features' stay raw
  assert not np.allclose(calibrated["age"], plain["age"])
  with pytest.raises(ValueError, match="no FDS statistics"):
    objective.build(cfg).head_inputs({"age": ages})
  np.testing.assert_array_equal(model.apply(variables, images, train=False)["age"], plain["age"])  # outside: raw


def test_the_head_only_train_step_learns_on_calibrated_features():
  from age_jax.train import experiment, step as step_lib
  from tests.tiny import random_batches
  cfg = tiny_config(**{"formulation.fds": True, "train.trainable": "head", "model.dropout_rate": 0.0})
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in next(random_batches(1, 16, 64, seed=7)).items()}
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  features = exp.model.apply(variables, batch["image"], train=False)["features"]
  rng = np.random.default_rng(8)
  stats = fds.statistics(rng.normal(size=(800, features.shape[1])) * 0.3 + 0.5, rng.integers(0, 101, 800), 101)
  obj = exp.objective.with_fds(stats, 101, 0)
  _, metrics = jax.jit(step_lib.make_train_step(exp.model, exp.tx, obj))(state, batch, jax.random.key(1))
  z = fds.calibrate(features, losses.age_to_class(batch["age"], 101), stats)
  head_loss = lambda head: jnp.mean(obj.formulation.loss(z @ head["kernel"] + head["bias"], batch["age"]))
  loss, grads = jax.value_and_grad(head_loss)(state.params["age_head"])
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  # only the head trains, on z: the step's gradient norm is the head's gradient on calibrated features
  np.testing.assert_allclose(metrics["grad_norm"], np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))),
                             rtol=1e-4)
  raw = jnp.mean(obj.formulation.loss(features @ state.params["age_head"]["kernel"] + state.params["age_head"]["bias"],
                                      batch["age"]))
  assert abs(float(raw) - float(loss)) > 1e-3   # the calibration changed what the head saw


@pytest.mark.parametrize("overrides,match", [
    ({"formulation.fds": True}, "fds=True with config.train.trainable='all'"),
    ({"formulation.fds": True, "train.trainable": "head", "formulation.fds_kernel": "box"}, "fds_kernel='box'"),
    ({"formulation.fds": True, "train.trainable": "head", "formulation.fds_ks": 4}, "fds_ks=4; expected an odd"),
    ({"formulation.fds": True, "train.trainable": "head", "formulation.fds_sigma": 0.0}, "fds_sigma=0.0"),
])
def test_config_errors_name_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(tiny_config(**overrides))


@pytest.mark.slow
def test_a_resumed_fds_stage_equals_one_never_stopped(small_utk_folder, tmp_path, monkeypatch):
  from age_jax import checkpoint, evaluate
  from age_jax.train import fds_pass, loop, step as step_lib
  from tests.tiny import short_run_config
  data_dir = str(tmp_path / "tfds")
  stage1 = str(tmp_path / "stage1")
  loop.train(short_run_config(small_utk_folder, data_dir), stage1)
  cfg = lambda: short_run_config(small_utk_folder, data_dir, **{
      "model.init_from": stage1, "train.trainable": "head", "formulation.fds": True, "train.num_steps": 4,
      "train.checkpoint_every": 1, "formulation.fds_kernel": "triang", "formulation.fds_ks": 3})
  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  loop.train(cfg(), straight)
  jit_train_step = step_lib.jit_train_step

  def interrupted(*args, **kwargs):   # the real step; its third call fails as a crash would
    step, calls = jit_train_step(*args, **kwargs), []
    def run(state, batch, rng):
      calls.append(1)
      if len(calls) == 3:
        raise KeyboardInterrupt
      return step(state, batch, rng)
    return run
  monkeypatch.setattr(step_lib, "jit_train_step", interrupted)
  with pytest.raises(KeyboardInterrupt):
    loop.train(cfg(), stopped)
  assert checkpoint.Checkpointer(stopped).latest_step() == 2
  monkeypatch.setattr(step_lib, "jit_train_step", jit_train_step)
  loop.train(cfg(), stopped)
  (_, _, a, _), (_, _, b, _) = evaluate.restore(straight), evaluate.restore(stopped)
  assert int(a.step) == int(b.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params), jax.device_get(b.params))
  # The statistics the stage used, written once: every training image counted, the same in both runs.
  with np.load(f"{stopped}/{fds_pass.FILE.format(step=0)}") as one, np.load(f"{straight}/{fds_pass.FILE.format(step=0)}") as two:
    assert one["count"].sum() == config_lib.load(stopped).train.train_size > 0
    for key in one.files:
      np.testing.assert_array_equal(one[key], two[key])
