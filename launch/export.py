"""Export a trained workdir as one file that runs without age_jax, flax or orbax:
  python -m launch.export --workdir=DIR --out=age.jaxexport [--coverage=0.9]     # JAX alone
  python -m launch.export --workdir=DIR --out=age.onnx --format=onnx             # onnxruntime alone

See age_jax/export.py (and inference/export_onnx.py: the same function as ONNX) for what the file holds and
docs/intervals_and_export.md for running it from a bare Python.
"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_OUT = flags.DEFINE_string("out", None, "The artifact to write (a zip: model.jax + meta.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_COVERAGE = flags.DEFINE_float("coverage", 0.9, "Coverage of the age interval built into the artifact.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "Platforms the artifact runs on.")
_FORMAT = flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax.export StableHLO or ONNX (any "
                            "float32 network; needs the `onnx` package).")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "When the checkpoint's weights have no calibration (none, or "
                                "only other steps'), calibrate them on the validation split first; without "
                                "it a calibration of other weights is refused.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  if _FORMAT.value == "onnx":
    from age_jax.inference import export_onnx
    outputs = export_onnx.export_workdir(_WORKDIR.value, _OUT.value, _STEP.value, _COVERAGE.value,
                                         calibrate=_CALIBRATE.value)
    print(f"wrote {_OUT.value}: ONNX opset {export_onnx.OPSET}, input 'faces', outputs {outputs}")
    return
  from age_jax import export
  meta = export.export_workdir(_WORKDIR.value, _OUT.value, _STEP.value, _COVERAGE.value, _PLATFORMS.value,
                              calibrate=_CALIBRATE.value)
  print(f"wrote {_OUT.value}: {meta['model']} / {meta['formulation']} step {meta['step']}, outputs "
        f"{meta['outputs']}, platforms {meta['platforms']}")


if __name__ == "__main__":
  app.run(main)
