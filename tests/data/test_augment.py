"""Augmentation presets, colour jitter, RandAugment and the contact sheet, on synthetic images."""
import colorsys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from age_jax.data import augment, randaugment
from age_jax.data import contact_sheet


def _face_like(size=48, seed=0):
  """A smooth synthetic image with structure (gradients, a bright disc, a dark bar) and noise."""
  y, x = np.mgrid[0:size, 0:size] / size
  disc = ((x - 0.4) ** 2 + (y - 0.45) ** 2 < 0.06)
  image = np.stack([200 * x + 30, 180 * y + 40, 120 + 60 * disc - 80 * (np.abs(y - 0.75) < 0.05)], -1)
  image += np.random.default_rng(seed).normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _rng(seed=0):
  return np.random.default_rng(seed)


def _find_crop(image, crop):
  """(top, left, mirrored) of crop inside image, or None."""
  s = crop.shape[0]
  for mirrored, view in ((False, crop), (True, crop[:, ::-1])):
    for top in range(image.shape[0] - s + 1):
      for left in range(image.shape[1] - s + 1):
        if np.array_equal(image[top:top + s, left:left + s], view):
          return top, left, mirrored
  return None


def test_xing_takes_random_mirrored_crops_of_the_loaded_image():
  image = _face_like(24)
  transform = augment.train_transform("xing", 20)
  found = set()
  for seed in range(40):
    out = transform(image, _rng(seed))
    assert out.shape == (20, 20, 3) and out.dtype == np.float32
    where = _find_crop(image, out.astype(np.uint8))
    assert where is not None
    found.add(where)
  tops, lefts, mirrors = zip(*found)
  assert set(mirrors) == {False, True} and len(set(tops)) == 5 and len(set(lefts)) == 5
  np.testing.assert_array_equal(transform(image, _rng(3)), transform(image, _rng(3)))


def test_none_and_xing_eval_are_the_exact_centre_crop():
  image = _face_like(24)
  expected = image[2:22, 2:22].astype(np.float32)
  np.testing.assert_array_equal(augment.train_transform("none", 20)(image, _rng()), expected)
  np.testing.assert_array_equal(augment.eval_transform(20)(image), expected)
  np.testing.assert_array_equal(augment.eval_transform(20, "none")(image), expected)
  with pytest.raises(ValueError, match="image_size must not exceed config.data.load_size"):
    augment.eval_transform(30)(image)
  with pytest.raises(ValueError, match="config.data.load_size"):
    augment.train_transform("xing", 30)(image, _rng())
  with pytest.raises(ValueError, match="config.data.augment='autoaugment'"):
    augment.train_transform("autoaugment", 20)


def test_lae_eval_resizes_then_centre_crops():
  image = _face_like(48)
  # 42 / 0.875 = 48: the loaded image already has the resize size, only the centre crop is left.
  np.testing.assert_array_equal(augment.eval_transform(42, "lae")(image), image[3:45, 3:45].astype(np.float32))
  # crop fraction 1: the whole image resized to the input size.
  resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32)
  np.testing.assert_array_equal(augment.eval_transform(32, "lae", eval_crop_fraction=1.0)(image), resized)
  with pytest.raises(ValueError, match="eval_crop_fraction"):
    augment.eval_transform(32, "lae", eval_crop_fraction=1.5)


def test_random_resized_crop_box_respects_scale_and_ratio():
  for seed in range(200):
    top, left, h, w = augment.random_resized_crop_box(60, 80, _rng(seed), (0.2, 0.6), (0.5, 2.0))
    assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
    # round() moves each side by at most half a pixel (sides >= 21 px here: < 2.5% each).
    assert 0.2 * 4800 - (h + w) <= h * w <= 0.6 * 4800 + (h + w)
    assert 0.5 / 1.05 <= w / h <= 2.0 * 1.05
  # Impossible request (whole area at ratio 1 on a 2:1 image): torchvision's fallback, the
  # largest centred crop with the ratio clamped into range: 10 x 10 at left 5.
  assert augment.random_resized_crop_box(10, 20, _rng(), (1, 1), (1, 1)) == (0, 5, 10, 10)


def test_lae_output_shape_range_and_determinism():
  image = _face_like(48)
  transform = augment.train_transform("lae", 32)
  outs = [transform(image, _rng(seed)) for seed in range(10)]
  for out in outs:
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
  np.testing.assert_array_equal(transform(image, _rng(4)), outs[4])
  assert not np.array_equal(outs[0], outs[1])


def test_lae_without_jitter_or_randaugment_is_a_resized_crop_and_flip():
  image = _face_like(48)
  plain = augment.train_transform("lae", 32, color_jitter=(0, 0, 0, 0), randaugment_num_ops=0,
                                  crop_scale=(1, 1), crop_ratio=(1, 1))
  resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32)
  outs = [plain(image, _rng(seed)) for seed in range(8)]
  assert all(np.array_equal(o, resized) or np.array_equal(o, resized[:, ::-1]) for o in outs)
  assert any(np.array_equal(o, resized[:, ::-1]) for o in outs) and any(np.array_equal(o, resized) for o in outs)


