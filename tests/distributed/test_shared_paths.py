"""Paths every host of a run must agree on: pretrained weights read through the storage layer
(gs:// or a local copy per host), TensorBoard under the expanded workdir, the compilation cache
in the shared workdir, and the workdir-access check training runs before any long work."""
import os

import jax
import numpy as np
import pytest

from age_jax import storage
from age_jax.models import pretrained
from age_jax.models.resnet import resnet
from age_jax.train import init_from
from age_jax.train.logger import MetricLogger
from launch import common
from tests.distributed import fake_cloud
from tests.models.test_pretrained import _random_like, _zeros


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # a gs:// path made local would appear here as ./gs:/...
  yield lambda denied=(): fake_cloud.install_fake_bucket(denied, monkeypatch)
  assert not os.path.exists(tmp_path / "gs:")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_init_from_reads_a_state_dict_in_a_bucket(bucket, suffix):
  import io
  from safetensors.numpy import save
  bucket()
  source = _random_like(_zeros(resnet("resnet18", num_outputs=1), 32))
  state = pretrained.export_state_dict(source, "resnet18")
  if suffix == ".npz":
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    data = buffer.getvalue()
  else:
    data = save(state)
  storage.write_bytes(f"gs://bucket/weights/r18{suffix}", data)
  target = _zeros(resnet("resnet18", num_outputs=1), 32)
  loaded, summary = init_from.load_variables(f"gs://bucket/weights/r18{suffix}", target, "resnet18")
  np.testing.assert_array_equal(loaded["params"]["layer3_1"]["conv2"]["kernel"],
                                source["params"]["layer3_1"]["conv2"]["kernel"])
  np.testing.assert_array_equal(loaded["params"]["age_head"]["kernel"], 0)  # the head stays fresh
  assert summary.startswith(f"init_from gs://bucket/weights/r18{suffix}: the resnet18 backbone loaded")


def test_a_state_dict_missing_on_this_host_is_named(bucket, monkeypatch):
  bucket()
  target = {"params": {}}
  with pytest.raises(FileNotFoundError, match=r"init_from='gs://bucket/nope.safetensors' does not exist \(a workdir"):
    init_from.load_variables("gs://bucket/nope.safetensors", target, "resnet18")
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  monkeypatch.setattr(jax, "process_index", lambda: 2)
  with pytest.raises(FileNotFoundError, match=r"does not exist on process 2 \(host .*\); copy it to every host "
                                              r"\(launch/tpu_pod.sh data FILE\) or give a gs:// path"):
    init_from.load_variables("/nowhere/r18.safetensors", target, "resnet18")


def test_tensorboard_files_go_under_the_expanded_workdir(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  logger = MetricLogger("~/runs/x", total_steps=2, examples_per_step=4, steps_per_epoch=1)
  logger.write(1, {"loss": 2.0})
  logger.close()
  assert os.listdir(tmp_path / "home" / "runs" / "x" / "tensorboard")
  assert not os.path.exists(tmp_path / "~")


def test_a_multi_process_run_keeps_its_compilation_cache_in_the_shared_workdir(monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.delenv("AGE_JAX_COMPILATION_CACHE", raising=False)
  try:
    common.share_compilation_cache("gs://bucket/runs/x")   # one process: its own cache stays
    assert jax.config.jax_compilation_cache_dir == before
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    common.share_compilation_cache("gs://bucket/runs/x")
    assert jax.config.jax_compilation_cache_dir == "gs://bucket/runs/x/jax_compilation_cache"
    jax.config.update("jax_compilation_cache_dir", before)
    monkeypatch.setenv("AGE_JAX_COMPILATION_CACHE", "/shared/cache")  # the user's choice wins
    common.share_compilation_cache("gs://bucket/runs/x")
    assert jax.config.jax_compilation_cache_dir == before
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_training_stops_before_any_work_when_the_bucket_denies_a_call(bucket, capsys):
  bucket({"storage.buckets.get"})
  with pytest.raises(SystemExit) as stopped:
    common.require_workdir_access("gs://bucket/runs/x")
  assert stopped.value.code == 1
  err = capsys.readouterr().err
  assert "workdir check: bucket metadata on gs://bucket/runs/x denied: missing permission storage.buckets.get" in err
  bucket()
  common.require_workdir_access("gs://bucket/runs/x")  # allowed: returns
