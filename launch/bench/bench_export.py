"""The exported artifact against its checkpoint on this machine's CPU: file size, load time,
images/s (interleaved rounds, same batch of real faces) and parity:
  python -m launch.bench.bench_export --workdir=DIR --artifact=FILE [--onnx=FILE] [--batch_size=64 --rounds=5]
"""
import os
import time

from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir the artifact was exported from.")
_ARTIFACT = flags.DEFINE_string("artifact", None, "The file written by launch.export.")
_ONNX = flags.DEFINE_string("onnx", None, "Also time this ONNX export (launch.export --format=onnx) in onnxruntime.")
_SPLIT = flags.DEFINE_string("split", "test", "Split whose first batch_size faces are used.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Faces per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds of each, interleaved.")
flags.mark_flags_as_required(["workdir", "artifact"])


def main(argv):
  del argv
  common.setup_jax()
  import jax
  import numpy as np
  from age_jax.inference import export_jax as export
  from age_jax.inference.restore import restore
  from age_jax.data import pipeline
  from age_jax.data import run_data

  t0 = time.perf_counter()
  exp, cfg, state, normalizer = restore(_WORKDIR.value)
  predict = exp.jit_predict_step()
  restore_s = time.perf_counter() - t0
  records = run_data.load_split(cfg, _SPLIT.value)
  n = _BATCH.value
  faces = np.stack([pipeline.decode_image(records[i]["image"], cfg.data.load_size) for i in range(n)])
  to_input = pipeline.eval_transform(cfg.data)
  batch = {"image": np.stack([normalizer(to_input(f)) for f in faces])}
  t0 = time.perf_counter()
  ckpt_age = np.asarray(predict(state.params, state.batch_stats, batch)["pred_age"])
  ckpt_first_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  exported, _ = export.load_artifact(_ARTIFACT.value)
  load_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  art_age = np.asarray(exported.call(faces)["age"])
  art_first_s = time.perf_counter() - t0

  runs = {"checkpoint": lambda: jax.block_until_ready(predict(state.params, state.batch_stats, batch)),
          "artifact": lambda: jax.block_until_ready(exported.call(faces))}
  if _ONNX.value:
    import onnxruntime
    t0 = time.perf_counter()
    session = onnxruntime.InferenceSession(_ONNX.value, providers=["CPUExecutionProvider"])
    onnx_age = session.run(["age"], {"faces": faces})[0]
    print(f"onnx {os.path.getsize(_ONNX.value) / 1e6:.2f} MB; load + first call {time.perf_counter() - t0:.2f} s; "
          f"max |age difference| to the checkpoint {np.max(np.abs(onnx_age - ckpt_age)):.2e} years")
    runs["onnx"] = lambda: session.run(None, {"faces": faces})
  timings = {k: [] for k in runs}
  for _ in range(_ROUNDS.value):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run()
      timings[name].append(time.perf_counter() - t0)
  rate = {k: n / float(np.median(v)) for k, v in timings.items()}
  print(f"artifact {os.path.getsize(_ARTIFACT.value) / 1e6:.2f} MB; load {load_s:.2f} s + first call "
        f"{art_first_s:.2f} s (checkpoint: restore {restore_s:.2f} s + first call {ckpt_first_s:.2f} s)")
  print(f"images/s (median of {_ROUNDS.value}, batch {n}, conv lowering {cfg.model.conv_lowering}): "
        + ", ".join(f"{k} {v:.0f} ({v / rate['checkpoint']:.2f}x)" for k, v in rate.items()))
  print(f"parity: max |age difference| {np.max(np.abs(art_age - ckpt_age)):.2e} years over {n} faces")


if __name__ == "__main__":
  app.run(main)
