"""Five-point face alignment: Umeyama similarity, 68 -> 5 landmarks, warping onto the template."""
import numpy as np
import pytest
from PIL import Image

from age_jax.faces import align


def _similarity(scale, degrees, tx, ty):
  a = np.deg2rad(degrees)
  rotation = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  return np.concatenate([rotation, [[tx], [ty]]], axis=1)


def test_similarity_transform_recovers_a_known_similarity_exactly():
  src = np.random.default_rng(0).uniform(0, 200, (5, 2))
  for scale, degrees, tx, ty in ((1.0, 0, 0, 0), (0.55, 17, -12.5, 40), (2.3, -160, 3, -7)):
    truth = _similarity(scale, degrees, tx, ty)
    np.testing.assert_allclose(align.similarity_transform(src, align.apply_transform(truth, src)), truth,
                               atol=1e-9)


def test_similarity_transform_is_the_least_squares_fit_and_never_mirrors():
  src = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float64)
  # Targets: a uniform 2x scale with each point nudged; the best similarity is the 2x scale,
  # translation (1, 1) when the nudges cancel out in the mean and in rotation.
  dst = 2 * src + 1 + np.array([[0.5, 0], [-0.5, 0], [-0.5, 0], [0.5, 0]])
  np.testing.assert_allclose(align.similarity_transform(src, dst), [[2, 0, 1], [0, 2, 1]], atol=1e-12)
  # Points along x mirrored in y: the best reflection-free fit (Umeyama's sign fix) keeps the
  # orientation and shrinks by (sum x^2 - sum y^2) / (sum x^2 + sum y^2) of the centred points.
  src = np.array([[0, 0.5], [10, -0.5], [20, -0.5], [30, 0.5]])  # x and y uncorrelated
  dst = src * [1, -1]
  centred = src - src.mean(0)
  sx, sy = np.sum(centred ** 2, axis=0)
  scale = (sx - sy) / (sx + sy)
  expected = np.array([[scale, 0, 0], [0, scale, 0]])
  expected[:, 2] = dst.mean(0) - scale * src.mean(0)
  matrix = align.similarity_transform(src, dst)
  np.testing.assert_allclose(matrix, expected, atol=1e-12)
  assert np.linalg.det(matrix[:, :2]) > 0


def test_degenerate_and_malformed_points_raise_clear_errors():
  with pytest.raises(ValueError, match="landmarks all coincide"):
    align.similarity_transform(np.full((5, 2), 30.0), align.template(112))
  with pytest.raises(ValueError, match="landmarks all coincide"):
    align.align_face(np.zeros((50, 50, 3), np.uint8), np.full((5, 2), 7.0), 112)
  with pytest.raises(ValueError, match="five"):
    align.align_face(np.zeros((50, 50, 3), np.uint8), np.zeros((4, 2)), 112)
  with pytest.raises(ValueError, match="68"):
    align.five_points_from_68(np.zeros((5, 2)))


def test_five_points_from_68_follows_the_ibug_layout():
  pts = np.zeros((68, 2))
  pts[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]  # subject's right eye (image left)
  pts[42:48] = pts[36:42] + [30, 2]
  pts[30] = [28, 40]
  pts[48], pts[54] = [15, 55], [41, 56]
  np.testing.assert_allclose(align.five_points_from_68(pts), [[13, 20], [43, 22], [28, 40], [15, 55], [41, 56]])


def _blob(shape, centre, sigma=2.0):
  """uint8 image of one Gaussian dot at a sub-pixel (x, y) centre."""
  rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
  d2 = (cols - centre[0]) ** 2 + (rows - centre[1]) ** 2
  return np.rint(255 * np.exp(-d2 / (2 * sigma ** 2))).astype(np.uint8)


def _centroid(image):
  rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]]
  w = image.astype(np.float64)
  return np.array([np.sum(cols * w), np.sum(rows * w)]) / w.sum()


def test_align_face_puts_the_landmarks_on_the_template():
  # The template moved by a known similarity into a 160x200 image; one Gaussian dot per point
  # (one grey image each, so the dots never mix), then aligned back.
  output_size = 128
  points = align.apply_transform(_similarity(1.6, 23, 60, -60), align.template(112))
  for point, target in zip(points, align.template(output_size)):
    dot = _blob((160, 200), point)
    assert np.abs(_centroid(dot) - point).max() < 0.01  # the dot is where we meant it
    aligned = align.align_face(dot, points, output_size)
    assert aligned.shape == (output_size, output_size) and aligned.dtype == np.uint8
    np.testing.assert_allclose(_centroid(aligned), target, atol=0.1)
  colour = np.stack([_blob((160, 200), points[0])] * 3, axis=-1)
  assert align.align_face(colour, points, output_size).shape == (output_size, output_size, 3)


def test_warp_with_the_identity_and_a_shift_is_exact():
  image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
  np.testing.assert_array_equal(align.warp_affine(image, _similarity(1, 0, 0, 0), 20), image)
  shifted = align.warp_affine(image, _similarity(1, 0, 3, 2), 20)
  np.testing.assert_array_equal(shifted[2:, 3:], image[:-2, :-3])
  assert np.all(shifted[:2] == 0) and np.all(shifted[:, :3] == 0)


def test_warp_affine_takes_a_rectangular_output_size():
  image = np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)
  out = align.warp_affine(image, np.array([[1.0, 0, 3], [0, 1, 1]]), (20, 15))  # shift by (3, 1)
  assert out.shape == (15, 20, 3)
  np.testing.assert_array_equal(out[1:11, 3:13], image)
  assert not out[0].any() and not out[:, :3].any()


def test_a_shrinking_warp_low_passes_stripes_instead_of_aliasing_them():
  # 2-px black/white stripes (period 4) at 0.2x are 0.8 output pixels a period: far above the
  # output's Nyquist rate, so a correct shrink shows their mean, 127.5; point sampling shows 0 or 255.
  stripes = np.zeros((600, 600), np.uint8)
  stripes[:, 2::4] = stripes[:, 3::4] = 255
  for degrees in (0, 20):
    matrix = _similarity(0.2, degrees, 0, 0)
    centre = align.apply_transform(matrix, [[299.5, 299.5]])[0]
    matrix[:, 2] += 31.5 - centre  # the stripes' centre onto the output's: every output pixel reads them
    out = align.warp_affine(stripes, matrix, 64)
    assert np.abs(out.astype(float) - 127.5).max() < 25, (degrees, out.min(), out.max())
  # Growing or keeping the size is not filtered: the identity stays exact.
  np.testing.assert_array_equal(align.warp_affine(stripes, _similarity(1, 0, 0, 0), 64), stripes[:64, :64])


def test_a_face_warped_from_8x_with_sensor_noise_matches_the_face_at_1x(utk_chips):
  # A chip and the same chip 8x larger with per-pixel noise (sigma 20, as a phone sensor adds at
  # full resolution) give the same canonical crop: the noise averages out over 8x8 pixels.
  from age_jax.faces import canonical
  rng = np.random.default_rng(0)
  for chip in utk_chips[:3]:
    points = canonical.canonical_template(200)  # the chips are aligned onto this frame
    big = np.asarray(Image.fromarray(chip).resize((1600, 1600), Image.BICUBIC), np.float64)
    big = np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8)
    small_crop = canonical.align_to_canonical(chip, points, 64).astype(float)
    big_crop = canonical.align_to_canonical(big, points * 8 + 3.5, 64).astype(float)
    assert np.abs(big_crop - small_crop)[4:-4, 4:-4].mean() < 3.0
