"""Convolutions and max pooling on oneDNN's CPU kernels, called from XLA through its FFI
(kernels/onednn_conv.cc); lowerings.py decides where they run.

XLA's CPU backend has no fast convolution weight gradient on AVX2 CPUs; oneDNN's direct kernels
(the library PyTorch uses on CPU) do, and its forward and input-gradient kernels match or beat
XLA's (figures: BENCHMARK_RECORDS.md, "Training speed on the CPU"). The C++ handlers are compiled
once per machine with the system C++ compiler against jaxlib's FFI headers and the oneDNN wheels
(`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`; a dependency on Linux x86-64), cached under
$AGE_JAX_KERNEL_CACHE (default ~/.cache/age_jax/kernels), and registered as XLA CPU custom calls.
Where any of that is missing, `unavailable_reason()` says why and 'auto' falls back to 'hybrid'.

The ops are custom_partitioning ops, which JAX's persistent compilation cache would key on a Python
pointer (never a hit): loading them sets jax_remove_custom_partitioning_ptr_from_cache_key, and
each op spells its static arguments out in the program instead (`_partitioned_op`).
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
_TARGETS = ("OnednnConvForward", "OnednnConvBackwardData", "OnednnConvBackwardWeights", "OnednnMaxPool",
            "OnednnMaxPoolBackward")
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
  """$AGE_JAX_KERNEL_CACHE, else ~/.cache/age_jax/kernels, else (a read-only home) the temp dir."""
  if "AGE_JAX_KERNEL_CACHE" in os.environ:
    return pathlib.Path(os.environ["AGE_JAX_KERNEL_CACHE"])
  home_cache = pathlib.Path.home() / ".cache" / "age_jax" / "kernels"
  try:
    home_cache.mkdir(parents=True, exist_ok=True)
    return home_cache
  except OSError:
    return pathlib.Path(tempfile.gettempdir()) / "age_jax_kernels"


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
    for target in _TARGETS:
      jax.ffi.register_ffi_target(_TARGET_PREFIX + target, jax.ffi.pycapsule(getattr(library, target)),
                                  platform="cpu")
  except (OSError, RuntimeError, AttributeError) as e:
    return f"oneDNN convolution kernels unavailable: {e}"
  jax.config.update("jax_remove_custom_partitioning_ptr_from_cache_key", True)
  return None


def unavailable_reason() -> str | None:
  """None when oneDNN convolutions can run here, else a sentence saying why not."""
  reason = _load()
  if reason is not None:
    _warn_once(reason)
  return reason


@functools.cache
def _warn_once(reason: str):
  logging.warning("%s; convolutions and pooling fall back to the 'hybrid' lowering.", reason)


def _flat(pairs):
  return tuple(v for pair in pairs for v in pair)


def _call(target, out_shape, operands, attrs):
  return jax.ffi.ffi_call(_TARGET_PREFIX + target, jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(*operands, **{k: np.asarray(v, np.int64) for k, v in attrs})


def _partitioned_op(target, sharding_rule, replicated_operands=(), sum_over_batch=False):
  """`op(*operands, attrs=((name, ints), ...), out_shape=...)` calling one handler, as a
  custom_partitioning op: under a sharded jit every device runs oneDNN on its own slice of the
  batch (XLA cannot split an opaque custom call and would gather the whole batch onto every
  device). Operands keep their batch sharding except `replicated_operands` (kernels); a result
  without a batch dimension (the weight gradient) is summed over the batch's mesh axes."""
  num_operands = sharding_rule.split("->")[0].count(",") + 1

  @functools.partial(custom_partitioning, static_argnums=(num_operands + 1, num_operands + 2))
  def partitioned(*args):
    *operands, _, attrs, out_shape = args
    return _call(target, out_shape, operands, attrs)

  def partition(attrs, out_shape, mesh, arg_shapes, result_shape):
    del result_shape
    spec = arg_shapes[0].sharding.spec
    batch_axes = spec[0] if len(spec) else None
    batch, replicated = NamedSharding(mesh, P(batch_axes)), NamedSharding(mesh, P())

    def lower(*args):
      operands = args[:num_operands]
      if not sum_over_batch:
        return _call(target, (operands[0].shape[0], *out_shape[1:]), operands, attrs)
      partial_sum = _call(target, out_shape, operands, attrs)
      return jax.lax.psum(partial_sum, batch_axes) if batch_axes else partial_sum

    arg_shardings = tuple(replicated if i in replicated_operands else batch for i in range(num_operands))
    return mesh, lower, (replicated if sum_over_batch else batch), (*arg_shardings, replicated)

  sharding_rule = sharding_rule.replace(" ->", ", z ->")  # z: the key operand below
  factors = [f for f in sharding_rule.replace(",", " ").replace("->", " ").split() if f != "b"]
  partitioned.def_partition(partition, sharding_rule=sharding_rule,
                            reduction_factors=("b",) if sum_over_batch else (),
                            need_replication_factors=tuple(dict.fromkeys(factors)))  # in order of appearance

  def op(*operands, attrs, out_shape):
    reason = _load()  # registers the handlers and the cache-key setting before any program uses them
    if reason is not None:
      raise RuntimeError(reason)
    # The static arguments live in a Python callback XLA cannot see; this constant operand spells
    # them out in the program, so the persistent compilation cache (which ignores the callback,
    # see the module docstring) never confuses two ops that differ only in them.
    key = np.asarray([_TARGETS.index(target), *(v for _, values in attrs for v in values), *out_shape], np.int32)
    return partitioned(*operands, key, attrs, out_shape)
  return op


