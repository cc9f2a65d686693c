"""Device augmentation presets against PIL (each op) and against a PIL pipeline of the same
recipe (distributions: crop offsets, flip rate, op frequencies, pixel statistics); 1 vs 8
devices bit for bit; the contact sheet. Synthetic images only."""
import colorsys
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image, ImageEnhance, ImageOps

from age_jax.data import augment, contact_sheet, randaugment


def _face_like(size=48, seed=0):
  """A smooth synthetic image with structure (gradients, a bright disc, a dark bar) and noise."""
  y, x = np.mgrid[0:size, 0:size] / size
  disc = ((x - 0.4) ** 2 + (y - 0.45) ** 2 < 0.06)
  image = np.stack([200 * x + 30, 180 * y + 40, 120 + 60 * disc - 80 * (np.abs(y - 0.75) < 0.05)], -1)
  image += np.random.default_rng(seed).normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


@functools.cache
def _batched(preset, size, seed=0, **options):
  return jax.jit(augment.batch_transform(preset, size, seed, **options))


def _views(preset, image, size, n, seed=0, **options):
  images = np.repeat(image[None], n, axis=0)
  return np.asarray(_batched(preset, size, seed, **options)(images, np.arange(n, dtype=np.uint32)))


def test_xing_crops_are_uniform_offsets_mirrored_half_the_time():
  image = _face_like(24)
  views = _views("xing", image, 20, 1000)
  assert views.shape == (1000, 20, 20, 3) and views.dtype == np.float32
  candidates = {(t, l, m): (image[t:t + 20, l:l + 20][:, ::-1] if m else image[t:t + 20, l:l + 20])
                for t in range(5) for l in range(5) for m in (False, True)}
  found = [next(k for k, c in candidates.items() if np.array_equal(c, v)) for v in views.astype(np.uint8)]
  tops, lefts, mirrors = map(np.array, zip(*found))
  # 1000 draws: each of 5 offsets ~200 (sd 12.6), mirrored ~500 (sd 15.8); bounds at > 4 sd.
  for offsets in (tops, lefts):
    assert np.all(np.abs(np.bincount(offsets, minlength=5) - 200) < 55), np.bincount(offsets)
  assert abs(mirrors.sum() - 500) < 65
  np.testing.assert_array_equal(_views("xing", image, 20, 8), views[:8])  # a function of (seed, position)
  assert not np.array_equal(_views("xing", image, 20, 8, seed=1), views[:8])


def test_none_and_xing_eval_are_the_exact_centre_crop():
  image = _face_like(24)
  expected = image[2:22, 2:22].astype(np.float32)
  np.testing.assert_array_equal(_views("none", image, 20, 8)[1], expected)
  np.testing.assert_array_equal(augment.eval_transform(20)(image), expected)
  np.testing.assert_array_equal(augment.eval_transform(20, "none")(image), expected)
  with pytest.raises(ValueError, match="image_size must not exceed config.data.load_size"):
    augment.eval_transform(30)(image)
  with pytest.raises(ValueError, match="config.data.load_size"):
    _views("xing", image, 30, 1)
  with pytest.raises(ValueError, match="config.data.augment='autoaugment'"):
    augment.train_transform("autoaugment", 20)


def test_lae_eval_resizes_then_centre_crops():
  image = _face_like(48)
  # 42 / 0.875 = 48: the loaded image already has the resize size, only the centre crop is left.
  np.testing.assert_array_equal(augment.eval_transform(42, "lae")(image), image[3:45, 3:45].astype(np.float32))
  resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32)
  np.testing.assert_array_equal(augment.eval_transform(32, "lae", eval_crop_fraction=1.0)(image), resized)
  with pytest.raises(ValueError, match="eval_crop_fraction"):
    augment.eval_transform(32, "lae", eval_crop_fraction=1.5)


# The shapes the other tests use, so the one-device programs are compiled once.
SHAPES = {"xing": (24, 20, 1000), "none": (24, 20, 8), "lae": (40, 32, 600)}


