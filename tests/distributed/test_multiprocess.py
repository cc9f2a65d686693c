"""Real multi-process runs on localhost: launch.train and evaluation as 2 JAX processes
(jax.distributed over gloo CPU collectives) give the numbers of 1 process; checkpoints move
between process counts; logs are written once; a missing coordinator fails fast and clearly.

The runs (each a few seconds of compute; the module takes about 2 minutes on 2 cores):
  A  1 process x 1 device,   steps 1-4              (the reference)
  B  2 processes x 2 devices, steps 1-2              (its checkpoint is written by both)
  C  1 process x 1 device,   resumes B, steps 3-4
  D  2 processes x 1 device,  resumes A's step-2 checkpoint, steps 3-4, with the state FSDP-sharded
     across the two processes (config.mesh.fsdp=2): restored from a replicated checkpoint, saved
     in shards by both processes, and restored again onto one device by the test.
"""
import concurrent.futures
import json
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from age_jax import checkpoint, config as config_lib
from age_jax.data import datasets
from age_jax.train import experiment
from launch import local_cluster
from tests.data.fake_datasets import make_utkface_folder

pytestmark = pytest.mark.slow  # real multi-process runs: minutes of start-up and compilation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "tests", "distributed", "run_config.py")
TIMEOUT_S = 240
TOL = dict(rtol=1e-5, atol=1e-5)


def _env():
  env = dict(os.environ)
  env["AGE_JAX_COMPILATION_CACHE"] = os.path.join(REPO, ".jax_cache")  # shared with tests/conftest.py
  return env


def _check(results, what):
  for r in results:
    assert r.returncode == 0, (f"{what}: process {r.process_id} "
                               f"{'timed out' if r.returncode is None else f'exited {r.returncode}'}:\n"
                               + r.output[-4000:])
  return results


def _train(data, workdir, num_processes, devices, num_steps=4, extra=()):
  command = [sys.executable, "-m", "launch.train", f"--config={CONFIG}", f"--workdir={workdir}",
             f"--config.data.manual_dir={data['folder']}", f"--config.data.data_dir={data['data_dir']}",
             f"--config.train.num_steps={num_steps}", *extra]
  return _check(local_cluster.run(command, num_processes, devices, TIMEOUT_S, env=_env(), cwd=REPO),
                f"training in {workdir} as {num_processes} processes")


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  return [(m["step"], m["loss"]) for m in lines if m["split"] == "train"]


def _params(workdir, step):
  """Restores a checkpoint onto ONE device of this 8-device test process, whatever wrote it."""
  cfg = config_lib.load(workdir)
  cfg.mesh.data, cfg.mesh.fsdp = -1, 1  # the run may have used an fsdp axis this one device cannot have
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(exp.abstract_state, step)
  ckpt.close()
  assert int(state.step) == step
  return jax.device_get(state.params)


def _assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), a, b)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("distributed_data")
  folder = str(root / "utkface")
  make_utkface_folder(folder, n=64, quirks=False, size=16)
  data_dir = str(root / "tfds")
  datasets.prepare("utkface", folder, data_dir)  # once, before processes race to build it
  return {"folder": folder, "data_dir": data_dir, "root": root}


@pytest.fixture(scope="module")
def runs(data):
  root = data["root"]
  w = {k: str(root / f"run_{k}") for k in "ABCD"}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    a = pool.submit(_train, data, w["A"], 1, 1)
    b = pool.submit(_train, data, w["B"], 2, 2, num_steps=2)
    a.result(), b.result()
    # D starts from A's step-2 checkpoint: a workdir holding only that (and the run's config).
    os.makedirs(os.path.join(w["D"], "checkpoints"))
    shutil.copytree(os.path.join(w["A"], "checkpoints", "2"), os.path.join(w["D"], "checkpoints", "2"))
    for name in ("config.json", "mean_image.npy"):
      shutil.copy(os.path.join(w["A"], name), w["D"])
    shutil.copytree(w["B"], w["C"])
    os.remove(os.path.join(w["C"], "metrics.jsonl"))
    c = pool.submit(_train, data, w["C"], 1, 1)
    d = pool.submit(_train, data, w["D"], 2, 1,
                    extra=["--config.mesh.fsdp=2", "--config.mesh.fsdp_min_size=256"])
    outputs = {"B": b.result(), "D": d.result()}
    c.result()
  return {"workdirs": w, "outputs": outputs}


