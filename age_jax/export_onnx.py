"""ONNX export of the Xing baseline (single task, dense head): runs with onnxruntime alone.

The same function as the jax.export artifact (export.py), written op by op with the `onnx`
package: uint8 NHWC faces (B, L, L, 3) -> centre crop, normalisation -> NCHW -> conv/ReLU/max
pool/LRN x 2, conv/ReLU/pool, flatten (in NHWC order, as flax reshapes), FC/ReLU x 2, head ->
the formulation's decoder -> age (+ spread for softmax heads, + low/high with a calibration).
ONNX's LRN is exactly the Caffe form the model uses (x / (k + alpha/n * sum x^2)^beta, window
centred). Other networks, multi-task models and CORAL's head are refused with the reason.
"""
import numpy as np

from age_jax import ages, conformal, formulations
from age_jax.export import center_crop_offsets

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


def build_model(cfg, params, normalizer, calibration=None, coverage: float = conformal.DEFAULT_COVERAGE):
  """The onnx.ModelProto for a restored xing_baseline (params: numpy pytree of the checkpoint)."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  _refuse(cfg)
  offset, size = center_crop_offsets(cfg)
  nodes, inits = [], []
  counter = [0]

  def const(value, name=None, dtype=np.float32):
    counter[0] += 1
    name = name or f"c{counter[0]}"
    inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def op(kind, inputs, **attrs):
    counter[0] += 1
    out = f"t{counter[0]}_{kind}"
    nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
    return out

  x = op("Slice", ["faces", const([offset, offset], dtype=np.int64), const([offset + size] * 2, dtype=np.int64),
                   const([1, 2], dtype=np.int64)])
  x = op("Cast", [x], to=TensorProto.FLOAT)
  x = op("Mul", [op("Sub", [x, const(normalizer.mean)]), const(normalizer.scale)])
  x = op("Transpose", [x], perm=[0, 3, 1, 2])

  def conv(x, name, stride, pad):
    kernel = np.transpose(np.asarray(params[name]["kernel"]), (3, 2, 0, 1))  # HWIO -> OIHW
    return op("Conv", [x, const(kernel), const(params[name]["bias"])], strides=[stride, stride],
              pads=[pad, pad, pad, pad], kernel_shape=list(kernel.shape[2:]))

  pool = lambda x: op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
  lrn = lambda x: op("LRN", [x], size=5, alpha=1e-4, beta=0.75, bias=1.0)  # layers.LocalResponseNorm
  x = lrn(pool(op("Relu", [conv(x, "conv1", 4, 0)])))
  x = lrn(pool(op("Relu", [conv(x, "conv2", 1, 2)])))
  x = pool(op("Relu", [conv(x, "conv3", 1, 1)]))
  x = op("Flatten", [op("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)
  for name in [f"fc{i + 1}" for i in range(len(cfg.model.fc_features))] + ["age_head"]:
    x = op("Gemm", [x, const(params[name]["kernel"]), const(params[name]["bias"])])
    if name != "age_head":
      x = op("Relu", [x])

  f = cfg.formulation
  outputs = {}
  if f.name in formulations.REGRESSION:
    age = op("Add", [op("Mul", [op("Squeeze", [x, const([1], dtype=np.int64)]), const(f.regression_scale)]),
                     const(f.regression_offset)])
  elif f.name in formulations.ORDINAL:
    count = op("Cast", [op("Greater", [x, const(0.0)])], to=TensorProto.FLOAT)
    age = op("Add", [op("ReduceSum", [count, const([1], dtype=np.int64)], keepdims=0), const(f.min_age)])
  else:
    bins = (f.min_age + np.arange(f.num_classes)).astype(np.float32)
    p = op("Softmax", [x], axis=1)
    decode = f.decode if f.decode != "default" else formulations._DEFAULT_DECODE[f.name]
    mean = op("MatMul", [p, const(bins)])
    if decode == "argmax":
      age = op("Add", [op("Cast", [op("ArgMax", [x], axis=1, keepdims=0)], to=TensorProto.FLOAT), const(f.min_age)])
    else:
      age = mean
    centred = op("Sub", [const(bins[None]), op("Unsqueeze", [mean, const([1], dtype=np.int64)])])
    outputs["spread"] = op("Sqrt", [op("ReduceSum", [op("Mul", [p, op("Mul", [centred, centred])]),
                                                     const([1], dtype=np.int64)], keepdims=0)])
  outputs["age"] = age
  if calibration is not None:  # as conformal.Calibration.intervals
    q = np.asarray(calibration.quantiles(coverage)[0], np.float32)
    group = op("Clip", [op("Sub", [op("Ceil", [op("Div", [age, const(10.0)])]), const(1.0)]),
                        const(0.0), const(float(len(ages.GROUPS) - 1))])
    half = op("Gather", [const(q), op("Cast", [group], to=TensorProto.INT64)], axis=0)
    if calibration.method == "normalized":
      half = op("Mul", [half, op("Max", [outputs["spread"], const(conformal.SIGMA_FLOOR)])])
    outputs["low"] = op("Max", [op("Sub", [age, half]), const(0.0)])
    outputs["high"] = op("Add", [age, half])

  final = []
  for name, tensor in sorted(outputs.items()):
    nodes.append(helper.make_node("Identity", [tensor], [name]))
    final.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]))
  load = cfg.data.load_size
  graph = helper.make_graph(nodes, "age_jax", [helper.make_tensor_value_info(
      "faces", TensorProto.UINT8, ["batch", load, load, 3])], final, inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="age_jax")
  onnx.checker.check_model(model)
  return model


def export_workdir(workdir: str, out: str, step: int | None = None,
                   coverage: float = conformal.DEFAULT_COVERAGE) -> list[str]:
  """Writes the workdir's checkpoint as ONNX to `out`; returns the output names."""
  import os

  import jax

  from age_jax.evaluate import restore
  _, cfg, state, normalizer = restore(workdir, step)
  _refuse(cfg)
  model = build_model(cfg, jax.device_get(state.params), normalizer, conformal.load(workdir), coverage)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.SerializeToString())
  os.replace(tmp, out)
  return [o.name for o in model.graph.output]
