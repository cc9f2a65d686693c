"""Photos/s, photo to ages, at 640x480 on this CPU: the exported folder's bare pipeline
(portable.py + onnxruntime, in a `python -I` that cannot import JAX or age_jax) against age_jax's
Predictor (launch.predict's path), on the same photos, with their largest differences.

  python -m launch.export --workdir=W --out=EXPORT --with_faces
  python -m launch.bench.bench_photo_export --workdir=W --export_dir=EXPORT \
      [--utkface=../shared/data/utkface/UTKFace --photos=16 --rounds=3]

Each photo is a random background with one real UTKFace chip pasted at 0.6-1.5x (a 120-300 px
face). Both sides first run every photo once untimed (JAX compiles its shapes then; onnxruntime
plans its graphs), then --rounds timed passes; photos/s is the median pass.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir the folder was exported from.")
_EXPORT = flags.DEFINE_string("export_dir", None, "A folder written by launch.export --with_faces.")
_UTKFACE = flags.DEFINE_string("utkface", "../shared/data/utkface/UTKFace", "Folder of UTKFace chips.")
_PHOTOS = flags.DEFINE_integer("photos", 16, "640x480 photos timed.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed passes over the photos (after one untimed).")
_SEED = flags.DEFINE_integer("seed", 0, "Which chips, scales and places.")
flags.mark_flags_as_required(["workdir", "export_dir"])

# Run by a `python -I` child: the folder's own portable.py, JAX and age_jax unimportable.
_BARE = """
import importlib.abc, importlib.util, json, sys, time
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "age_jax", "flax"):
      raise ImportError(name)
sys.meta_path.insert(0, Refuse())
folder, rounds, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
spec = importlib.util.spec_from_file_location("portable", folder + "/portable.py")
portable = importlib.util.module_from_spec(spec)
spec.loader.exec_module(portable)
t0 = time.perf_counter()
pipeline = portable.load(folder)
load_s = time.perf_counter() - t0
photos = [portable.read_rgb(p) for p in paths]
faces = [portable.as_json(pipeline.photo(p)) for p in photos]  # untimed pass
passes = []
for _ in range(rounds):
  t0 = time.perf_counter()
  for p in photos:
    pipeline.photo(p)
  passes.append(time.perf_counter() - t0)
print(json.dumps({"load_s": load_s, "passes": passes, "faces": faces}))
"""


def photos(folder, n, seed):
  from age_jax.data import paste
  names = sorted(os.listdir(folder))
  rng = np.random.default_rng(seed)
  out = []
  for i in rng.choice(len(names), n, replace=False):
    chip = np.asarray(Image.open(os.path.join(folder, names[i])).convert("RGB"))
    side = int(chip.shape[0] * rng.uniform(0.6, 1.5))
    photo = paste.background(rng, 640)[:480].copy()
    y, x = rng.integers(0, 480 - side + 1), rng.integers(0, 640 - side + 1)
    photo[y:y + side, x:x + side] = np.asarray(Image.fromarray(chip).resize((side, side), Image.BILINEAR))
    out.append(photo)
  return out


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def main(argv):
  del argv
  common.setup_jax()
  from age_jax.inference import predict
  images = photos(_UTKFACE.value, _PHOTOS.value, _SEED.value)
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for k, image in enumerate(images):
      paths.append(os.path.join(tmp, f"{k}.png"))
      Image.fromarray(image).save(paths[-1])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    run = subprocess.run([sys.executable, "-I", "-c", _BARE, os.path.abspath(_EXPORT.value), str(_ROUNDS.value),
                          *paths], env=env, capture_output=True, text=True, check=False)
    if run.returncode:
      raise RuntimeError(f"the bare pipeline failed:\n{run.stderr[-3000:]}")
    bare = json.loads(run.stdout)

  t0 = time.perf_counter()
  predictor = predict.Predictor(_WORKDIR.value)
  restore_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  expected = [predictor.photo(image) for image in images]  # untimed pass: compiles
  first_s = time.perf_counter() - t0
  passes = []
  for _ in range(_ROUNDS.value):
    t0 = time.perf_counter()
    for image in images:
      predictor.photo(image)
    passes.append(time.perf_counter() - t0)

  n = len(images)
  same_count = sum(len(a) == len(b) for a, b in zip(bare["faces"], expected))
  pairs = [(g, w) for a, b in zip(bare["faces"], expected) if len(a) == len(b) for g, w in zip(a, b)]
  print(f"{n} photos 640x480, {sum(map(len, expected))} faces (Predictor); {_ROUNDS.value} timed passes, median")
  print(f"bare onnxruntime pipeline: {n / np.median(bare['passes']):.2f} photos/s (load {bare['load_s']:.2f} s)")
  print(f"age_jax Predictor:         {n / np.median(passes):.2f} photos/s (restore {restore_s:.2f} s, "
        f"first pass with compilation {first_s:.1f} s)")
  if pairs:
    iou = min(_iou(g["box"], w.box) for g, w in pairs)
    age = max(abs(g["age"] - w.age) for g, w in pairs)
    ends = [abs(g[s] - getattr(w, s)) for g, w in pairs for s in ("low", "high")
            if g.get(s) is not None and getattr(w, s) is not None]
    print(f"parity: same face count on {same_count}/{n} photos; min IoU {iou:.4f}; max |age diff| {age:.4f} years; "
          f"max |low/high diff| {max(ends, default=float('nan')):.4f}")

if __name__ == "__main__":
  app.run(main)
