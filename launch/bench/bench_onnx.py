"""ONNX export per family on this machine's CPU: file size, conversion and load time, faces/s in
onnxruntime against age_jax's jitted function (export.inference_function) on the same real crops
(interleaved rounds), and the largest age difference:
  python -m launch.bench.bench_onnx [--families=xing_baseline,resnet18,...] [--batch_size=16 --rounds=3]
Weights are random (drawn in numpy, random_weights.py): speed and parity do not depend on training, and
no checkpoint of each family is needed. Sizes are the default config's (256 px loads, 227 crops).
"""
import os
import tempfile
import time

from absl import app, flags

from launch import common
from launch.bench.random_weights import random_state, with_face_statistics

# family -> config overrides (the default config is the Xing baseline at 227 px)
FAMILIES = {
    "xing_baseline": {},
    "vgg16": {"model.name": "vgg16"},
    "resnet18": {"model.name": "resnet18"},
    "resnet34": {"model.name": "resnet34"},
    "resnet50": {"model.name": "resnet50"},
    "efficientnetv2_s": {"model.name": "efficientnetv2_s"},
    "efficientnetv2_m": {"model.name": "efficientnetv2_m"},
    "efficientnetv2_l": {"model.name": "efficientnetv2_l"},
    "parallel": {"multitask.kind": "parallel"},
    "deep": {"multitask.kind": "deep"},
    "hybrid": {"multitask.kind": "hybrid"},
}

_FAMILIES = flags.DEFINE_list("families", list(FAMILIES), f"Which of {list(FAMILIES)}.")
_FORMULATION = flags.DEFINE_string("formulation", "dldl_v2", "config.formulation.name of every model.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Faces per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds of each runtime, interleaved.")
_FACES = flags.DEFINE_string("faces_dir", "", "Folder of face images (default: ../shared's UTKFace beside "
                             "the repository, or $AGE_JAX_SHARED's).")


def _faces(folder, n, load_size):
  import numpy as np
  from age_jax.data import pipeline
  names = sorted(os.listdir(folder))
  picks = [names[i] for i in range(0, len(names), max(1, len(names) // n))[:n]]
  return np.stack([pipeline.decode_image(open(os.path.join(folder, p), "rb").read(), load_size) for p in picks])


def bench_family(name, overrides, faces, rounds):
  """One line of figures for one family."""
  import jax
  import numpy as np
  import onnxruntime
  from age_jax import config as config_lib
  from age_jax.inference import export_jax as export
  from age_jax.data import pipeline
  from age_jax.inference import export_onnx

  cfg = config_lib.default_config()
  cfg.formulation.name = _FORMULATION.value
  for dotted, value in overrides.items():
    section, key = dotted.split(".")
    cfg[section][key] = value
  cfg, exp = export.portable_experiment(cfg)
  offset, size = export.center_crop_offsets(cfg)
  crops = faces[:, offset:offset + size, offset:offset + size].astype(np.float32)
  normalizer = pipeline.Normalizer("mean_image", crops.mean(0), 1 / 64)
  state = with_face_statistics(exp.model, random_state(exp.model, cfg.data.image_size), normalizer(crops))
  infer = jax.jit(export.inference_function(exp, cfg, state, normalizer))
  t0 = time.perf_counter()
  want = np.asarray(jax.block_until_ready(infer(faces))["age"])
  jax_first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  model = export_onnx.build_model(exp, cfg, state, normalizer)
  convert_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "age.onnx")
    with open(path, "wb") as f:
      f.write(model.SerializeToString())
    megabytes = os.path.getsize(path) / 1e6
    t0 = time.perf_counter()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
  got = session.run(["age"], {"faces": faces})[0]
  runs = {"onnxruntime": lambda: session.run(None, {"faces": faces}),
          "age_jax": lambda: jax.block_until_ready(infer(faces))}
  timings = {k: [] for k in runs}
  for _ in range(rounds):
    for key, run in runs.items():
      t0 = time.perf_counter()
      run()
      timings[key].append(time.perf_counter() - t0)
  rate = {k: len(faces) / float(np.median(v)) for k, v in timings.items()}
  return (f"{name:17s} {megabytes:8.1f} MB  convert {convert_s:6.1f} s  ort load {load_s:5.2f} s  "
          f"jax compile+first {jax_first_s:6.1f} s  faces/s ort {rate['onnxruntime']:7.1f} jax {rate['age_jax']:7.1f}  "
          f"max |age diff| {np.max(np.abs(got - want)):.1e} y (ages {want.min():.1f}-{want.max():.1f})")


def main(argv):
  del argv
  common.setup_jax()
  unknown = [f for f in _FAMILIES.value if f not in FAMILIES]
  if unknown:
    raise app.UsageError(f"--families: unknown {unknown}; known {list(FAMILIES)}")
  from age_jax import config as config_lib
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  shared = os.environ.get("AGE_JAX_SHARED", os.path.join(root, "..", "shared"))
  folder = _FACES.value or os.path.join(shared, "data", "utkface", "UTKFace")
  if not os.path.isdir(folder):
    raise app.UsageError(f"--faces_dir: no folder {folder}")
  faces = _faces(folder, _BATCH.value, config_lib.default_config().data.load_size)
  import onnxruntime
  print(f"batch {len(faces)} real faces, {_ROUNDS.value} interleaved rounds (median), onnxruntime "
        f"{onnxruntime.__version__}, {os.cpu_count()} CPUs, formulation {_FORMULATION.value}", flush=True)
  for name in _FAMILIES.value:
    print(bench_family(name, FAMILIES[name], faces, _ROUNDS.value), flush=True)


if __name__ == "__main__":
  app.run(main)
