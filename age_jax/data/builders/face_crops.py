"""Build-time face crops: find one face per image and align it onto the canonical crop.

Rule for the face of an image (used by every builder and by `launch.evaluate`):
- the dataset's own landmarks when it ships them (FG-NET), converted to the five points by the
  builder; the record's face_box and face_score are then -1 (not detected);
- else the face faces/find.py chooses (detect with padding and refined landmarks, choose_face:
  the largest, most central), the images with several counted in `several_faces`;
- no face found: the image is dropped and counted (`no_face`), its name listed in the report.
Finding, choosing and the crop size live in age_jax/faces (inference uses them too); this module
holds what only builds do: the record fields, progress over a dataset, the stored JPEG.
"""
import concurrent.futures
import io
import sys
import time

import numpy as np
from PIL import Image

from age_jax.data.builders.records import SourceExample
from age_jax.faces import FaceDetector, align_to_canonical, choose_face, detect, read_rgb

JPEG_QUALITY = 95


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
