"""Host cost of the input pipeline: images/s and host CPU time per training image of the grain
reader (sampler -> decoded uint8 images -> local batches), next to what the quickstart model's
train step consumes. Augmentation runs on the devices: launch.bench_augment times it.

  python -m launch.bench_pipeline --manual_dir=/path/to/UTKFace [--batches=40] [--threads=1] [--workers=0]
"""
import time

from absl import app, flags

from launch import common

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "UTKFace release folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Prepared datasets (default ~/.cache/age_jax/tfds).")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per setting (after 3 warm-up batches).")
_WORKERS = flags.DEFINE_list("workers", ["0"], "Grain worker counts to time.")
_THREADS = flags.DEFINE_integer("threads", 1, "Grain read threads.")
# (load_size, cache): the paper settings' load size and the quickstart's.
SETTINGS = [(256, "disk"), (256, "memory"), (72, "memory")]
flags.mark_flag_as_required("manual_dir")


def _rates(batches, batch_size, count):
  """(images/s wall, host CPU ms per image: this process's CPU time, all threads)."""
  for _ in range(3):
    next(batches)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(count):
    next(batches)
  images = count * batch_size
  return images / (time.perf_counter() - start), 1e3 * (time.process_time() - cpu) / images


def _train_step_rate(cfg, steps=20):
  """Images/s of the quickstart train step on synthetic batches (what the pipeline must feed)."""
  import jax
  import numpy as np
  from age_jax.train import experiment, sharding
  exp = experiment.build(cfg)
  state = exp.init_state(jax.random.key(0))
  train_step = exp.jit_train_step()
  size, n = cfg.data.image_size, cfg.train.batch_size
  batch = sharding.to_global({"image": np.zeros((n, size, size, 3), np.float32),
                              "age": np.full((n,), 30.0, np.float32)}, exp.mesh)
  state, metrics = train_step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  return steps * n / (time.perf_counter() - start)


def main(argv):
  del argv
  common.setup_jax()
  from age_jax.data import datasets, pipeline
  from configs import quickstart
  datasets.prepare("utkface", _MANUAL_DIR.value, _DATA_DIR.value)
  records = datasets.load_split("utkface", _DATA_DIR.value, "train")
  labels = datasets.split_labels(records)
  base = quickstart.get_config()
  print(f"| load px | cache | threads | workers | images/s | host CPU ms/image |")
  print("|---|---|---|---|---|---|")
  for load_size, cache in SETTINGS:
    data = base.data.copy_and_resolve_references()
    data.update(dict(load_size=load_size, cache=cache, num_threads=_THREADS.value))
    start = time.perf_counter()
    source = pipeline.LoadedSource(records, load_size, cache=cache, num_threads=2)
    setup = f" (opened in {time.perf_counter() - start:.1f}s)"
    for workers in map(int, _WORKERS.value):
      data.num_workers = workers
      batches = pipeline.train_batches(source, labels, data, local_batch_size=base.train.batch_size, seed=0)
      rate, cpu_ms = _rates(batches, base.train.batch_size, _BATCHES.value)
      print(f"| {load_size} | {cache}{setup} | {_THREADS.value} | {workers} | {rate:.0f} | {cpu_ms:.4f} |",
            flush=True)
  print(f"quickstart train step consumes {_train_step_rate(base):.0f} images/s "
        f"(batch {base.train.batch_size}, {base.data.image_size} px, lowering {base.model.conv_lowering})")


if __name__ == "__main__":
  app.run(main)
