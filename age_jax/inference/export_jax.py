"""Export a trained workdir as one file that runs with JAX alone (no age_jax, flax or orbax).

The file is a zip of
  model.jax    jax.export's serialized StableHLO: uint8 RGB faces (B, L, L, 3), B symbolic,
               L = config.data.load_size: each face the canonical crop (below), resized to L
               -> {'age', 'spread' (softmax heads), 'low', 'high' (with a calibration),
               'gender', 'race' (multi-task)}; preprocessing (the evaluation centre crop, the
               run's normalisation), network, decoder and the conformal interval at the coverage
               chosen at export time are all inside (with config.eval.mirror, the mirror
               averaging too), the weights as constants.
  meta.json    what the inputs and outputs are (meta['input']: the input contract: crop, template
               points, colour order, value range, what the model does inside), where the model
               came from, and what the interval was calibrated on (step, mirror, faces).
  align.py     ALIGN_RECIPE: numpy + PIL code that makes the input from a photo and any five-point
               detector's landmarks, as age_jax's own predictor does (faces/canonical.py).
The interval must belong to the exported weights: a calibration of another step or mirror is
refused (conformal.CalibrationMismatch) unless calibrate=True calibrates these weights first.
Preprocessing, decoding and intervals are the shared inference_rules (as evaluation's); the
calibration is chosen by inference/intervals.py (calibration_of), as the predictor's is.
The network is rebuilt with conv_lowering='xla' whatever it trained with: every lowering
computes the same function on the same weights (models/layers.py), and the CPU corner's oneDNN
custom calls (age_jax/cpu) exist only in this package's process, so none may reach the artifact.
"""
import inspect
import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from age_jax import conformal, inference_rules as rules
from age_jax.faces import portable
from age_jax.faces.canonical import CANONICAL_TEMPLATE, run_crop_size
from age_jax.inference.intervals import calibration_of  # export_onnx imports it from here too
from age_jax.inference.restore import restore
from age_jax.train import experiment as experiment_lib

MODEL_ENTRY, META_ENTRY, RECIPE_ENTRY = "model.jax", "meta.json", "align.py"
PLATFORMS = ("cpu", "cuda", "tpu")
FORMAT_VERSION = 2  # 2: meta['input'] holds the input contract; align.py; interval's step/mirror/faces
LANDMARK_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # image left/right

# What a user without age_jax runs to make the model's input from a photo and five landmarks from
# any detector (RetinaFace, MTCNN, MediaPipe, dlib's 68 points reduced to 5, ...): the similarity
# that takes the points onto the template (least squares, Umeyama), a bilinear warp at the crop
# size, low-passed first when it shrinks (faces/align.py's antialiasing), then a bilinear resize to
# the input size; exactly age_jax's Predictor path. The warp is faces/portable.py's source, the
# glue the photo export ships, so both exports carry one implementation.
ALIGN_RECIPE = '''"""Align a face for the exported age model: numpy + PIL only.

  model, meta = load("age.jaxexport")
  crop = align(photo, points, meta["input"])  # photo: uint8 HxWx3 RGB; points: (5, 2) (x, y) pixel
                                              # centres in meta['input']['landmark_order']
  ages = model.call(crop[None])["age"]
"""
import json, zipfile
import numpy as np
from PIL import Image, ImageFilter


''' + "\n\n".join(inspect.getsource(f) for f in (
    portable.similarity, portable.apply_transform, portable.warp_affine, portable._prefilter)) + '''

def align(photo, points, contract):
  """contract: meta['input'] of the artifact."""
  size = contract["crop_size"]
  template = np.asarray(contract["template_fractions"]) * size - 0.5  # pixel centres of the crop
  crop = warp_affine(np.asarray(photo), similarity(points, template), size)
  side = contract["shape"][1]
  if side != size:
    crop = np.asarray(Image.fromarray(crop).resize((side, side), Image.BILINEAR))
  return np.asarray(crop, np.uint8)


def load(path):
  """(jax.export.Exported, meta) of an artifact."""
  import jax
  with zipfile.ZipFile(path) as z:
    return jax.export.deserialize(bytearray(z.read("model.jax"))), json.loads(z.read("meta.json"))
'''


