"""Start-up logic without a cluster: which environment asks for jax.distributed, the argument
errors and the local N-process launcher (the cluster scripts: test_cluster_scripts.py)."""
import os
import subprocess
import sys
import time

import jax
import pytest

from age_jax import distributed
from launch import local_cluster

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_SLURM_STEP = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16",
               "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}


@pytest.mark.parametrize("environ, expected", [
    (_SLURM_STEP, "slurm"),
    ({**_SLURM_STEP, "SLURM_NTASKS": "1"}, None),                     # one task: nothing to join
    ({k: v for k, v in _SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, None),  # salloc shell, no srun
    ({"OMPI_MCA_orte_hnp_uri": "1.2.3.4:5", "OMPI_COMM_WORLD_SIZE": "4"}, "ompi"),
    ({"OMPI_MCA_orte_hnp_uri": "1.2.3.4:5", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({}, None),
])
def test_detect_cluster(environ, expected):
  assert distributed.detect_cluster(environ) == expected


@pytest.fixture
def clean_env(monkeypatch):
  for key in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
              *_SLURM_STEP, "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(key, raising=False)
  return monkeypatch


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(coordinator_address="10.0.0.1:1234"), ValueError, "given without --num_processes and --process_id"),
    (dict(coordinator_address="10.0.0.1", num_processes=2, process_id=0), ValueError, "expected HOST:PORT"),
    (dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=2), ValueError,
     "--process_id=2 with --num_processes=2"),
    (dict(num_processes=2, process_id=1), ValueError, "need --coordinator_address"),
    (dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=0, mode="off"), ValueError,
     "--distributed=off but a coordinator address"),
    (dict(mode="on"), RuntimeError, "no SLURM, Open MPI or Cloud TPU cluster was detected"),
    (dict(mode="sometimes"), ValueError, r"--distributed='sometimes'; expected one of"),
])
def test_bad_start_up_arguments_are_named(clean_env, kwargs, error, message):
  with pytest.raises(error, match=message):
    distributed.initialize(**kwargs)


def test_environment_variables_are_read_and_a_cluster_of_one_needs_no_runtime(clean_env):
  clean_env.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:1234")
  clean_env.setenv(distributed.ENV_NUM_PROCESSES, "two")
  with pytest.raises(ValueError, match="AGE_JAX_NUM_PROCESSES='two'; expected an integer"):
    distributed.initialize()
  clean_env.setenv(distributed.ENV_NUM_PROCESSES, "1")
  clean_env.setenv(distributed.ENV_PROCESS_ID, "0")
  assert distributed.initialize() is False
  assert distributed.initialize(mode="auto") is False  # nothing in the environment either: single process
  clean_env.delenv(distributed.ENV_COORDINATOR)
  clean_env.delenv(distributed.ENV_NUM_PROCESSES)
  clean_env.delenv(distributed.ENV_PROCESS_ID)
  assert distributed.initialize() is False


def test_initialising_after_devices_are_in_use_says_so(clean_env):
  jax.devices()  # the backend is up, as after any computation
  with pytest.raises(RuntimeError, match="must run before anything touches JAX devices"):
    distributed.initialize("127.0.0.1:1234", 2, 0)


def test_local_cluster_gives_each_process_its_identity_and_stops_the_rest_on_failure():
  script = ("import os, sys, time\n"
            "i = int(os.environ['AGE_JAX_PROCESS_ID'])\n"
            "print(os.environ['AGE_JAX_COORDINATOR'], os.environ['AGE_JAX_NUM_PROCESSES'], i,\n"
            "      os.environ['XLA_FLAGS'], flush=True)\n"
            "if i == 1: sys.exit(3)\n"
            "time.sleep(60)\n")
  start = time.monotonic()
  results = local_cluster.run([sys.executable, "-c", script], 3, 4, timeout_s=50)
  assert time.monotonic() - start < 20  # not the 60 s process 0 and 2 would sleep
  assert results[1].returncode == 3
  assert results[0].returncode not in (0, 3, None) and results[2].returncode not in (0, 3, None)
  coordinators = set()
  for r in results:
    address, n, i, flags = r.output.split()
    coordinators.add(address)
    assert (n, i, flags) == ("3", str(r.process_id), "--xla_force_host_platform_device_count=4")
  assert len(coordinators) == 1 and coordinators.pop().startswith("127.0.0.1:")


def test_local_cluster_time_limit_stops_everything():
  results = local_cluster.run([sys.executable, "-c", "import time; time.sleep(60)"], 2, 1, timeout_s=2)
  assert [r.returncode for r in results] == [None, None]


def test_tpu_chips_are_told_from_other_google_pci_devices(tmp_path):
  def device(name, vendor, device_id):
    (tmp_path / name).mkdir()
    (tmp_path / name / "vendor").write_text(vendor + "\n")
    (tmp_path / name / "device").write_text(device_id + "\n")
  device("0000:00:04.0", "0x1ae0", "0x0042")  # gVNIC, the network card of GCP VMs (GPU VMs too)
  device("0000:00:05.0", "0x10de", "0x2330")  # an NVIDIA H100
  assert not distributed.pci_has_tpu(str(tmp_path))
  device("0000:00:06.0", "0x1ae0", "0x0063")  # a TPU v5e chip
  assert distributed.pci_has_tpu(str(tmp_path))


@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_GPUS_ON_NODE": "8"}, ("gpu", "SLURM_GPUS_ON_NODE=8")),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, ("gpu", "CUDA_VISIBLE_DEVICES=0,1")),
    ({"CUDA_VISIBLE_DEVICES": "", "SLURM_GPUS_ON_NODE": "0"}, None),   # no GPUs given: a CPU job
    ({}, None),
])
def test_expected_accelerator_reads_the_schedulers_gpu_variables(environ, expected):
  assert distributed.expected_accelerator(environ) == expected


def test_a_slurm_gpu_job_on_a_cpu_only_jax_is_refused_on_every_process(tmp_path):
  # Two tasks of a fake SLURM step on this host: JAX's own SLURM detection connects them, then
  # the GPUs SLURM says it gave do not match the CPU backend.
  job_id = str(os.getpid() % 1000 + 1000)
  script = "from age_jax import distributed; distributed.initialize(mode='on', timeout_s=60)"
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_", "AGE_JAX_"))}
  procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**base, "SLURM_JOB_ID": job_id, "SLURM_STEP_NODELIST": "localhost",
                                            "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                            "SLURM_GPUS_ON_NODE": "2", "JAX_PLATFORMS": "cpu"})
           for i in range(2)]
  outputs = [p.communicate(timeout=90)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 1, out
    assert "was given GPUs (SLURM_GPUS_ON_NODE=2) but JAX's backend is 'cpu'" in out
    assert "pip install -e '.[cuda]'" in out