def _final_line(output):
  return [line for line in output.splitlines() if line.startswith("final:")]


def test_two_processes_train_like_one(runs):
  outputs, runs = runs["outputs"], runs["workdirs"]
  assert "process 1/2: 2 local of 4 cpu devices" in outputs["B"][1].output
  # The step's metrics are replicated outputs: both processes hold the same global numbers.
  assert _final_line(outputs["B"][0].output) == _final_line(outputs["B"][1].output) != []
  reference = _losses(runs["A"])
  assert [s for s, _ in reference] == [1, 2, 3, 4]
  assert len({loss for _, loss in reference}) == 4  # it trains: every step's loss differs
  two = _losses(runs["B"])
  assert [s for s, _ in two] == [1, 2]  # process 1 wrote nothing: one line per step
  np.testing.assert_allclose([l for _, l in two], [l for _, l in reference[:2]], **TOL)
  _assert_same_params(_params(runs["B"], 2), _params(runs["A"], 2))


def test_checkpoint_of_two_processes_resumes_in_one(runs):
  runs = runs["workdirs"]
  resumed = _losses(runs["C"])
  assert [s for s, _ in resumed] == [3, 4]
  np.testing.assert_allclose([l for _, l in resumed], [l for _, l in _losses(runs["A"])[2:]], **TOL)
  _assert_same_params(_params(runs["C"], 4), _params(runs["A"], 4))


def test_checkpoint_of_one_process_resumes_in_two(runs):
  assert "process 1/2: 1 local of 2 cpu devices" in runs["outputs"]["D"][1].output
  runs = runs["workdirs"]
  resumed = _losses(runs["D"])
  assert [s for s, _ in resumed] == [3, 4]
  # The step-4 checkpoint was written in halves, one by each process, along conv2's Cout.
  meta = ocp.StandardCheckpointer().metadata(os.path.join(runs["D"], "checkpoints", "4", "state"))
  kernel = meta.item_metadata.tree["params"]["conv2"]["kernel"]
  assert kernel.sharding.partition_spec == (None, None, None, "fsdp")
  assert tuple(kernel.storage.write_shape) == (5, 5, 8, 4)
  np.testing.assert_allclose([l for _, l in resumed], [l for _, l in _losses(runs["A"])[2:]], **TOL)
  _assert_same_params(_params(runs["D"], 4), _params(runs["A"], 4))


def _predict(workdir, out, num_processes, devices):
  command = [sys.executable, "-m", "tests.distributed.predict_worker", f"--workdir={workdir}",
             "--split=train", f"--out={out}"]
  _check(local_cluster.run(command, num_processes, devices, TIMEOUT_S, env=_env(), cwd=REPO),
         f"prediction as {num_processes} processes")
  return dict(np.load(out))


def test_evaluation_across_two_processes_counts_each_image_once(runs, data, tmp_path):
  runs = runs["workdirs"]
  n = len(datasets.load_split("utkface", data["data_dir"], "train"))
  assert n % 24, "the split should not fill whole eval batches (config eval.batch_size=24)"
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    one = pool.submit(_predict, runs["A"], str(tmp_path / "one.npz"), 1, 1)
    two = pool.submit(_predict, runs["A"], str(tmp_path / "two.npz"), 2, 2)
    one, two = one.result(), two.result()
  assert int(two["process_count"]) == 2 and int(two["device_count"]) == 4
  for p in (one, two):
    np.testing.assert_array_equal(p["index"], np.arange(n))  # every record once, none of the padding
  np.testing.assert_array_equal(one["age"], two["age"])
  np.testing.assert_allclose(one["pred_age"], two["pred_age"], **TOL)