def input_contract(cfg) -> dict:
  """meta['input']: what the model expects, for a user without age_jax."""
  load, size = cfg.data.load_size, cfg.data.image_size
  return {"shape": ["batch", load, load, 3], "dtype": "uint8", "layout": "NHWC", "colour_order": "RGB",
          "value_range": [0, 255],
          "face": ("the canonical crop: the face warped by the least-squares similarity (rotation, uniform "
                   "scale, translation) that takes its five landmarks onto template_fractions * crop_size - "
                   "0.5 (pixel-centre coordinates), bilinear, black outside the photo, then resized to "
                   f"{load}x{load} (bilinear); align.py in this artifact does it"),
          "crop_size": run_crop_size(cfg.data), "template_fractions": CANONICAL_TEMPLATE.round(4).tolist(),
          "landmark_order": list(LANDMARK_ORDER),
          "inside_the_model": (f"centre crop {size}x{size}, (x - mean) * scale with the run's normaliser "
                               f"({cfg.data.normalize}), network, decoder ({cfg.formulation.name})"
                               + (", mean of the face and its mirror image" if cfg.eval.mirror else "")
                               + ", interval"),
          "resize": "PIL bilinear"}


def center_crop_offsets(cfg):
  if cfg.data.augment == "lae":
    raise ValueError("export: config.data.augment='lae' resizes before its evaluation crop, which the "
                     "artifact does not reproduce; export supports the centre-crop presets")
  if cfg.data.get("eval_views", 1) != 1:
    raise ValueError(f"export: config.data.eval_views={cfg.data.eval_views} averages shifted crops, which the "
                     "artifact does not reproduce (it reads the centre crop); export from a run with eval_views=1")
  load, size = cfg.data.load_size, cfg.data.image_size
  return (load - size) // 2, size


def inference_function(exp, cfg, state, normalizer, calibration=None,
                       coverage: float = conformal.DEFAULT_COVERAGE):
  """A pure function uint8 (B, L, L, 3) -> outputs, closing over the weights (see module doc).
  exp must be built with conv_lowering='xla' for the result to be portable."""
  _, size = center_crop_offsets(cfg)
  mean, scale = np.asarray(normalizer.mean, np.float32), np.asarray(normalizer.scale, np.float32)
  variables = {"params": jax.device_get(state.params)}
  if state.batch_stats:
    variables["batch_stats"] = jax.device_get(state.batch_stats)
  q = None
  if calibration is not None:
    q = np.asarray(calibration.quantiles(coverage)[0], np.float32)
  xp = rules.jax_ops()

  def infer(images):
    x = rules.normalize(xp.astype(rules.center_crop(images, size), xp.float32), mean, scale)
    apply = lambda views: exp.model.apply(variables, views, train=False)
    result = exp.objective.predictions(apply, x, bool(cfg.eval.mirror))
    age, spread = result["age"], result.get("spread")
    if q is not None:  # as conformal.Calibration.intervals
      result["low"], result["high"] = rules.interval(age, spread, q, calibration.method in conformal.SPREAD_METHODS,
                                                     conformal.SIGMA_FLOOR, xp)
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
                   coverage: float = conformal.DEFAULT_COVERAGE, platforms=PLATFORMS, calibrate: bool = False) -> dict:
  """Writes the artifact for the workdir's checkpoint to `out`; returns its meta.json dict.
  calibrate: calibrate these weights on the validation split first when they have no calibration."""
  restored, stage_cfg, state, normalizer = restore(workdir, step)
  calibration = calibration_of(workdir, restored, stage_cfg, normalizer, state, calibrate)
  cfg, exp = portable_experiment(stage_cfg)
  infer = inference_function(exp, cfg, state, normalizer, calibration, coverage)
  load = cfg.data.load_size
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {load}, {load}, 3"), jnp.uint8)
  exported = jax.export.export(jax.jit(infer), platforms=tuple(platforms))(spec)
  meta = {"format_version": FORMAT_VERSION, "input": input_contract(cfg),
          "outputs": sorted(exported.out_tree.unflatten(list(range(len(exported.out_avals))))),
          "platforms": list(exported.platforms), "model": cfg.model.name, "formulation": cfg.formulation.name,
          "image_size": cfg.data.image_size, "step": int(state.step),
          "interval": None if calibration is None else {
              "coverage": coverage, "method": calibration.method, "calibrated_on": calibration.source,
              "calibration_faces": calibration.faces, "calibration_mirror": calibration.mirror,
              "calibration_step": calibration.step}}
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr(MODEL_ENTRY, bytes(exported.serialize()))
    z.writestr(META_ENTRY, json.dumps(meta, indent=1))
    z.writestr(RECIPE_ENTRY, ALIGN_RECIPE)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  os.replace(tmp, out)
  return meta


def load_artifact(path: str):
  """(jax.export.Exported, meta) of an artifact; what a user without age_jax does in 4 lines."""
  with zipfile.ZipFile(path) as z:
    return jax.export.deserialize(bytearray(z.read(MODEL_ENTRY))), json.loads(z.read(META_ENTRY))
