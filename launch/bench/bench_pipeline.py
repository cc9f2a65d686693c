"""Host cost of the input pipeline: images/s and host CPU time per training image of the grain
reader (sampler -> decoded uint8 images -> local batches); then the quickstart's training loop
against its train step alone. Augmentation runs on the devices: launch.bench.bench_augment times it.

  python -m launch.bench.bench_pipeline --manual_dir=/path/to/UTKFace [--batches=40] [--threads=1] [--workers=0] \
      [--steps=50] [--rounds=3]
"""
import os
import time

from absl import app, flags

from launch import common

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "UTKFace release folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Prepared datasets (default ~/.cache/age_jax/tfds).")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per setting (after 3 warm-up batches).")
_WORKERS = flags.DEFINE_list("workers", ["0"], "Grain worker counts to time.")
_THREADS = flags.DEFINE_integer("threads", 1, "Grain read threads.")
_STEPS = flags.DEFINE_integer("steps", 50, "Quickstart steps per round (loop vs step alone).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of the loop and the step alone.")
# (load_size, cache, how the decoded file is read): the paper settings' load size and the
# quickstart's. 'cold': through the page cache emptied of the file first; 'warm': through the page
# cache holding it; 'direct': O_DIRECT (RowFile's choice for files larger than half the RAM).
SETTINGS = [(256, "disk", "cold"), (256, "disk", "warm"), (256, "disk", "direct"), (256, "memory", ""),
            (72, "memory", "")]
flags.mark_flag_as_required("manual_dir")


def _evict_from_page_cache(path):
  """Drops the file's pages from the OS page cache (clean pages; no privileges needed)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def _rates(batches, batch_size, count):
  """(images/s wall, host CPU ms per image: this process's CPU time, all threads)."""
  for _ in range(3):
    next(batches)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(count):
    next(batches)
  images = count * batch_size
  return images / (time.perf_counter() - start), 1e3 * (time.process_time() - cpu) / images


def _loop_vs_step(cfg, source, labels, steps, rounds):
  """Images/s of the quickstart training loop (this pipeline, prefetch to the devices, the train
  step with its device augmentation) and of the same train step alone on one float batch already
  on the devices (what launch.bench.benchmark times), in alternating rounds; medians."""
  import jax
  import numpy as np
  from age_jax.data import pipeline
  from age_jax.train import experiment, loop, sharding
  exp = experiment.build(cfg)
  state = exp.init_state(jax.random.key(0))
  mean = np.full((cfg.data.image_size,) * 2 + (3,), 110, np.float32)
  normalizer = pipeline.Normalizer("mean_image", mean, cfg.data.pixel_scale)
  with_view, alone = exp.jit_train_step(pipeline.train_view(cfg.data, normalizer, 0)), exp.jit_train_step()
  n, size = cfg.train.batch_size, cfg.data.image_size
  batches = loop.prefetch_to_mesh(pipeline.train_batches(source, labels, cfg.data, local_batch_size=n, seed=0),
                                  exp.mesh, cfg.data.prefetch)
  fixed = sharding.to_global({"image": np.zeros((n, size, size, 3), np.float32),
                              "age": np.full((n,), 30.0, np.float32)}, exp.mesh)
  rng = jax.random.key(1)
  rates = {"loop": [], "step": []}
  for round_ in range(rounds + 1):  # round 0 compiles and warms up
    for name in rates:
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = (with_view(state, next(batches), rng) if name == "loop" else alone(state, fixed, rng))
      jax.block_until_ready(metrics)
      if round_:
        rates[name].append(steps * n / (time.perf_counter() - start))
  return {k: sorted(v)[len(v) // 2] for k, v in rates.items()}


def main(argv):
  del argv
  common.setup_jax()
  from age_jax.data import datasets, decoded, pipeline
  from configs import quickstart
  datasets.prepare("utkface", _MANUAL_DIR.value, _DATA_DIR.value)
  records = datasets.load_split("utkface", _DATA_DIR.value, "train")
  labels = datasets.split_labels(records)
  base = quickstart.get_config()
  print("| load px | cache | threads | workers | images/s | host CPU ms/image |")
  print("|---|---|---|---|---|---|")
  for load_size, cache, read in SETTINGS:
    data = base.data.copy_and_resolve_references()
    data.update(dict(load_size=load_size, cache=cache, num_threads=_THREADS.value))
    start = time.perf_counter()
    source = pipeline.LoadedSource(records, load_size, cache=cache, num_threads=2)
    setup = f" (opened in {time.perf_counter() - start:.1f}s)"
    if read == "cold":
      _evict_from_page_cache(source.images.path)
    if read == "direct":
      source.images = decoded.RowFile(source.images.path, direct=True)
    setup += f", {read}" if read else ""
    for workers in map(int, _WORKERS.value):
      data.num_workers = workers
      batches = pipeline.train_batches(source, labels, data, local_batch_size=base.train.batch_size, seed=0)
      rate, cpu_ms = _rates(batches, base.train.batch_size, _BATCHES.value)
      print(f"| {load_size} | {cache}{setup} | {_THREADS.value} | {workers} | {rate:.0f} | {cpu_ms:.4f} |",
            flush=True)
  source = pipeline.LoadedSource(records, base.data.load_size, cache=base.data.cache)
  rates = _loop_vs_step(base, source, labels, _STEPS.value, _ROUNDS.value)
  print(f"quickstart ({base.data.load_size} -> {base.data.image_size} px, batch {base.train.batch_size}, "
        f"{_ROUNDS.value} rounds of {_STEPS.value} steps): training loop {rates['loop']:.1f} images/s, train step "
        f"alone {rates['step']:.1f} images/s: {100 * rates['loop'] / rates['step']:.1f}%")


if __name__ == "__main__":
  app.run(main)
