"""Library ops against our own copies, on whatever accelerator JAX finds: RandAugment's geometric
warp (ours, randaugment.affine: PIL's rule by hand, vs dm_pix.affine_transform) and the 'lae'
preset's random resized crop (ours, augment.resized_crop: PIL's antialiased bilinear as gathers,
vs jax.image.scale_and_translate). Per op: images/s of each, jitted and vmapped over a batch, the two
alternating in rounds (fair when other processes share the machine), medians; and the largest
pixel difference between the two.

  python -m launch.bench.bench_library_ops [--batch_size=32] [--sizes=64,224] [--steps=5] [--rounds=5]

The library versions are kept here (dm_pix_affine, scale_translate_crop), where they are measured,
for the day they are faster: tests/data/test_augment.py checks that each gives our op's pixels.
"""
import statistics
import time

from absl import app, flags

from launch import common

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per call.")
_SIZES = flags.DEFINE_list("sizes", ["64", "224"], "Image sides to time (the quickstart's input, LAE's).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds; the median round is reported.")


def dm_pix_affine(image, matrix, fill=128.0):
  """randaugment.affine through dm_pix.affine_transform: PIL's AFFINE convention (2x3 matrix from
  output pixel centres to input points), bilinear. PIL's edge rule (a point more than half a pixel
  past the outer pixel centres is `fill`, one inside interpolates edge-clamped neighbours) is
  dm_pix's 'nearest' mode plus that inside mask (its 'constant' mode fills from the outer centres on)."""
  import dm_pix
  import jax.numpy as jnp
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
  import jax
  import jax.numpy as jnp
  scale = jnp.stack([size / h, size / w]).astype(jnp.float32)
  translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
  out = jax.image.scale_and_translate(image, (size, size, image.shape[2]), (0, 1), scale, translation,
                                      method="linear", antialias=True)
  out = jnp.where(mirror, out[:, ::-1], out)
  return jnp.clip(jnp.round(out), 0, 255)


def _seconds(fn, args, steps):
  import jax
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def _compare(name, fns, args, batch):
  import numpy as np
  times = {k: [] for k in fns}
  for _ in range(_ROUNDS.value):
    for key, fn in fns.items():
      times[key].append(_seconds(fn, args, _STEPS.value))
  (a, fa), (b, fb) = fns.items()
  diff = np.abs(np.asarray(fa(*args)) - np.asarray(fb(*args)))
  ta, tb = statistics.median(times[a]), statistics.median(times[b])
  print(f"| {name} | {batch / ta:.0f} | {batch / tb:.0f} | {ta / tb:.2f} | {diff.max():.0f} | "
        f"{100 * (diff > 0).mean():.3f}% |", flush=True)


def main(argv):
  del argv
  common.setup_jax()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from age_jax.data import augment, randaugment
  print(f"devices: {jax.devices()}")
  print("| op @ px | A img/s | B img/s | time A / time B | max pixel diff | pixels differing |")
  print("|---|---|---|---|---|---|")
  batch = _BATCH.value
  rng = np.random.default_rng(0)
  for size in (int(s) for s in _SIZES.value):
    images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.float32)
    ops = jnp.asarray(rng.integers(0, len(randaugment.GEOMETRIC), batch))
    values = jnp.asarray(rng.uniform(-1, 1, batch) * np.array([30, 0.3, 0.3, 0.45 * size, 0.45 * size])[ops],
                         jnp.float32)
    matrices = jax.vmap(lambda op, v: randaugment.geometric_matrix(op, v, size, size))(ops, values)
    _compare(f"RandAugment warp @ {size}: A = ours (randaugment.affine), B = dm_pix.affine_transform",
             {"ours": jax.jit(jax.vmap(randaugment.affine)), "dm_pix": jax.jit(jax.vmap(dm_pix_affine))},
             (images, matrices), batch)
    keys = jax.random.split(jax.random.key(0), batch)
    boxes = jax.vmap(lambda k: jnp.stack(augment.random_resized_crop_box(k, size, size)))(keys)
    out = size * 7 // 8
    ours = jax.jit(jax.vmap(lambda x, b: augment.resized_crop(x, b[0], b[1], b[2], b[3], out)))
    theirs = jax.jit(jax.vmap(lambda x, b: scale_translate_crop(x, b[0], b[1], b[2], b[3], out)))
    _compare(f"resized crop {size} -> {out}: A = ours (augment.resized_crop), B = jax.image.scale_and_translate",
             {"ours": ours, "scale_and_translate": theirs}, (images, boxes), batch)


if __name__ == "__main__":
  app.run(main)