@pytest.mark.slow  # compiles the 'lae' preset (tens of seconds on 2 cores)
def test_every_preset_is_bit_identical_on_one_and_eight_devices():
  assert len(jax.devices()) == 8, "tests/conftest.py should fake 8 CPU devices"
  sharded = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), P("batch"))
  for preset, (load, size, n) in SHAPES.items():
    images = np.repeat(_face_like(load)[None], n, axis=0)
    positions = np.arange(n, dtype=np.uint32)
    eight = jax.jit(augment.batch_transform(preset, size, 0), in_shardings=(sharded, sharded),
                    out_shardings=sharded)(jax.device_put(images, sharded), jax.device_put(positions, sharded))
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_array_equal(_views(preset, images[0], size, n), np.asarray(eight), err_msg=preset)


def test_random_resized_crop_box_respects_scale_and_ratio():
  boxes = jax.jit(jax.vmap(lambda k: jnp.stack(augment.random_resized_crop_box(k, 60, 80, (0.2, 0.6), (0.5, 2.0)))))
  top, left, h, w = np.asarray(boxes(jax.random.split(jax.random.key(0), 500))).T
  assert np.all((0 <= top) & (top <= 60 - h) & (0 <= left) & (left <= 80 - w))
  # round() moves each side by at most half a pixel.
  assert np.all((0.2 * 4800 - (h + w) <= h * w) & (h * w <= 0.6 * 4800 + (h + w)))
  assert np.all((0.5 / 1.05 <= w / h) & (w / h <= 2.0 * 1.05))
  # Impossible request (whole area at ratio 1 on a 2:1 image): torchvision's fallback, the
  # largest centred crop with the ratio clamped into range: 10 x 10 at left 5.
  box = augment.random_resized_crop_box(jax.random.key(0), 10, 20, (1, 1), (1, 1))
  assert [int(v) for v in box] == [0, 5, 10, 10]


def test_resized_crop_matches_pil_box_resize():
  image = _face_like(48)
  x = jnp.asarray(image, jnp.float32)
  crop = jax.jit(augment.resized_crop, static_argnums=5)
  for (top, left, h, w), tol in (((5, 7, 30, 33), 1), ((5, 7, 12, 10), 2), ((0, 0, 48, 48), 1)):
    ours = np.asarray(crop(x, top, left, h, w, 24, False))
    pil = np.asarray(Image.fromarray(image).resize((24, 24), Image.BILINEAR, box=(left, top, left + w, top + h)))
    assert np.abs(ours - pil).max() <= tol
  np.testing.assert_array_equal(crop(x, 0, 0, 48, 48, 24, True), crop(x, 0, 0, 48, 48, 24, False)[:, ::-1])


def _pil_op(image, name, f, sign):
  """The op as PIL does it (the host implementation these presets replaced)."""
  fill = (128,) * 3
  w, h = image.size
  affine = lambda c: image.transform(image.size, Image.AFFINE, c, Image.BILINEAR, fillcolor=fill)
  enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
             "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}
  if name in enhance:
    return enhance[name](image).enhance(1 + sign * 0.9 * f)
  return {
      "identity": lambda: image,
      "auto_contrast": lambda: ImageOps.autocontrast(image),
      "equalize": lambda: ImageOps.equalize(image),
      "rotate": lambda: image.rotate(sign * 30 * f, Image.BILINEAR, fillcolor=fill),
      "solarize": lambda: ImageOps.solarize(image, 256 - round(256 * f)),
      "posterize": lambda: ImageOps.posterize(image, 8 - round(4 * f)),
      "shear_x": lambda: affine((1, sign * 0.3 * f, -sign * 0.3 * f * h / 2, 0, 1, 0)),
      "shear_y": lambda: affine((1, 0, 0, sign * 0.3 * f, 1, -sign * 0.3 * f * w / 2)),
      "translate_x": lambda: affine((1, 0, sign * 0.45 * f * w, 0, 1, 0)),
      "translate_y": lambda: affine((1, 0, 0, 0, 1, sign * 0.45 * f * h)),
  }[name]()


@functools.cache
def _apply_op(magnitude):
  return jax.jit(lambda x, op, sign: randaugment.apply_op(x, op, magnitude, sign))


