"""The canonical crop: landmarks land on the template, the size rule, and UTKFace chips come back as themselves."""
import numpy as np
import pytest

from age_jax.faces import align, canonical


def test_landmarks_land_on_the_template_at_any_size():
  # A face with the template's geometry, rotated 25 degrees, scaled 1.7x and shifted in a 400 px image.
  a = np.deg2rad(25)
  truth = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  landmarks = canonical.canonical_template(100) @ truth.T + [120.0, 60.0]
  image = np.zeros((400, 400, 3), np.uint8)
  x, y = np.round(landmarks[2]).astype(int)  # a bright 3x3 dot on the nose tip
  image[y - 1:y + 2, x - 1:x + 2] = 255
  for size in (64, 112, 200):
    matrix = canonical.canonical_transform(landmarks, size)
    np.testing.assert_allclose(align.apply_transform(matrix, landmarks), canonical.canonical_template(size),
                               atol=1e-9)
    crop = canonical.align_to_canonical(image, landmarks, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    weight = crop[..., 0].astype(float)
    rows, cols = np.mgrid[:size, :size]
    centre = [(cols * weight).sum() / weight.sum(), (rows * weight).sum() / weight.sum()]
    np.testing.assert_allclose(centre, align.apply_transform(matrix, [[x, y]])[0], atol=0.3)


def test_the_template_scales_like_a_resized_crop():
  # Resizing a crop from 200 to 112 px maps pixel centre p to (p + 0.5) * 112 / 200 - 0.5.
  np.testing.assert_allclose((canonical.canonical_template(200) + 0.5) * 112 / 200 - 0.5,
                             canonical.canonical_template(112), atol=1e-12)
  t = canonical.CANONICAL_TEMPLATE
  assert t[0, 0] < t[2, 0] < t[1, 0] and t[:2, 1].max() < t[2, 1] < t[3:, 1].min()


def test_bad_landmarks_and_images_are_refused():
  image = np.zeros((50, 50, 3), np.uint8)
  with pytest.raises(ValueError, match=r"five finite \(x, y\) landmarks, got shape \(4, 2\)"):
    canonical.align_to_canonical(image, np.zeros((4, 2)), 32)
  with pytest.raises(ValueError, match="five finite"):
    canonical.align_to_canonical(image, np.full((5, 2), np.nan), 32)
  with pytest.raises(ValueError, match="uint8 HxWx3 image, got float64"):
    canonical.align_to_canonical(image.astype(float), canonical.canonical_template(50), 32)
  with pytest.raises(ValueError, match="positive size"):
    canonical.canonical_template(0)


def test_a_utkface_chip_is_nearly_the_canonical_crop_already(chip_faces, utk_chips):
  # Re-aligning a chip onto the template moves it by a near-identity similarity.
  for faces, chip in zip(chip_faces, utk_chips):
    matrix = canonical.canonical_transform(faces[0].landmarks, chip.shape[0])
    scale = np.hypot(*matrix[:, 0])
    degrees = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
    centre = (chip.shape[0] - 1) / 2
    shift = np.linalg.norm(align.apply_transform(matrix, [[centre, centre]])[0] - centre)
    assert abs(scale - 1) < 0.12 and abs(degrees) < 6 and shift < 10, (scale, degrees, shift)
    again = canonical.align_to_canonical(chip, faces[0].landmarks, chip.shape[0])
    assert again.shape == chip.shape
