"""The workdir path layer (age_jax/storage.py): a gs:// workdir on an in-memory bucket, a gcsfuse
mount that refuses directory renames, and the multi-host shared-workdir check.

The in-memory bucket is an fsspec filesystem registered for the gcs protocol, so gs:// paths take
the same etils.epath -> fsspec route as with gcsfs on a real bucket: it shows that no file of the
workdir is written with `open` or made a local path. It does not show GCS's own consistency or
latency, nor orbax's array writes to gs:// (those go through tensorstore's own GCS driver), nor
the GCS API calls orbax makes itself (google-cloud-storage, stubbed here).
"""
import errno
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from orbax.checkpoint._src.path import gcs_utils

from age_jax import checkpoint, config as config_lib, report, storage
from age_jax.data import run_data
from age_jax.train.logger import MetricLogger
from launch import local_cluster
from tests.distributed import fake_cloud

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  """The in-memory gs:// bucket of tests/distributed/fake_cloud.py (every permission granted)."""
  monkeypatch.chdir(tmp_path)  # a gs:// path made local would appear here as ./gs:/...
  yield fake_cloud.install_fake_bucket(monkeypatch=monkeypatch)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  assert not os.path.exists(tmp_path / "gs:")


def test_paths_keep_uris_and_make_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", "/home/me")
  assert str(storage.path("gs://bucket/runs/x")) == "gs://bucket/runs/x"
  assert str(storage.path("runs/x")) == str(tmp_path / "runs" / "x")
  assert str(storage.path("~/runs/x")) == "/home/me/runs/x"


def test_a_gs_workdir_keeps_config_mean_image_metrics_and_reports_in_the_bucket(bucket, monkeypatch):
  workdir = "gs://bucket/runs/x"
  cfg = ml_collections.ConfigDict({"data": {"normalize": "none"}, "seed": 3})
  config_lib.save(cfg, workdir)
  assert json.loads(bucket.store["/bucket/runs/x/config.json"].getvalue())["seed"] == 3
  assert config_lib.load(workdir).seed == 3

  mean = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
  storage.save_npy(f"{workdir}/{run_data.MEAN_IMAGE_FILE}", mean)
  np.testing.assert_array_equal(storage.load_npy(f"{workdir}/{run_data.MEAN_IMAGE_FILE}"), mean)

  logger = MetricLogger(workdir, total_steps=2, examples_per_step=4, steps_per_epoch=1)
  logger.write(1, {"loss": 2.5})
  logger.write(2, {"loss": 1.5})
  logger.close()
  again = MetricLogger(workdir, total_steps=3, examples_per_step=4, steps_per_epoch=1)  # a resume appends
  again.write(3, {"loss": 1.0})
  lines = bucket.store["/bucket/runs/x/metrics.jsonl"].getvalue().decode().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]

  result = report.evaluation_report(np.array([30.0, 41.0]), np.array([31, 40]))
  written = report.write_report(result, f"{workdir}/eval/test")
  assert all(p.startswith("gs://bucket/runs/x/eval/test/") for p in written)
  assert bucket.store["/bucket/runs/x/eval/test/ccs.png"].getvalue()[:4] == b"\x89PNG"
  assert report.load_report(f"{workdir}/eval/test")["mae"] == pytest.approx(1.0)
  assert not [k for k in bucket.store if k.endswith(".tmp")]  # objects are written whole, no renames

  # orbax asks the GCS API whether the bucket has a hierarchical namespace; this one is flat.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  ckpt = checkpoint.Checkpointer(workdir)
  assert str(ckpt.directory) == "gs://bucket/runs/x/checkpoints" and ckpt.latest_step() is None


def _refuse_directory_renames(monkeypatch):
  """A gcsfuse mount of a flat bucket: renaming a directory fails with ENOTSUP; files rename."""
  for name in ("rename", "replace"):
    real = getattr(os, name)
    def refuse(src, dst, *args, _real=real, **kwargs):
      if os.path.isdir(src):
        raise OSError(errno.ENOTSUP, "Operation not supported", str(src))
      return _real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, name, refuse)