def test_each_randaugment_op_matches_pil():
  image = _face_like(40)[:, 4:]  # 40 x 36: not square, so height and width are not confused
  x = jnp.asarray(image, jnp.float32)
  for op, name in enumerate(randaugment.OPS):
    for sign in (1.0, -1.0):
      ours = np.asarray(_apply_op(9)(x, op, sign))
      pil = np.asarray(_pil_op(Image.fromarray(image), name, 0.9, sign), np.float32)
      diff = np.abs(ours - pil)
      # Off by one level in a few pixels at most (float vs PIL's fixed-point weights).
      assert diff.max() <= 1 and (diff > 0).mean() < 0.05, (name, sign, diff.max(), (diff > 0).mean())
  # Hand-checked levels at M=9: solarize inverts pixels >= 256 - round(230.4) = 26; posterize keeps
  # 8 - round(3.6) = 4 bits.
  pixel = jnp.broadcast_to(jnp.array([200.0, 100, 10]), x.shape)
  assert _apply_op(9)(pixel, randaugment.OPS.index("solarize"), 1.0)[0, 0].tolist() == [55, 155, 10]
  assert _apply_op(9)(pixel, randaugment.OPS.index("posterize"), 1.0)[0, 0].tolist() == [192, 96, 0]


def test_randaugment_op_frequencies_and_switches():
  ops, applied, signs = jax.jit(jax.vmap(lambda k: randaugment.sample_ops(k, 2, 0.5)))(
      jax.random.split(jax.random.key(3), 14_000))
  # 28,000 slots: each op ~2,000 (sd 43); applied and signs ~14,000 (sd 84); bounds at 5 sd.
  assert np.all(np.abs(np.bincount(np.ravel(ops), minlength=14) - 2000) < 215)
  assert abs(int(np.sum(applied)) - 14_000) < 420 and abs(int(np.sum(signs > 0)) - 14_000) < 420
  assert not np.any(randaugment.sample_ops(jax.random.key(0), 50, 0.0)[1])
  image = jnp.zeros((4, 4, 3))
  assert randaugment.rand_augment(image, jax.random.key(0), num_ops=0) is image
  with pytest.raises(ValueError, match=r"magnitude must be in \[0, 10\]"):
    randaugment.rand_augment(image, jax.random.key(0), magnitude=12)


def test_color_jitter_ranges_identity_and_hue():
  image = jnp.asarray(_face_like(32), jnp.float32)
  jitter = jax.jit(jax.vmap(augment.color_jitter, in_axes=(None, 0, None)), static_argnums=2)
  keys = jax.random.split(jax.random.key(0), 20)
  np.testing.assert_array_equal(jitter(image, keys[:3], (0, 0, 0, 0)), jnp.broadcast_to(image, (3, *image.shape)))
  brightened = np.asarray(jitter(image, keys, (0.5, 0, 0, 0)))
  factors = brightened.mean(axis=(1, 2, 3)) / np.asarray(image).mean()
  assert 0.5 - 0.02 < factors.min() < 0.8 and 1.2 < factors.max() < 1.5 + 0.02  # uniform in [0.5, 1.5]
  with pytest.raises(ValueError, match="color_jitter"):
    augment.color_jitter(image, jax.random.key(0), (0.4, 0.4, 0.4, 0.7))
  pixels = np.random.default_rng(1).integers(0, 256, (1, 300, 3)).astype(np.float32)
  for shift in (0.1, -0.3):
    expected = [np.array(colorsys.hsv_to_rgb((h + shift) % 1, s, v)) * 255
                for h, s, v in (colorsys.rgb_to_hsv(*(p / 255)) for p in pixels[0])]
    np.testing.assert_allclose(augment.adjust_hue(pixels, shift)[0], np.rint(expected), atol=1)


def _pil_lae(image, size, rng, op_prob=0.5):
  """The 'lae' recipe as the host presets ran it: PIL ops drawn with numpy."""
  h, w = image.shape[:2]
  top, left, ch, cw = 0, 0, h, w
  for _ in range(10):
    area, aspect = h * w * rng.uniform(0.08, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      break
  else:
    ch, cw = h, w
  out = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
  if rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  for op in rng.permutation(4):
    if op < 3:
      out = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op](out).enhance(
          rng.uniform(0.6, 1.4))
    else:
      out = Image.fromarray(np.asarray(augment.adjust_hue(np.asarray(out, np.float32), rng.uniform(-0.1, 0.1)),
                                       np.uint8))
  for op in rng.integers(0, 14, size=2):
    if rng.random() < op_prob:
      out = _pil_op(out, randaugment.OPS[op], 0.9, 1.0 if rng.random() < 0.5 else -1.0)
  return np.asarray(out, np.float32)


