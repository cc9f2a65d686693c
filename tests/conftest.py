"""Test session setup: 8 fake CPU devices and a persistent compilation cache.

Set before JAX is imported anywhere, so every test sees the same 8 devices and
compiled functions are reused across test runs (compilation dominates test time).
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = os.environ.get(
    "AGE_JAX_TEST_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from absl import flags  # noqa: E402

# grain workers read absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def small_utk_folder(tmp_path_factory):
  """48 generated UTKFace-named faces (16 px, no release quirks) for short training runs."""
  from tests.data.fake_datasets import make_utkface_folder
  path = str(tmp_path_factory.mktemp("utk") / "UTKFace")
  make_utkface_folder(path, n=48, quirks=False, size=16)
  return path
