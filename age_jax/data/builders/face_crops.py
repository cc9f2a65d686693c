"""Build-time face crops: find one face per image and align it onto the canonical crop.

Rule for the face of an image (stated once, used by every builder and by `launch.evaluate`):
- the dataset's own landmarks when it ships them (FG-NET), converted to the five points by the
  builder; the record's face_box and face_score are then -1 (not detected);
- else every face the detector returns; of several, the one with the largest
  `box area - 2 * (distance of its centre from the image centre)^2` (InsightFace's rule: the
  largest, most central face), counted in `several_faces`;
- no face found: the image is dropped and counted (`no_face`), its name listed in the report.
The detector sees each image padded by PAD_FRACTION of its longer side (edge pixels repeated): a
tight face crop (UTKFace's chips) has the face touching its borders, where MTCNN misses it.
Each face's landmarks are then refined once: the detector runs again on the face warped into the
canonical frame at the template's own scale (UTKFACE_CHIP_SIZE), and those landmarks, mapped back,
replace the first ones. MTCNN's points depend on the face's scale and context in the image; the
second pass sees every face framed as the template's chips were, so a face gives nearly the same
crop wherever and however large it appears in a photo.
"""
import concurrent.futures
import dataclasses
import io
import sys
import time

import numpy as np
from PIL import Image, ImageOps

from age_jax.data.builders.records import SourceExample
from age_jax.faces import UTKFACE_CHIP_SIZE, FaceDetector, align, align_to_canonical, canonical_transform

JPEG_QUALITY = 95
PAD_FRACTION = 0.1
CROP_SIZE = 256  # the builder option crop_size's default


def run_crop_size(data_cfg) -> int:
  """The side at which a run's faces were aligned: load size when the pipeline aligned them
  (config.data.align), else its builds' crop_size; new faces are aligned the same way."""
  if data_cfg.align:
    return int(data_cfg.load_size)
  return int(dict(data_cfg.builder_options).get("crop_size", CROP_SIZE))


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


def face_fields(landmarks, box=None, score=None) -> dict:
  """The record fields of a chosen face; box and score -1 when the landmarks were not detected."""
  return {"landmarks": np.asarray(landmarks, np.float32).reshape(5, 2),
          "face_box": np.asarray(box if box is not None else [-1] * 4, np.float32).reshape(4),
          "face_score": np.float32(-1 if score is None else score)}


def default_detector():
  """The detector builds use (tests replace this)."""
  return FaceDetector()


def locate_faces(examples: list[SourceExample], report, detector_factory, *, dataset: str = "",
                 batch_size: int = 16, num_threads: int = 2, log_every_s: float = 30.0) -> list[SourceExample]:
  """Sets extras {'landmarks', 'face_box', 'face_score'} on every example (rule above); returns
  the examples with a face. Prints progress every log_every_s seconds while detecting."""
  todo = [e for e in examples if "landmarks" not in e.extras]
  for example in examples:
    if "landmarks" in example.extras:
      example.extras.update(face_fields(example.extras["landmarks"]))
  report.counts["detected_images"] = len(todo)
  report.counts.setdefault("several_faces", 0)
  if not todo:
    return list(examples)
  detector = detector_factory()
  start = last = time.time()
  lost = set()
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    for first in range(0, len(todo), batch_size):
      chunk = todo[first:first + batch_size]
      images = list(pool.map(lambda e: read_rgb(e.path), chunk))
      for example, image, faces in zip(chunk, images, detect(detector, images)):
        chosen = choose_face(faces, image.shape[1], image.shape[0])
        if chosen is None:
          report.drop("no_face", example.file_name)
          lost.add(id(example))
          continue
        if len(faces) > 1:
          report.counts["several_faces"] += 1
          report.note("several_faces", example.file_name)
        face = faces[chosen]
        example.extras.update(face_fields(face.landmarks, face.box, face.score))
      done, now = first + len(chunk), time.time()
      if now - last >= log_every_s or done == len(todo):
        rate = done / max(now - start, 1e-9)
        print(f"[age_jax] {dataset}: faces detected in {done}/{len(todo)} images ({rate:.1f} img/s, "
              f"ETA {(len(todo) - done) / rate:.0f} s)", file=sys.stderr, flush=True)
        last = now
  report.counts["face_seconds"] = round(time.time() - start, 2)
  return [e for e in examples if id(e) not in lost]


def canonical_jpeg(path: str, landmarks, size: int) -> bytes:
  """The image at path aligned onto the canonical crop (size x size), as JPEG bytes."""
  crop = align_to_canonical(read_rgb(path), np.asarray(landmarks, np.float64), size)
  buf = io.BytesIO()
  Image.fromarray(crop).save(buf, "JPEG", quality=JPEG_QUALITY)
  return buf.getvalue()
