"""Device augmentation throughput per preset and its share of the train step, on whatever
accelerator JAX finds (random uint8 images: no dataset needed).

  python -m launch.bench.bench_augment [--rows=xing,lae,none,quickstart] [--steps=5] [--rounds=3]

Per row: images/s of the augmentation alone (pipeline.train_view: preset + normalisation,
jitted, batch-sharded over all devices), the train step's images/s with it inside (uint8
input) and without it (a float input of the network's size), and the augmentation's share
of the step = step time with / without - 1 (the two steps alternate in rounds, so a ratio
stays fair when other processes share the machine; in brackets the same ratio of this process's
CPU time, steadier on a shared CPU); medians over rounds.
"""
import statistics
import time

from absl import app, flags

from launch import common

# name: (preset, model, load px, input px, batch): the papers' settings, and the quickstart's.
ROWS = {"xing": ("xing", "xing_baseline", 256, 227, 32), "lae": ("lae", "resnet18", 256, 224, 32),
        "none": ("none", "resnet18", 256, 224, 32), "quickstart": ("xing", "xing_baseline", 72, 64, 64)}
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to time, of {list(ROWS)}.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the median round is reported.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Override every row's batch size (0: the row's).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model compute dtype.")


def _seconds(fn, args, steps):
  """(wall, process CPU) seconds per call."""
  import jax
  out = fn(*args)
  jax.block_until_ready(out)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def _row(name):
  import jax
  import numpy as np
  from age_jax.data import pipeline
  from age_jax.train import experiment, sharding
  from configs import quickstart
  preset, model, load, size, batch = ROWS[name]
  batch = _BATCH.value or batch
  cfg = quickstart.get_config()
  cfg.data.update(dict(augment=preset, load_size=load, image_size=size,
                       normalize="mean_image" if preset == "xing" else "imagenet"))
  cfg.model.name, cfg.model.dtype, cfg.train.batch_size = model, _DTYPE.value, batch
  exp = experiment.build(cfg)
  normalizer = pipeline.Normalizer(cfg.data.normalize, np.full((size, size, 3), 110, np.float32))
  view = pipeline.train_view(cfg.data, normalizer, seed=0)
  rng = np.random.default_rng(0)
  uint8 = {"image": rng.integers(0, 256, (batch, load, load, 3), dtype=np.uint8),
           "position": np.arange(batch, dtype=np.uint32), "age": np.full((batch,), 30.0, np.float32)}
  floats = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32), "age": uint8["age"]}
  uint8, floats = sharding.to_global(uint8, exp.mesh), sharding.to_global(floats, exp.mesh)
  augment = jax.jit(lambda b: view(b)["image"], in_shardings=(exp.batch_sharding,), out_shardings=exp.batch_sharding)
  with_view, without = exp.jit_train_step(prepare=view), exp.jit_train_step()
  state = exp.init_state(jax.random.key(0))
  rngkey = jax.random.key(1)
  times = {"augment": [], "with": [], "without": []}
  cpu = {"with": [], "without": []}
  for _ in range(_ROUNDS.value):
    times["augment"].append(_seconds(augment, (uint8,), _STEPS.value)[0])
    for key, step in (("with", with_view), ("without", without)):
      def run(state_batch, step=step):
        nonlocal state
        state, metrics = step(state, state_batch, rngkey)
        return metrics
      wall, cpu_s = _seconds(run, (uint8 if key == "with" else floats,), _STEPS.value)
      times[key].append(wall)
      cpu[key].append(cpu_s)
  aug, step_with, step_without = (statistics.median(times[k]) for k in ("augment", "with", "without"))
  cpu_ratio = statistics.median(cpu["with"]) / statistics.median(cpu["without"])
  print(f"| {name} | {preset} | {model} | {load} -> {size} | {batch} | {batch / aug:.0f} | "
        f"{batch / step_with:.1f} | {batch / step_without:.1f} | {100 * (step_with / step_without - 1):+.1f}% ({100 * (cpu_ratio - 1):+.1f}%) | "
        f"{100 * aug / step_with:.1f}% |", flush=True)


def main(argv):
  del argv
  common.setup_jax()
  import jax
  print(f"devices: {jax.devices()}")
  print("| row | preset | model | load -> input px | batch | augment img/s | step img/s (with) | "
        "step img/s (without) | step time with/without - 1 (CPU time) | augment alone / step |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name in _ROWS.value:
    _row(name)


if __name__ == "__main__":
  app.run(main)
