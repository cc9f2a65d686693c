"""A signal in every phase of a real trainer process (issue 27): the dataset build, the decode-once
pass, compilation, the step loop and the final validation + calibration each stop within 5 s
with one line and the shell's status, leave no half-written file under a final name, and the
next run finishes with the parameters and final validation of a run never stopped."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from age_jax.inference.restore import restore
from age_jax.data import datasets
from age_jax.train import loop
from tests.data.fake_datasets import make_utkface_folder
from tests.distributed import run_config

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "tests", "distributed", "run_config.py")
# Enough images that the build and the decode-once pass take a few seconds each.
NUM_IMAGES = 1500
OVERRIDES = {"train.num_steps": 6, "train.checkpoint_every": 2, "train.log_every": 1,
             "data.val_split": "validation", "data.cache": "disk", "eval.batch_size": 64}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("phases") / "UTKFace")
  make_utkface_folder(path, n=NUM_IMAGES, quirks=False, size=24)
  return path


def _cfg(folder, data_dir, **extra):
  cfg = run_config.get_config()
  cfg.data.manual_dir, cfg.data.data_dir = folder, data_dir
  for dotted, value in {**OVERRIDES, **extra}.items():
    section, key = dotted.split(".")
    cfg[section][key] = value
  return cfg


class Trainer:
  """launch.train in a subprocess, its output collected line by line as it comes."""

  def __init__(self, folder, data_dir, workdir, **extra):
    env = dict(os.environ, AGE_JAX_COMPILATION_CACHE=os.path.join(REPO, ".jax_cache"), PYTHONUNBUFFERED="1")
    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "launch.train", f"--config={CONFIG}", f"--workdir={workdir}",
         f"--config.data.manual_dir={folder}", f"--config.data.data_dir={data_dir}", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                    daemon=True)
    self._reader.start()

  def wait_for(self, predicate, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
      assert self.proc.poll() is None, f"the trainer ended before {what}:\n" + "".join(self.lines)
      assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n" + "".join(self.lines)
      time.sleep(0.01)

  def stop(self, signum):
    """(exit status, seconds from the signal to the exit, the 'stopped by' lines, all output)."""
    start = time.monotonic()
    self.proc.send_signal(signum)
    code = self.proc.wait(timeout=60)
    took = time.monotonic() - start
    self._reader.join(timeout=10)
    out = "".join(self.lines)
    return code, took, [l for l in out.splitlines() if l.startswith("stopped by")], out


def _params_and_final(workdir):
  _, _, state, _ = restore(workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.endswith("\n")]
  final = [r for r in records if r["split"] == "validation" and r["step"] == OVERRIDES["train.num_steps"]]
  return int(state.step), jax.device_get(state.params), final


def _assert_same_run(workdir, straight):
  (step_a, a, final_a), (step_b, b, final_b) = _params_and_final(workdir), _params_and_final(straight)
  assert step_a == step_b == OVERRIDES["train.num_steps"]
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert len(final_a) == 1 and final_a == final_b


def _glob(data_dir, pattern):
  return glob.glob(os.path.join(data_dir, "**", pattern), recursive=True)


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory):
  """A run never stopped (the reference for every resumed one)."""
  root = tmp_path_factory.mktemp("straight")
  loop.train(_cfg(folder, str(root / "tfds")), str(root / "run"))
  return str(root / "run")


def test_a_signal_in_every_phase_stops_at_once_and_the_next_run_ends_as_an_uninterrupted_one(folder, straight,
                                                                                               tmp_path):
  # 1. The dataset build: TFDS's incomplete.* folder exists while it writes.
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "build")
  trainer = Trainer(folder, data_dir, workdir)
  trainer.wait_for(lambda: _glob(data_dir, "incomplete.*"), "dataset build")
  code, took, lines, out = trainer.stop(signal.SIGTERM)
  assert code == 143 and took < 5 and len(lines) == 1 and "during the dataset build" in lines[0], out
  assert "Traceback" not in out, out
  with pytest.raises(FileNotFoundError):  # nothing counts as built
    datasets.find_build("utkface", data_dir)

  # 2. The decode-once pass (a fresh workdir on the same data_dir): its temporary file exists.
  workdir = str(tmp_path / "decode")
  trainer = Trainer(folder, data_dir, workdir)
  trainer.wait_for(lambda: _glob(data_dir, "*.npy.tmp*"), "decode-once pass")
  code, took, lines, out = trainer.stop(signal.SIGINT)
  assert code == 130 and took < 5 and len(lines) == 1 and "during the decode-once pass" in lines[0], out
  assert _glob(data_dir, "*.npy.tmp*") == [] and _glob(data_dir, "*.npy") == []  # no file, whole or half
  loop.train(_cfg(folder, data_dir), workdir)
  _assert_same_run(workdir, straight)

  # 3. Start-up and compilation: right after the data is ready.
  workdir = str(tmp_path / "compile")
  trainer = Trainer(folder, data_dir, workdir)
  trainer.wait_for(lambda: any(l.startswith("data: ") for l in trainer.lines), "data ready")
  code, took, lines, out = trainer.stop(signal.SIGTERM)
  assert code == 143 and took < 5 and len(lines) == 1, out
  assert "during compilation" in lines[0] or "during start-up" in lines[0] or " at step " in lines[0], out
  loop.train(_cfg(folder, data_dir), workdir)
  _assert_same_run(workdir, straight)

  # 4. The step loop: the checkpoint of the step it was at (as before).
  workdir = str(tmp_path / "steps")
  trainer = Trainer(folder, data_dir, workdir)
  trainer.wait_for(lambda: any(l.startswith("step 3/") for l in trainer.lines), "step 3")
  code, took, lines, out = trainer.stop(signal.SIGTERM)
  assert code == 143 and took < 5 and len(lines) == 1 and " at step " in lines[0], out
  loop.train(_cfg(folder, data_dir), workdir)
  _assert_same_run(workdir, straight)

  # 5. The final validation and calibration: after the last step's line.
  workdir = str(tmp_path / "final")
  trainer = Trainer(folder, data_dir, workdir)
  trainer.wait_for(lambda: any(l.startswith("step 6/") for l in trainer.lines), "the last step")
  code, took, lines, out = trainer.stop(signal.SIGTERM)
  assert code == 143 and took < 5 and len(lines) == 1, out
  if "final:" not in out:  # stopped before it ended: the next run does the final validation
    assert _params_and_final(workdir)[2] == []
  loop.train(_cfg(folder, data_dir), workdir)
  _assert_same_run(workdir, straight)


def test_a_signal_during_a_periodic_validation_saves_that_step_and_stops(folder, straight, tmp_path):
  # Validation at step 3 (eval_every=3 does not change the parameters) follows step 3's line and
  # compiles the evaluation first: the signal lands in it, which then saves step 3's checkpoint.
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "validation")
  trainer = Trainer(folder, data_dir, workdir, **{"train.eval_every": 3})
  trainer.wait_for(lambda: any(l.startswith("step 3/") for l in trainer.lines), "step 3")
  code, took, lines, out = trainer.stop(signal.SIGTERM)
  assert code == 143 and took < 5 and len(lines) == 1 and " at step 3:" in lines[0], out
  assert "validation at step 3" not in out and "saving a checkpoint after this step" not in out, out
  loop.train(_cfg(folder, data_dir, **{"train.eval_every": 3}), workdir)
  _assert_same_run(workdir, straight)
