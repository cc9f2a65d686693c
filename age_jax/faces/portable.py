"""Photo -> boxes, five points, ages and intervals with numpy, PIL and onnxruntime alone.

A standalone copy of this file ships in every `launch.export --with_faces` folder (it imports
nothing of age_jax, and no JAX); meta.json beside it holds every number it uses (the detector's
thresholds, scales, pads; the crop's template and sizes), written by age_jax/inference/export_faces.py from
age_jax's own FaceDetector, so it finds the faces age_jax's Predictor finds:

  python portable.py EXPORT_DIR photo.jpg [photo2.png ...]     # one JSON line per photo
                                     # ({"file", "faces"}, or {"file", "error"}: the rest go on)

  pipeline = load("EXPORT_DIR")        # the three MTCNN nets and the age model in onnxruntime
  faces = pipeline.photo(rgb_uint8)    # [{'box', 'score', 'landmarks', 'age', 'low', 'high'}]

What it does (age_jax/faces/detector.py and data/builders/face_crops.py, step by step):
 1. the photo is padded by photo_pad_fraction of its longer side (edge pixels repeated);
 2. MTCNN: a pyramid through P-Net, then R-Net and O-Net on the surviving boxes, each stage with
    box calibration, squaring and NMS; a photo without a face is searched once more inside a grey
    border (retry_pad);
 3. each face's landmarks are refined: the detector runs again (steps 1-2) on the face warped onto
    the canonical frame at refine_size, and the chosen face's points, mapped back, replace them;
 4. the face is warped by the least-squares similarity of its five points onto the template at
    crop_size (bilinear, antialiased when shrinking), resized to the model's input size, and aged.
"""
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageFilter, ImageOps

META = "meta.json"


# ---- boxes: MTCNN's convention, (x1, y1, x2, y2) one-based and inclusive ----

def nms(boxes, scores, threshold, method="union"):
  """Greedy NMS: kept indices, best first; overlap over the union or over the smaller box."""
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


def calibrate(boxes, offsets, whole_pixels=True):
  """Regressed offsets (fractions of the side: x2 - x1, + 1 in the refinement stages) applied."""
  boxes = np.asarray(boxes, np.float64)
  extra = 1.0 if whole_pixels else 0.0
  w, h = boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra
  return boxes + np.asarray(offsets, np.float64) * np.stack([w, h, w, h], axis=1)


def square(boxes):
  """Each box grown to a square on its longer side, about its centre."""
  boxes = np.asarray(boxes, np.float64).copy()
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  side = np.maximum(w, h)
  boxes[:, 0] += 0.5 * (w - side)
  boxes[:, 1] += 0.5 * (h - side)
  boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
  return boxes


def crop(image, box):
  """The pixels of an integer box, zeros where it leaves the image."""
  x1, y1, x2, y2 = (int(v) for v in box)
  out = np.zeros((y2 - y1 + 1, x2 - x1 + 1, image.shape[2]), image.dtype)
  h, w = image.shape[:2]
  sx0, sy0, sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, w), min(y2, h)
  if sx1 > sx0 and sy1 > sy0:
    out[sy0 - (y1 - 1):sy1 - (y1 - 1), sx0 - (x1 - 1):sx1 - (x1 - 1)] = image[sy0:sy1, sx0:sx1]
  return out


def choose_face(faces, width, height):
  """Of several faces the largest, most central: max box area - 2 * (centre offset)^2."""
  if not faces:
    return None
  centre = np.array([width, height], np.float64) / 2

  def value(face):
    x0, y0, x1, y1 = np.asarray(face["box"], np.float64)
    offset = np.array([x0 + x1, y0 + y1]) / 2 - centre
    return (x1 - x0) * (y1 - y0) - 2.0 * float(offset @ offset)
  return int(max(range(len(faces)), key=lambda i: value(faces[i])))


# ---- the similarity warp onto the canonical crop (points: pixel centres) ----

