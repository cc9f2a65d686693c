"""Export a trained workdir as one file that runs with JAX alone (no age_jax, flax or orbax).

The file is a zip of
  model.jax    jax.export's serialized StableHLO: uint8 RGB faces (B, L, L, 3), B symbolic,
               L = config.data.load_size (resized by the caller, PIL bilinear as in training)
               -> {'age', 'spread' (softmax heads), 'low', 'high' (with a calibration),
               'gender', 'race' (multi-task)}; preprocessing (the evaluation centre crop, the
               run's normalisation), network, decoder and the conformal interval at the coverage
               chosen at export time are all inside (with config.eval.mirror, the mirror
               averaging too), the weights as constants.
  meta.json    what the inputs and outputs are, and where the model came from.
The network is rebuilt with conv_lowering='xla' whatever it trained with: every lowering
computes the same function on the same weights (models/layers.py), and the CPU corner's oneDNN
custom calls (age_jax/cpu) exist only in this package's process, so none may reach the artifact.
"""
import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from age_jax import ages, conformal
from age_jax.train import experiment as experiment_lib

MODEL_ENTRY, META_ENTRY = "model.jax", "meta.json"
PLATFORMS = ("cpu", "cuda", "tpu")
FORMAT_VERSION = 1


def center_crop_offsets(cfg):
  if cfg.data.augment == "lae":
    raise ValueError("export: config.data.augment='lae' resizes before its evaluation crop, which the "
                     "artifact does not reproduce; export supports the 'xing' and 'none' presets")
  load, size = cfg.data.load_size, cfg.data.image_size
  return (load - size) // 2, size


def inference_function(exp, cfg, state, normalizer, calibration=None,
                       coverage: float = conformal.DEFAULT_COVERAGE):
  """A pure function uint8 (B, L, L, 3) -> outputs, closing over the weights (see module doc).
  exp must be built with conv_lowering='xla' for the result to be portable."""
  offset, size = center_crop_offsets(cfg)
  mean, scale = np.asarray(normalizer.mean, np.float32), np.asarray(normalizer.scale, np.float32)
  variables = {"params": jax.device_get(state.params)}
  if state.batch_stats:
    variables["batch_stats"] = jax.device_get(state.batch_stats)
  q = None
  if calibration is not None:
    q = np.asarray(calibration.quantiles(coverage)[0], np.float32)
    floor = np.float32(conformal.SIGMA_FLOOR)

  def infer(images):
    x = images[:, offset:offset + size, offset:offset + size, :].astype(jnp.float32)
    x = (x - mean) * scale
    apply = lambda views: exp.model.apply(variables, views, train=False)
    result = exp.objective.predictions(apply, x, bool(cfg.eval.mirror))
    age, spread = result["age"], result.get("spread")
    if q is not None:  # as conformal.Calibration.intervals
      group = ages.group_index(age, jnp)
      half = jnp.asarray(q)[group]
      if calibration.method == "normalized":
        half = half * jnp.maximum(spread, floor)
      result["low"], result["high"] = jnp.maximum(age - half, 0.0), age + half
    for task in ("gender", "race"):
      if task in result:
        result[task] = jnp.argmax(result[task], axis=-1).astype(jnp.int32)
    return result

  return infer


def portable_experiment(cfg):
  """The stage config's experiment with XLA's own convolutions and a one-device mesh."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.model.conv_lowering = "xla"
  cfg.mesh.data, cfg.mesh.fsdp = 1, 1
  return cfg, experiment_lib.build(cfg, devices=jax.devices()[:1])


def export_workdir(workdir: str, out: str, step: int | None = None,
                   coverage: float = conformal.DEFAULT_COVERAGE, platforms=PLATFORMS) -> dict:
  """Writes the artifact for the workdir's checkpoint to `out`; returns its meta.json dict."""
  from age_jax.evaluate import restore  # evaluate builds the training-side experiment
  _, stage_cfg, state, normalizer = restore(workdir, step)
  calibration = conformal.load(workdir)
  cfg, exp = portable_experiment(stage_cfg)
  infer = inference_function(exp, cfg, state, normalizer, calibration, coverage)
  load = cfg.data.load_size
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {load}, {load}, 3"), jnp.uint8)
  exported = jax.export.export(jax.jit(infer), platforms=tuple(platforms))(spec)
  meta = {"format_version": FORMAT_VERSION, "input": {"shape": ["batch", load, load, 3], "dtype": "uint8",
                                                      "layout": "NHWC RGB", "resize": "PIL bilinear"},
          "outputs": sorted(exported.out_tree.unflatten(list(range(len(exported.out_avals))))),
          "platforms": list(exported.platforms), "model": cfg.model.name, "formulation": cfg.formulation.name,
          "image_size": cfg.data.image_size, "step": int(state.step),
          "interval": None if calibration is None else {
              "coverage": coverage, "method": calibration.method, "calibrated_on": calibration.source,
              "calibration_step": calibration.step}}
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr(MODEL_ENTRY, bytes(exported.serialize()))
    z.writestr(META_ENTRY, json.dumps(meta, indent=1))
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  os.replace(tmp, out)
  return meta


def load_artifact(path: str):
  """(jax.export.Exported, meta) of an artifact; what a user without age_jax does in 4 lines."""
  with zipfile.ZipFile(path) as z:
    return jax.export.deserialize(bytearray(z.read(MODEL_ENTRY))), json.loads(z.read(META_ENTRY))
