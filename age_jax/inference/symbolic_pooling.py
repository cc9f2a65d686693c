"""A jaxpr_onnx rule for max pooling whose SAME padding depends on a symbolic size (MTCNN's P-Net on
photos of any height and width): imported for its registration, it extends the converter's
reduce_window_max rule, which needs static pads.

Rule: SAME padding of a window k and stride s pads (out - 1) s + k - n in total, the odd pixel at
the end; ONNX MaxPool's auto_pad='SAME_UPPER' computes exactly that from the run-time size, and pads
with -inf as lax does. Any other symbolic padding is refused (UnsupportedPrimitive).
"""
import numpy as np
from jax import lax

from age_jax.inference import jaxpr_onnx

_STATIC_RULE = jaxpr_onnx.RULES["reduce_window_max"]


@jaxpr_onnx.rule("reduce_window_max")
def _reduce_window_max(b, eqn, x):
  p = eqn.params
  window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
  if all(jaxpr_onnx._static(v) for pair in padding for v in pair):
    return _STATIC_RULE(b, eqn, x)
  same = lax.padtype_to_pads(x.shape, window, strides, "SAME")
  perm = jaxpr_onnx._pool_layout(x, window, strides)
  if (perm is None or x.dtype.kind != "f" or any(d != 1 for d in p["base_dilation"] + p["window_dilation"])
      or not all(jaxpr_onnx._same(a, c) and jaxpr_onnx._same(d, e) for (a, d), (c, e) in zip(padding, same))):
    raise jaxpr_onnx.UnsupportedPrimitive(f"reduce_window_max with symbolic padding {padding} other than SAME "
                                          "over two axes of a float array")
  pooled = perm[2:]
  name = b.node("Transpose", [x.name], perm=perm)
  name = b.node("MaxPool", [name], kernel_shape=[window[i] for i in pooled], strides=[strides[i] for i in pooled],
                auto_pad="SAME_UPPER")
  return b.node("Transpose", [name], perm=list(np.argsort(perm)))