def _mounts(tmp_path, fstype):
  mounts = tmp_path / "mounts"
  mounts.write_text(f"/dev/root / ext4 rw 0 0\nbucket {tmp_path}/mnt\\040point {fstype} rw,nosuid 0 0\n")
  return str(mounts)


def test_filesystem_type_is_the_longest_mount_point_above_the_path(tmp_path):
  mounts = _mounts(tmp_path, "fuse.gcsfuse")
  assert storage.filesystem_type(f"{tmp_path}/mnt point/runs/x", mounts) == "fuse.gcsfuse"
  assert storage.filesystem_type(f"{tmp_path}/mnt pointless", mounts) == "ext4"
  assert not storage.renames_are_atomic(f"{tmp_path}/mnt point/runs/x", mounts)
  assert storage.renames_are_atomic(f"{tmp_path}/elsewhere", mounts)
  assert not storage.renames_are_atomic("gs://bucket/x", mounts)


@pytest.mark.parametrize("fstype, works", [("fuse.gcsfuse", True), ("ext4", False)])
def test_checkpoints_on_a_gcsfuse_mount_finalise_without_renaming_a_directory(tmp_path, monkeypatch, fstype,
                                                                               works):
  monkeypatch.setattr(storage, "MOUNTS_FILE", _mounts(tmp_path, fstype))
  _refuse_directory_renames(monkeypatch)
  workdir = f"{tmp_path}/mnt point/runs/x"
  state = {"w": jnp.arange(6, dtype=jnp.float32), "step": jnp.int32(4)}
  ckpt = checkpoint.Checkpointer(workdir)
  if not works:  # the same refusal breaks the rename-based finalisation (this test can fail)
    with pytest.raises(OSError, match="Operation not supported"):
      ckpt.save(4, state)
      ckpt.wait()
    return
  ckpt.save(4, state)
  ckpt.wait()
  assert os.path.isfile(f"{workdir}/checkpoints/4/commit_success.txt")
  again = checkpoint.Checkpointer(workdir)
  assert again.latest_step() == 4
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  np.testing.assert_array_equal(again.restore(abstract)["w"], state["w"])


_SHARED_CHECK = """
import os, sys
from age_jax import distributed, storage
distributed.initialize()
i = int(os.environ["AGE_JAX_PROCESS_ID"])
storage.check_shared(sys.argv[1])                     # one folder for both: accepted
try:
  storage.check_shared(os.path.join(sys.argv[1], f"host{i}"))   # each its own: refused
except ValueError as e:
  print("REFUSED", e, flush=True)
"""


def test_a_workdir_local_to_each_host_is_refused_on_every_process(tmp_path):
  results = local_cluster.run([sys.executable, "-c", _SHARED_CHECK, str(tmp_path)], 2, 1, timeout_s=120,
                              cwd=REPO)
  for r in results:
    assert r.returncode == 0, r.output[-3000:]
    assert f"REFUSED --workdir={tmp_path}/host{r.process_id} is not shared by all 2 processes: " \
           "process(es) [1] do not see the file process 0 wrote there" in r.output
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".age_jax_shared")]  # the markers are removed


def test_init_from_reads_a_gs_workdirs_checkpoints(bucket, monkeypatch):
  from age_jax.train import init_from
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  storage.write_text("gs://bucket/pretrain/config.json", "{}")
  (storage.path("gs://bucket/pretrain") / "checkpoints").mkdir(parents=True)
  # Taken as a workdir (not "does not exist"): orbax is asked for its checkpoints, and it has none.
  with pytest.raises(FileNotFoundError, match="no checkpoint in gs://bucket/pretrain/checkpoints"):
    init_from.load_variables("gs://bucket/pretrain", {"params": {}}, "resnet18")
