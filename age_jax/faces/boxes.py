"""Box arithmetic of the MTCNN cascade, in its original convention: (x1, y1, x2, y2) one-based
and inclusive (a box from pixel index a to b, zero-based, is (a + 1, ..., b + 1)), as in the
authors' code the networks' box and landmark regressions were trained with.
"""
import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
  """Greedy non-maximum suppression: indices of the kept boxes, best score first. A box is dropped
  when its overlap with a kept, better box exceeds threshold; overlap is intersection over union
  ("union") or over the smaller box ("min"), areas counting whole pixels ((x2 - x1 + 1) ...)."""
  if method not in ("union", "min"):
    raise ValueError(f"nms method must be 'union' or 'min', got {method!r}")
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  x1, y1, x2, y2 = boxes.T
  area = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    inter = w * h
    denominator = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
    order = rest[inter / denominator <= threshold]
  return np.asarray(keep, np.int64)


def calibrate(boxes: np.ndarray, offsets: np.ndarray, whole_pixels: bool = True) -> np.ndarray:
  """Applies regressed offsets (fractions of the box side) to boxes. The proposal stage measured
  the side as x2 - x1, the refinement stages as x2 - x1 + 1 (whole_pixels)."""
  boxes = np.asarray(boxes, np.float64)
  extra = 1.0 if whole_pixels else 0.0
  w = boxes[:, 2] - boxes[:, 0] + extra
  h = boxes[:, 3] - boxes[:, 1] + extra
  return boxes + np.asarray(offsets, np.float64) * np.stack([w, h, w, h], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
  """Each box grown to a square on its longer side, about the same centre."""
  boxes = np.asarray(boxes, np.float64).copy()
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  side = np.maximum(w, h)
  boxes[:, 0] += 0.5 * (w - side)
  boxes[:, 1] += 0.5 * (h - side)
  boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
  return boxes


def crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
  """The pixels of an integer box (one-based, inclusive), zeros where it leaves the image."""
  x1, y1, x2, y2 = (int(v) for v in box)
  out = np.zeros((y2 - y1 + 1, x2 - x1 + 1, image.shape[2]), image.dtype)
  h, w = image.shape[:2]
  sx0, sy0, sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, w), min(y2, h)
  if sx1 > sx0 and sy1 > sy0:
    out[sy0 - (y1 - 1):sy1 - (y1 - 1), sx0 - (x1 - 1):sx1 - (x1 - 1)] = image[sy0:sy1, sx0:sx1]
  return out
