"""Pasted photos (data/paste.py): sensor noise of the stated strength, and a photo just large
enough for a chip at the largest scale and angle."""
import numpy as np
import pytest

from age_jax.data import paste


def test_sensor_noise_has_the_stated_sigma_at_mid_grey_and_grows_with_brightness():
  rng = np.random.default_rng(0)
  for level, expected in ((128, 8.0), (16, 8.0 * np.sqrt(48 / 160)), (224, 8.0 * np.sqrt(256 / 160))):
    flat = np.full((200, 200, 3), level, np.uint8)
    noisy = paste.sensor_noise(flat, rng, 8.0).astype(float)
    assert noisy.std() == pytest.approx(expected, rel=0.03)
    assert abs(noisy.mean() - level) < 0.2
  flat = np.full((10, 10, 3), 50, np.uint8)
  assert paste.sensor_noise(flat, rng, 0.0) is flat


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_an_auto_sized_photo_holds_the_chip_at_any_angle(scale):
  rng = np.random.default_rng(1)
  chip = np.full((200, 200, 3), 200, np.uint8)
  for _ in range(3):
    photo, where = paste.paste(chip, rng, None, scale=(scale, scale))
    assert photo.shape[0] == paste.photo_size_for(200, scale) <= 200 * scale * 1.37 + 3
    assert where["scale"] == scale
