"""launch/tpu_pod.sh and launch/slurm.sbatch run against fake gcloud / srun and fake TPU hosts
(tests/distributed/fake_cloud.py): the commands they issue and what each host's process sees."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.distributed.fake_cloud import FakeCloud

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.sh")
SLURM = os.path.join(REPO, "launch", "slurm.sbatch")
TPU_ENV = dict(TPU_NAME="age-pod", ZONE="us-west4-a", PROJECT="proj")


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


def _gcloud_args(cloud):
  return [c["argv"] for c in cloud.calls("gcloud")]


def test_setup_installs_into_a_python_of_at_least_3_11_on_the_3_10_image(cloud):
  done = cloud.run(TPU_POD, "setup", cwd=REPO, **TPU_ENV)
  assert done.returncode == 0, done.stderr
  for worker in (0, 1):
    venv_python = os.path.join(cloud.home(worker), "age_jax", ".venv", "bin", "python")
    version = subprocess.run([venv_python, "--version"], capture_output=True, text=True).stdout.split()[1]
    assert tuple(map(int, version.split("."))) >= (3, 11)
    assert os.path.exists(os.path.join(cloud.home(worker), "age_jax", "pyproject.toml"))  # the checkout
  installs = [c for c in cloud.calls("uv") if c["argv"][:2] == ["pip", "install"]]
  assert len(installs) == 2
  # .[gcs,tpu]: the tpu extra pins jax[tpu] to the tested range (pyproject.toml)
  assert all({"-e", ".[gcs,tpu]"} <= set(c["argv"]) and ".venv/bin/python" in c["argv"] for c in installs)
  assert all(c["cwd"].endswith("age_jax") for c in installs)


def test_data_lands_in_home_data_folder_and_train_sees_each_hosts_home(cloud, tmp_path):
  images = tmp_path / "local" / "UTKFace"
  images.mkdir(parents=True)
  (images / "30_0_0_x.jpg").write_bytes(b"jpeg")
  done = cloud.run(TPU_POD, "data", f"{images}/", **TPU_ENV)  # no ~/data on the hosts yet
  assert done.returncode == 0, done.stderr
  for worker in (0, 1):
    assert os.path.isfile(os.path.join(cloud.home(worker), "data", "UTKFace", "30_0_0_x.jpg"))

  for worker in (0, 1):  # as left by setup
    cloud.make_venv(worker, "3.11")
  done = cloud.run(TPU_POD, "train", "--config=configs/x.py", "--workdir=gs://bucket/runs/a b",
                   "--config.data.manual_dir=~/data/UTKFace", "~/odd arg", **TPU_ENV)
  assert done.returncode == 0, done.stderr
  runs = cloud.calls("venv-python", wait_for=2)
  assert len(runs) == 2
  for run in runs:
    home = run["env"]["HOME"]
    assert run["argv"] == ["-m", "launch.train", "--distributed=on", "--config=configs/x.py",
                           "--workdir=gs://bucket/runs/a b", f"--config.data.manual_dir={home}/data/UTKFace",
                           f"{home}/odd arg"]
    assert run["cwd"] == os.path.join(home, "age_jax")
    assert os.path.isdir(f"{home}/data/UTKFace")
    assert open(os.path.join(home, "age_jax_train.pid")).read().strip().isdigit()
  (ssh,) = [a for a in _gcloud_args(cloud) if a[3] == "ssh" and any("launch.train" in x for x in a)]
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "age-pod"]
  assert {"--zone=us-west4-a", "--project=proj", "--worker=all"} <= set(ssh)


def test_missing_arguments_are_named(cloud):
  done = cloud.run(TPU_POD, "train", **TPU_ENV)
  assert done.returncode == 2 and "give launch.train's flags" in done.stderr
  done = cloud.run(TPU_POD, "train", "--config=x")
  assert done.returncode != 0 and "set TPU_NAME" in done.stderr
  done = cloud.run(TPU_POD, "create", "v9-8", **TPU_ENV)
  assert done.returncode != 0 and "no default runtime for accelerator 'v9-8': set RUNTIME" in done.stderr
  assert cloud.calls("gcloud") == []


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v2-alpha-tpuv5"), ("v6e-64", "v2-alpha-tpuv6e")])
def test_create_asks_a_queued_resource_with_the_accelerators_runtime(cloud, accelerator, runtime):
  assert cloud.run(TPU_POD, "create", accelerator, **TPU_ENV).returncode == 0
  assert cloud.run(TPU_POD, "create", accelerator, SPOT="1", **TPU_ENV).returncode == 0
  on_demand, spot = _gcloud_args(cloud)
  assert on_demand[:5] == ["compute", "tpus", "queued-resources", "create", "age-pod-qr"]
  assert {"--node-id=age-pod", f"--accelerator-type={accelerator}", f"--runtime-version={runtime}",
          "--zone=us-west4-a", "--project=proj"} <= set(on_demand)
  assert "--spot" not in on_demand and sorted(spot) == sorted(on_demand + ["--spot"])


def test_stop_escalates_to_sigkill_when_sigterm_does_not_end_the_run(cloud):
  # A trainer whose SIGTERM handler is busy (or that ignores it) must still be gone after `stop`.
  ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
  stubborn = subprocess.Popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE, text=True)
  polite = subprocess.Popen(["sleep", "60"])
  try:
    assert stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    for worker, proc in ((0, stubborn), (1, polite)):
      os.makedirs(cloud.home(worker), exist_ok=True)
      with open(os.path.join(cloud.home(worker), "age_jax_train.pid"), "w") as f:
        f.write(f"{proc.pid}\n")
    start = time.monotonic()
    done = cloud.run(TPU_POD, "stop", STOP_TIMEOUT="1", **TPU_ENV)
    assert done.returncode == 0, done.stderr
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert polite.wait(timeout=10) == -signal.SIGTERM
    assert time.monotonic() - start < 10
    assert "still running after 1s, SIGKILL" in done.stderr
    assert not os.path.exists(os.path.join(cloud.home(0), "age_jax_train.pid"))
  finally:
    for proc in (stubborn, polite):
      if proc.poll() is None:
        proc.kill()


def test_slurm_tasks_get_the_jobs_cpus_per_task(cloud, tmp_path):
  job = dict(SLURM_SUBMIT_DIR=str(tmp_path), SLURM_CPUS_PER_TASK="12", SLURM_JOB_NUM_NODES="2",
             SLURM_NTASKS_PER_NODE="8", SLURM_JOB_ID="77")
  done = cloud.run(SLURM, "--config=configs/x.py", "--workdir=/shared/runs/x", **job)
  assert done.returncode == 0, done.stderr
  (srun,) = cloud.calls("srun")
  assert srun["env"]["SRUN_CPUS_PER_TASK"] == "12"  # srun >= 22.05 reads this, not SLURM_CPUS_PER_TASK
  assert srun["argv"][-4:] == ["--distributed=on", "--config=configs/x.py", "--workdir=/shared/runs/x",
                               "--config.data.num_threads=12"]
  assert srun["cwd"] == str(tmp_path)