@pytest.mark.slow  # compiles the 'lae' preset (tens of seconds on 2 cores)
def test_lae_pixel_statistics_match_the_pil_recipe():
  image = _face_like(40)
  n = 600
  ours = _views("lae", image, 32, n)
  assert ours.shape == (n, 32, 32, 3) and ours.min() >= 0 and ours.max() <= 255 and np.all(ours == np.round(ours))
  rng = np.random.default_rng(0)
  theirs = np.stack([_pil_lae(image, 32, rng) for _ in range(n)])
  # Per-view mean, spread and change from the plain resize: same distribution within sampling error.
  plain = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32)
  for stat in (lambda v: v.mean(axis=(1, 2, 3)), lambda v: v.std(axis=(1, 2, 3)),
               lambda v: np.abs(v - plain).mean(axis=(1, 2, 3)), lambda v: v.mean(axis=(1, 2))[:, 0]):
    a, b = stat(ours), stat(theirs)
    assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std(), b.std()) / np.sqrt(n), (a.mean(), b.mean())
    assert 0.8 < a.std() / b.std() < 1.25, (a.std(), b.std())


def test_options_from_config_fall_back_to_defaults():
  cfg = ml_collections.ConfigDict({"augment": "lae", "randaugment_magnitude": 5})
  options = augment.options_from_config(cfg, augment.TRAIN_OPTIONS)
  assert options["randaugment_magnitude"] == 5 and options["crop_scale"] == augment.CROP_SCALE


def test_contact_sheet_shows_the_training_path():
  images = [_face_like(24, seed) for seed in range(3)]
  sheet = contact_sheet.contact_sheet(images, "xing", 20, views=4, seed=0)
  step = 20 + contact_sheet.GAP
  gap = contact_sheet.GAP
  assert sheet.shape == (3 * step - gap, 5 * step - gap, 3) and sheet.dtype == np.uint8
  np.testing.assert_array_equal(sheet[step:step + 20, :20], images[1][2:22, 2:22])  # eval view first
  assert np.all(sheet[20:step] == 255)  # white gap between rows
  # Row 1's training views are the batch transform's views at positions 4..7.
  expected = _views("xing", np.stack(images)[1], 20, 8)[4:]
  for v in range(4):
    np.testing.assert_array_equal(sheet[step:step + 20, (v + 1) * step:(v + 1) * step + 20], expected[v])


def test_face_warp_at_rest_is_the_centre_crop_and_turns_and_zooms_about_the_centre():
  image = _face_like(72).astype(np.float32)
  crop = augment.center_crop(image, 64)
  at_rest = lambda **kw: np.asarray(augment.warp(image, 64, **{"angle": 0.0, "zoom": 1.0, "shift": (0.0, 0.0),
                                                               "mirror": False, **kw}))
  np.testing.assert_allclose(at_rest(), crop, atol=1e-3)
  np.testing.assert_allclose(at_rest(mirror=True), crop[:, ::-1], atol=1e-3)
  np.testing.assert_allclose(at_rest(shift=(2.0, -3.0)), image[6:70, 1:65], atol=1e-3)
  # A quarter turn about the centre moves whole pixels: the crop turned clockwise.
  np.testing.assert_allclose(at_rest(angle=np.pi / 2), np.rot90(crop, k=-1), atol=1e-3)
  # Zoom 2: output pixel 32 reads input 35.5 + (32 - 31.5) / 2 = 35.75, bilinear between 35 and 36.
  rows = 0.25 * image[35] + 0.75 * image[36]
  np.testing.assert_allclose(at_rest(zoom=2.0)[32, 32], 0.25 * rows[35] + 0.75 * rows[36], atol=1e-3)


