"""Finding faces in images: read a photo upright, detect every face, choose one.

Used alike by the dataset builders (data/builders/face_crops.py, one face per image) and by
inference (age_jax/inference: every face of a photo, or the chosen one in the checks).

Rule for the face of an image:
- every face the detector returns; of several, the one with the largest
  `box area - 2 * (distance of its centre from the image centre)^2` (InsightFace's rule: the
  largest, most central face);
- the detector sees each image padded by PAD_FRACTION of its longer side (edge pixels repeated): a
  tight face crop (UTKFace's chips) has the face touching its borders, where MTCNN misses it.
Each face's landmarks are then refined once: the detector runs again on the face warped into the
canonical frame at the template's own scale (UTKFACE_CHIP_SIZE), and those landmarks, mapped back,
replace the first ones. MTCNN's points depend on the face's scale and context in the image; the
second pass sees every face framed as the template's chips were, so a face gives nearly the same
crop wherever and however large it appears in a photo.
"""
import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

from age_jax.faces import align
from age_jax.faces.canonical import UTKFACE_CHIP_SIZE, canonical_transform

PAD_FRACTION = 0.1


def read_rgb(source) -> np.ndarray:
  """A path or bytes -> uint8 HxWx3 RGB, turned upright by its EXIF orientation."""
  with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.uint8)


def choose_face(faces, width: int, height: int) -> int | None:
  """Index of the face to keep (rule above), or None for no face."""
  if not faces:
    return None
  centre = np.array([width, height], np.float64) / 2
  def value(face):
    x0, y0, x1, y1 = np.asarray(face.box, np.float64)
    offset = np.array([x0 + x1, y0 + y1]) / 2 - centre
    return (x1 - x0) * (y1 - y0) - 2.0 * float(offset @ offset)
  return int(max(range(len(faces)), key=lambda i: value(faces[i])))


def detect(detector, images: list[np.ndarray], refine: bool = True) -> list[list]:
  """detector.detect_many on the padded images, boxes and landmarks in the images' own
  coordinates, landmarks refined in the canonical frame (above); an image the detector refuses
  (e.g. too small) has no face."""
  found = _detect_padded(detector, images)
  if not refine:
    return found
  frames = [(k, i, canonical_transform(face.landmarks, UTKFACE_CHIP_SIZE))
            for k, faces in enumerate(found) for i, face in enumerate(faces)]
  crops = [align.warp_affine(images[k], matrix, UTKFACE_CHIP_SIZE) for k, _, matrix in frames]
  second = _detect_padded(detector, crops)
  for (k, i, matrix), crop, faces in zip(frames, crops, second):
    chosen = choose_face(faces, UTKFACE_CHIP_SIZE, UTKFACE_CHIP_SIZE)
    if chosen is None:  # keep the first landmarks
      continue
    back = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    found[k][i] = dataclasses.replace(found[k][i], landmarks=align.apply_transform(back, faces[chosen].landmarks))
  return found


def _detect_padded(detector, images: list[np.ndarray]) -> list[list]:
  pads = [round(PAD_FRACTION * max(im.shape[:2])) for im in images]
  padded = [np.pad(im, ((p, p), (p, p), (0, 0)), mode="edge") for im, p in zip(images, pads)]
  try:
    found = detector.detect_many(padded) if padded else []
  except ValueError:
    found = []
    for image in padded:
      try:
        found.append(detector.detect(image))
      except ValueError:
        found.append([])
  return [[dataclasses.replace(f, box=np.asarray(f.box, np.float64) - p, landmarks=np.asarray(f.landmarks, np.float64) - p)
           for f in faces] for faces, p in zip(found, pads)]