# Factors: b batch, (h, w) input map, (p, q) output map, (i, j) kernel taps, c / o channels in / out.
_conv_forward = _partitioned_op("OnednnConvForward", "b h w c, i j c o -> b p q o", replicated_operands=(1,))
_conv_backward_data = _partitioned_op("OnednnConvBackwardData", "b p q o, i j c o -> b h w c",
                                      replicated_operands=(1,))
_conv_backward_weights = _partitioned_op("OnednnConvBackwardWeights", "b h w c, b p q o -> i j c o",
                                         sum_over_batch=True)
_max_pool_forward = _partitioned_op("OnednnMaxPool", "b h w c -> b p q c")
_max_pool_backward = _partitioned_op("OnednnMaxPoolBackward", "b h w c, b p q c -> b h w c")


def _output_shape(x_shape, window, strides, pads, channels):
  n, h, w, _ = x_shape
  return (n, (h + sum(pads[0]) - window[0]) // strides[0] + 1, (w + sum(pads[1]) - window[1]) // strides[1] + 1,
          channels)


def _conv_attrs(strides, pads):
  return ("strides", tuple(strides)), ("pads", _flat(pads))


# The three directions of a float32 convolution (NHWC x, HWIO kernel); `pads` ((top, bottom),
# (left, right)) must be exact, every padded row and column read (lowerings.py trims the rest).
# lowerings.conv_hybrid composes them, direction by direction, into a differentiable convolution.
def conv_forward(x, kernel, strides, pads):
  out_shape = _output_shape(x.shape, kernel.shape, strides, pads, kernel.shape[3])
  return _conv_forward(x, kernel, attrs=_conv_attrs(strides, pads), out_shape=out_shape)


def conv_input_grad(dy, kernel, x_shape, strides, pads):
  return _conv_backward_data(dy, kernel, attrs=_conv_attrs(strides, pads), out_shape=tuple(x_shape))


def conv_weight_grad(x, dy, kernel_shape, strides, pads):
  return _conv_backward_weights(x, dy, attrs=_conv_attrs(strides, pads), out_shape=tuple(kernel_shape))


def _pool_attrs(window, strides, pads):
  return ("window", tuple(window)), ("strides", tuple(strides)), ("pads", _flat(pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window, strides, pads):
  """float32 NHWC max pooling; padding counts as -inf; `pads` exact, as for the convolutions. The
  gradient goes to the first maximal element of each window, as XLA's select-and-scatter does."""
  out_shape = _output_shape(x.shape, window, strides, pads, x.shape[3])
  return _max_pool_forward(x, attrs=_pool_attrs(window, strides, pads), out_shape=out_shape)


def _max_pool_fwd(x, window, strides, pads):
  return max_pool(x, window, strides, pads), x


def _max_pool_bwd(window, strides, pads, x, dy):
  return (_max_pool_backward(x, dy, attrs=_pool_attrs(window, strides, pads), out_shape=x.shape),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
