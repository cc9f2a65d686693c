"""Real trainer processes stopped by SIGINT and SIGTERM: a checkpoint at the step they were at,
one line and the shell's status, no grain worker left behind, and a resume that ends with the
parameters of a run never stopped. While one trains, a second trainer is refused naming it and
evaluation reads only finished checkpoints (every step writes one and rotates the previous).
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest

from age_jax import checkpoint, evaluate
from age_jax.data import datasets
from age_jax.train import loop, workdir as workdir_lib
from tests.data.fake_datasets import make_utkface_folder
from tests.distributed import run_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "tests", "distributed", "run_config.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("stop_data")
  folder, data_dir = str(root / "UTKFace"), str(root / "tfds")
  make_utkface_folder(folder, n=64, quirks=False, size=16)
  datasets.prepare("utkface", folder, data_dir)
  return folder, data_dir


def _start(data, workdir, *extra):
  env = dict(os.environ, AGE_JAX_COMPILATION_CACHE=os.path.join(REPO, ".jax_cache"), PYTHONUNBUFFERED="1")
  command = [sys.executable, "-m", "launch.train", f"--config={CONFIG}", f"--workdir={workdir}",
             f"--config.data.manual_dir={data[0]}", f"--config.data.data_dir={data[1]}",
             "--config.train.num_steps=100000", *extra]
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return [json.loads(line)["step"] for line in f if line.endswith("\n")]
  except FileNotFoundError:
    return []


def _wait_for_step(proc, workdir, step, timeout=120):
  deadline = time.monotonic() + timeout
  while max(_logged_steps(workdir), default=0) < step:
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline, "the trainer did not reach step %d" % step
    time.sleep(0.05)


def _stop(proc, signum):
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


def _saved_step(err):
  lines = [l for l in err.splitlines() if l.startswith("stopped by")]
  assert len(lines) == 1, err
  return int(lines[0].split(" at step ")[1].split(":")[0])


def _cfg(data, num_steps):
  cfg = run_config.get_config()
  cfg.data.manual_dir, cfg.data.data_dir = data
  cfg.train.num_steps = num_steps
  return cfg


def _params(workdir):
  _, _, state, _ = evaluate.restore(workdir)
  return int(state.step), jax.device_get(state.params)


@pytest.mark.slow
def test_signals_save_the_current_step_and_resume_exactly(data, tmp_path):
  workdir = str(tmp_path / "run")
  # 1. SIGINT; meanwhile a second trainer and evaluations of the live, rotating checkpoints.
  proc = _start(data, workdir, "--config.train.checkpoint_every=1", "--config.train.max_to_keep=1")
  _wait_for_step(proc, workdir, 2)
  with pytest.raises(workdir_lib.WorkdirInUse, match=f"in use: .*pid {proc.pid} on host"):
    loop.train(_cfg(data, 10), workdir)
  while checkpoint.Checkpointer(workdir, read_only=True).latest_step() is None:
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  restored = []
  while len(set(restored)) < 3 and len(restored) < 40:  # while the trainer writes and rotates
    restored.append(int(evaluate.restore(workdir)[2].step))
  assert restored == sorted(restored) and len(set(restored)) == 3 and restored[0] >= 1, restored
  code, out, err = _stop(proc, signal.SIGINT)
  assert code == 130 and "Traceback" not in err, err
  first = _saved_step(err)
  assert checkpoint.Checkpointer(workdir).latest_step() == first

  # 2. SIGTERM with a grain worker process and checkpoints far apart: the signal's step is saved.
  proc = _start(data, workdir, "--config.train.checkpoint_every=100000", "--config.data.num_workers=1")
  _wait_for_step(proc, workdir, first + 2)
  children = psutil.Process(proc.pid).children(recursive=True)
  assert children, "expected a grain worker process"
  code, out, err = _stop(proc, signal.SIGTERM)
  assert code == 143 and "Traceback" not in err, err
  second = _saved_step(err)
  assert second >= first + 2 and checkpoint.Checkpointer(workdir).latest_step() == second
  psutil.wait_procs(children, timeout=10)
  assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

  # 3. Resumed to second + 2 steps: the parameters of a run never stopped, bit for bit.
  final = second + 2
  loop.train(_cfg(data, final), workdir)
  straight = str(tmp_path / "straight")
  loop.train(_cfg(data, final), straight)
  (step_a, a), (step_b, b) = _params(workdir), _params(straight)
  assert step_a == step_b == final
  jax.tree.map(np.testing.assert_array_equal, a, b)
