"""What a run refuses or stops on: a non-finite step (never saved, named), a changed config on
an existing workdir (refused before anything is written), bad values before any data work; and
a workdir evaluates the exact build it trained on, whatever else is built beside it."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app

from age_jax import checkpoint, config as config_lib, evaluate
from age_jax.data import datasets
from age_jax.train import experiment, loop, step as step_lib
from launch import common
from tests.data.fake_datasets import make_utkface_folder
from tests.tiny import short_run_config


@pytest.fixture(scope="module")
def folder(small_utk_folder):
  return small_utk_folder


_cfg = short_run_config


def _all_finite(workdir, step):
  exp = experiment.build(config_lib.load(workdir))
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(exp.abstract_state, step)
  ckpt.close()
  return all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_a_non_finite_step_stops_the_run_before_it_is_saved(folder, tmp_path, monkeypatch):
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "tfds")
  jit_train_step = step_lib.jit_train_step

  def poisoned(*args, **kwargs):  # the real step, fed NaN images at its third call (the loss stays
    # finite here, the gradient norm does not)
    step, calls = jit_train_step(*args, **kwargs), []
    def run(state, batch, rng):
      calls.append(1)
      if len(calls) == 3:
        batch = dict(batch, image=batch["image"] * jnp.nan)
      return step(state, batch, rng)
    return run

  monkeypatch.setattr(step_lib, "jit_train_step", poisoned)
  cfg = _cfg(folder, data_dir, **{"train.num_steps": 6, "train.checkpoint_every": 1, "train.log_every": 4,
                                  "train.max_to_keep": 1})
  with pytest.raises(FloatingPointError, match=r"diverged at step 3: .*grad_norm=nan.*last checkpoint: step 2"):
    loop.train(cfg, workdir)
  assert checkpoint.Checkpointer(workdir).latest_step() == 2 and _all_finite(workdir, 2)
  monkeypatch.setattr(step_lib, "jit_train_step", jit_train_step)
  loop.train(cfg, workdir)  # the cause is gone: the resume goes on from the finite state
  assert _all_finite(workdir, 6)


def test_the_finite_flag_catches_an_infinite_gradient_norm():
  params = {"w": jnp.ones(3)}
  assert bool(step_lib.all_finite(jnp.float32(1.0), jnp.float32(2.0), params))
  assert not bool(step_lib.all_finite(jnp.float32(1.0), jnp.float32(jnp.inf), params))
  assert not bool(step_lib.all_finite(jnp.float32(1.0), jnp.float32(2.0), {"w": jnp.array([1.0, jnp.nan])}))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
  root = tmp_path_factory.mktemp("trained")
  workdir, data_dir = str(root / "run"), str(root / "tfds")
  loop.train(_cfg(folder, data_dir), workdir)
  return workdir, data_dir


def test_a_changed_config_is_refused_before_anything_is_written(folder, trained):
  workdir, data_dir = trained
  config_path = os.path.join(workdir, config_lib.CONFIG_FILE)
  before = open(config_path).read()
  cfg = _cfg(folder, data_dir, **{"formulation.name": "dldl_v2", "optim.momentum": 0.5})
  with pytest.raises(ValueError, match=r"another config \(config.formulation.name: .* 'dldl_v2' now; "
                                       r"config.optim.momentum: 0.9 in the workdir, 0.5 now\); nothing was changed"):
    loop.train(cfg, workdir)
  assert open(config_path).read() == before
  assert checkpoint.Checkpointer(workdir).latest_step() == 2
  assert evaluate.evaluate_workdir(workdir, split="train")["step"] == 2  # still evaluable


def test_a_workdir_evaluates_the_build_it_trained_on(folder, trained, tmp_path):
  workdir, data_dir = trained
  trained_on = config_lib.load(workdir).data.fingerprint
  n_test = len(datasets.load_split("utkface", data_dir, "test", fingerprint=trained_on))
  other = str(tmp_path / "UTKFace")  # the same dataset name, another folder, in the same data_dir
  make_utkface_folder(other, n=90, quirks=False, size=16, seed=3)
  assert datasets.prepare("utkface", other, data_dir)["fingerprint"] != trained_on
  assert evaluate.evaluate_workdir(workdir, out_dir=str(tmp_path / "eval"))["num_examples"] == n_test


@pytest.mark.parametrize("field, value, message", [
    ("model.conv_features", (8, 8), r"config.model.conv_features=\(8, 8\): .* 3 convolution blocks"),
    ("train.eval_every", -1, "config.train.eval_every=-1; expected a number >= 0"),
    ("train.max_to_keep", 0, "config.train.max_to_keep=0; expected a positive number"),
    ("eval.batch_size", 12, "config.eval.batch_size=12 is not divisible by the 8 devices"),
])
def test_bad_values_are_named_before_any_data_work(tmp_path, field, value, message):
  cfg = _cfg(str(tmp_path / "nowhere"), str(tmp_path / "tfds"), **{field: value, "data.val_split": "validation"})
  with pytest.raises(ValueError, match=message):
    loop.train(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "tfds")


def test_a_flag_given_twice_is_refused():
  common.refuse_repeated_flags(["--config=x.py", "--config.model.conv_features=(8,8,8)", "--workdir=w"])
  with pytest.raises(app.UsageError, match="--config.model.conv_features is given twice"):
    common.refuse_repeated_flags(["--config=x.py", "--config.model.conv_features=(8,8,8)",
                                  "--config.model.conv_features=(4,4,4)"])
