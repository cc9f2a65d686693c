"""A stand-in face detector for tests on drawn faces: it returns the faces registered for an
image's exact pixels (so tests write PNGs), also when the image comes padded on every side (as
faces.detect pads it), in the detector's interface (box, score, landmarks)."""
import dataclasses
import hashlib
import os

import numpy as np
from PIL import Image

from tests.data.fake_datasets import draw_face, write_csv


@dataclasses.dataclass
class FakeFace:
  box: np.ndarray
  score: float
  landmarks: np.ndarray


def face_at(points5, score: float = 0.99) -> FakeFace:
  """A face around its five points: the box spans one inter-ocular distance beyond them."""
  points5 = np.asarray(points5, np.float64)
  margin = np.linalg.norm(points5[1] - points5[0])
  box = np.concatenate([points5.min(0) - margin, points5.max(0) + margin])
  return FakeFace(box.astype(np.float32), score, points5.astype(np.float32))


def face_points(centre, eye_distance: float, angle_deg: float = 0.0) -> np.ndarray:
  """Five points of an upright face (template proportions) rotated by angle_deg about centre."""
  unit = np.array([[-0.5, 0], [0.5, 0], [0, 0.55], [-0.42, 1.15], [0.42, 1.15]]) - [0, 0.5]
  a = np.deg2rad(angle_deg)
  rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  return unit @ rotation.T * eye_distance + np.asarray(centre, np.float64)


def _key(image) -> str:
  return hashlib.sha1(np.ascontiguousarray(image, np.uint8).tobytes()).hexdigest()


class FakeDetector:
  def __init__(self):
    self.known, self.images_seen = {}, 0

  def photo(self, size, points_list, scores=None) -> np.ndarray:
    """A drawn photo with one face per entry of points_list, registered with this detector."""
    image = np.full((size, size, 3), 200, np.uint8)
    for points in points_list:
      image = draw_face(points, size, image)
    scores = scores or [0.99] * len(points_list)
    faces = sorted((face_at(p, s) for p, s in zip(points_list, scores)), key=lambda f: -f.score)
    self.known[_key(image)] = faces
    return image

  def detect(self, image):
    self.images_seen += 1
    height, width = image.shape[:2]
    for pad in range(0, min(height, width) // 2):
      faces = self.known.get(_key(image[pad:height - pad, pad:width - pad]))
      if faces is not None:
        return [dataclasses.replace(f, box=f.box + pad, landmarks=f.landmarks + pad) for f in faces]
    return []

  def detect_many(self, images):
    return [self.detect(image) for image in images]


def _png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


def faces_folder(path: str, detector: FakeDetector):
  """(photos, {file: the points of the face the rule must choose}) of a folder with a labels.csv over three photos: one face; two faces (a small one in a corner, a large central
  one); none."""
  size = 96
  one = face_points((40, 50), 24, angle_deg=20)
  small, large = face_points((14, 16), 10), face_points((50, 52), 30, -10)
  photos = {"one.png": detector.photo(size, [one]), "two.png": detector.photo(size, [small, large], [0.999, 0.9]),
            "none.png": np.full((size, size, 3), 90, np.uint8)}
  for name, image in photos.items():
    _png(os.path.join(path, name), image)
  write_csv(os.path.join(path, "labels.csv"), [{"file": n, "age": str(20 + k)} for k, n in enumerate(photos)], ("file", "age"))
  return photos, {"one.png": one, "two.png": large}
