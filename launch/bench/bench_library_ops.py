"""Library ops against our own copies, on whatever accelerator JAX finds: RandAugment's geometric
warp (ours, randaugment.affine: PIL's rule by hand, vs dm_pix.affine_transform) and the 'lae'
preset's random resized crop (ours, augment.resized_crop: PIL's antialiased bilinear as gathers,
vs jax.image.scale_and_translate). Per op: images/s of each, jitted and vmapped over a batch, the two
alternating in rounds (fair when other processes share the machine), medians; and the largest
pixel difference between the two.

  python -m launch.bench.bench_library_ops [--batch_size=32] [--sizes=64,224] [--steps=5] [--rounds=5]

The library versions are in launch/bench/library_ops.py (no flags: tests import it), kept for the
day they are faster: tests/data/test_augment.py checks that each gives our op's pixels.
"""
import statistics
import time

from absl import app, flags

from launch import common
from launch.bench.library_ops import dm_pix_affine, scale_translate_crop

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per call.")
_SIZES = flags.DEFINE_list("sizes", ["64", "224"], "Image sides to time (the quickstart's input, LAE's).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds; the median round is reported.")


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
