"""The CPU speed work: convolution and max-pooling lowerings for XLA's CPU backend, oneDNN's
kernels as XLA custom calls, and the compiler options and JAX setting they need.

  lowerings.py     'patches', 'hybrid', 'onednn': what they compute and where each runs what
  onednn.py        oneDNN's kernels as XLA FFI custom calls: build, load, ops; kernels/onednn_conv.cc
  xla_options.py   the XLA CPU compiler options of 'hybrid' and 'onednn'

models.get_lowering is the only way in, and only for a CPU lowering: 'xla', and 'auto' on GPU/TPU,
never import this package (tests/test_imports.py). It owns its settings: loading the oneDNN ops
sets the one global JAX option they need (onednn.py), so no launcher or test sets it.
"""
import functools

from age_jax.cpu import lowerings, onednn, xla_options
from age_jax.models import layers

_CONVOLUTIONS = {name: functools.partial(lowerings.conv, lowering=name) for name in lowerings.LOWERINGS}
_MAX_POOLS = {name: functools.partial(lowerings.max_pool, lowering=name) for name in lowerings.LOWERINGS}


def lowering(name: str) -> layers.Lowering:
  """The Lowering for config.model.conv_lowering `name`: a CPU lowering, or 'auto' on the CPU
  backend ('onednn' where its kernels build, else 'hybrid')."""
  if name == "auto":
    name = "hybrid" if onednn.unavailable_reason() else "onednn"
  elif name not in lowerings.LOWERINGS:
    raise ValueError(f"CPU conv lowering must be one of {lowerings.LOWERINGS} or 'auto', got {name!r}")
  elif name == "onednn" and onednn.unavailable_reason():
    raise ValueError(f"conv lowering 'onednn': {onednn.unavailable_reason()}")
  return layers.Lowering(name, _CONVOLUTIONS[name], _MAX_POOLS[name], xla_options.compiler_options(name))
