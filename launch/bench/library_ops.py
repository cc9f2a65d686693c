"""The library versions of two of our augmentation ops, timed against ours by
launch/bench/bench_library_ops.py (which holds the figures' command) and checked to give our pixels
by tests/data/test_augment.py: RandAugment's warp through dm_pix.affine_transform, the 'lae'
resized crop through jax.image.scale_and_translate. Ours stay (50-60x and 1.1x on the CPU)."""
import dm_pix
import jax
import jax.numpy as jnp


def dm_pix_affine(image, matrix, fill=128.0):
  """randaugment.affine through dm_pix.affine_transform: PIL's AFFINE convention (2x3 matrix from
  output pixel centres to input points), bilinear. PIL's edge rule (a point more than half a pixel
  past the outer pixel centres is `fill`, one inside interpolates edge-clamped neighbours) is
  dm_pix's 'nearest' mode plus that inside mask (its 'constant' mode fills from the outer centres on)."""
  h, w, _ = image.shape
  (a, b, c), (d, e, f) = matrix[0], matrix[1]
  # The map in index space (row i, column j): output centre (j + 0.5, i + 0.5) -> input point (x, y)
  # -> input index (y - 0.5, x - 0.5).
  row_offset, col_offset = 0.5 * (d + e) + f - 0.5, 0.5 * (a + b) + c - 0.5
  zero, one = jnp.zeros_like(a), jnp.ones_like(a)
  index_matrix = jnp.stack([jnp.stack([e, d, zero, row_offset]), jnp.stack([b, a, zero, col_offset]),
                            jnp.stack([zero, zero, one, zero])])
  warped = dm_pix.affine_transform(image, index_matrix, order=1, mode="nearest")
  i, j = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]
  rows, cols = e * i + d * j + row_offset, b * i + a * j + col_offset
  inside = (rows >= -0.5) & (rows < h - 0.5) & (cols >= -0.5) & (cols < w - 0.5)
  return jnp.clip(jnp.floor(jnp.where(inside[..., None], warped, fill)), 0, 255)


def scale_translate_crop(image, top, left, h, w, size: int, mirror=False):
  """The 'lae' crop through jax.image.scale_and_translate: the box (top, left, h, w) resized to
  size x size, linear with antialiasing (PIL's triangle widened by the downscale), rounded once."""
  scale = jnp.stack([size / h, size / w]).astype(jnp.float32)
  translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
  out = jax.image.scale_and_translate(image, (size, size, image.shape[2]), (0, 1), scale, translation,
                                      method="linear", antialias=True)
  out = jnp.where(mirror, out[:, ::-1], out)
  return jnp.clip(jnp.round(out), 0, 255)
