"""FG-NET aging database: 1,002 images of 82 subjects with 68-point landmarks.

Layout: images/001A02.JPG (subject 001 at age 02; a trailing letter such as 010A07a.JPG marks
a second image at the same age) and points/001a02.pts (68 'x y' lines between braces, after a
'version:' and 'n_points: 68' header) in FG-NET's own markup, not iBUG's (see `five_points`).
Records keep the five alignment points as `landmarks` (5, 2), in the order of the alignment
template. Protocol: leave-one-person-out; all images are stored
in split 'full' with fold = the subject's rank, so 'fold{k}_test' is subject k and
'fold{k}_train' everyone else. Gender and race are unknown (-1).
"""
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from age_jax.data.builders import base, labels_csv, splits
from age_jax.data.builders.labels_csv import BadLabel
from age_jax.data.builders.records import SourceExample, is_image, relative_name

NUM_POINTS = 68
# FG-NET's markup (0-based): 27-31 image-left eye (contour, pupil 31), 32-36 image-right eye
# (pupil 36), 48 / 54 image-left / image-right mouth corner, 67 nose tip.
_PUPIL_LEFT, _PUPIL_RIGHT, _NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = 31, 36, 67, 48, 54
_NAME = re.compile(r"^(?P<subject>\d{3})A(?P<age>\d{2})(?P<extra>[a-z]?)\.jpe?g$", re.IGNORECASE)


def read_pts(path: str, num_points: int = NUM_POINTS) -> np.ndarray:
  """(num_points, 2) float32 from a .pts file; BadLabel naming the file and line otherwise."""
  with open(path) as f:
    lines = [line.strip() for line in f]
  try:
    start, end = lines.index("{"), lines.index("}")
  except ValueError:
    raise BadLabel(f"{path}: no '{{' ... '}}' block of points") from None
  for number, line in enumerate(lines[:start], start=1):
    if line.lower().startswith("n_points"):
      declared = line.split(":", 1)[-1].strip()
      if declared != str(num_points):
        raise BadLabel(f"{path}:{number}: n_points {declared}, expected {num_points}")
  points = []
  for number in range(start + 1, end):
    fields = lines[number].split()
    try:
      if len(fields) != 2:
        raise ValueError
      points.append((float(fields[0]), float(fields[1])))
    except ValueError:
      raise BadLabel(f"{path}:{number + 1}: expected 'x y', got {lines[number]!r}") from None
  if len(points) != num_points:
    raise BadLabel(f"{path}: {len(points)} points, expected {num_points}")
  return np.asarray(points, np.float32)


def five_points(pts68: np.ndarray) -> np.ndarray:
  """(68, 2) FG-NET points -> (5, 2) float32: image-left eye, image-right eye, nose tip,
  image-left mouth corner, image-right mouth corner (the alignment template's order)."""
  pts = np.asarray(pts68, np.float32)
  return pts[[_PUPIL_LEFT, _PUPIL_RIGHT, _NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT]]


class Fgnet(base.AgeDatasetBuilder):
  """FG-NET; manual_dir holds images/ and points/."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must hold images/ (files like 001A02.JPG) and points/ "
                                  "(68-point landmark files like 001a02.pts).")
  DESCRIPTION = "FG-NET with 68-point landmarks, leave-one-person-out folds."
  HOMEPAGE = "https://yanweifu.github.io/FG_NET_data/"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "landmarks: the five alignment points in FG-NET's markup (not iBUG's 68)."}
  SHIPS_LANDMARKS = True

  def extra_features(self):
    return {"landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.float32)}

  def list_examples(self, manual_dir, report):
    image_dir, points_dir = os.path.join(manual_dir, "images"), os.path.join(manual_dir, "points")
    for folder in (image_dir, points_dir):
      if not os.path.isdir(folder):
        raise FileNotFoundError(f"fgnet: no folder {folder}; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    pts_by_stem = {os.path.splitext(n)[0].lower(): os.path.join(points_dir, n)
                   for n in os.listdir(points_dir) if n.lower().endswith(".pts")}
    examples = []
    for name in sorted(os.listdir(image_dir)):
      if not is_image(name):
        continue
      match = _NAME.match(name)
      if not match:
        report.drop("unparsable_name", name)
        continue
      path = os.path.join(image_dir, name)
      stem = os.path.splitext(name)[0].lower()
      try:
        if stem not in pts_by_stem:
          raise BadLabel(f"{os.path.join(points_dir, stem + '.pts')}: missing landmark file for {name}")
        landmarks = five_points(read_pts(pts_by_stem[stem]))
      except BadLabel as e:
        labels_csv.handle_bad(e, report, self.options["skip_bad_labels"], reason="bad_landmarks")
        continue
      examples.append(SourceExample(path=path, file_name=relative_name(path, manual_dir),
                                    age=float(match["age"]), subject=match["subject"],
                                    extras={"landmarks": landmarks}))
    return examples

  def assign_splits(self, examples, report):
    report.counts["subjects"] = len(splits.subject_folds(examples))
    return {"full": list(examples)}
