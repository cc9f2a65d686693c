"""MTCNN face detection with five landmarks (Zhang et al. 2016): an image pyramid through P-Net,
then R-Net and O-Net on the surviving boxes, each stage followed by box calibration and NMS.

The nets run jitted in JAX (any backend); the pyramid, crops and NMS are numpy. P-Net inputs are
zero-padded up to a few bucket shapes and R-/O-Net batches to three sizes, so the number of
compiled programs stays small whatever the photo sizes.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from age_jax.faces import boxes as boxes_lib
from age_jax.faces import nets, weights

_CELL, _STRIDE = 12, 2  # P-Net's window and stride on each pyramid level
_MAX_PIXELS_PER_CALL = 1 << 22  # P-Net batch cap (pixels of padded input per call)
_CROP_BATCHES = (16, 64, 256)  # R-/O-Net batch buckets (larger counts run in chunks of the last)
_IMAGES_PER_PASS = 32  # detect_many's unit of work (bounds the pyramid held in memory)
_PAD_GREY = 127  # retry border: mid grey, 0 after P-Net's input scaling


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face. box: (x0, y0, x1, y1) in pixels, x0/y0 the first pixel's index and x1/y1
  one past the last (the face is image[y0:y1, x0:x1] when rounded); score: O-Net's face
  probability; landmarks: (5, 2) (x, y) in align.py's pixel-centre convention, in the order of
  align.ARCFACE_TEMPLATE_112 (image-left eye, image-right eye, nose tip, image-left mouth
  corner, image-right mouth corner)."""
  box: np.ndarray
  score: float
  landmarks: np.ndarray


def _normalise(images_uint8):
  return (images_uint8.astype(jnp.float32) - 127.5) * 0.0078125


def net_function(net: str):
  """The pure function uint8 NHWC RGB images -> the net's outputs, its weights as constants: what
  the detector runs (below, jitted with the weights as arguments) and what an export serialises."""
  module, params = nets.MODULES[net](), _params(net)
  return lambda images: module.apply(params, _normalise(images))


@functools.lru_cache(maxsize=None)
def _apply(net: str):
  module = nets.MODULES[net]()
  return jax.jit(lambda params, images: module.apply(params, _normalise(images)))


@functools.lru_cache(maxsize=None)
def _params(net: str):
  return nets.params_from_arrays(net, weights.load(net))


def _bucket(n: int) -> int:
  """The smallest of {1, 1.25, 1.5, 1.75} x 2^k (multiples of 4) that is >= n."""
  k = max(int(math.floor(math.log2(max(n, 4)))), 2)
  for base in (2 ** k, 2 ** (k + 1)):
    for mult in (1.0, 1.25, 1.5, 1.75):
      size = int(math.ceil(base * mult / 4) * 4)
      if size >= n:
        return size
  raise AssertionError(n)


def _crop_batch(n: int) -> int:
  return next(b for b in _CROP_BATCHES if b >= n)


def check_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"face detection expects a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")
  if min(image.shape[:2]) < _CELL:
    raise ValueError(f"face detection needs an image at least {_CELL}x{_CELL} pixels, got {image.shape}")
  return image


