"""The one canonical face crop used for training, evaluation and photos.

A face is warped by the least-squares similarity that takes its five landmarks onto
CANONICAL_TEMPLATE. The template is the UTKFace chip frame: the mean position of the detector's
landmarks on UTKFace's aligned 200x200 chips (BENCHMARK_RECORDS.md, "Face detector and faces"), so a chip, detected and
re-aligned, comes back nearly as it was, and its forehead and chin margins are kept.

Size rule: the crop is square and any side works. The template is given as fractions of the
crop's extent (0 = the left/top edge of the first pixel, 1 = the right/bottom edge of the last),
so a crop of side s has its points at fraction * s - 0.5 in align.py's pixel-centre coordinates,
and resizing a crop of one side to another keeps the points on the template. A run's faces are
aligned at run_crop_size (the side its training faces had), whoever aligns them.
"""
import numpy as np

from age_jax.faces import align

# Order of align.ARCFACE_TEMPLATE_112: image-left eye, image-right eye, nose tip, image-left and
# image-right mouth corners; (x, y) fractions of the crop side.
CANONICAL_TEMPLATE = np.array([[0.2998, 0.2922], [0.6938, 0.2926], [0.4924, 0.5226],
                               [0.3218, 0.6960], [0.6693, 0.6956]], np.float64)
UTKFACE_CHIP_SIZE = 200  # UTKFace chips' side: the frame the template describes at its own scale
CROP_SIZE = 256  # the canonical crop's side in a build (the builder option crop_size's default)


def run_crop_size(data_cfg) -> int:
  """The side at which a run's faces were aligned: load size when the pipeline aligned them
  (config.data.align), else its builds' crop_size; new faces (photos, exports, evaluation
  folders) are aligned the same way. data_cfg: a run's config.data (read, never imported here)."""
  if data_cfg.align:
    return int(data_cfg.load_size)
  return int(dict(data_cfg.builder_options).get("crop_size", CROP_SIZE))


def canonical_template(size: int) -> np.ndarray:
  """The five template points (pixel-centre coordinates) for a size x size crop."""
  if size < 1:
    raise ValueError(f"the canonical crop needs a positive size, got {size}")
  return CANONICAL_TEMPLATE * size - 0.5


def canonical_transform(landmarks: np.ndarray, size: int) -> np.ndarray:
  """The 2x3 similarity taking an image's five landmarks onto the template of a size-pixel crop."""
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
    raise ValueError(f"the canonical crop needs five finite (x, y) landmarks, got shape {landmarks.shape}")
  return align.similarity_transform(landmarks, canonical_template(size))


def align_to_canonical(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
  """The face with these five landmarks as a uint8 (size, size, 3) canonical crop (bilinear;
  black where the crop leaves the image)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"align_to_canonical expects a uint8 HxWx3 image, got {image.dtype} {image.shape}")
  return align.warp_affine(image, canonical_transform(landmarks, size), size)
