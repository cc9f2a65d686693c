"""Face-identity pre-training (LAE 2.2) end to end on a small generated identity set: AM-softmax
training through launch.train's loop, then an age run that starts from its backbone with a
fresh head (config.model.init_from)."""
import json
import os

import jax
import numpy as np
import pytest

from age_jax import checkpoint, config as config_lib, evaluate
from age_jax.train import experiment, loop
from tests.data import fake_datasets as fd
from tests.tiny import folder_config, short_run_config

NUM_IDENTITIES = 4
STEPS = 30


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """(workdir, data_dir, the run's returned metrics) of a 30-step pre-training run."""
  root = tmp_path_factory.mktemp("faceid")
  folder, data_dir, workdir = str(root / "ids"), str(root / "tfds"), str(root / "pretrain")
  fd.make_identity_folder(folder, identities=NUM_IDENTITIES, per_identity=8, singletons=1)
  # s = 16 rather than CosFace's 64: from scratch, the tiny test network's 16 features collapse
  # onto one direction at s = 64 within 30 steps (loss falls, accuracy stays at chance).
  cfg = folder_config(folder, data_dir, **{
      "data.name": "identity_folder", "data.val_split": "validation", "formulation.name": "am_softmax",
      "formulation.am_scale": 16.0, "train.num_steps": STEPS, "train.log_every": 5,
      "train.checkpoint_every": STEPS})
  return workdir, data_dir, loop.train(cfg, workdir)


def _lines(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f) if line["split"] == split]


def _params(workdir):
  cfg = config_lib.load(workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(experiment.build(cfg).abstract_state)
  ckpt.close()
  return cfg, jax.device_get(state.params)


def test_am_softmax_pretraining_learns_the_identities(pretrained):
  workdir, _, last = pretrained
  cfg, params = _params(workdir)
  assert cfg.formulation.num_identities == NUM_IDENTITIES          # filled in from the build (one singleton dropped)
  assert params["identity_head"].shape == (16, NUM_IDENTITIES) and "age_head" not in params
  train = _lines(workdir, "train")
  assert train[-1]["identity_loss"] < 0.6 * train[0]["identity_loss"]
  assert last["accuracy"] > 2 / NUM_IDENTITIES                      # chance: 1 / 4
  assert _lines(workdir, "validation")[-1]["accuracy"] == last["val_accuracy"] and "val_mae" not in last
  with pytest.raises(ValueError, match="face-identity pre-training run .* predicts no ages"):
    evaluate.evaluate_workdir(workdir)


def test_an_age_run_starts_from_the_pretrained_backbone_with_a_fresh_head(pretrained, small_utk_folder,
                                                                          tmp_path, capsys):
  source, data_dir, _ = pretrained
  target = str(tmp_path / "age")
  # Only the head trains, so the backbone must stay exactly the pre-trained one.
  loop.train(short_run_config(small_utk_folder, data_dir, **{"model.init_from": source,
                                                              "train.trainable": "head"}), target)
  out = capsys.readouterr().out
  assert "2 parameters kept fresh (age_head/bias, age_head/kernel), unused from the source: identity_head" in out
  _, before = _params(source)
  _, after = _params(target)
  backbone = {k: v for k, v in before.items() if k != "identity_head"}
  assert set(after) == set(backbone) | {"age_head"}
  jax.tree.map(np.testing.assert_array_equal, backbone, {k: after[k] for k in backbone})
  assert after["age_head"]["kernel"].shape == (16, 1)