def _launch_alone(process_id, timeout_s=2):
  port = local_cluster.free_port()  # nobody listens there
  command = [sys.executable, "-m", "launch.train", f"--config={CONFIG}", "--workdir=/nonexistent",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={process_id}",
             f"--distributed_timeout={timeout_s}"]
  # The flags take precedence over the single-process environment local_cluster sets.
  return local_cluster.run(command, 1, 1, 60, env=_env(), cwd=REPO)[0]


def test_a_missing_coordinator_or_peer_fails_fast_and_says_why():
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    worker = pool.submit(_launch_alone, 1)
    coordinator = pool.submit(_launch_alone, 0)
    worker, coordinator = worker.result(), coordinator.result()
  # Process 1 cannot reach 127.0.0.1:PORT: a Python error naming the address, the flag and the time limit.
  assert worker.returncode not in (0, None), worker.output[-3000:]
  assert "process 1 of 2: the coordinator at 127.0.0.1:" in worker.output
  assert "did not answer within 2s" in worker.output and "--coordinator_address" in worker.output
  # Process 0 waits for a process 1 that never comes: JAX aborts after the limit, after our notice.
  assert coordinator.returncode not in (0, None), coordinator.output[-3000:]
  assert "waiting at most 2s for every process" in coordinator.output
  assert "DEADLINE_EXCEEDED" in coordinator.output


FAKE_SRUN = """#!/bin/bash
# Stands in for srun on one machine: records its arguments, then starts SLURM_NTASKS_PER_NODE
# copies of the command with the variables a real SLURM step gives each task.
printf '%s\\n' "$@" > "$FAKE_SRUN_ARGS"
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS_PER_NODE; i++)); do
  SLURM_STEP_NODELIST=localhost SLURM_NTASKS=$SLURM_NTASKS_PER_NODE SLURM_PROCID=$i SLURM_LOCALID=$i \\
    "$@" > "$FAKE_SRUN_ARGS.task$i" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""


def _slurm_job_id():
  """A job id whose JAX-derived coordinator port (id % 4096 + 61440) is free right now."""
  import socket
  for port in range(61440 + os.getpid() % 4000, 65536):
    with socket.socket() as s:
      try:
        s.bind(("", port))
      except OSError:
        continue
    return 4096 * 1000 + port - 61440


def test_slurm_script_trains_as_auto_detected_processes(runs, data, tmp_path):
  """launch/slurm.sbatch under a fake srun: JAX finds the 2 tasks from the SLURM variables alone."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "srun").chmod(0o755)
  env = _env()
  for key in ("AGE_JAX_COORDINATOR", "AGE_JAX_NUM_PROCESSES", "AGE_JAX_PROCESS_ID"):
    env.pop(key, None)
  workdir = str(tmp_path / "slurm_run")
  env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_SRUN_ARGS=str(tmp_path / "srun_args"),
             SLURM_SUBMIT_DIR=REPO, SLURM_JOB_ID=str(_slurm_job_id()), SLURM_JOB_NUM_NODES="1",
             SLURM_NTASKS_PER_NODE="2", SLURM_CPUS_PER_TASK="1", AGE_JAX_PYTHON=sys.executable,
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  import subprocess
  done = subprocess.run(["bash", os.path.join(REPO, "launch", "slurm.sbatch"), f"--config={CONFIG}",
                         f"--workdir={workdir}", f"--config.data.manual_dir={data['folder']}",
                         f"--config.data.data_dir={data['data_dir']}"],
                        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
  tasks = [(tmp_path / f"srun_args.task{i}").read_text() for i in range(2)]
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + "\n".join(t[-3000:] for t in tasks)
  args = (tmp_path / "srun_args").read_text().split("\n")
  assert "--kill-on-bad-exit=1" in args and "--distributed=on" in args
  assert args[-2] == "--config.data.num_threads=1"  # from SLURM_CPUS_PER_TASK, after the user's flags
  assert "process 1/2: 1 local of 2 cpu devices" in tasks[1]
  np.testing.assert_allclose([l for _, l in _losses(workdir)], [l for _, l in _losses(runs["workdirs"]["A"])],
                             **TOL)
