"""Convolutions on oneDNN's CPU kernels, called from XLA through its FFI (kernels/onednn_conv.cc).

XLA's CPU backend computes convolution weight gradients at 8-9 GFLOP/s on large maps of an AVX2
CPU; oneDNN's direct kernels (the library PyTorch uses on CPU) run them at 40-55, and its forward
and input-gradient kernels match or beat XLA's (BUILD_NOTES.md). The C++ handlers are compiled
once per machine with the system C++ compiler against jaxlib's FFI headers and the oneDNN wheels
(`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`; a dependency on Linux x86-64), cached under
$AGE_JAX_KERNEL_CACHE (default ~/.cache/age_jax/kernels), and registered as XLA CPU custom calls.
Where any of that is missing, `unavailable_reason()` says why and layers.py falls back to XLA.
"""
import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import site
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

_SOURCE = pathlib.Path(__file__).parent / "kernels" / "onednn_conv.cc"
_TARGETS = {"forward": "OnednnConvForward", "backward_data": "OnednnConvBackwardData",
            "backward_weights": "OnednnConvBackwardWeights"}
_TARGET_PREFIX = "age_jax_"
_lock = threading.Lock()


def _onednn_root() -> pathlib.Path | None:
  """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so (pip installs the wheels' data there)."""
  candidates = [os.environ.get("ONEDNN_ROOT"), sys.prefix, site.getuserbase()]
  for root in filter(None, candidates):
    root = pathlib.Path(root)
    if (root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists() and (root / "lib" / "libdnnl.so").exists():
      return root
  return None


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("AGE_JAX_KERNEL_CACHE", pathlib.Path.home() / ".cache" / "age_jax" / "kernels"))


