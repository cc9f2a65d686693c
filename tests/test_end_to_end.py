"""End to end on a small generated UTKFace folder: the CLI, resuming, and training in stages."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from age_jax import checkpoint, config as config_lib, evaluate
from age_jax import stages
from age_jax.train import experiment, loop, step as step_lib
from tests.data.fake_datasets import make_utkface_folder
from tests.tiny import folder_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def utk_folder(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("utk") / "UTKFace")
  make_utkface_folder(folder, n=60, quirks=True, size=24)
  return folder


def _cfg(folder, data_dir, **overrides):
  return folder_config(folder, data_dir, **overrides)


def _params(workdir, with_ema=False):
  cfg = config_lib.load(workdir)
  exp = experiment.build(cfg)
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(exp.abstract_state)
  ckpt.close()
  if with_ema:
    return jax.device_get((state.params, state.ema)), int(state.step)
  return jax.device_get(state.params), int(state.step)


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(utk_folder, tmp_path, monkeypatch):
  data_dir = str(tmp_path / "tfds")
  straight = str(tmp_path / "straight")
  ema = {"train.ema_decay": 0.5}  # the weights' moving average resumes exactly too
  loop.train(_cfg(utk_folder, data_dir, **ema), straight)

  # Interrupt the second run at its third step (after the step-2 checkpoint), then resume.
  resumed = str(tmp_path / "resumed")
  jit_train_step = step_lib.jit_train_step

  def crashing(*args, **kwargs):
    step = jit_train_step(*args, **kwargs)
    calls = []
    def run(*a):
      calls.append(1)
      if len(calls) == 3:
        raise KeyboardInterrupt("simulated stop")
      return step(*a)
    return run

  monkeypatch.setattr(step_lib, "jit_train_step", crashing)
  with pytest.raises(KeyboardInterrupt):
    loop.train(_cfg(utk_folder, data_dir, **ema), resumed)
  monkeypatch.setattr(step_lib, "jit_train_step", jit_train_step)
  assert checkpoint.Checkpointer(resumed).latest_step() == 2
  loop.train(_cfg(utk_folder, data_dir, **ema), resumed)

  (a, step_a), (b, step_b) = _params(straight, with_ema=True), _params(resumed, with_ema=True)
  assert step_a == step_b == 4 and a[1]["params"]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  lines = [json.loads(l) for l in open(os.path.join(resumed, "metrics.jsonl"))]
  assert [l["step"] for l in lines if l["split"] == "train"] == [2, 4]


def test_two_stage_run_trains_only_the_head_in_the_classifier_stage(utk_folder, tmp_path):
  cfg = _cfg(utk_folder, str(tmp_path / "tfds"), **{"formulation.name": "dldl_v2"})
  cfg.stages.stage1_representation = {"train": {"num_steps": 2}}
  # lae_mae left at -1: stage 2 takes stage 1's validation MAE (LAE eq. 5).
  cfg.stages.stage2_classifier = {"train": {"num_steps": 2, "trainable": "head"},
                           "data": {"sampler": "class_balanced", "balance_by": "age_group"},
                           "formulation": {"name": "lae_stage2"}}
  workdir = str(tmp_path / "staged")
  result = loop.train(cfg, workdir)
  assert np.isfinite(result["loss"]) and "val_mae" in result
  recorded = experiment.load_stage_metrics(workdir)["stage1_representation"]["val_mae"]
  stage1 = evaluate.evaluate_workdir(workdir, split="validation", step=2, out_dir=str(tmp_path / "ev"))
  np.testing.assert_allclose(recorded, stage1["mae"], rtol=1e-6)
  _, stage2_cfg, _, _ = evaluate.restore(workdir, 4)
  assert stage2_cfg.formulation.lae_mae == recorded
  ckpt = checkpoint.Checkpointer(workdir)
  assert list(ckpt.manager.all_steps()) == [2, 4]
  restored = {}
  plan = stages.plan(config_lib.load(workdir))
  for step in (2, 4):
    stage_cfg = experiment.resolve_stage(plan, stages.stage_at(plan, step).index, workdir).cfg
    restored[step] = jax.device_get(ckpt.restore(experiment.build(stage_cfg).abstract_state, step).params)
  ckpt.close()
  for name in restored[2]:
    changed = not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(restored[2][name]),
                                                          jax.tree.leaves(restored[4][name])))
    assert changed == (name == "age_head"), name


@pytest.mark.slow
def test_cli_trains_evaluates_on_a_folder_and_predicts(utk_folder, tmp_path):
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "tfds")
  other = str(tmp_path / "other_faces")  # another labelled folder, without the release's quirks
  written = make_utkface_folder(other, n=13, quirks=False, size=24, seed=5)
  env = dict(os.environ, AGE_JAX_COMPILATION_CACHE=os.path.join(ROOT, ".jax_cache"), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  common = ["--config.model.name=xing_baseline", "--config.model.conv_features=(8,8,8)", "--config.model.fc_features=(16,16)",
            "--config.data.load_size=72", "--config.data.image_size=64", "--config.train.batch_size=8",
            "--config.eval.batch_size=8", "--config.train.log_every=1"]
  train = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config=configs/quickstart.py", f"--workdir={workdir}",
       f"--config.data.manual_dir={utk_folder}", f"--config.data.data_dir={data_dir}",
       "--config.train.num_steps=3", *common], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "step 3/3" in train.stdout and "img/s" in train.stdout and "ETA" in train.stdout

  evaluate = subprocess.run(
      [sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}", f"--folder={other}", "--faces=crops",
       f"--out={tmp_path / 'report'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  report = json.load(open(tmp_path / "report" / "report.json"))
  assert report["num_examples"] == len(written["labels"]) == 13  # every image counts once
  assert "MAE" in evaluate.stdout

  predict = subprocess.run(
      [sys.executable, "-m", "launch.predict", f"--workdir={workdir}", f"--folder={other}", "--faces=crops",
       f"--out={tmp_path / 'ages.csv'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert predict.returncode == 0, predict.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "ages.csv")))
  assert len(rows) == 13 and {r["status"] for r in rows} == {"ok"} and "low" in rows[0] and all(np.isfinite(float(r["age"])) for r in rows)
  assert len(json.load(open(tmp_path / "ages.json"))) == 13 and "13 images: 13 with faces" in predict.stdout


def test_unknown_config_field_fails_before_any_work(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config=configs/quickstart.py", f"--workdir={tmp_path}",
       "--config.train.num_stepz=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode != 0 and "num_stepz" in run.stderr
  assert not os.listdir(tmp_path)


def test_missing_folder_is_named_before_any_work(tmp_path):
  cfg = _cfg(str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
  with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
    loop.train(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_hybrid_three_step_training_runs_as_stages(utk_folder, tmp_path):
  cfg = _cfg(utk_folder, str(tmp_path / "tfds"), **{"multitask.kind": "hybrid", "multitask.groups": "gender",
                                                      "multitask.group_classifier": "branch"})
  cfg.stages.stage1_group = {"multitask": {"stage": "group"}, "train": {"num_steps": 1}}
  cfg.stages.stage2_group_age = {"multitask": {"stage": "group_age"}, "train": {"num_steps": 1}}
  cfg.stages.stage3_end_to_end = {"multitask": {"stage": "end_to_end"}, "train": {"num_steps": 1}}
  cfg.train.checkpoint_every, cfg.train.max_to_keep, cfg.data.val_split = 1, 3, ""
  workdir = str(tmp_path / "hybrid")
  loop.train(cfg, workdir)
  plan = stages.plan(config_lib.load(workdir))
  ckpt = checkpoint.Checkpointer(workdir)
  params = {s: jax.device_get(ckpt.restore(experiment.build(stages.stage_at(plan, s).cfg).abstract_state, s).params)
            for s in (1, 2)}
  ckpt.close()
  # The group_age step trains the group estimators only: the shared layers stay as they were.
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(params[1]["shared"], params[2]["shared"])
  assert not same({k: v for k, v in params[1].items() if k.startswith("group_")},
                  {k: v for k, v in params[2].items() if k.startswith("group_")})
