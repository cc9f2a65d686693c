"""ONNX export of the Xing baseline (single task, dense head): runs with onnxruntime alone.

The same function as the jax.export artifact (export.py), written with the `onnx` package:
uint8 NHWC faces (B, L, L, 3) -> centre crop, normalisation -> NCHW -> conv/ReLU/max
pool/LRN x 2, conv/ReLU/pool, flatten (in NHWC order, as flax reshapes), FC/ReLU x 2, head ->
the formulation's decoder -> age (+ spread for softmax heads, + low/high with a calibration).
The network is written op by op; the preprocessing, decoders and intervals are the shared
inference_rules run on _Graph, a namespace that records ONNX nodes (one implementation).
The input contract is the jax.export artifact's (export.input_contract), stored as metadata_props.
ONNX's LRN is exactly the Caffe form the model uses (x / (k + alpha/n * sum x^2)^beta, window
centred). Other networks, multi-task models and CORAL's head are refused with the reason.
"""
import numpy as np

from age_jax import conformal, formulations, inference_rules as rules, losses
from age_jax.export import calibration_of, center_crop_offsets

OPSET = 17


def _refuse(cfg):
  if cfg.model.name != "xing_baseline":
    raise ValueError(f"ONNX export covers config.model.name='xing_baseline', not {cfg.model.name!r}; "
                     "use the jax.export artifact (launch.export) for other networks")
  if cfg.multitask.kind != "none":
    raise ValueError(f"ONNX export covers single-task models, not config.multitask.kind={cfg.multitask.kind!r}")
  if cfg.eval.mirror:
    raise ValueError("ONNX export does not reproduce config.eval.mirror (mirror-averaged ages); use the "
                     "jax.export artifact (launch.export)")
  if cfg.formulation.name == "coral":
    raise ValueError("ONNX export does not cover CORAL's shared-weight head; use launch.export")


class _Graph:
  """An array namespace (inference_rules' `xp`) that records ONNX nodes: the shared rules for
  preprocessing, decoders and intervals run on it unchanged, so the graph computes what they do."""
  float32, int32 = np.float32, np.int32

  def __init__(self):
    from onnx import helper, numpy_helper
    self._helper, self._numpy_helper = helper, numpy_helper
    self.nodes, self.inits, self._count = [], [], 0

  def _name(self, kind):
    self._count += 1
    return f"t{self._count}_{kind}"

  def const(self, value, dtype=np.float32):
    name = self._name("c")
    self.inits.append(self._numpy_helper.from_array(np.asarray(value, dtype), name))
    return _Tensor(self, name, np.ndim(value))

  def op(self, kind, inputs, ndim, **attrs):
    out = self._name(kind)
    self.nodes.append(self._helper.make_node(kind, [self.tensor(i).name for i in inputs], [out], **attrs))
    return _Tensor(self, out, ndim)

  def tensor(self, x):
    return x if isinstance(x, _Tensor) else self.const(x)

  # the namespace of inference_rules
  def asarray(self, x):
    return self.tensor(x)

  def astype(self, x, dtype):
    from onnx import TensorProto
    to = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32}[np.dtype(dtype).type]
    return self.op("Cast", [x], x.ndim, to=to)

  def clip(self, x, lo, hi):
    return self.op("Clip", [x, np.float32(lo), np.float32(hi)], x.ndim)

  def ceil(self, x):
    return self.op("Ceil", [x], x.ndim)

  def sqrt(self, x):
    return self.op("Sqrt", [x], x.ndim)

  def maximum(self, x, y):
    return self.op("Max", [x, np.float32(y) if np.isscalar(y) else y], self.tensor(x).ndim)

  def sum(self, x, axis=-1):
    return self.op("ReduceSum", [x, self.const([axis], np.int64)], x.ndim - 1, keepdims=0)

  def argmax(self, x, axis=-1):
    return self.op("ArgMax", [x], x.ndim - 1, axis=axis, keepdims=0)

  def softmax(self, x, axis=-1):
    return self.op("Softmax", [x], x.ndim, axis=axis)

  def take(self, table, index):
    return self.op("Gather", [self.tensor(np.asarray(table, np.float32)), self.astype64(index)], 1, axis=0)

  def astype64(self, x):
    from onnx import TensorProto
    return self.op("Cast", [x], x.ndim, to=TensorProto.INT64)


class _Tensor:
  """A named ONNX value with numpy's operators and the indexing the rules use."""
  __array_ufunc__ = None  # numpy arrays and scalars defer to our reflected operators (bins - x)

  def __init__(self, graph, name, ndim):
    self.graph, self.name, self.ndim = graph, name, ndim

  def _binary(self, kind, other, reverse=False):
    other = self.graph.tensor(np.float32(other) if np.isscalar(other) else other)
    inputs = [other, self] if reverse else [self, other]
    return self.graph.op(kind, inputs, max(self.ndim, other.ndim))

  __add__ = lambda self, o: self._binary("Add", o)
  __radd__ = lambda self, o: self._binary("Add", o, True)
  __sub__ = lambda self, o: self._binary("Sub", o)
  __rsub__ = lambda self, o: self._binary("Sub", o, True)
  __mul__ = lambda self, o: self._binary("Mul", o)
  __rmul__ = lambda self, o: self._binary("Mul", o, True)
  __truediv__ = lambda self, o: self._binary("Div", o)
  __gt__ = lambda self, o: self._binary("Greater", o)

  @property
  def shape(self):
    return self._shape

  def __getitem__(self, key):
    """x[:, 0] (Gather), x[:, None] (Unsqueeze) and x[..., a:b, c:d, :] (Slice)."""
    g = self.graph
    key = key if isinstance(key, tuple) else (key,)
    if key == (slice(None), 0):
      return g.op("Gather", [self, g.const(0, np.int64)], self.ndim - 1, axis=1)
    if key == (slice(None), None):
      return g.op("Unsqueeze", [self, g.const([1], np.int64)], self.ndim + 1)
    if key[0] is Ellipsis:
      axes = [j - len(key[1:]) for j, k in enumerate(key[1:]) if k != slice(None)]  # counted from the end
      cuts = [k for k in key[1:] if k != slice(None)]
      return g.op("Slice", [self, g.const([k.start for k in cuts], np.int64), g.const([k.stop for k in cuts], np.int64),
                            g.const(axes, np.int64)], self.ndim)
    raise NotImplementedError(f"ONNX indexing {key!r}")


