"""A JAX function -> an ONNX model, one rule per JAX primitive (jax, numpy and onnx only).

  model = convert(fn, jax.ShapeDtypeStruct(jax.export.symbolic_shape("batch, 72, 72, 3"), jnp.uint8),
                  input_names=["faces"])         # onnx.ModelProto, opset OPSET, checked
  onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"faces": faces})

convert traces fn with jax.make_jaxpr and writes one ONNX node (or a few) per equation, by the
rule RULES[primitive name]; calls (jit/pjit, closed_call, custom_jvp_call, custom_vjp_call, remat)
are inlined, so a custom derivative's forward function is what runs. Arrays fn closes over (the
weights) become initializers. A symbolic input dimension (jax.export.symbolic_shape) stays symbolic:
the ONNX input has a named dimension, and shapes that depend on it (reshape, broadcast, slice) are
computed from the input's Shape at run time, so one file serves every batch size.
A primitive without a rule fails with UnsupportedPrimitive naming it and where it was called;
a new layer means one new rule: `@rule("name") def _(b, eqn, x, ...) -> output name(s)`.
Layout: JAX's convolutions and pooling run on any layout (NHWC here); ONNX's Conv/MaxPool want
NCHW, so their rules transpose in and out and onnxruntime's optimizer cancels the pairs.
"""
import re

import numpy as np

OPSET = 17  # ReduceMax/Min/Prod take `axes` as an attribute up to 17, ReduceSum as an input (13+)
INT64_MAX = np.iinfo(np.int64).max


class UnsupportedPrimitive(NotImplementedError):
  """A JAX primitive (or a parameter of one) the converter has no ONNX rule for."""


class _Value:
  """An ONNX tensor name with the JAX shape (ints or symbolic dims) and dtype of its variable."""

  def __init__(self, name, shape, dtype):
    self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)

  @property
  def ndim(self):
    return len(self.shape)


