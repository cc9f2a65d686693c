"""What every builder lists before curation: one SourceExample per image file.

All builders store the same six fields (image, age, gender, race, subject, file_name), plus
`fold` (-1 when the dataset has no folds) and dataset-specific extras such as `landmarks`.
Label conventions (shared with UTKFace): gender 0 male, 1 female; race 0 White, 1 Black,
2 Asian, 3 Indian, 4 Others; -1 = unknown.
"""
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

UNKNOWN = -1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass
class SourceExample:
  path: str                 # absolute path of the image file
  file_name: str            # path relative to the manual folder: unique, used in split files
  age: float
  gender: int = UNKNOWN
  race: int = UNKNOWN
  subject: str = ""
  extras: dict = dataclasses.field(default_factory=dict)
  # Filled in by curation:
  sha256: str = ""
  group: str = ""           # duplicates and same-subject images share a group
  fold: int = UNKNOWN

  def labels(self) -> tuple:
    return (float(self.age), int(self.gender), int(self.race))


def common_features() -> dict:
  # The image is kept as the original file bytes (not re-encoded); the pipeline decodes it.
  return {
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "age": tfds.features.Scalar(np.float32),
      "gender": tfds.features.Scalar(np.int32),
      "race": tfds.features.Scalar(np.int32),
      "subject": tfds.features.Text(),
      "file_name": tfds.features.Text(),
      "fold": tfds.features.Scalar(np.int32),
  }


def to_tfds_example(example: SourceExample, image_bytes: bytes) -> dict:
  out = {"image": image_bytes, "age": np.float32(example.age), "gender": np.int32(example.gender),
         "race": np.int32(example.race), "subject": example.subject, "file_name": example.file_name,
         "fold": np.int32(example.fold)}
  out.update(example.extras)
  return out


def is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def relative_name(path: str, root: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, "/")