def similarity(src, dst):
  """Least-squares rotation + uniform scale + translation taking src (N, 2) onto dst: 2x3 (Umeyama)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  sm, dm = src.mean(0), dst.mean(0)
  s, d = src - sm, dst - dm
  var = np.mean(np.sum(s ** 2, axis=1))
  if var < 1e-12 * max(1.0, np.abs(src).max()) ** 2:
    raise ValueError("cannot align a face: its landmarks all coincide")
  u, sv, vt = np.linalg.svd(d.T @ s / len(src))
  flip = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    flip[1] = -1
  rotation = u @ np.diag(flip) @ vt
  scale = np.sum(sv * flip) / var
  return np.concatenate([scale * rotation, (dm - scale * rotation @ sm)[:, None]], axis=1)


def apply_transform(matrix, points):
  return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp_affine(image, matrix, size):
  """The image warped by matrix (input pixel -> output pixel) into size x size, bilinear, black
  outside; a shrinking warp low-passes the input first (prefilter), as bilinear alone aliases."""
  image, matrix = _prefilter(np.asarray(image), np.asarray(matrix, np.float64), (size, size))
  a, b, c, d, e, f = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2].ravel()
  c, f = c + 0.5 - 0.5 * (a + b), f + 0.5 - 0.5 * (d + e)  # PIL samples pixel corners
  out = Image.fromarray(np.ascontiguousarray(image)).transform(
      (size, size), Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR, fillcolor=(0, 0, 0))
  return np.asarray(out)


def _prefilter(image, matrix, size):
  """For scale s < 1: crop to what the output reads, box-average by k = floor(1 / 2s), blur by a
  Gaussian of sigma (1 / (s k) - 1) / 2; returns the image and the matrix from its pixels."""
  scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
  if not 0 < scale < 1 or min(image.shape[:2]) < 2:
    return image, matrix
  h, w = image.shape[:2]
  k = max(1, int(np.floor(1.0 / (2.0 * scale))))
  sigma = (1.0 / (scale * k) - 1.0) / 2.0
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  corners = np.array([[-0.5, -0.5], [size[0] - 0.5, -0.5], [-0.5, size[1] - 0.5], [size[0] - 0.5, size[1] - 0.5]])
  mapped = apply_transform(inverse, corners)
  margin = k * (3.0 * sigma + 3.0)
  x0 = int(np.clip(np.floor(mapped[:, 0].min() - margin), 0, w))
  y0 = int(np.clip(np.floor(mapped[:, 1].min() - margin), 0, h))
  x1 = int(np.clip(np.ceil(mapped[:, 0].max() + margin) + 1, 0, w))
  y1 = int(np.clip(np.ceil(mapped[:, 1].max() + margin) + 1, 0, h))
  if x1 - x0 < k or y1 - y0 < k:
    return image, matrix
  x1, y1 = x0 + (x1 - x0) // k * k, y0 + (y1 - y0) // k * k
  pil = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
  if k > 1:
    pil = pil.reduce(k)
  if sigma > 0.05:
    pil = pil.filter(ImageFilter.GaussianBlur(sigma))
  offset = matrix[:, 2] + matrix[:, :2] @ np.array([x0 + (k - 1) / 2, y0 + (k - 1) / 2])
  return np.asarray(pil), np.concatenate([matrix[:, :2] * k, offset[:, None]], axis=1)


# ---- MTCNN ----

class Detector:
  """MTCNN with age_jax's settings (meta['detector']); nets: {'pnet', 'rnet', 'onet'} -> a
  function of uint8 NHWC RGB images returning the net's outputs as numpy arrays."""

  def __init__(self, settings, nets):
    self.s, self.nets = settings, nets

  def scales(self, height, width):
    cell, m = self.s["cell"], self.s["cell"] / self.s["min_face_size"]
    side, out = min(height, width) * m, []
    while side >= cell:
      out.append(m * self.s["scale_factor"] ** len(out))
      side *= self.s["scale_factor"]
    return out

  def detect(self, image):
    """Faces of one uint8 HxWx3 image, best score first; a miss is retried inside a grey border."""
    if min(image.shape[:2]) < self.s["cell"]:
      return []
    faces = self._cascade(image)
    if not faces and self.s["retry_pad"]:
      p = int(round(self.s["retry_pad"] * min(image.shape[:2])))
      padded = np.pad(image, ((p, p), (p, p), (0, 0)), constant_values=self.s["retry_fill"])
      faces = [dict(f, box=f["box"] - p, landmarks=f["landmarks"] - p) for f in self._cascade(padded)]
    return faces

  def _cascade(self, image):
    bxs, scores = self._proposals(image)
    bxs, scores = self._stage(image, bxs, scores, "rnet", 24, self.s["thresholds"][1], self.s["nms_thresholds"][2])
    return self._output(image, bxs)

  def _proposals(self, image):
    cell, stride = self.s["cell"], self.s["stride"]
    h, w = image.shape[:2]
    levels = []
    for scale in self.scales(h, w):
      hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
      resized = np.asarray(Image.fromarray(image).resize((ws, hs), Image.BOX))
      # zero rows/columns up to even sides: P-Net's 2x2 pool then needs no padding; the windows
      # that reach them are dropped below (the detector pads to its buckets the same way)
      even = np.zeros((1, hs + hs % 2, ws + ws % 2, 3), np.uint8)
      even[0, :hs, :ws] = resized
      prob, offsets = (np.asarray(o)[0] for o in self.nets["pnet"](even))
      oh, ow = (hs - cell) // stride + 1, (ws - cell) // stride + 1
      prob, offsets = prob[:oh, :ow], offsets[:oh, :ow]
      ys, xs = np.nonzero(prob >= self.s["thresholds"][0])
      if not len(ys):
        continue
      cells = np.stack([xs, ys], axis=1).astype(np.float64)
      q1, q2 = np.fix((stride * cells + 1) / scale), np.fix((stride * cells + cell) / scale)
      found = np.concatenate([q1, q2, prob[ys, xs][:, None], offsets[ys, xs]], axis=1)
      levels.append(found[nms(found[:, :4], found[:, 4], self.s["nms_thresholds"][0])])
    found = np.concatenate(levels) if levels else np.zeros((0, 9))
    found = found[nms(found[:, :4], found[:, 4], self.s["nms_thresholds"][1])]
    calibrated = calibrate(found[:, :4], found[:, 5:9], whole_pixels=False)
    return np.fix(square(calibrated)), found[:, 4]

  def _run(self, net, image, bxs, size):
    ok = (bxs[:, 2] >= bxs[:, 0]) & (bxs[:, 3] >= bxs[:, 1])  # degenerate boxes dropped
    bxs = bxs[ok]
    if not len(bxs):
      return bxs, None
    batch = np.stack([np.asarray(Image.fromarray(crop(image, b)).resize((size, size), Image.BOX)) for b in bxs])
    return bxs, [np.asarray(o) for o in self.nets[net](batch)]

  def _stage(self, image, bxs, scores, net, size, threshold, overlap):
    bxs, out = self._run(net, image, bxs, size)
    if out is None:
      return bxs, scores[:0]
    prob, offsets = out
    sel = prob > threshold
    bxs, scores, offsets = bxs[sel], prob[sel], offsets[sel]
    keep = nms(bxs, scores, overlap)
    return np.fix(square(calibrate(bxs[keep], offsets[keep]))), scores[keep]

  def _output(self, image, bxs):
    bxs, out = self._run("onet", image, bxs, 48)
    if out is None:
      return []
    prob, offsets, marks = out
    sel = prob > self.s["thresholds"][2]
    bxs, scores, offsets, marks = bxs[sel], prob[sel], offsets[sel], marks[sel]
    w, h = bxs[:, 2] - bxs[:, 0] + 1, bxs[:, 3] - bxs[:, 1] + 1
    xs = w[:, None] * marks[:, 0:5] + bxs[:, 0:1] - 1  # fractions of the crop -> zero-based pixel centres
    ys = h[:, None] * marks[:, 5:10] + bxs[:, 1:2] - 1
    calibrated = calibrate(bxs, offsets)
    keep = nms(calibrated, scores, self.s["nms_thresholds"][3], "min")
    faces = [{"box": calibrated[k] - np.array([1.0, 1.0, 0.0, 0.0]), "score": float(scores[k]),
              "landmarks": np.stack([xs[k], ys[k]], axis=1)} for k in keep]
    return sorted(faces, key=lambda f: -f["score"])

  def detect_padded(self, image):
    """detect() on the image padded by photo_pad_fraction of its longer side (edge pixels)."""
    p = round(self.s["photo_pad_fraction"] * max(image.shape[:2]))
    faces = self.detect(np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge"))
    return [dict(f, box=np.asarray(f["box"], np.float64) - p, landmarks=np.asarray(f["landmarks"], np.float64) - p)
            for f in faces]

  def faces(self, image, template_fractions):
    """Every face of the photo, its landmarks refined in the canonical frame at refine_size."""
    faces = self.detect_padded(image)
    if not self.s["refine"]:
      return faces
    size = self.s["refine_size"]
    template = np.asarray(template_fractions, np.float64) * size - 0.5
    for face in faces:
      matrix = similarity(face["landmarks"], template)
      second = self.detect_padded(warp_affine(image, matrix, size))
      chosen = choose_face(second, size, size)
      if chosen is not None:
        back = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
        face["landmarks"] = apply_transform(back, second[chosen]["landmarks"])
    return faces


# ---- photo -> ages ----

class Pipeline:
  """The detector and the age model of an export folder (meta: its meta.json; nets as Detector's,
  plus 'age': uint8 faces (B, L, L, 3) -> {'age', 'low', 'high', ...})."""

  def __init__(self, meta, nets):
    self.meta, self.age_model = meta, nets["age"]
    self.detector = Detector(meta["detector"], nets)
    contract = meta["age"]["input"]
    self.crop_size, self.load_size = contract["crop_size"], contract["shape"][1]
    self.template = np.asarray(contract["template_fractions"], np.float64)

  def crop(self, image, landmarks):
    """The model's input for one face: the canonical crop, resized (bilinear) to the input size."""
    matrix = similarity(landmarks, self.template * self.crop_size - 0.5)
    face = warp_affine(image, matrix, self.crop_size)
    if self.crop_size != self.load_size:
      face = np.asarray(Image.fromarray(face).resize((self.load_size, self.load_size), Image.BILINEAR))
    return face

  def photo(self, image):
    """Every face of a uint8 HxWx3 RGB photo (detector order: best score first) with its age and,
    where the model has one, its interval (None for an unbounded side)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"expected a uint8 HxWx3 RGB photo, got {image.dtype} {image.shape}")
    faces = self.detector.faces(image, self.template)
    if not faces:
      return []
    out = self.age_model(np.stack([self.crop(image, f["landmarks"]) for f in faces]))
    for i, face in enumerate(faces):
      face["age"] = float(out["age"][i])
      for side in ("low", "high"):
        if side in out:
          face[side] = float(out[side][i]) if np.isfinite(out[side][i]) else None
    return faces


def _onnx(path):
  import onnxruntime
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only: the graph optimiser's notes are not the user's business
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  names = [o.name for o in session.get_outputs()]
  return lambda x: session.run(None, {name: x}), names


def load(folder):
  """The Pipeline of an export folder, every net in onnxruntime."""
  with open(os.path.join(folder, META)) as f:
    meta = json.load(f)
  nets = {}
  for net in ("pnet", "rnet", "onet"):
    nets[net] = _onnx(os.path.join(folder, meta["nets"][net]["onnx"]))[0]
  run_age, names = _onnx(os.path.join(folder, meta["age"]["onnx"]))
  nets["age"] = lambda x: dict(zip(names, run_age(x)))
  return Pipeline(meta, nets)


def read_rgb(path):
  """A photo file as uint8 RGB, turned upright by its EXIF orientation."""
  with Image.open(path) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.uint8)


def as_json(faces):
  return [{"box": [round(float(v), 2) for v in f["box"]], "score": round(f["score"], 5),
           "landmarks": np.round(f["landmarks"], 2).tolist(), "age": round(f["age"], 3),
           **{k: (None if f[k] is None else round(f[k], 3)) for k in ("low", "high") if k in f}} for f in faces]


def main(argv):
  if len(argv) < 3:
    print(f"usage: python {os.path.basename(argv[0])} EXPORT_DIR PHOTO [PHOTO ...]", file=sys.stderr)
    return 2
  pipeline = load(argv[1])
  failed = 0
  for path in argv[2:]:
    try:
      photo = read_rgb(path)
    except Exception as e:  # PIL and the OS raise many types; one bad file does not stop the rest
      failed += 1
      print(json.dumps({"file": path, "error": f"cannot read image: {type(e).__name__}: {e}"}), flush=True)
      continue
    print(json.dumps({"file": path, "faces": as_json(pipeline.photo(photo))}), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