class _Dim:
  """A symbolic dimension's value at run time: a (1,) int64 ONNX tensor; + - * // as ONNX nodes."""

  def __init__(self, b, name):
    self.b, self.name = b, name

  def _op(self, kind, other, reverse=False):
    other = other.name if isinstance(other, _Dim) else self.b.const(np.array([other], np.int64))
    ins = [other, self.name] if reverse else [self.name, other]
    return _Dim(self.b, self.b.node(kind, ins))

  __add__ = lambda s, o: s._op("Add", o)
  __radd__ = lambda s, o: s._op("Add", o, True)
  __sub__ = lambda s, o: s._op("Sub", o)
  __rsub__ = lambda s, o: s._op("Sub", o, True)
  __mul__ = lambda s, o: s._op("Mul", o)
  __rmul__ = lambda s, o: s._op("Mul", o, True)
  __neg__ = lambda s: s._op("Mul", -1)

  def __floordiv__(self, other):  # floor, also below 0 (ONNX's integer Div truncates): through float64
    b = self.b
    as_float = lambda d: b.node("Cast", [_dim_name(b, d)], to=_onnx_dtype(np.float64))
    return _Dim(b, b.node("Cast", [b.node("Floor", [b.node("Div", [as_float(self), as_float(other)])])],
                          to=_onnx_dtype(np.int64)))

  def __rfloordiv__(self, other):
    return _Dim(self.b, _dim_name(self.b, other)) // self

  def __mod__(self, other):
    return self - (self // other) * other


def _dim_name(b, d):
  return d.name if isinstance(d, _Dim) else b.const(np.array([d], np.int64))


def _dim_function(op, python):
  """floordiv/mod/max/min as they appear in the str() of JAX's symbolic dimensions."""
  def apply(x, y):
    if not isinstance(x, _Dim) and not isinstance(y, _Dim):
      return python(x, y)
    b = x.b if isinstance(x, _Dim) else y.b
    if op in ("Max", "Min"):
      return _Dim(b, b.node(op, [_dim_name(b, x), _dim_name(b, y)]))
    x = x if isinstance(x, _Dim) else _Dim(b, _dim_name(b, x))
    return x // y if op == "floordiv" else x % y
  return apply


_DIM_FUNCTIONS = {"floordiv": _dim_function("floordiv", lambda x, y: x // y),
                  "mod": _dim_function("mod", lambda x, y: x % y),
                  "max": _dim_function("Max", max), "min": _dim_function("Min", min)}


class Builder:
  """Collects nodes and initializers; rules call node(), const(), dims()."""

  def __init__(self):
    from onnx import helper, numpy_helper
    self.helper, self.numpy_helper = helper, numpy_helper
    self.nodes, self.initializers, self._count = [], [], 0
    self.symbols = {}      # symbolic dimension name -> (input tensor name, axis)
    self._dim_cache = {}   # str(dim) -> its _Dim
    self._const_cache = {}
    self.constants = {}    # initializer name -> its numpy value (convolution kernels are laid out once)

  def fresh(self, hint="t"):
    self._count += 1
    return f"{hint}_{self._count}"

  def node(self, op, inputs, outputs=1, **attrs):
    """Adds an ONNX node; returns its output name (or list of names when outputs > 1)."""
    names = [self.fresh(op) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
    self.nodes.append(self.helper.make_node(op, list(inputs), names, **attrs))
    return names[0] if len(names) == 1 else names

  def const(self, value, dtype=None):
    """An initializer holding value (small constants shared by value)."""
    array = np.asarray(value, dtype)
    if array.dtype == np.float64:
      array = array.astype(np.float32)
    key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
    if key is not None and key in self._const_cache:
      return self._const_cache[key]
    name = self.fresh("const")
    self.initializers.append(self.numpy_helper.from_array(np.array(array, order="C"), name))  # ascontiguousarray: 0-d -> 1-d
    if key is not None:
      self._const_cache[key] = name
    return name

  def dim(self, d):
    """A (1,) int64 tensor of dimension d, an int or a symbolic expression of the inputs' symbols."""
    if isinstance(d, (int, np.integer)):
      return self.const(np.array([d], np.int64))
    key = str(d)
    if key not in self._dim_cache:
      names = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", key)) - set(_DIM_FUNCTIONS)
      unknown = names - set(self.symbols)
      if unknown:
        raise UnsupportedPrimitive(f"symbolic dimension {key!r} uses {sorted(unknown)}, which is no input's "
                                   f"dimension (inputs' symbols: {sorted(self.symbols)})")
      env = dict(_DIM_FUNCTIONS)
      for symbol in names:
        tensor, axis = self.symbols[symbol]
        env[symbol] = _Dim(self, self.node("Shape", [tensor], start=axis, end=axis + 1))
      value = eval(key, {"__builtins__": {}}, env)  # the expression's + - * // on _Dim
      self._dim_cache[key] = value if isinstance(value, _Dim) else _Dim(self, self.const(np.array([value], np.int64)))
    return self._dim_cache[key].name

  def dims(self, shape):
    """A 1-D int64 tensor of a shape (constant when every dimension is an int)."""
    if all(_static(d) for d in shape):
      return self.const(np.array([int(d) for d in shape], np.int64))
    return self.node("Concat", [self.dim(d) for d in shape], axis=0)


def _static(d):
  return isinstance(d, (int, np.integer))


def _same(d, e):
  """Whether two dimensions (ints or symbolic) are surely equal."""
  try:
    return bool(d == e)
  except Exception:  # noqa: BLE001 - symbolic comparisons that JAX cannot decide
    return False


# ---- rules ----

RULES = {}


def rule(*names):
  """Registers fn(builder, eqn, *inputs: _Value) -> output name or list of names for primitives."""
  def register(fn):
    for name in names:
      RULES[name] = fn
    return fn
  return register


def supported_primitives():
  return sorted(RULES)


def _out(eqn, i=0):
  return eqn.outvars[i].aval


def _onnx_dtype(dtype):
  from onnx import helper
  dtype = np.dtype(dtype)
  if dtype.name == "bfloat16":
    from onnx import TensorProto
    return TensorProto.BFLOAT16
  return helper.np_dtype_to_tensor_dtype(dtype)


def _axes(b, axes):
  return b.const(np.array(list(axes), np.int64))


_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid", "erf": "Erf",
          "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "floor": "Floor", "ceil": "Ceil", "sin": "Sin",
          "cos": "Cos", "not": "Not", "stop_gradient": "Identity", "copy": "Identity", "copy_p": "Identity",
          "reduce_precision": "Identity", "optimization_barrier": "Identity"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
           "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
           "and": "And", "or": "Or", "xor": "Xor"}

for _jax, _onnx in _UNARY.items():
  rule(_jax)(lambda b, eqn, x, _op=_onnx: b.node(_op, [x.name]))


def _binary(op):
  def convert(b, eqn, x, y):
    if op in ("And", "Or", "Xor", "Not") and x.dtype != np.bool_:
      raise UnsupportedPrimitive(f"bitwise {eqn.primitive.name} on {x.dtype} (only booleans)")
    return b.node(op, [x.name, y.name])
  return convert


for _jax, _onnx in _BINARY.items():
  rule(_jax)(_binary(_onnx))


@rule("ne")
def _ne(b, eqn, x, y):
  return b.node("Not", [b.node("Equal", [x.name, y.name])])


@rule("rem")
def _rem(b, eqn, x, y):  # C's fmod: the sign of the dividend, as lax.rem
  return b.node("Mod", [x.name, y.name], fmod=1)


@rule("rsqrt")
def _rsqrt(b, eqn, x):
  return b.node("Reciprocal", [b.node("Sqrt", [x.name])])


@rule("square")
def _square(b, eqn, x):
  return b.node("Mul", [x.name, x.name])


@rule("exp2")
def _exp2(b, eqn, x):
  return b.node("Pow", [b.const(np.asarray(2, x.dtype)), x.name])


@rule("log1p")
def _log1p(b, eqn, x):
  return b.node("Log", [b.node("Add", [x.name, b.const(np.asarray(1, x.dtype))])])


@rule("expm1")
def _expm1(b, eqn, x):
  return b.node("Sub", [b.node("Exp", [x.name]), b.const(np.asarray(1, x.dtype))])


@rule("erfc")
def _erfc(b, eqn, x):  # 1 - erf(x): loses erfc's relative precision far in the tail (|x| > 4)
  return b.node("Sub", [b.const(np.asarray(1, x.dtype)), b.node("Erf", [x.name])])


@rule("is_finite")
def _is_finite(b, eqn, x):
  return b.node("Not", [b.node("Or", [b.node("IsInf", [x.name]), b.node("IsNaN", [x.name])])])


@rule("round")
def _round(b, eqn, x):
  method = int(eqn.params.get("rounding_method", 0))
  if method == 1:  # to nearest even: ONNX Round
    return b.node("Round", [x.name])
  half = b.const(np.asarray(0.5, x.dtype))  # away from zero: sign(x) * floor(|x| + 0.5)
  return b.node("Mul", [b.node("Sign", [x.name]), b.node("Floor", [b.node("Add", [b.node("Abs", [x.name]), half])])])


@rule("integer_pow")
def _integer_pow(b, eqn, x):
  y = int(eqn.params["y"])
  if y == 0:
    return b.node("Expand", [b.const(np.asarray(1, x.dtype)), b.node("Shape", [x.name])])
  out = x.name  # repeated products: exact, as XLA's expansion of small powers
  for _ in range(abs(y) - 1):
    out = b.node("Mul", [out, x.name])
  return b.node("Reciprocal", [out]) if y < 0 else out


@rule("convert_element_type")
def _convert(b, eqn, x):
  return b.node("Cast", [x.name], to=_onnx_dtype(eqn.params["new_dtype"]))


@rule("clamp")
def _clamp(b, eqn, lo, x, hi):
  return b.node("Min", [b.node("Max", [x.name, lo.name]), hi.name])


@rule("select_n")
def _select_n(b, eqn, which, *cases):
  if which.dtype == np.bool_:
    return b.node("Where", [which.name, cases[1].name, cases[0].name])
  out = cases[-1].name  # case i where which == i, the last case otherwise (which is in range)
  for i in range(len(cases) - 2, -1, -1):
    out = b.node("Where", [b.node("Equal", [which.name, b.const(np.asarray(i, which.dtype))]), cases[i].name, out])
  return out


# ---- shapes ----

@rule("broadcast_in_dim")
def _broadcast_in_dim(b, eqn, x, *dynamic):
  if dynamic:
    raise UnsupportedPrimitive("broadcast_in_dim with dynamic shape operands")
  shape, kept = eqn.params["shape"], eqn.params["broadcast_dimensions"]
  name = x.name
  new = [i for i in range(len(shape)) if i not in kept]
  if new:
    name = b.node("Unsqueeze", [name, _axes(b, new)])
  current = [1] * len(shape)
  for src, dst in enumerate(kept):
    current[dst] = x.shape[src]
  # Expand broadcasts both ways: a 1 keeps the operand's own size, so only grown axes need theirs.
  target = [1 if _same(current[i], shape[i]) else shape[i] for i in range(len(shape))]
  if all(_static(t) and t == 1 for t in target):
    return b.node("Identity", [name])
  return b.node("Expand", [name, b.dims(target)])


@rule("reshape")
def _reshape(b, eqn, x, *dynamic):
  if dynamic or eqn.params.get("dimensions") not in (None, ()):
    raise UnsupportedPrimitive("reshape with dimensions or dynamic shapes")
  sizes = list(eqn.params["new_sizes"])
  symbolic = [i for i, d in enumerate(sizes) if not _static(d)]
  if any(_static(d) and d == 0 for d in sizes):
    raise UnsupportedPrimitive("reshape to an empty shape")
  if len(symbolic) == 1:  # the one unknown size is what the others leave
    sizes[symbolic[0]] = -1
  return b.node("Reshape", [x.name, b.dims(sizes)])


@rule("squeeze")
def _squeeze(b, eqn, x):
  return b.node("Squeeze", [x.name, _axes(b, [d % x.ndim for d in eqn.params["dimensions"]])])


@rule("expand_dims")
def _expand_dims(b, eqn, x):
  return b.node("Unsqueeze", [x.name, _axes(b, eqn.params["dimensions"])])


@rule("transpose")
def _transpose(b, eqn, x):
  return b.node("Transpose", [x.name], perm=list(eqn.params["permutation"]))


@rule("concatenate")
def _concatenate(b, eqn, *xs):
  return b.node("Concat", [x.name for x in xs], axis=int(eqn.params["dimension"]))


@rule("stack")
def _stack(b, eqn, *xs):
  axis = int(eqn.params["axis"])
  return b.node("Concat", [b.node("Unsqueeze", [x.name, _axes(b, [axis])]) for x in xs], axis=axis)


@rule("unstack")
def _unstack(b, eqn, x):
  axis = int(eqn.params["axis"])
  n = len(eqn.outvars)
  parts = b.node("Split", [x.name, b.const(np.ones(n, np.int64))], outputs=n, axis=axis)
  parts = [parts] if n == 1 else parts
  return [b.node("Squeeze", [p, _axes(b, [axis])]) for p in parts]


@rule("split")
def _split(b, eqn, x):
  sizes, axis = eqn.params["sizes"], int(eqn.params["axis"])
  if not all(_static(s) for s in sizes):
    raise UnsupportedPrimitive("split into symbolic sizes")
  out = b.node("Split", [x.name, b.const(np.array(sizes, np.int64))], outputs=len(sizes), axis=axis)
  return out if len(sizes) > 1 else [out]


@rule("slice")
def _slice(b, eqn, x):
  start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
  strides = eqn.params["strides"] or (1,) * x.ndim
  axes = [i for i in range(x.ndim) if not (_static(start[i]) and start[i] == 0 and strides[i] == 1
                                           and _same(limit[i], x.shape[i]))]
  if not axes:
    return b.node("Identity", [x.name])
  return b.node("Slice", [x.name, b.dims([start[i] for i in axes]), b.dims([limit[i] for i in axes]),
                          _axes(b, axes), b.const(np.array([strides[i] for i in axes], np.int64))])


@rule("dynamic_slice")
def _dynamic_slice(b, eqn, x, *starts):
  sizes = eqn.params["slice_sizes"]
  if len(starts) != x.ndim:
    raise UnsupportedPrimitive("dynamic_slice with dynamic slice sizes")
  begin = b.node("Concat", [b.node("Unsqueeze", [b.node("Cast", [s.name], to=_onnx_dtype(np.int64)), _axes(b, [0])])
                            for s in starts], axis=0)
  # lax clamps the start so that the slice lies inside the operand
  last = b.node("Sub", [b.dims(x.shape), b.dims(sizes)])
  begin = b.node("Min", [b.node("Max", [begin, b.const(np.zeros(x.ndim, np.int64))]), last])
  return b.node("Slice", [x.name, begin, b.node("Add", [begin, b.dims(sizes)]), _axes(b, range(x.ndim))])


@rule("rev")
def _rev(b, eqn, x):
  axes = list(eqn.params["dimensions"])
  n = len(axes)
  return b.node("Slice", [x.name, b.const(np.full(n, -1, np.int64)), b.const(np.full(n, -INT64_MAX, np.int64)),
                          _axes(b, axes), b.const(np.full(n, -1, np.int64))])


@rule("pad")
def _pad(b, eqn, x, value):
  config = eqn.params["padding_config"]
  if any(interior != 0 for _, _, interior in config):
    raise UnsupportedPrimitive("pad with interior padding")
  lo, hi = [max(c[0], 0) for c in config], [max(c[1], 0) for c in config]
  out = x.name
  if any(lo) or any(hi):
    out = b.node("Pad", [out, b.const(np.array(lo + hi, np.int64)), value.name], mode="constant")
  cut = [i for i, c in enumerate(config) if c[0] < 0 or c[1] < 0]  # negative padding crops
  if cut:
    ends = [(c[1] if c[1] < 0 else INT64_MAX) for c in (config[i] for i in cut)]
    out = b.node("Slice", [out, b.const(np.array([max(-config[i][0], 0) for i in cut], np.int64)),
                           b.const(np.array(ends, np.int64)), _axes(b, cut)])
  return out


@rule("dim_as_value")
def _dim_as_value(b, eqn):  # a symbolic dimension used as a number (x.shape[0] in arithmetic)
  value = b.node("Squeeze", [b.dim(eqn.params["dim"]), _axes(b, [0])])
  return b.node("Cast", [value], to=_onnx_dtype(_out(eqn).dtype))


@rule("iota")
def _iota(b, eqn):
  shape, dimension, dtype = eqn.params["shape"], eqn.params["dimension"], eqn.params["dtype"]
  if all(_static(d) for d in shape):
    index = np.arange(shape[dimension]).reshape([-1 if i == dimension else 1 for i in range(len(shape))])
    return b.node("Identity", [b.const(np.broadcast_to(index, shape).astype(dtype))])
  if not _static(shape[dimension]):
    raise UnsupportedPrimitive("iota along a symbolic dimension")
  index = np.arange(shape[dimension], dtype=dtype).reshape([-1 if i == dimension else 1 for i in range(len(shape))])
  return b.node("Expand", [b.const(index), b.dims([1 if i == dimension else d for i, d in enumerate(shape)])])


# ---- reductions ----

def _reduce(op):
  def convert(b, eqn, x):
    axes = [int(a) for a in eqn.params["axes"]]
    if not axes:
      return b.node("Identity", [x.name])
    if op == "ReduceSum":
      return b.node(op, [x.name, _axes(b, axes)], keepdims=0)
    return b.node(op, [x.name], axes=axes, keepdims=0)
  return convert


for _jax, _onnx in {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
                    "reduce_prod": "ReduceProd"}.items():
  rule(_jax)(_reduce(_onnx))


@rule("reduce_and", "reduce_or")
def _reduce_bool(b, eqn, x):
  ints = b.node("Cast", [x.name], to=_onnx_dtype(np.int32))
  op = "ReduceMin" if eqn.primitive.name == "reduce_and" else "ReduceMax"
  return b.node("Cast", [b.node(op, [ints], axes=list(eqn.params["axes"]), keepdims=0)], to=_onnx_dtype(np.bool_))


@rule("argmax", "argmin")
def _argmax(b, eqn, x):
  (axis,) = eqn.params["axes"]
  op = "ArgMax" if eqn.primitive.name == "argmax" else "ArgMin"
  index = b.node(op, [x.name], axis=int(axis), keepdims=0)  # the first extreme index, as lax
  return b.node("Cast", [index], to=_onnx_dtype(eqn.params["index_dtype"]))


@rule("cumsum")
def _cumsum(b, eqn, x):
  return b.node("CumSum", [x.name, b.const(np.asarray(eqn.params["axis"], np.int64))],
                reverse=int(bool(eqn.params.get("reverse", False))))


@rule("sort")
def _sort(b, eqn, *xs):
  dimension, num_keys = int(eqn.params["dimension"]), int(eqn.params["num_keys"])
  if num_keys != 1:
    raise UnsupportedPrimitive(f"sort with {num_keys} keys")
  if dimension % xs[0].ndim != xs[0].ndim - 1 or not _static(xs[0].shape[dimension]):
    raise UnsupportedPrimitive("sort along an axis other than a static last one")
  k = b.const(np.array([xs[0].shape[dimension]], np.int64))
  values, index = b.node("TopK", [xs[0].name, k], outputs=2, axis=-1, largest=0, sorted=1)
  return [values] + [b.node("GatherElements", [x.name, index], axis=-1) for x in xs[1:]]


def _window_slices(b, x, window, strides, padding, pad_value, combine):
  """reduce_window as the elementwise `combine` of one strided slice per window offset: any axes."""
  name = x.name
  lo, hi = [p[0] for p in padding], [p[1] for p in padding]
  if any(lo) or any(hi):
    name = b.node("Pad", [name, b.const(np.array(lo + hi, np.int64)), b.const(np.asarray(pad_value, x.dtype))])
  axes = [i for i in range(x.ndim) if window[i] != 1 or strides[i] != 1]
  sizes = [x.shape[i] + lo[i] + hi[i] for i in axes]
  if not all(_static(s) for s in sizes):
    raise UnsupportedPrimitive("reduce_window over a symbolic dimension")
  outs = [(s - w) // st + 1 for s, w, st in zip(sizes, [window[i] for i in axes], [strides[i] for i in axes])]
  parts = []
  for offset in np.ndindex(*[window[i] for i in axes]):
    starts = list(offset)
    ends = [o + (n - 1) * strides[i] + 1 for o, n, i in zip(offset, outs, axes)]
    parts.append(b.node("Slice", [name, b.const(np.array(starts, np.int64)), b.const(np.array(ends, np.int64)),
                                  _axes(b, axes), b.const(np.array([strides[i] for i in axes], np.int64))]))
  out = parts[0]
  for p in parts[1:]:
    out = b.node(combine, [out, p])
  return out


def _pool_layout(x, window, strides):
  """The permutation putting the two untouched axes first (ONNX pooling's N, C) or None."""
  pooled = [i for i in range(x.ndim) if window[i] != 1 or strides[i] != 1]
  kept = [i for i in range(x.ndim) if i not in pooled]
  return (kept + pooled) if len(kept) == 2 and pooled else None


def _reduce_window(combine, pool, init):
  def convert(b, eqn, x):
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    if any(d != 1 for d in p["base_dilation"]) or any(d != 1 for d in p["window_dilation"]):
      raise UnsupportedPrimitive(f"{eqn.primitive.name} with dilation")
    perm = _pool_layout(x, window, strides)
    if perm is None or x.dtype.kind != "f":
      return _window_slices(b, x, window, strides, padding, init(x.dtype), combine)
    pooled = perm[2:]
    attrs = dict(kernel_shape=[window[i] for i in pooled], strides=[strides[i] for i in pooled],
                 pads=[padding[i][0] for i in pooled] + [padding[i][1] for i in pooled])
    name = b.node("Transpose", [x.name], perm=perm)
    if pool == "MaxPool":  # ONNX pads max pooling with -inf, as lax's init value
      name = b.node("MaxPool", [name], **attrs)
    else:  # the window's sum: the average over the padded window times its size (zeros padded)
      name = b.node("AveragePool", [name], count_include_pad=1, **attrs)
      name = b.node("Mul", [name, b.const(np.asarray(np.prod(attrs["kernel_shape"]), x.dtype))])
    return b.node("Transpose", [name], perm=list(np.argsort(perm)))
  return convert


rule("reduce_window_max")(_reduce_window("Max", "MaxPool", lambda t: -np.inf if t.kind == "f" else np.iinfo(t).min))
rule("reduce_window_sum")(_reduce_window("Add", "AveragePool", lambda t: 0))


# ---- linear algebra ----

@rule("dot_general")
def _dot_general(b, eqn, x, y):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  out_dtype = _out(eqn).dtype
  xs, ys = x.name, y.name
  if x.dtype != out_dtype:
    xs = b.node("Cast", [xs], to=_onnx_dtype(out_dtype))
  if y.dtype != out_dtype:
    ys = b.node("Cast", [ys], to=_onnx_dtype(out_dtype))
  if not lb and tuple(lc) == (x.ndim - 1,) and tuple(rc) == (0,) and y.ndim == 2:
    return b.node("MatMul", [xs, ys])  # dense layers: (..., K) @ (K, N)
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  left, right = [None] * x.ndim, [None] * y.ndim
  for i, j in zip(lb, rb):
    left[i] = right[j] = next(letters)
  for i, j in zip(lc, rc):
    left[i] = right[j] = next(letters)
  for i in range(x.ndim):
    left[i] = left[i] or next(letters)
  for j in range(y.ndim):
    right[j] = right[j] or next(letters)
  out = ([left[i] for i in lb] + [left[i] for i in range(x.ndim) if i not in lb and i not in lc]
         + [right[j] for j in range(y.ndim) if j not in rb and j not in rc])
  return b.node("Einsum", [xs, ys], equation=f"{''.join(left)},{''.join(right)}->{''.join(out)}")


@rule("conv_general_dilated")
def _conv(b, eqn, x, w):
  p = eqn.params
  if any(d != 1 for d in p["lhs_dilation"]):
    raise UnsupportedPrimitive("conv_general_dilated with lhs_dilation (transposed convolution)")
  if p["batch_group_count"] != 1:
    raise UnsupportedPrimitive("conv_general_dilated with batch_group_count > 1")
  padding = p["padding"]
  if any(lo < 0 or hi < 0 for lo, hi in padding):
    raise UnsupportedPrimitive("conv_general_dilated with negative padding")
  lhs, rhs, out = p["dimension_numbers"]
  name = b.node("Transpose", [x.name], perm=list(lhs))  # -> N, C, spatial...
  kernel = _constant_of(b, w)
  if kernel is not None:  # weights: laid out as O, I, spatial... once, at export
    kernel_name = b.const(np.transpose(kernel, rhs))
  else:
    kernel_name = b.node("Transpose", [w.name], perm=list(rhs))
  name = b.node("Conv", [name, kernel_name], strides=list(p["window_strides"]), dilations=list(p["rhs_dilation"]),
                pads=[lo for lo, _ in padding] + [hi for _, hi in padding], group=int(p["feature_group_count"]),
                kernel_shape=[int(w.shape[i]) for i in rhs[2:]])
  name = b.node("Transpose", [name], perm=list(np.argsort(out)))
  if _out(eqn).dtype != x.dtype:
    name = b.node("Cast", [name], to=_onnx_dtype(_out(eqn).dtype))
  return name


def _constant_of(b, value):
  return b.constants.get(value.name)


@rule("gather")
def _gather(b, eqn, x, index):
  """jnp.take / x[idx] along one axis: the other axes whole, indices (..., 1)."""
  from jax import lax
  dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  if (not dn.collapsed_slice_dims and tuple(dn.offset_dims) == tuple(range(x.ndim)) and index.ndim == 1
      and not getattr(dn, "operand_batching_dims", ())):
    return _gather_one_slice(b, eqn, x, index)
  if (len(dn.start_index_map) != 1 or tuple(dn.collapsed_slice_dims) != tuple(dn.start_index_map)
      or getattr(dn, "operand_batching_dims", ()) or index.shape[-1] != 1):
    raise UnsupportedPrimitive(f"gather with dimension numbers {dn} (only a take along one axis)")
  (axis,) = dn.start_index_map
  if any(sizes[i] != (1 if i == axis else x.shape[i]) for i in range(x.ndim)):
    raise UnsupportedPrimitive("gather of partial slices")
  batch_rank = index.ndim - 1
  expected = tuple(i if i < axis else i + batch_rank for i in range(x.ndim - 1))
  if tuple(dn.offset_dims) != expected:
    raise UnsupportedPrimitive(f"gather with offset_dims {dn.offset_dims} (ONNX Gather puts them at {expected})")
  i64 = b.node("Squeeze", [b.node("Cast", [index.name], to=_onnx_dtype(np.int64)), _axes(b, [index.ndim - 1])])
  size = b.dim(x.shape[axis])
  if eqn.params["mode"] == lax.GatherScatterMode.CLIP:
    clipped = b.node("Min", [b.node("Max", [i64, b.const(np.asarray(0, np.int64))]),
                             b.node("Sub", [b.node("Squeeze", [size]), b.const(np.asarray(1, np.int64))])])
    return b.node("Gather", [x.name, clipped], axis=int(axis))
  # FILL_OR_DROP / PROMISE_IN_BOUNDS: out-of-range indices give the fill value (NaN for floats)
  inside = b.node("And", [b.node("GreaterOrEqual", [i64, b.const(np.asarray(0, np.int64))]),
                          b.node("Less", [i64, b.node("Squeeze", [size])])])
  safe = b.node("Where", [inside, i64, b.const(np.asarray(0, np.int64))])
  taken = b.node("Gather", [x.name, safe], axis=int(axis))
  fill = eqn.params.get("fill_value")
  if fill is None:
    fill = np.nan if x.dtype.kind == "f" else (np.iinfo(x.dtype).min if x.dtype.kind in "iu" else True)
  mask = inside
  for i in range(x.ndim - 1 - axis):  # inside: batch dims; broadcast over the taken slice's axes
    mask = b.node("Unsqueeze", [mask, _axes(b, [-1])])
  if axis > 0:
    mask = b.node("Unsqueeze", [mask, _axes(b, list(range(axis)))])
  return b.node("Where", [mask, taken, b.const(np.asarray(fill, x.dtype))])


def _gather_one_slice(b, eqn, x, index):
  """x[a:a+n, b:b+m, ...] written as a gather (what jnp indexing makes of a symbolic-batch slice)."""
  from jax import lax
  dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  starts = b.constants.get(index.name)
  axes = list(dn.start_index_map)
  if starts is not None:
    starts = [int(v) for v in np.ravel(starts)]
    for axis, start in zip(axes, starts):
      if start < 0 or (_static(x.shape[axis]) and start + sizes[axis] > x.shape[axis]):
        raise UnsupportedPrimitive(f"gather of a slice outside the operand (axis {axis}, start {start})")
    return b.node("Slice", [x.name, b.const(np.array(starts, np.int64)),
                            b.dims([start + sizes[axis] for axis, start in zip(axes, starts)]), _axes(b, axes)])
  if eqn.params["mode"] == lax.GatherScatterMode.FILL_OR_DROP:
    raise UnsupportedPrimitive("gather of a slice at run-time starts in fill mode")
  begin = b.node("Cast", [index.name], to=_onnx_dtype(np.int64))  # clamped inside, as lax.dynamic_slice
  last = b.node("Sub", [b.dims([x.shape[a] for a in axes]), b.dims([sizes[a] for a in axes])])
  begin = b.node("Min", [b.node("Max", [begin, b.const(np.zeros(len(axes), np.int64))]), last])
  return b.node("Slice", [x.name, begin, b.node("Add", [begin, b.dims([sizes[a] for a in axes])]), _axes(b, axes)])


# ---- calls: inlined ----

_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint", "remat2", "custom_lin")


def _sub_jaxpr(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    if key in eqn.params:
      return eqn.params[key]
  raise UnsupportedPrimitive(f"{eqn.primitive.name}: no sub-jaxpr among its parameters {sorted(eqn.params)}")


# ---- the walk ----

def _where(eqn):
  """'file:line (function)' of the innermost code outside jax and flax that made the equation."""
  try:
    frames = eqn.source_info.traceback.frames
    outside = [f for f in frames if not any(p in f.file_name for p in ("/jax/", "/flax/"))] or frames
    return f"{outside[0].file_name}:{outside[0].line_num} ({outside[0].function_name})"
  except Exception:  # noqa: BLE001 - only for the message
    return "?"


def _emit(b, jaxpr, consts, args):
  """Writes jaxpr's equations; args/consts: _Value per invar/constvar. Returns the outvars' _Values."""
  from jax.extend import core as jcore
  env = {}

  def read(v):
    if isinstance(v, jcore.Literal):
      value = np.asarray(v.val, v.aval.dtype)
      name = b.const(value)
      b.constants[name] = value
      return _Value(name, value.shape, value.dtype)
    return env[v]

  for v, value in zip(jaxpr.constvars, consts):
    env[v] = value
  for v, value in zip(jaxpr.invars, args):
    env[v] = value
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _CALLS:
      sub = _sub_jaxpr(eqn)
      inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
      const_values = [_constant(b, c) for c in inner_consts]
      outs = _emit(b, inner, const_values, ins[len(ins) - len(inner.invars):])
      for v, o in zip(eqn.outvars, outs):
        env[v] = o
      continue
    if name not in RULES:
      raise UnsupportedPrimitive(f"no ONNX rule for the JAX primitive {name!r} (called at {_where(eqn)}); "
                                 f"add one in jaxpr_onnx.py with @rule({name!r}). Rules exist for: "
                                 f"{', '.join(supported_primitives())}")
    try:
      result = RULES[name](b, eqn, *ins)
    except UnsupportedPrimitive as e:
      raise UnsupportedPrimitive(f"{name} at {_where(eqn)}: {e}") from None
    names = [result] if isinstance(result, str) else list(result)
    for v, out in zip(eqn.outvars, names):
      env[v] = _Value(out, v.aval.shape, v.aval.dtype)
  return [read(v) for v in jaxpr.outvars]


def _constant(b, value):
  array = np.asarray(value)
  if array.dtype == np.float64:
    array = array.astype(np.float32)
  name = b.const(array)
  b.constants[name] = array
  return _Value(name, array.shape, array.dtype)


def _output_names(tree):
  import jax
  paths, _ = jax.tree_util.tree_flatten_with_path(tree)
  names = []
  for path, _ in paths:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    names.append("/".join(parts) or "output")
  return names


def convert(fn, *input_specs, input_names=None, output_names=None, opset: int = OPSET,
            graph_name: str = "jax", producer: str = "age_jax.jaxpr_onnx"):
  """The onnx.ModelProto computing fn on inputs like input_specs (jax.ShapeDtypeStruct, symbolic
  dimensions allowed); outputs named by their pytree paths (dict keys) unless output_names."""
  import jax
  import onnx
  from onnx import helper

  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*input_specs)
  input_names = list(input_names or [f"input_{i}" for i in range(len(input_specs))])
  names = list(output_names or _output_names(out_shape))
  if len(names) != len(closed.jaxpr.outvars) or len(input_names) != len(input_specs):
    raise ValueError(f"{len(input_names)} input names for {len(input_specs)} inputs, {len(names)} output names "
                     f"for {len(closed.jaxpr.outvars)} outputs")
  clash = set(input_names) & set(names)
  if clash or len(set(names)) != len(names) or len(set(input_names)) != len(input_names):
    raise ValueError(f"ONNX tensor names must be unique: inputs {input_names}, outputs {names}")
  b = Builder()
  onnx_dims = lambda shape: [d if _static(d) else str(d) for d in shape]
  inputs, args = [], []
  for name, spec in zip(input_names, input_specs):
    for axis, d in enumerate(spec.shape):
      if not _static(d) and re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", str(d)) and str(d) not in b.symbols:
        b.symbols[str(d)] = (name, axis)
    inputs.append(helper.make_tensor_value_info(name, _onnx_dtype(spec.dtype), onnx_dims(spec.shape)))
    args.append(_Value(name, spec.shape, spec.dtype))
  consts = [_constant(b, c) for c in closed.consts]
  outs = _emit(b, closed.jaxpr, consts, args)
  outputs = []
  for name, value in zip(names, outs):
    b.nodes.append(helper.make_node("Identity", [value.name], [name]))
    outputs.append(helper.make_tensor_value_info(name, _onnx_dtype(value.dtype), onnx_dims(value.shape)))
  used = {i for node in b.nodes for i in node.input}  # kernels laid out anew leave their originals unused
  initializers = [t for t in b.initializers if t.name in used]
  graph = helper.make_graph(b.nodes, graph_name, inputs, outputs, initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
  model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime >= 1.20
  if model.ByteSize() < 2 ** 31 - 2 ** 20:
    onnx.checker.check_model(model)
  return model