def _build(root: pathlib.Path) -> pathlib.Path:
  """Compiles the handlers (once; ~10 s) into the cache, keyed by source, jaxlib and oneDNN."""
  include = jax.ffi.include_dir()
  key = hashlib.sha256(_SOURCE.read_bytes() + f"{jax.__version__}|{include}|{root}".encode()).hexdigest()[:16]
  target = _cache_dir() / f"onednn_conv_{key}.so"
  if target.exists():
    return target
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set CXX or install g++)")
  target.parent.mkdir(parents=True, exist_ok=True)
  # Build to a temporary name and rename: concurrent processes never load a half-written file.
  with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
    partial = pathlib.Path(tmp.name)
  command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}", f"-I{root / 'include'}",
             str(_SOURCE), "-o", str(partial), f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-ldnnl"]
  logging.info("Compiling the oneDNN convolution kernels: %s", " ".join(command))
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode:
    partial.unlink(missing_ok=True)
    raise RuntimeError(f"compiling {_SOURCE} failed:\n{result.stderr[-2000:]}")
  partial.replace(target)
  return target


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the handlers; None on success, else why they are unavailable."""
  if jax.default_backend() != "cpu":
    return f"oneDNN convolutions are for the CPU backend (this one is {jax.default_backend()!r})"
  root = _onednn_root()
  if root is None:
    return ("oneDNN not found: pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 "
            "(or set ONEDNN_ROOT to a prefix with include/oneapi/dnnl and lib/libdnnl.so)")
  # Idle OpenMP threads must sleep, not spin: they share the cores with XLA's own thread pool.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    with _lock:
      library = ctypes.CDLL(str(_build(root)))
    for target in _TARGETS.values():
      jax.ffi.register_ffi_target(_TARGET_PREFIX + target, jax.ffi.pycapsule(getattr(library, target)),
                                  platform="cpu")
  except (OSError, RuntimeError, AttributeError) as e:
    return f"oneDNN convolution kernels unavailable: {e}"
  return None


def unavailable_reason() -> str | None:
  """None when oneDNN convolutions can run here, else a sentence saying why not."""
  reason = _load()
  if reason is not None:
    _warn_once(reason)
  return reason


@functools.cache
def _warn_once(reason: str):
  logging.warning("%s; convolutions fall back to XLA's.", reason)


def _call(direction, out_shape, a, b, strides, pads):
  return jax.ffi.ffi_call(_TARGET_PREFIX + _TARGETS[direction], jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(
      a, b, strides=np.asarray(strides, np.int64), pads=np.asarray([p for pair in pads for p in pair], np.int64))


def _partitioned_op(direction, sharding_rule, weight_gradient=False):
  """`op(a, b, strides, pads, out_shape)` for one direction, as a custom_partitioning op: under a
  sharded jit every device runs oneDNN on its own slice of the batch (XLA cannot split an opaque
  custom call and would gather the whole batch onto every device). Activations keep their batch
  sharding, kernels are replicated, and the weight gradient is summed over the batch's mesh axes."""

  @functools.partial(custom_partitioning, static_argnums=(3, 4, 5))
  def partitioned(a, b, key, strides, pads, out_shape):
    del key
    return _call(direction, out_shape, a, b, strides, pads)

  def partition(strides, pads, out_shape, mesh, arg_shapes, result_shape):
    del result_shape
    spec = arg_shapes[0].sharding.spec
    batch_axes = spec[0] if len(spec) else None
    batch, replicated = NamedSharding(mesh, P(batch_axes)), NamedSharding(mesh, P())

    def lower(a, b, key):
      del key
      if not weight_gradient:
        return _call(direction, (a.shape[0], *out_shape[1:]), a, b, strides, pads)
      partial_sum = _call(direction, out_shape, a, b, strides, pads)
      return jax.lax.psum(partial_sum, batch_axes) if batch_axes else partial_sum

    if weight_gradient:
      return mesh, lower, replicated, (batch, batch, replicated)
    return mesh, lower, batch, (batch, replicated, replicated)

  sharding_rule = sharding_rule.replace(" ->", ", z ->")  # z: the key operand below
  factors = [f for f in sharding_rule.replace(",", " ").replace("->", " ").split() if f != "b"]
  partitioned.def_partition(partition, sharding_rule=sharding_rule,
                            reduction_factors=("b",) if weight_gradient else (),
                            need_replication_factors=tuple(dict.fromkeys(factors)))  # in order of appearance

  def op(a, b, strides, pads, out_shape):
    # The op's static arguments live in a Python callback XLA cannot see; this constant operand
    # spells them out in the program, so the persistent compilation cache (which ignores the
    # callback, see launch/common.py) never confuses two convolutions that differ only in them.
    key = np.asarray([list(_TARGETS).index(direction), *strides, *(p for pair in pads for p in pair),
                      *out_shape], np.int32)
    return partitioned(a, b, key, strides, pads, out_shape)
  return op


# Factors: b batch, (h, w) input map, (p, q) output map, (i, j) kernel taps, c / o channels in / out.
_forward = _partitioned_op("forward", "b h w c, i j c o -> b p q o")
_backward_data = _partitioned_op("backward_data", "b p q o, i j c o -> b h w c")
_backward_weights = _partitioned_op("backward_weights", "b h w c, b p q o -> i j c o", weight_gradient=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, strides, pads):
  """float32 NHWC x, HWIO kernel; `pads` ((top, bottom), (left, right)) must be exact: every
  padded row and column is read (layers.conv crops what a stride leaves unread)."""
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  out_shape = (n, (h + sum(pads[0]) - kh) // strides[0] + 1, (w + sum(pads[1]) - kw) // strides[1] + 1, cout)
  return _forward(x, kernel, strides, pads, out_shape)


def _conv_fwd(x, kernel, strides, pads):
  return conv(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  dx = _backward_data(dy, kernel, strides, pads, x.shape)
  dw = _backward_weights(x, dy, strides, pads, kernel.shape)
  return dx, dw


conv.defvjp(_conv_fwd, _conv_bwd)
