"""Start-up shared by the launchers: compilation cache, and the distributed runtime when asked."""
import os

import jax


def setup_jax(cache_dir: str = "") -> None:
  """Persistent compilation cache on by default: a re-run or resume skips recompiling the step."""
  cache_dir = cache_dir or os.environ.get("AGE_JAX_COMPILATION_CACHE",
                                          os.path.expanduser("~/.cache/age_jax/jax_compilation"))
  if cache_dir != "off":
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