def test_face_preset_views_vary_within_their_ranges():
  image = _face_like(72)
  views = _views("face", image, 64, 32, face_rotation=10.0, face_scale=(0.9, 1.1), color_jitter=(0, 0, 0, 0))
  crop = augment.center_crop(image, 64).astype(np.float32)
  assert views.shape == (32, 64, 64, 3) and views.min() >= 0 and views.max() <= 255
  assert np.all(views == np.round(views))
  distances = np.minimum(np.abs(views - crop).mean(axis=(1, 2, 3)), np.abs(views - crop[:, ::-1]).mean(axis=(1, 2, 3)))
  assert np.all(distances > 0.5) and np.all(distances < 25)   # every view moved, none beyond recognition
  # No rotation, no zoom, no jitter: each view is a shifted crop (or its mirror) of the image.
  plain = _views("face", image, 64, 8, face_rotation=0.0, face_scale=(1.0, 1.0), color_jitter=(0, 0, 0, 0))
  assert np.all((plain >= image.min()) & (plain <= image.max()))
  with pytest.raises(ValueError, match="face_scale"):
    augment.train_transform("face", 64, face_scale=(1.2, 1.1))


def test_five_eval_views_are_the_centre_and_diagonal_shifts():
  image = _face_like(72)
  views = augment.eval_transform(64, "face", eval_views=5, eval_view_shift=2)(image)
  assert views.shape == (5, 64, 64, 3) and views.dtype == np.float32
  np.testing.assert_array_equal(views[0], augment.eval_transform(64, "xing")(image))
  np.testing.assert_array_equal(views[1], image[2:66, 2:66])
  np.testing.assert_array_equal(views[4], image[6:70, 6:70])
  with pytest.raises(ValueError, match="eval_view_shift"):
    augment.eval_transform(64, "xing", eval_views=5, eval_view_shift=5)(image)
  with pytest.raises(ValueError, match="eval_views"):
    augment.eval_transform(64, "lae", eval_views=5)


def test_the_library_warp_and_crop_give_our_pixels():
  # dm_pix.affine_transform and jax.image.scale_and_translate (launch/bench/library_ops.py, timed
  # against our ops by bench_library_ops.py; ours stay, being faster on the CPU) give our pixels:
  # the warp a level apart at most where float rounding meets floor(), the crop a level apart (no
  # uint8 rounding between its two passes, which PIL and ours have).
  from launch.bench.library_ops import dm_pix_affine, scale_translate_crop
  image = jnp.asarray(_face_like(40)[:, 4:], jnp.float32)   # 40 x 36: height and width not confused
  h, w = image.shape[:2]
  rng = np.random.default_rng(0)
  ops = rng.integers(0, len(randaugment.GEOMETRIC), 40)
  values = rng.uniform(-1, 1, 40) * np.array([30, 0.3, 0.3, 0.45 * w, 0.45 * h])[ops]
  matrices = jax.vmap(lambda op, v: randaugment.geometric_matrix(op, v, h, w))(jnp.asarray(ops),
                                                                              jnp.asarray(values, jnp.float32))
  ours = np.asarray(jax.jit(jax.vmap(randaugment.affine, in_axes=(None, 0)))(image, matrices))
  library = np.asarray(jax.jit(jax.vmap(dm_pix_affine, in_axes=(None, 0)))(image, matrices))
  diff = np.abs(ours - library)
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
  # Half a pixel past the outer centres is inside (the edge value), beyond it the fill: shifts of 0.4, 0.6.
  for warp in (randaugment.affine, dm_pix_affine):
    shifted = lambda dx: np.asarray(warp(image, jnp.array([[1.0, 0, -dx], [0, 1, 0]])))
    np.testing.assert_array_equal(shifted(0.4)[:, 0], np.floor(image[:, 0]))
    np.testing.assert_array_equal(shifted(0.6)[:, 0], np.full((h, 3), randaugment.FILL))
  x = jnp.asarray(_face_like(48), jnp.float32)
  for box in ((5, 7, 30, 33), (5, 7, 12, 10), (0, 0, 48, 48)):
    ours = np.asarray(augment.resized_crop(x, *box, 24))
    library = np.asarray(scale_translate_crop(x, *box, 24))
    assert np.abs(ours - library).max() <= 1, box