def test_color_jitter_with_zero_strength_is_the_identity():
  image = Image.fromarray(_face_like(32))
  for seed in range(5):
    np.testing.assert_array_equal(np.asarray(augment.color_jitter(image, _rng(seed), (0, 0, 0, 0))),
                                  np.asarray(image))
  with pytest.raises(ValueError, match="color_jitter"):
    augment.color_jitter(image, _rng(), (0.4, 0.4, 0.4, 0.7))


def test_brightness_jitter_scales_pixels_by_a_factor_in_range():
  image = _face_like(32)
  for seed in range(5):
    out = np.asarray(augment.color_jitter(Image.fromarray(image), _rng(seed), (0.5, 0, 0, 0)), np.float64)
    # Replay the draws: the order permutation, then the brightness factor.
    rng = _rng(seed)
    rng.permutation(4)
    factor = rng.uniform(0.5, 1.5)
    np.testing.assert_allclose(out, np.clip(image * factor, 0, 255), atol=1.0)


def test_hue_shift_matches_colorsys_and_keeps_grey():
  pixels = np.random.default_rng(1).integers(0, 256, (1, 500, 3), dtype=np.uint8)
  for shift in (0.1, -0.3, 0.5):
    out = augment.hue_shift(pixels, shift)[0]
    expected = [np.array(colorsys.hsv_to_rgb((h + shift) % 1, s, v)) * 255
                for h, s, v in (colorsys.rgb_to_hsv(*(p / 255)) for p in pixels[0])]
    np.testing.assert_allclose(out, np.rint(expected), atol=1)
  primaries = np.array([[[255, 0, 0], [0, 255, 0], [90, 90, 90]]], np.uint8)
  np.testing.assert_array_equal(augment.hue_shift(primaries, 1 / 3), [[[0, 255, 0], [0, 0, 255], [90, 90, 90]]])
  np.testing.assert_array_equal(augment.hue_shift(pixels, 0.0), pixels)


def _mean_change(image, magnitude, draws=60, **kw):
  pil = Image.fromarray(image)
  diffs = [np.abs(np.asarray(randaugment.rand_augment(pil, _rng(seed), magnitude=magnitude, **kw), np.float64)
                  - image).mean() for seed in range(draws)]
  return float(np.mean(diffs))


def test_randaugment_changes_the_image_more_at_higher_magnitude():
  image = _face_like(40)
  low, high = _mean_change(image, 2, op_prob=1.0), _mean_change(image, 9, op_prob=1.0)
  # Same seeds, so the same ops and signs are drawn at both magnitudes.
  assert high > 2 * low, (low, high)
  # Every op with a magnitude grows with it (signs drawn from the same seed at both levels).
  for op in set(randaugment.OPS) - {"identity", "auto_contrast", "equalize"}:
    change = [np.abs(np.asarray(randaugment.apply_op(Image.fromarray(image), op, m, _rng(1)), np.float64)
                     - image).mean() for m in (0, 3, 9)]
    assert change[0] == 0 and change[0] < change[1] < change[2], (op, change)


def test_randaugment_hand_checked_levels_and_switches():
  grey = Image.fromarray(np.array([[[200, 100, 255]]], np.uint8))
  # M=5: solarize threshold 128 inverts 200 and 255 only; M=10: posterize keeps 4 bits.
  assert np.asarray(randaugment.apply_op(grey, "solarize", 5, _rng())).tolist() == [[[55, 100, 0]]]
  assert np.asarray(randaugment.apply_op(grey, "posterize", 10, _rng())).tolist() == [[[192, 96, 240]]]
  image = Image.fromarray(_face_like(16))
  for kw in ({"num_ops": 0}, {"op_prob": 0.0}):
    np.testing.assert_array_equal(np.asarray(randaugment.rand_augment(image, _rng(), **kw)), np.asarray(image))
  with pytest.raises(ValueError, match=r"magnitude must be in \[0, 10\]"):
    randaugment.rand_augment(image, _rng(), magnitude=12)
  with pytest.raises(ValueError, match="unknown RandAugment op 'invert'"):
    randaugment.apply_op(image, "invert", 5, _rng())


def test_options_from_config_fall_back_to_defaults():
  cfg = ml_collections.ConfigDict({"augment": "lae", "randaugment_magnitude": 5})
  options = augment.options_from_config(cfg, augment.TRAIN_OPTIONS)
  assert options["randaugment_magnitude"] == 5 and options["crop_scale"] == augment.CROP_SCALE
  assert augment.train_transform("lae", 16, **options)(_face_like(24), _rng()).shape == (16, 16, 3)


def test_contact_sheet_grid_layout():
  images = [_face_like(24, seed) for seed in range(3)]
  sheet = contact_sheet.contact_sheet(images, "xing", 20, views=4, seed=0)
  step = 20 + contact_sheet.GAP
  gap = contact_sheet.GAP
  assert sheet.shape == (3 * step - gap, 5 * step - gap, 3) and sheet.dtype == np.uint8
  np.testing.assert_array_equal(sheet[step:step + 20, :20], images[1][2:22, 2:22])  # eval view first
  assert np.all(sheet[20:step] == 255)  # white gap between rows
