"""Five-point face alignment: a similarity transform of the landmarks onto a fixed template.

LAE 3.3 aligns faces "with five landmarks (two eyes, nose tip, two mouth corners)" in the
face-recognition way; the template is the standard ArcFace / InsightFace 112x112 one,
scaled to the output size. Points are (x, y) in pixel-index coordinates: the centre of
pixel (row i, column j) is (j, i), as dlib, MTCNN and OpenCV report them.
"""
import numpy as np
from PIL import Image, ImageFilter

# ArcFace 112x112 template, in the order: image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)

# iBUG 68-point scheme (0-based): the subject's right eye (image left) is 36-41, the left eye 42-47,
# the nose tip 30, the mouth corners 48 and 54. FG-NET's .pts files use their own markup, not this one.
_RIGHT_EYE, _LEFT_EYE, _NOSE_TIP, _MOUTH_RIGHT, _MOUTH_LEFT = slice(36, 42), slice(42, 48), 30, 48, 54


def template(output_size: int) -> np.ndarray:
  """The five template points for a square output_size x output_size face."""
  return ARCFACE_TEMPLATE_112 * (output_size / 112.0)


def five_points_from_68(pts68: np.ndarray) -> np.ndarray:
  """(68, 2) landmarks in the iBUG order (not FG-NET's) -> (5, 2): eye centres (mean of each eye's 6 points), nose tip,
  mouth corners, in the template's order."""
  pts = np.asarray(pts68, np.float64)
  if pts.shape != (68, 2):
    raise ValueError(f"expected 68 (x, y) landmarks, got an array of shape {pts.shape}")
  return np.stack([pts[_RIGHT_EYE].mean(0), pts[_LEFT_EYE].mean(0), pts[_NOSE_TIP],
                   pts[_MOUTH_RIGHT], pts[_MOUTH_LEFT]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking
  src points onto dst points, as a 2x3 matrix M with dst ~ M @ [x, y, 1] (Umeyama 1991)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f"expected two (N, 2) point arrays with N >= 2, got {src.shape} and {dst.shape}")
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  src_var = np.mean(np.sum(src_c ** 2, axis=1))
  if src_var < 1e-12 * max(1.0, np.abs(src).max()) ** 2:
    raise ValueError("cannot align a face: its landmarks all coincide (degenerate points)")
  cov = dst_c.T @ src_c / len(src)
  u, s, vt = np.linalg.svd(cov)
  d = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best fit would mirror: take the best rotation
    d[1] = -1
  rotation = u @ np.diag(d) @ vt
  scale = np.sum(s * d) / src_var
  translation = dst_mean - scale * rotation @ src_mean
  return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(N, 2) points through a 2x3 matrix."""
  points = np.asarray(points, np.float64)
  return points @ matrix[:, :2].T + matrix[:, 2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, output_size, fill: int = 0,
                antialias: bool = True) -> np.ndarray:
  """Warps an HxW or HxWxC uint8 image by the 2x3 matrix (input pixel -> output pixel) into an
  output_size (a side, or (width, height)) image, bilinear, uncovered pixels set to fill.

  A shrinking warp (scale < 1) low-passes the input first (antialias, `_prefilter`): bilinear
  sampling alone reads 4 input pixels per output pixel, so a face 10x the output size would be
  point-sampled and its fine texture and sensor noise would alias into the crop.
  """
  size = (output_size, output_size) if np.isscalar(output_size) else tuple(int(v) for v in output_size)
  if antialias:
    image, matrix = _prefilter(np.asarray(image), np.asarray(matrix, np.float64), size)
  full = np.vstack([matrix, [0, 0, 1]])
  inverse = np.linalg.inv(full)[:2]
  # PIL samples the output pixel (x, y) at the continuous point (x + 0.5, y + 0.5) and reads the
  # input in the same continuous coordinates, so shift by half a pixel on both sides.
  a, b, c = inverse[0]
  d, e, f = inverse[1]
  c = c + 0.5 - 0.5 * (a + b)
  f = f + 0.5 - 0.5 * (d + e)
  pil = Image.fromarray(np.ascontiguousarray(image))
  fillcolor = fill if pil.mode == "L" else (fill,) * len(pil.getbands())
  out = pil.transform(size, Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR,
                      fillcolor=fillcolor)
  return np.asarray(out)


def _prefilter(image: np.ndarray, matrix: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
  """(image, matrix) with the same warp but an input low-passed to the output's sampling rate.

  Rule: for a warp of scale s < 1, crop the input to the region the output reads (plus a margin),
  box-average it by the integer factor k = floor(1 / (2 s)) (a pyramid level, exact and fast for
  any s), then blur it by a Gaussian of sigma (1 / r - 1) / 2 input pixels for the residual scale
  r = s k (the rule of skimage.transform.rescale's anti_aliasing; sigma stays under 1.5 pixels).
  Pixels in the reduced image are centred at k x + (k - 1) / 2 of the cropped one.
  """
  scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
  if not 0 < scale < 1 or image.ndim not in (2, 3) or min(image.shape[:2]) < 2:
    return image, matrix
  h, w = image.shape[:2]
  k = max(1, int(np.floor(1.0 / (2.0 * scale))))
  sigma = (1.0 / (scale * k) - 1.0) / 2.0
  # The output rectangle in input coordinates, plus the filters' reach and the bilinear taps.
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  corners = np.array([[-0.5, -0.5], [size[0] - 0.5, -0.5], [-0.5, size[1] - 0.5], [size[0] - 0.5, size[1] - 0.5]])
  mapped = apply_transform(inverse, corners)
  margin = k * (3.0 * sigma + 3.0)
  x0 = int(np.clip(np.floor(mapped[:, 0].min() - margin), 0, w))
  y0 = int(np.clip(np.floor(mapped[:, 1].min() - margin), 0, h))
  x1 = int(np.clip(np.ceil(mapped[:, 0].max() + margin) + 1, 0, w))
  y1 = int(np.clip(np.ceil(mapped[:, 1].max() + margin) + 1, 0, h))
  if x1 - x0 < k or y1 - y0 < k:  # the output reads nothing of the image: leave it all fill
    return image, matrix
  x1, y1 = x0 + (x1 - x0) // k * k, y0 + (y1 - y0) // k * k  # whole k x k blocks only
  pil = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
  if k > 1:
    pil = pil.reduce(k)
  if sigma > 0.05:
    pil = pil.filter(ImageFilter.GaussianBlur(sigma))
  # reduced pixel (u, v) = cropped pixel (k u + (k - 1) / 2, ...) = input pixel (+ x0, + y0)
  linear = matrix[:, :2] * k
  offset = matrix[:, 2] + matrix[:, :2] @ np.array([x0 + (k - 1) / 2, y0 + (k - 1) / 2])
  return np.asarray(pil), np.concatenate([linear, offset[:, None]], axis=1)


def align_face(image: np.ndarray, points5: np.ndarray, output_size: int = 112) -> np.ndarray:
  """The face warped so its five landmarks land (least squares) on the template scaled to
  output_size; returns uint8 output_size x output_size x C."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f"align_face expects a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
  points5 = np.asarray(points5, np.float64)
  if points5.shape != (5, 2):
    raise ValueError(f"align_face expects five (x, y) landmarks, got shape {points5.shape}")
  matrix = similarity_transform(points5, template(output_size))
  return warp_affine(image, matrix, output_size)