class FaceDetector:
  """MTCNN with its usual settings: faces from min_face_size pixels up, a pyramid shrinking by
  scale_factor per level, per-stage probability thresholds (P, R, O), and NMS overlap thresholds
  (P-Net within a level, P-Net across levels, R-Net, O-Net; O-Net's measured over the smaller box).

  retry_pad: an image where no face is found is searched once more inside a grey border of this
  fraction of its short side (0: never), so a face filling a tightly cropped image, its chin or
  forehead cut by the edge, is still found; boxes and landmarks stay in the image's coordinates.
  """

  def __init__(self, min_face_size: float = 20.0, thresholds=(0.6, 0.7, 0.8), scale_factor: float = 0.709,
               nms_thresholds=(0.5, 0.7, 0.7, 0.7), retry_pad: float = 0.3):
    if min_face_size <= 0 or not 0 < scale_factor < 1 or retry_pad < 0:
      raise ValueError(f"need min_face_size > 0, 0 < scale_factor < 1 and retry_pad >= 0, got "
                       f"{min_face_size}, {scale_factor}, {retry_pad}")
    if len(thresholds) != 3 or len(nms_thresholds) != 4:
      raise ValueError(f"need 3 thresholds and 4 nms_thresholds, got {thresholds} and {nms_thresholds}")
    self.min_face_size = float(min_face_size)
    self.thresholds = tuple(float(t) for t in thresholds)
    self.scale_factor = float(scale_factor)
    self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
    self.retry_pad = float(retry_pad)
    self._params = {net: _params(net) for net in weights.NETS}

  def settings(self) -> dict:
    """Every number of this detector's cascade, for a reimplementation outside age_jax (the
    exported glue, faces/portable.py, reads them from its meta.json)."""
    return {"min_face_size": self.min_face_size, "thresholds": list(self.thresholds),
            "scale_factor": self.scale_factor, "nms_thresholds": list(self.nms_thresholds),
            "retry_pad": self.retry_pad, "retry_fill": _PAD_GREY, "cell": _CELL, "stride": _STRIDE}

  def detect(self, image: np.ndarray) -> list[Face]:
    """Faces in one uint8 HxWx3 RGB image, best score first ([] when none)."""
    return self.detect_many([image])[0]

  def detect_many(self, images) -> list[list[Face]]:
    """detect() for each image, with the nets batched across up to 32 images at a time."""
    images = [check_image(im) for im in images]
    return [faces for start in range(0, len(images), _IMAGES_PER_PASS)
            for faces in self._detect_checked(images[start:start + _IMAGES_PER_PASS])]

  def _detect_checked(self, images):
    found = self._cascade(images)
    misses = [i for i, faces in enumerate(found) if not faces]
    if self.retry_pad and misses:
      pads = [int(round(self.retry_pad * min(images[i].shape[:2]))) for i in misses]
      padded = [np.pad(images[i], ((p, p), (p, p), (0, 0)), constant_values=_PAD_GREY) for i, p in zip(misses, pads)]
      for i, p, faces in zip(misses, pads, self._cascade(padded)):
        found[i] = [Face(box=f.box - p, score=f.score, landmarks=f.landmarks - p) for f in faces]
    return found

  def _cascade(self, images):
    candidates = self._proposals(images)
    candidates = self._refine(images, candidates)
    return self._output(images, candidates)

  def scales(self, height: int, width: int) -> list[float]:
    """Pyramid scales: a face of min_face_size pixels maps to P-Net's 12-pixel window at the first,
    and levels shrink by scale_factor while the image's short side stays >= 12 pixels."""
    m = _CELL / self.min_face_size
    side, out = min(height, width) * m, []
    while side >= _CELL:
      out.append(m * self.scale_factor ** len(out))
      side *= self.scale_factor
    return out

  # --- stage 1: P-Net on the pyramid -------------------------------------------------------------
  def _proposals(self, images):
    jobs = {}  # padded (h, w) -> [(image index, scale, resized)]
    for i, image in enumerate(images):
      h, w = image.shape[:2]
      for scale in self.scales(h, w):
        hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
        resized = np.asarray(Image.fromarray(image).resize((ws, hs), Image.BOX))
        jobs.setdefault((_bucket(hs), _bucket(ws)), []).append((i, scale, resized))
    per_level = [[] for _ in images]
    for (bh, bw), group in jobs.items():
      cap = max(1, 1 << (max(_MAX_PIXELS_PER_CALL // (bh * bw), 1).bit_length() - 1))
      for start in range(0, len(group), cap):
        chunk = group[start:start + cap]
        batch = np.zeros((1 << (len(chunk) - 1).bit_length(), bh, bw, 3), np.uint8)
        for j, (_, _, resized) in enumerate(chunk):
          batch[j, :resized.shape[0], :resized.shape[1]] = resized
        prob, offsets = jax.device_get(_apply("pnet")(self._params["pnet"], batch))
        for j, (i, scale, resized) in enumerate(chunk):
          per_level[i].append(self._level_boxes(prob[j], offsets[j], scale, resized.shape[:2]))
    out = []
    for levels in per_level:
      found = np.concatenate(levels) if levels else np.zeros((0, 9))
      keep = boxes_lib.nms(found[:, :4], found[:, 4], self.nms_thresholds[1], "union")
      found = found[keep]
      calibrated = boxes_lib.calibrate(found[:, :4], found[:, 5:9], whole_pixels=False)
      out.append((np.fix(boxes_lib.square(calibrated)), found[:, 4]))
    return out

  def _level_boxes(self, prob, offsets, scale, shape):
    """Windows of one level above the P-Net threshold, as image boxes (x1, y1, x2, y2, score, 4 offsets)
    after NMS within the level; windows reaching into the bucket padding are left out."""
    hs, ws = shape
    oh, ow = (hs - _CELL) // _STRIDE + 1, (ws - _CELL) // _STRIDE + 1
    prob = prob[:oh, :ow]
    ys, xs = np.nonzero(prob >= self.thresholds[0])
    if not len(ys):
      return np.zeros((0, 9))
    cells = np.stack([xs, ys], axis=1).astype(np.float64)
    q1 = np.fix((_STRIDE * cells + 1) / scale)
    q2 = np.fix((_STRIDE * cells + _CELL) / scale)
    found = np.concatenate([q1, q2, prob[ys, xs][:, None], offsets[ys, xs]], axis=1)
    return found[boxes_lib.nms(found[:, :4], found[:, 4], self.nms_thresholds[0], "union")]

  # --- stages 2 and 3: R-Net and O-Net on crops --------------------------------------------------
  def _run_on_crops(self, net, images, candidates, size):
    crops, owners = [], []
    for i, (bxs, _) in enumerate(candidates):
      for box in bxs:
        patch = boxes_lib.crop(images[i], box)
        crops.append(np.asarray(Image.fromarray(patch).resize((size, size), Image.BOX)))
        owners.append(i)
    outputs = []
    for start in range(0, len(crops), _CROP_BATCHES[-1]):
      chunk = crops[start:start + _CROP_BATCHES[-1]]
      batch = np.zeros((_crop_batch(len(chunk)), size, size, 3), np.uint8)
      batch[:len(chunk)] = chunk
      result = jax.device_get(_apply(net)(self._params[net], batch))
      outputs.append([r[:len(chunk)] for r in result])
    merged = [np.concatenate(parts) for parts in zip(*outputs)] if outputs else None
    return merged, np.asarray(owners, np.int64)

  @staticmethod
  def _drop_degenerate(candidates):
    out = []
    for bxs, scores in candidates:
      ok = (bxs[:, 2] >= bxs[:, 0]) & (bxs[:, 3] >= bxs[:, 1])
      out.append((bxs[ok], scores[ok]))
    return out

  def _refine(self, images, candidates):
    candidates = self._drop_degenerate(candidates)
    merged, owners = self._run_on_crops("rnet", images, candidates, 24)
    if merged is None:
      return candidates
    prob, offsets = merged
    all_boxes = np.concatenate([b for b, _ in candidates])
    out = []
    for i in range(len(images)):
      sel = (owners == i) & (prob > self.thresholds[1])
      bxs, scores, offs = all_boxes[sel], prob[sel], offsets[sel]
      keep = boxes_lib.nms(bxs, scores, self.nms_thresholds[2], "union")
      calibrated = boxes_lib.calibrate(bxs[keep], offs[keep])
      out.append((np.fix(boxes_lib.square(calibrated)), scores[keep]))
    return out

  def _output(self, images, candidates):
    candidates = self._drop_degenerate(candidates)
    merged, owners = self._run_on_crops("onet", images, candidates, 48)
    if merged is None:
      return [[] for _ in images]
    prob, offsets, marks = merged
    all_boxes = np.concatenate([b for b, _ in candidates])
    out = []
    for i in range(len(images)):
      sel = (owners == i) & (prob > self.thresholds[2])
      bxs, scores, offs, pts = all_boxes[sel], prob[sel], offsets[sel], marks[sel]
      w = bxs[:, 2] - bxs[:, 0] + 1
      h = bxs[:, 3] - bxs[:, 1] + 1
      # Landmarks are fractions of the O-Net crop; one-based box corner - 1 -> zero-based pixel centres.
      xs = w[:, None] * pts[:, 0:5] + bxs[:, 0:1] - 1
      ys = h[:, None] * pts[:, 5:10] + bxs[:, 1:2] - 1
      calibrated = boxes_lib.calibrate(bxs, offs)
      keep = boxes_lib.nms(calibrated, scores, self.nms_thresholds[3], "min")
      faces = [Face(box=calibrated[k] - np.array([1.0, 1.0, 0.0, 0.0]), score=float(scores[k]),
                    landmarks=np.stack([xs[k], ys[k]], axis=1)) for k in keep]
      out.append(sorted(faces, key=lambda f: -f.score))
    return out
