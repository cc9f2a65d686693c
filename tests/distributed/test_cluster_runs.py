"""The documented runs from an empty project to a trained, evaluated and exported model, step by
step against the fakes (tests/distributed/fake_cloud.py): a v4-32 and a v5litepod-16 with
launch/tpu_pod.sh, and a 2 x 8 GPU SLURM job with launch/slurm.sbatch, including the time limit
that saves, requeues and resumes. What each host or task would run is checked; the Python
commands themselves are tested elsewhere (training, evaluation, export on real small runs)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from age_jax import pod_types
from launch import preflight as preflight_cli
from tests.distributed.fake_cloud import FakeCloud

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.sh")
SLURM = os.path.join(REPO, "launch", "slurm.sbatch")
CONFIG = "configs/xing_baseline_mse.py"
WORKDIR = "gs://my-bucket/runs/x"


def _config():
  import importlib
  return importlib.import_module(CONFIG[:-3].replace("/", ".")).get_config()


@pytest.mark.parametrize("accelerator, runtime", [
    pytest.param("v4-32", "tpu-ubuntu2204-base", marks=pytest.mark.slow),  # the same path, 40 s more
    ("v5litepod-16", "v2-alpha-tpuv5-lite")])
def test_a_pod_from_an_empty_project_to_an_exported_model(tmp_path, accelerator, runtime):
  pod = pod_types.parse(accelerator)
  cloud = FakeCloud(tmp_path / "cloud")
  env = dict(TPU_NAME="age-pod", ZONE="us-central2-b", PROJECT="proj", FAKE_WORKERS=str(pod.num_hosts))

  def run(*args, ok=True):
    done = cloud.run(TPU_POD, *args, cwd=REPO, **env)
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done

  def host_runs(module):
    return [c for c in cloud.calls("venv-python") if c["argv"][:2] == ["-m", module]]

  # 0. Here, before creating anything: the config's batches fit the pod's devices and hosts.
  problems, _ = preflight_cli.run_checks(_config(), None, accelerator)
  assert problems == []
  # 1-2. The queued resource, until ACTIVE.
  run("create", accelerator)
  (create,) = [c["argv"] for c in cloud.calls("gcloud") if c["argv"][2:4] == ["queued-resources", "create"]]
  assert {f"--accelerator-type={accelerator}", f"--runtime-version={runtime}"} <= set(create)
  assert run("status").stdout.strip() == "ACTIVE"
  # 3. The checkout and a Python 3.11 venv with the pinned TPU jax on every host.
  run("setup")
  installs = [c for c in cloud.calls("uv") if c["argv"][:2] == ["pip", "install"]]
  assert len(installs) == pod.num_hosts and all(".[gcs,tpu]" in c["argv"] for c in installs)
  # 4. The images (a folder) and pretrained weights (a file) on every host.
  images = tmp_path / "local" / "UTKFace"
  images.mkdir(parents=True)
  (images / "30_0_0_x.jpg").write_bytes(b"jpeg")
  (tmp_path / "local" / "photos").mkdir()
  (tmp_path / "local" / "photos" / "a.jpg").write_bytes(b"jpeg")
  weights = tmp_path / "local" / "resnet18.safetensors"
  weights.write_bytes(b"weights")
  assert "--config.data.manual_dir=~/data/UTKFace" in run("data", str(images)).stdout
  run("data", str(tmp_path / "local" / "photos"))
  assert "--config.model.init_from=~/data/resnet18.safetensors" in run("data", str(weights)).stdout
  for worker in range(pod.num_hosts):
    home = cloud.home(worker)
    assert os.path.isfile(f"{home}/data/UTKFace/30_0_0_x.jpg") and os.path.isfile(f"{home}/data/resnet18.safetensors")
  # 5. Preflight on every host: permissions, coordinator, batch, JAX version.
  done = run("preflight", f"--config={CONFIG}", f"--workdir={WORKDIR}")
  assert "ran -m launch.preflight on w0" in done.stdout
  assert len(host_runs("launch.preflight")) == pod.num_hosts
  assert all(c["argv"][2:] == ["--distributed=on", f"--config={CONFIG}", f"--workdir={WORKDIR}"]
             for c in host_runs("launch.preflight"))
  # 6. Training on every host (in the background, surviving the ssh session).
  run("train", f"--config={CONFIG}", f"--workdir={WORKDIR}", "--config.data.manual_dir=~/data/UTKFace")
  trains = cloud.calls("venv-python", wait_for=3 * pod.num_hosts)
  trains = [c for c in trains if c["argv"][:2] == ["-m", "launch.train"]]
  assert sorted(c["env"]["HOME"] for c in trains) == sorted(cloud.home(w) for w in range(pod.num_hosts))
  # 7. Evaluation on every host, the report in the workdir; worker 0's output shown.
  done = run("evaluate", f"--workdir={WORKDIR}")
  assert "ran -m launch.evaluate on w0" in done.stdout
  evals = host_runs("launch.evaluate")
  assert len(evals) == pod.num_hosts and all(c["argv"][2:] == ["--distributed=on", f"--workdir={WORKDIR}"]
                                              for c in evals)
  # 8. Predictions for a folder copied to every host; process 0 writes the CSV in its home.
  run("predict", f"--workdir={WORKDIR}", "--folder=~/data/photos", "--out=~/predictions.csv")
  for c in host_runs("launch.predict"):
    home = c["env"]["HOME"]
    assert c["argv"][2:] == ["--distributed=on", f"--workdir={WORKDIR}", f"--folder={home}/data/photos",
                             f"--out={home}/predictions.csv"]
  # 9. Export on worker 0 alone, on its CPU, multi-host detection off on purpose.
  run("export", f"--workdir={WORKDIR}", "--out=~/age.jaxexport")
  (export,) = host_runs("launch.export")
  assert export["env"]["HOME"] == cloud.home(0) and export["env"]["JAX_PLATFORMS"] == "cpu"
  assert export["argv"][2:] == ["--distributed=off", f"--workdir={WORKDIR}", f"--out={cloud.home(0)}/age.jaxexport"]
  # 10. The artifact back here (the fake export wrote nothing: put what launch.export would).
  with open(os.path.join(cloud.home(0), "age.jaxexport"), "wb") as f:
    f.write(b"PK artifact")
  run("fetch", "~/age.jaxexport", str(tmp_path / "age.jaxexport"))
  assert (tmp_path / "age.jaxexport").read_bytes() == b"PK artifact"
  # 11. Release the TPU.
  run("delete")
  assert [c["argv"][2:5] for c in cloud.calls("gcloud")][-1] == ["queued-resources", "delete", "age-pod-qr"]


def test_a_pod_command_that_fails_on_one_host_fails_and_shows_each_hosts_end(tmp_path):
  cloud = FakeCloud(tmp_path)
  for worker in range(4):
    cloud.make_venv(worker, "3.11")
  done = cloud.run(TPU_POD, "evaluate", f"--workdir={WORKDIR}", TPU_NAME="age-pod", ZONE="z", FAKE_WORKERS="4",
                   FAKE_FAIL_HOME="w2")
  assert done.returncode != 0
  assert "ran -m launch.evaluate on w0" in done.stdout           # worker 0's log
  assert "evaluate failed on some host" in done.stderr and "fake failure" in done.stderr
  assert cloud.run(TPU_POD, "export", TPU_NAME="age-pod", ZONE="z").returncode == 2


# --- SLURM --------------------------------------------------------------------------------------

_JOB = dict(SLURM_CPUS_PER_TASK="12", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="8", SLURM_JOB_ID="77")


def test_the_sbatch_header_asks_for_the_signal_and_requeue():
  header = [line.strip() for line in open(SLURM) if line.startswith("#SBATCH")]
  assert "#SBATCH --signal=B:USR1@120" in header and "#SBATCH --requeue" in header


def test_a_slurm_time_limit_saves_then_requeues_the_job(tmp_path):
  cloud = FakeCloud(tmp_path)
  job = subprocess.Popen(["bash", SLURM, f"--config={CONFIG}", "--workdir=/shared/runs/x"], cwd=tmp_path,
                         env=cloud.env(SLURM_SUBMIT_DIR=str(tmp_path), FAKE_SRUN="wait", **_JOB),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert cloud.calls("srun", wait_for=1), "the training step did not start"
    time.sleep(0.3)  # the trap is set before srun starts; give the fake srun its SIGTERM handler
    job.send_signal(signal.SIGUSR1)  # what SLURM sends the batch script 120 s before the limit
    out, err = job.communicate(timeout=30)
  finally:
    if job.poll() is None:
      job.kill()
  assert job.returncode == 0, err
  (term,) = cloud.calls("srun-signal")
  assert term["signal"] == "SIGTERM"  # passed on to the training step, which saved and exited 143
  (requeue,) = cloud.calls("scontrol")
  assert requeue["argv"] == ["requeue", "77"]
  assert "checkpoint saved; requeueing job 77" in err


@pytest.mark.parametrize("ends, status", [("exit:0", 0), ("exit:1", 1), ("exit:143", 143)])
def test_a_slurm_job_that_ends_by_itself_is_not_requeued(tmp_path, ends, status):
  # 143 without the time-limit signal: someone stopped it (scancel, a preemption SLURM requeues itself).
  cloud = FakeCloud(tmp_path)
  done = cloud.run(SLURM, f"--config={CONFIG}", "--workdir=/shared/runs/x", FAKE_SRUN=ends,
                   SLURM_SUBMIT_DIR=str(tmp_path), **_JOB)
  assert done.returncode == status, done.stderr
  assert cloud.calls("scontrol") == []


@pytest.mark.slow  # two JAX processes
def test_preflight_in_a_two_task_slurm_step_joins_and_checks_on_every_task(tmp_path):
  # Two tasks of a fake SLURM step on this host: JAX's own SLURM detection connects them.
  job_id = str(os.getpid() % 1000 + 2000)
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_", "AGE_JAX_"))}
  command = [sys.executable, "-m", "launch.preflight", "--distributed=on", f"--workdir={tmp_path}/run",
             f"--config={CONFIG}", "--config.train.batch_size=3"]
  procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**base, "SLURM_JOB_ID": job_id, "SLURM_STEP_NODELIST": "localhost",
                                 "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                 "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})   # one CPU device each
           for i in range(2)]
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 1, out
    assert "preflight PROBLEM: config.train.batch_size=3 is not divisible by the 2 devices on this run's 2 devices" in out
    assert "checked: jax version; coordinator and batch sizes on this run's 2 cpu devices, 2 processes; workdir" in out
  assert os.listdir(tmp_path / "run" / ".age_jax_preflight") == []
