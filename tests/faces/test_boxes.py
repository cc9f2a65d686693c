"""MTCNN box arithmetic against hand computations."""
import numpy as np
import pytest

from age_jax.faces import boxes


def test_nms_keeps_the_best_of_overlapping_boxes_by_union_or_by_the_smaller_box():
  b = np.array([[1, 1, 10, 10], [2, 2, 11, 11], [20, 20, 29, 29], [3, 3, 6, 6]], float)
  scores = np.array([0.9, 0.8, 0.95, 0.5])
  # A and B: 9x9 = 81 shared pixels of 100 each -> IoU 81 / 119 = 0.68. D lies inside A:
  # 16 / 100 = 0.16 of the union, all of the smaller box.
  assert boxes.nms(b, scores, 0.5).tolist() == [2, 0, 3]
  assert boxes.nms(b, scores, 0.7).tolist() == [2, 0, 1, 3]
  assert boxes.nms(b, scores, 0.85, "min").tolist() == [2, 0, 1]  # A-B: 81 / 100 of the smaller
  assert boxes.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
  with pytest.raises(ValueError, match="'union' or 'min'"):
    boxes.nms(b, scores, 0.5, "max")


def test_calibrate_and_square():
  b = np.array([[10.0, 20.0, 29.0, 59.0]])  # 20 x 40 whole pixels
  np.testing.assert_allclose(boxes.calibrate(b, [[0.1, -0.1, 0.5, 0.0]]), [[12, 16, 39, 59]])
  np.testing.assert_allclose(boxes.calibrate(b, [[0.1, 0, 0, 0]], whole_pixels=False), [[11.9, 20, 29, 59]])
  # 19 x 39 -> a 39-sided square about the same centre.
  np.testing.assert_allclose(boxes.square(b), [[0, 20, 39, 59]])


def test_crop_pads_with_zeros_outside_the_image():
  image = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
  np.testing.assert_array_equal(boxes.crop(image, [2, 2, 3, 4]), image[1:4, 1:3])
  out = boxes.crop(image, [0, -1, 5, 2])  # one column left of, one right of, two rows above the image
  assert out.shape == (4, 6, 3)
  np.testing.assert_array_equal(out[2:, 1:5], image[0:2])
  assert not out[:2].any() and not out[:, 0].any() and not out[:, 5].any()
