"""The pasted-face check: does a face give the same age wherever it sits in a photo?

For each chip (a face crop as the dataset ships it), ages from:
  chip_as_trained  the chip through the run's own input pipeline (as evaluation sees it);
  chip_aligned     the chip -> detect -> align onto the canonical crop -> age;
  pasted_aligned   the chip pasted into a larger photo (data/paste.py) -> detect -> align -> age;
  pasted_whole     the same photo resized whole, no detection (what a model without a detector sees).
A face is 'found' when the detector returns one (of several, the rule of faces.choose_face).
The '_mirrored' ages average each crop's age with its mirror image's (Predictor.crop_ages).

`check_scales` pastes every chip at fixed scales (1-10x: a phone photo's face is 5-20x the crop)
with and without sensor noise at the photo's full resolution, a chunk of photos at a time (a 10x
photo is ~3000 px a side), and compares each with the chips detected and aligned.
"""
import sys
import time

import numpy as np

from age_jax import metrics
from age_jax.data import paste
from age_jax.faces import align_to_canonical, choose_face, detect


def _chosen(detector, images, chunk=16, label="", refine=True):
  """The chosen face of each image (None when none), in chunks with a progress line."""
  out, start = [], time.time()
  for first in range(0, len(images), chunk):
    part = images[first:first + chunk]
    for image, faces in zip(part, detect(detector, part, refine=refine)):
      k = choose_face(faces, image.shape[1], image.shape[0])
      out.append(None if k is None else faces[k])
    if label:
      print(f"[age_jax] {label}: detected {len(out)}/{len(images)} ({len(out) / (time.time() - start):.1f} img/s)",
            file=sys.stderr, flush=True)
  return out


def _aligned_ages(predictor, images, faces, mirror=False):
  crops = [align_to_canonical(im, np.asarray(f.landmarks, np.float64), predictor.crop_size)
           for im, f in zip(images, faces) if f is not None]
  ages = iter(a.age for a in predictor.crop_ages(crops, mirror=mirror))
  return np.array([next(ages) if f is not None else np.nan for f in faces])


def check(predictor, chips: list[np.ndarray], true_ages, *, seed: int = 0, photo_size: int = 320,
          as_trained=None, verbose: bool = False, refine: bool = True) -> dict:
  """The four ages per chip and their summary: found fractions, MAE of each against the true
  ages, and pasted_aligned against chip_aligned (on faces found in both). as_trained: the
  chips' ages through the training pipeline, when the caller has them."""
  rng = np.random.default_rng(seed)
  photos = [paste.paste(chip, rng, photo_size)[0] for chip in chips]
  detector = predictor.detector
  chip_faces = _chosen(detector, chips, label="chips" if verbose else "", refine=refine)
  photo_faces = _chosen(detector, photos, label="pasted photos" if verbose else "", refine=refine)
  ages = {"chip_aligned": _aligned_ages(predictor, chips, chip_faces),
          "pasted_aligned": _aligned_ages(predictor, photos, photo_faces),
          "chip_aligned_mirrored": _aligned_ages(predictor, chips, chip_faces, mirror=True),
          "pasted_aligned_mirrored": _aligned_ages(predictor, photos, photo_faces, mirror=True),
          "pasted_whole": np.array([a.age for a in predictor.crop_ages(photos)])}
  if as_trained is not None:
    ages["chip_as_trained"] = np.asarray(as_trained, np.float64)
  true_ages = np.asarray(true_ages, np.float64)
  both = ~np.isnan(ages["chip_aligned"]) & ~np.isnan(ages["pasted_aligned"])
  summary = {"n": len(chips), "found_chips": float(np.mean([f is not None for f in chip_faces])),
             "found_pasted": float(np.mean([f is not None for f in photo_faces])), "n_both": int(both.sum()),
             "mae_vs_true": {k: metrics.mae(v[both], true_ages[both]) for k, v in ages.items()},
             "pasted_vs_chip_aligned": metrics.mae(ages["pasted_aligned"][both], ages["chip_aligned"][both]),
             "pasted_vs_chip_aligned_mirrored": metrics.mae(ages["pasted_aligned_mirrored"][both],
                                                            ages["chip_aligned_mirrored"][both]),
             "whole_vs_chip_aligned": metrics.mae(ages["pasted_whole"][both], ages["chip_aligned"][both])}
  return {"summary": summary, "ages": {k: v.tolist() for k, v in ages.items()}}


def check_scales(predictor, chips: list[np.ndarray], true_ages, scales=(1, 3, 6, 10), noises=(0.0, 8.0), *,
                 seed: int = 0, detector_for=None, chunk: int = 8, verbose: bool = False,
                 refine: bool = True) -> dict:
  """Per (scale, noise): the chips pasted at exactly that scale (random angle and offset, the photo
  just large enough), with that sensor noise, detected, aligned and aged, against the chips
  detected and aligned. detector_for(scale) -> the detector for that scale (default: the
  predictor's). Returns {'chips': summary, 'rows': [summary per (scale, noise)], 'ages': ...}."""
  true_ages = np.asarray(true_ages, np.float64)
  chip_faces = _chosen(predictor.detector, chips, label="chips" if verbose else "", refine=refine)
  chip_ages = _aligned_ages(predictor, chips, chip_faces, mirror=True)
  rows, all_ages = [], {"chip_aligned_mirrored": chip_ages.tolist()}
  for scale in scales:
    detector = detector_for(scale) if detector_for else predictor.detector
    rng, start = np.random.default_rng(seed), time.time()
    ages, found = {noise: [] for noise in noises}, {noise: 0 for noise in noises}
    for first in range(0, len(chips), chunk):  # a chunk of photos at a time: 10x photos are large
      clean = [paste.paste(c, rng, None, scale=(scale, scale))[0] for c in chips[first:first + chunk]]
      for noise in noises:  # the same photos with and without noise: a paired comparison
        photos = [paste.sensor_noise(p, rng, noise) for p in clean]
        faces = _chosen(detector, photos, refine=refine)
        found[noise] += sum(f is not None for f in faces)
        ages[noise].extend(_aligned_ages(predictor, photos, faces, mirror=True))
    for noise in noises:
      pasted = np.asarray(ages[noise])
      both = ~np.isnan(chip_ages) & ~np.isnan(pasted)
      row = {"scale": float(scale), "noise": float(noise), "found": found[noise] / len(chips), "n_both": int(both.sum()),
             "mae_pasted": metrics.mae(pasted[both], true_ages[both]),
             "mae_chips": metrics.mae(chip_ages[both], true_ages[both]),
             "pasted_vs_chip": metrics.mae(pasted[both], chip_ages[both])}
      row["mae_gap"] = row["mae_pasted"] - row["mae_chips"]
      rows.append(row)
      all_ages[f"pasted_{scale:g}x_noise{noise:g}"] = pasted.tolist()
      if verbose:
        print(f"[age_jax] scale {scale:g}x noise {noise:g}: found {row['found']:.3f}, MAE {row['mae_pasted']:.3f} "
              f"vs chips {row['mae_chips']:.3f} (gap {row['mae_gap']:+.3f}), per face {row['pasted_vs_chip']:.3f} "
              f"({time.time() - start:.0f}s for this scale)", file=sys.stderr, flush=True)
  chips_summary = {"n": len(chips), "found": float(np.mean([f is not None for f in chip_faces])),
                   "mae": metrics.mae(chip_ages[~np.isnan(chip_ages)], true_ages[~np.isnan(chip_ages)])}
  return {"chips": chips_summary, "rows": rows, "ages": all_ages}
