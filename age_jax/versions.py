"""The JAX versions the multi-host path was tested with (pyproject.toml pins the cluster extras
to the same range). Outside it, launch.preflight says so; the preemption guard
(train/preemption.py) refuses to start when a public API it needs is missing."""
import re

import jax

# [lower, upper): the cluster extras in pyproject.toml pin jax[tpu] / jax[cuda12] to this range.
TESTED_JAX = ("0.10.2", "0.11")


def _parse(version: str) -> tuple[int, ...]:
  return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def jax_version_problem(version: str | None = None) -> str | None:
  """A one-line problem when the JAX version is outside TESTED_JAX, else None."""
  version = version or jax.__version__
  low, high = TESTED_JAX
  if _parse(low) <= _parse(version) < _parse(high):
    return None
  return (f"jax {version} is outside the tested range >={low},<{high}: multi-host start-up and the "
          f"preemption sync point are tested there only; install it with pip install -e '.[tpu]' "
          f"(or '.[cuda]'), which pins jax>={low},<{high}")