def build_model(cfg, params, normalizer, calibration=None, coverage: float = conformal.DEFAULT_COVERAGE):
  """The onnx.ModelProto for a restored xing_baseline (params: numpy pytree of the checkpoint)."""
  import onnx
  from onnx import TensorProto, helper

  _refuse(cfg)
  _, size = center_crop_offsets(cfg)
  load = cfg.data.load_size
  g = _Graph()
  faces = _Tensor(g, "faces", 4)
  faces._shape = (None, load, load, 3)
  x = rules.normalize(g.astype(rules.center_crop(faces, size), np.float32), normalizer.mean, normalizer.scale)
  x = g.op("Transpose", [x], 4, perm=[0, 3, 1, 2])

  def conv(x, name, stride, pad):
    kernel = np.transpose(np.asarray(params[name]["kernel"]), (3, 2, 0, 1))  # HWIO -> OIHW
    return g.op("Conv", [x, kernel, np.asarray(params[name]["bias"])], 4, strides=[stride, stride],
                pads=[pad, pad, pad, pad], kernel_shape=list(kernel.shape[2:]))

  pool = lambda x: g.op("MaxPool", [x], 4, kernel_shape=[3, 3], strides=[2, 2])
  lrn = lambda x: g.op("LRN", [x], 4, size=5, alpha=1e-4, beta=0.75, bias=1.0)  # layers.LocalResponseNorm
  relu = lambda x: g.op("Relu", [x], x.ndim)
  x = lrn(pool(relu(conv(x, "conv1", 4, 0))))
  x = lrn(pool(relu(conv(x, "conv2", 1, 2))))
  x = pool(relu(conv(x, "conv3", 1, 1)))
  x = g.op("Flatten", [g.op("Transpose", [x], 4, perm=[0, 2, 3, 1])], 2, axis=1)
  for name in [f"fc{i + 1}" for i in range(len(cfg.model.fc_features))] + ["age_head"]:
    x = g.op("Gemm", [x, np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])], 2)
    if name != "age_head":
      x = relu(x)

  f = cfg.formulation  # the decoders of formulations.get_formulation, from the same rules
  outputs = {}
  if f.name in formulations.REGRESSION:
    outputs["age"] = rules.regression_age(x, float(f.regression_offset), float(f.regression_scale), g)
  elif f.name in formulations.ORDINAL:
    outputs["age"] = rules.ordinal_age(x, float(f.min_age), g)
  else:
    bins = losses.bin_ages(f.num_classes, f.min_age)
    outputs["age"] = rules.softmax_age(x, bins, formulations.softmax_decode(f), g)
    outputs["spread"] = rules.softmax_spread(x, bins, g)
  if calibration is not None:  # as conformal.Calibration.intervals
    q = np.asarray(calibration.quantiles(coverage)[0], np.float32)
    outputs["low"], outputs["high"] = rules.interval(outputs["age"], outputs.get("spread"), q,
                                                     calibration.method in conformal.SPREAD_METHODS,
                                                     conformal.SIGMA_FLOOR, g)

  final = []
  for name, tensor in sorted(outputs.items()):
    g.nodes.append(helper.make_node("Identity", [tensor.name], [name]))
    final.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]))
  graph = helper.make_graph(g.nodes, "age_jax", [helper.make_tensor_value_info(
      "faces", TensorProto.UINT8, ["batch", load, load, 3])], final, g.inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="age_jax")
  onnx.checker.check_model(model)
  return model


def export_workdir(workdir: str, out: str, step: int | None = None,
                   coverage: float = conformal.DEFAULT_COVERAGE, calibrate: bool = False) -> list[str]:
  """Writes the workdir's checkpoint as ONNX to `out`; returns the output names. The interval's
  calibration must belong to these weights (export.calibration_of; calibrate: make it first)."""
  import json
  import os

  import jax

  from age_jax.evaluate import restore
  from age_jax.export import input_contract
  exp, cfg, state, normalizer = restore(workdir, step)
  _refuse(cfg)
  calibration = calibration_of(workdir, exp, cfg, normalizer, state, calibrate)
  model = build_model(cfg, jax.device_get(state.params), normalizer, calibration, coverage)
  meta = {"input": input_contract(cfg), "step": int(state.step), "interval": None if calibration is None else {
      "coverage": coverage, "method": calibration.method, "calibrated_on": calibration.source,
      "calibration_faces": calibration.faces, "calibration_step": calibration.step}}
  for key, value in meta.items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.SerializeToString())
  os.replace(tmp, out)
  return [o.name for o in model.graph.output]
