"""The Facial Age Estimation Benchmark's protocol (Paplham & Franc, CVPR 2024): its splits over a
database's `folder` field, and its face crop from an entry's `aligned_bbox`.

Splits, as FAEB's own benchmark files list them (facebase/benchmarks/*.yaml):
- a database of ten folders 0-9 has five splits, each trn six folders / val two / tst two:
  split 0 = trn 0-5, val 6-7, tst 8-9; 1 = trn 2-7, val 8-9, tst 0-1; 2 = trn 4-9, val 0-1,
  tst 2-3; then (FAEB's files rotate by one here, not two) 3 = trn 5-9,0, val 1-2, tst 3-4 and
  4 = trn 6-9,0-1, val 2-3, tst 4-5;
- CLAP2016 and CACD2000 (folders 0, 1, 2) have one split: trn 0, val 1, tst 2;
- any other folder set (FG-NET: one folder per subject, 1-82) has none: FAEB only tests on it.
They are named `faeb{k}_train`, `faeb{k}_val`, `faeb{k}_test` (datasets.load_split).
"""
import re

import numpy as np

from age_jax.faces import align

TEN_FOLDER_SPLITS = (
    ((0, 1, 2, 3, 4, 5), (6, 7), (8, 9)),
    ((2, 3, 4, 5, 6, 7), (8, 9), (0, 1)),
    ((4, 5, 6, 7, 8, 9), (0, 1), (2, 3)),
    ((5, 6, 7, 8, 9, 0), (1, 2), (3, 4)),
    ((6, 7, 8, 9, 0, 1), (2, 3), (4, 5)),
)
THREE_FOLDER_SPLITS = (((0,), (1,), (2,)),)
PARTS = ("train", "val", "test")
SPLIT_NAME = re.compile(r"faeb(\d+)_(train|val|test)")

# FAEB's 256x256 configs: input_size 256, input_extension 0.05, bbox_extension 0.
INPUT_SIZE = 256
INPUT_EXTENSION = 0.05


def splits_for(folders) -> tuple:
  """The split table of a database with these folders ((trn, val, tst) per split), () if none."""
  folders = set(int(f) for f in folders)
  if folders == set(range(10)):
    return TEN_FOLDER_SPLITS
  if folders == {0, 1, 2}:
    return THREE_FOLDER_SPLITS
  return ()


def split_names(folders) -> list[str]:
  return [f"faeb{k}_{part}" for k in range(len(splits_for(folders))) for part in PARTS]


def folders_of(split: str, folders) -> tuple:
  """The folders of split 'faeb{k}_{part}' for a database with these folders; ValueError if none."""
  match = SPLIT_NAME.fullmatch(split)
  if not match:
    raise ValueError(f"split {split!r} is not a FAEB split name (faeb{{k}}_train / _val / _test)")
  table = splits_for(folders)
  k = int(match[1])
  if not table:
    raise ValueError(f"split {split!r}: this database's folders {sorted(set(int(f) for f in folders))[:12]} "
                     "are neither 0-9 (five FAEB splits) nor 0-2 (one); FAEB only tests on it (split 'full')")
  if k >= len(table):
    raise ValueError(f"split {split!r}: this database has FAEB splits 0..{len(table) - 1}")
  return table[k][PARTS.index(match[2])]


# ---- the crop ----

def output_side(input_size: int = INPUT_SIZE, input_extension: float = INPUT_EXTENSION) -> int:
  return int(input_size * (1 + 2 * input_extension))


def crop_corners(bbox, margin: float) -> np.ndarray:
  """(3, 2) source points A', B', C' that FAEB maps to the output's top-left, top-right and
  bottom-right pixels: the box's corners A B C (D the fourth), made 0-based (FAEB's boxes are
  1-based) and pushed out by `margin` of the box's side along each edge."""
  corners = np.asarray(bbox, np.float64).reshape(4, 2) - 1.0
  a, b, c, d = corners
  return np.stack([a + (a - b) * margin + (a - d) * margin,
                   b + (b - a) * margin + (b - c) * margin,
                   c + (c - d) * margin + (c - b) * margin])


def crop_matrix(bbox, side: int, margin: float) -> np.ndarray:
  """The 2x3 affine (source pixel -> output pixel) taking A', B', C' to (0, 0), (side-1, 0),
  (side-1, side-1), as cv2.getAffineTransform does for FAEB."""
  source = np.hstack([crop_corners(bbox, margin), np.ones((3, 1))])   # (3, 3)
  target = np.array([[0, 0], [side - 1, 0], [side - 1, side - 1]], np.float64)
  return np.linalg.solve(source, target).T


def faeb_crop(image: np.ndarray, bbox, input_size: int = INPUT_SIZE,
              input_extension: float = INPUT_EXTENSION, bbox_extension: float = 0.0) -> np.ndarray:
  """FAEB's prepare_data.normalize_img: the rotated box, extended, warped (bilinear, black outside
  the image) onto a square of output_side(input_size, input_extension) pixels."""
  side = output_side(input_size, input_extension)
  margin = input_extension + bbox_extension + 2 * input_extension * bbox_extension
  return align.warp_affine(image, crop_matrix(bbox, side, margin), side)
