"""The XLA compiler options the CPU lowerings need, passed by every jit that runs a model built
with them (Experiment.jit_train_step / jit_predict_step, launch.bench.benchmark, launch.bench.bench_conv;
they read them off models.get_lowering(...).compiler_options).

On CPU, XLA hands convolutions and elementwise fusions to its YNNPACK library by default, whose
convolutions are slower than XLA's own (Eigen) on large maps, so under 'hybrid' and 'onednn'
YNNPACK is kept for single matmuls and reductions only (figures: BENCHMARK_RECORDS.md, "Training
speed on the CPU"). Per-jit options, not XLA_FLAGS: a library user gets them without touching the
environment, and 'xla' keeps XLA's defaults for comparison.
"""
import functools

import jax

_CPU_LIBRARY_FUSIONS = "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
_CPU_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def _cpu_fusion_option_supported() -> bool:
  # An experimental XLA option: a jaxlib without it rejects it, and then we compile without.
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile({_CPU_FUSION_OPTION: _CPU_LIBRARY_FUSIONS})
    return True
  except Exception:  # noqa: BLE001 (XLA raises several types for an unknown option)
    return False


def compiler_options(lowering: str) -> dict | None:
  """XLA compiler options for jits that run a model built with the CPU lowering `lowering`
  (None: XLA's defaults)."""
  if lowering not in ("hybrid", "onednn") or jax.default_backend() != "cpu":
    return None
  return {_CPU_FUSION_OPTION: _CPU_LIBRARY_FUSIONS} if _cpu_fusion_option_supported() else None
