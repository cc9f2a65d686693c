"""The multi-host path reads no private JAX module, and a public API it needs that is missing or
switched off stops the run at start-up instead of falling back to per-process stops."""
import os
import re

import jax
import pytest
from jax.experimental import multihost_utils

from age_jax.train import preemption

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_no_module_of_the_package_or_the_launchers_reads_jax_private_modules():
  found = []
  for folder in ("age_jax", "launch"):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      for name in files:
        if name.endswith(".py"):
          text = open(os.path.join(root, name)).read()
          if re.search(r"\bjax\._src\b|from jax import _src", text):
            found.append(os.path.relpath(os.path.join(root, name), REPO))
  assert found == []


def test_a_single_process_stops_by_its_own_signal_handler():
  assert not jax.distributed.is_initialized()
  assert preemption.StopRequests().synced is False


@pytest.fixture
def joined(monkeypatch):
  """As after jax.distributed.initialize (without a second process to talk to)."""
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  return monkeypatch


def test_a_joined_run_stops_at_jaxs_preemption_sync_point(joined):
  assert preemption.StopRequests().synced is True


def test_a_jax_without_the_public_sync_point_refuses_to_start(joined):
  joined.delattr(multihost_utils, "reached_preemption_sync_point")
  with pytest.raises(RuntimeError, match=r"has no jax.experimental.multihost_utils.reached_preemption_sync_point.*"
                                         r"jax>=0\.10\.2,<0\.11"):
    preemption.StopRequests()


def test_a_switched_off_preemption_service_refuses_to_start(joined):
  jax.config.update("jax_enable_preemption_service", False)
  try:
    with pytest.raises(RuntimeError, match="jax_enable_preemption_service is off"):
      preemption.StopRequests()
  finally:
    jax.config.update("jax_enable_preemption_service", True)
