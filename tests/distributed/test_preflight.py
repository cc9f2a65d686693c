"""launch.preflight and the checks behind it (age_jax/preflight.py, pod_types.py, versions.py):
the documented config / pod-type pairings against the pods' device counts, every workdir call
against a fake gs:// bucket that denies one permission at a time, the JAX range, and an
unreachable coordinator. No devices beyond this host's CPU; no cloud."""
import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

from age_jax import pod_types, preflight, versions
from launch import local_cluster
from tests.distributed import fake_cloud

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every config / cluster pairing the docs give as an example. Keep in sync with README.md and
# docs/cluster.md: test_the_docs_name_only_pairs_that_fit scans them for `tpu_pod.sh create TYPE` ... `--config=FILE` and checks those too.
DOCUMENTED = [
    # (where, TPU type or (devices, processes) of a GPU job, config file, overrides)
    ("README TPU pod example", "v5litepod-16", "configs/xing_baseline_mse.py", {}),
    ("docs/cluster.md v4-32", "v4-32", "configs/xing_baseline_mse.py", {}),
    ("docs/cluster.md v5litepod-16", "v5litepod-16", "configs/xing_baseline_mse.py", {}),
    ("docs/cluster.md 2 x 8 H100 SLURM", (16, 16), "configs/xing_baseline_mse.py", {}),
    ("docs/cluster.md LAE on v4-32", "v4-32", "configs/lae_resnet18_baseline.py", {}),
]


def _config(path, overrides=()):
  module = path[:-3].replace("/", ".")  # as --config=FILE loads it: the file's get_config()
  cfg = importlib.import_module(module).get_config()
  for key, value in dict(overrides).items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def _devices(target):
  if isinstance(target, tuple):
    return target
  pod = pod_types.parse(target)
  return pod.num_devices, pod.num_hosts


@pytest.mark.parametrize("name, devices, hosts", [
    ("v4-32", 16, 4), ("v4-8", 4, 1), ("v5litepod-16", 16, 4), ("v5e-16", 16, 4), ("v5litepod-256", 256, 64),
    ("v5litepod-8", 8, 1), ("v5p-128", 64, 16), ("v6e-64", 64, 16), ("v6e-8", 8, 1), ("v3-32", 32, 4),
    ("v2-8", 8, 1), ("V5LITEPOD-4", 4, 1)])
def test_pod_types_give_devices_and_hosts(name, devices, hosts):
  pod = pod_types.parse(name)
  assert (pod.num_devices, pod.num_hosts) == (devices, hosts)
  assert pod.name == name.lower().replace("v5e-", "v5litepod-")


@pytest.mark.parametrize("name", ["v9-8", "v4-30", "v5litepod-18", "tpu-v4-32", "v4"])
def test_unknown_pod_types_are_named(name):
  with pytest.raises(ValueError, match=f"accelerator type '{name}'"):
    pod_types.parse(name)


