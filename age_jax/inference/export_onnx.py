"""ONNX export of any trained model: runs with onnxruntime alone.

The graph is the jax.export artifact's own function (export.inference_function: centre crop,
normalisation, network, decoder, mirror averaging, the conformal interval, argmax of the
gender/race logits) converted primitive by primitive (jaxpr_onnx), so both artifacts compute one
implementation, for every network, head and multi-task net:
  input 'faces'   uint8 (batch, L, L, 3) RGB canonical crops, batch dynamic (export.input_contract)
  outputs         'age' (+ 'spread' for softmax heads, + 'low'/'high' with a calibration,
                  + 'gender'/'race' int32 for multi-task nets), each (batch,)
The input contract and the interval's provenance are stored as metadata_props (JSON values).
Refused, with the reason: bfloat16 networks (onnxruntime's CPU kernels are float32) and what
export.center_crop_offsets refuses (the 'lae' preset, eval_views > 1).
"""
import json
import os

from age_jax import conformal
from age_jax.inference.export_jax import calibration_of, inference_function, input_contract, portable_experiment
from age_jax.inference import jaxpr_onnx

OPSET = jaxpr_onnx.OPSET
INPUT = "faces"


def _refuse(cfg):
  if cfg.model.get("dtype", "float32") != "float32":
    raise ValueError(f"ONNX export needs config.model.dtype='float32', not {cfg.model.dtype!r}: onnxruntime's "
                     "CPU convolutions have no bfloat16 kernels; use the jax.export artifact (launch.export)")


def build_model(exp, cfg, state, normalizer, calibration=None, coverage: float = conformal.DEFAULT_COVERAGE):
  """The onnx.ModelProto of export.inference_function(exp, cfg, state, ...) with a dynamic batch.
  exp/cfg: export.portable_experiment's (XLA convolutions, one device)."""
  import jax
  import jax.numpy as jnp

  _refuse(cfg)
  infer = inference_function(exp, cfg, state, normalizer, calibration, coverage)
  load = cfg.data.load_size
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"batch, {load}, {load}, 3"), jnp.uint8)
  return jaxpr_onnx.convert(infer, spec, input_names=[INPUT], graph_name="age_jax", producer="age_jax")


def metadata(cfg, state, calibration, coverage) -> dict:
  """What metadata_props hold: the input contract, where the model came from, the interval's calibration."""
  return {"input": input_contract(cfg), "model": cfg.model.name, "formulation": cfg.formulation.name,
          "multitask": cfg.multitask.kind, "mirror": bool(cfg.eval.mirror), "step": int(state.step),
          "interval": None if calibration is None else {
              "coverage": coverage, "method": calibration.method, "calibrated_on": calibration.source,
              "calibration_faces": calibration.faces, "calibration_mirror": calibration.mirror,
              "calibration_step": calibration.step}}


def export_workdir(workdir: str, out: str, step: int | None = None,
                   coverage: float = conformal.DEFAULT_COVERAGE, calibrate: bool = False) -> list[str]:
  """Writes the workdir's checkpoint as ONNX to `out`; returns the output names. The interval's
  calibration must belong to these weights (export.calibration_of; calibrate: make it first)."""
  from age_jax.inference.restore import restore
  restored, stage_cfg, state, normalizer = restore(workdir, step)
  _refuse(stage_cfg)
  calibration = calibration_of(workdir, restored, stage_cfg, normalizer, state, calibrate)
  cfg, exp = portable_experiment(stage_cfg)
  model = build_model(exp, cfg, state, normalizer, calibration, coverage)
  for key, value in metadata(cfg, state, calibration, coverage).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.SerializeToString())
  os.replace(tmp, out)
  return [o.name for o in model.graph.output]