@pytest.mark.parametrize("where, target, config, overrides", DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_every_documented_example_fits_its_cluster(where, target, config, overrides):
  devices, processes = _devices(target)
  assert preflight.batch_problems(_config(config, overrides), devices, processes) == []


def test_the_old_readme_pod_example_is_refused_with_the_fix_named():
  # v5litepod-256 with the Xing baseline: 128 images over 256 devices, the first thing a pod run hit.
  (problem,) = preflight.batch_problems(_config("configs/xing_baseline_mse.py"), 256, 64, "v5litepod-256")
  assert problem == ("config.train.batch_size=128 is not divisible by the 256 devices on v5litepod-256; use a "
                     "multiple of 256 (e.g. 256) or fewer devices")


def test_stage_batches_eval_batches_and_the_mesh_are_each_named():
  cfg = _config("configs/lae_resnet18_baseline.py", {"eval.batch_size": 100, "mesh.fsdp": 3,
                                                     "data.val_split": "validation"})
  problems = preflight.batch_problems(cfg, 16, 4)
  assert problems[0] == "config.mesh.fsdp=3 does not divide the 16 available devices"
  assert any(p.startswith("config.stages.stage1_representation.eval.batch_size=100 is not divisible by the 16 "
                          "devices; use a multiple of 16 (e.g. 96 or 112)") for p in problems)
  assert not any("train.batch_size" in p for p in problems)      # 256 / 16 fits
  assert len(problems) == 3  # the mesh, and each stage's eval batch once


def _doc_pairs():
  """(file, TPU type, config) for every code block of README.md and docs/*.md that creates a pod
  and trains or checks a config on it."""
  pairs = []
  for path in [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]:
    blocks, current = [], None
    for line in open(path):
      if line.lstrip().startswith("```") and current is None:  # a fence opens a block, whatever its language
        current = []
      elif line.lstrip().startswith("```"):
        blocks.append("".join(current))
        current = None
      elif current is not None:
        current.append(line)
    for block in blocks:
      types = re.findall(r"tpu_pod\.sh create (\S+)", block) + re.findall(r"--accelerator=(\S+)", block)
      configs = re.findall(r"--config=(configs/\S+\.py)", block)
      pairs += [(os.path.relpath(path, REPO), t, c) for t in types for c in configs]
  return pairs



def test_the_docs_name_only_pairs_that_fit():
  pairs = _doc_pairs()
  assert pairs, "no `tpu_pod.sh create TYPE` ... `--config=...` example found in README.md or docs/"
  bad = {}
  for where, target, config in pairs:
    pod = pod_types.parse(target)
    problems = preflight.batch_problems(_config(config), pod.num_devices, pod.num_hosts)
    if problems:
      bad[(where, target, config)] = problems
  assert bad == {}
  documented = {(pod_types.parse(t).name, c) for _, t, c, o in DOCUMENTED if isinstance(t, str) and not o}
  assert {(pod_types.parse(t).name, c) for _, t, c in pairs} <= documented


# --- the workdir probes on a fake bucket -----------------------------------------------------------

@pytest.fixture
def bucket(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # a gs:// path made local would appear here as ./gs:/...
  yield lambda denied=(): fake_cloud.install_fake_bucket(denied, monkeypatch)
  assert not os.path.exists(tmp_path / "gs:")


def test_a_bucket_that_allows_every_call_passes_and_keeps_nothing_of_the_probe(bucket):
  fake = bucket()
  assert preflight.workdir_problems("gs://bucket/runs/x") == []
  assert [k for k in fake.store if ".age_jax_preflight/" in k and k.endswith((".txt", ".renamed"))] == []


@pytest.mark.parametrize("permission, call, role", [
    ("storage.buckets.get", "bucket metadata", "roles/storage.legacyBucketReader"),
    ("storage.objects.list", "list", "roles/storage.objectViewer"),
    ("storage.objects.create", "write", "roles/storage.objectCreator"),
    ("storage.objects.get", "read", "roles/storage.objectViewer"),
    ("storage.objects.delete", "rename", "roles/storage.objectUser"),
])
def test_each_missing_permission_is_named_with_the_call_and_a_role_that_grants_it(bucket, permission, call, role):
  bucket({permission})
  problems = preflight.workdir_problems("gs://bucket/runs/x", "process 1/4")
  assert problems[0].startswith(f"process 1/4: {call} on gs://bucket/runs/x denied: missing permission {permission} ")
  assert role in problems[0]
  # A rename on GCS is a copy and a delete: a missing read permission fails it too, named the same.
  assert len(problems) == (2 if permission == "storage.objects.get" else 1)
  assert all(f"missing permission {permission} " in p for p in problems)


def test_a_denied_bucket_lookup_is_what_orbax_latest_step_hits(bucket):
  # The failure the probe predicts: orbax's own latest_step() on the same bucket.
  from age_jax import checkpoint
  bucket({"storage.buckets.get"})
  with pytest.raises(fake_cloud.Forbidden, match="storage.buckets.get"):
    checkpoint.Checkpointer("gs://bucket/runs/x").latest_step()
  bucket()
  assert checkpoint.Checkpointer("gs://bucket/runs/x").latest_step() is None


def test_a_local_workdir_that_cannot_be_made_is_named(tmp_path):
  (tmp_path / "file").write_text("")
  (problem,) = preflight.workdir_problems(str(tmp_path / "file" / "run"))
  assert problem.startswith(f"write on {tmp_path}/file/run failed: NotADirectoryError: ")
  assert preflight.workdir_problems(str(tmp_path / "fresh" / "run")) == []
  assert os.listdir(tmp_path / "fresh" / "run" / ".age_jax_preflight") == []


@pytest.mark.parametrize("version, ok", [("0.10.2", True), ("0.10.9", True), ("0.10.1", False), ("0.11.0", False),
                                         ("0.11.0.dev20261201", False), ("0.10.3+cuda", True)])
def test_the_tested_jax_range(version, ok):
  problem = versions.jax_version_problem(version)
  assert (problem is None) == ok
  if not ok:
    assert problem.startswith(f"jax {version} is outside the tested range >=0.10.2,<0.11")


def test_the_cluster_extras_pin_the_tested_range():
  import tomllib
  extras = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]["optional-dependencies"]
  low, high = versions.TESTED_JAX
  for name in ("tpu", "cuda", "cuda13"):
    (jax_req,) = [r for r in extras[name] if r.startswith("jax[")]
    assert jax_req.endswith(f">={low},<{high}"), (name, jax_req)


# --- the command ---------------------------------------------------------------------------------

def _preflight(*args, denied="", timeout=120):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AGE_JAX_", "OMPI_"))}
  env.update(FAKE_GCS_DENIED=denied, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tests.distributed.fake_cloud", "launch.preflight", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


def test_preflight_on_a_bucket_without_buckets_get_names_it_and_fails():
  done = _preflight("--workdir=gs://bucket/runs/x", "--config=configs/xing_baseline_mse.py", denied="storage.buckets.get")
  assert done.returncode == 1, done.stderr
  lines = done.stdout.splitlines()
  assert lines[0].startswith("preflight PROBLEM: bucket metadata on gs://bucket/runs/x denied: missing permission "
                             "storage.buckets.get (orbax's latest_step() looks the bucket up")
  assert "Storage Object Admin does NOT grant it" in lines[0]
  assert lines[-1].startswith("preflight 1 problem(s); checked: jax version; coordinator and batch sizes")
  print(done.stdout)  # the notes quote this output


@pytest.mark.slow  # two more preflight processes
def test_preflight_names_a_batch_the_pod_type_cannot_split_without_devices():
  done = _preflight("--config=configs/xing_baseline_mse.py", "--accelerator=v5litepod-256")
  assert done.returncode == 1
  assert "config.train.batch_size=128 is not divisible by the 256 devices on v5litepod-256 (256 devices, 64 hosts)" \
      in done.stdout
  done = _preflight("--config=configs/xing_baseline_mse.py", "--accelerator=v5e-16")
  assert done.returncode == 0, done.stdout + done.stderr
  assert done.stdout.strip() == "preflight OK; checked: jax version; batch sizes on v5litepod-16 (16 devices, 4 hosts)"


@pytest.mark.slow  # one more preflight process
def test_preflight_names_an_unreachable_coordinator():
  port = local_cluster.free_port()  # nothing listens there
  done = _preflight(f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
                    "--distributed_timeout=2", "--config=configs/xing_baseline_mse.py")
  assert done.returncode == 1, done.stdout + done.stderr
  assert (f"preflight PROBLEM: joining the run failed: process 1 of 2: the coordinator at 127.0.0.1:{port} did not "
          "answer within 2s") in done.stdout
