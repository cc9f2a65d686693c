"""Export a trained workdir as one file that runs without age_jax, flax or orbax:
  python -m launch.export --workdir=DIR --out=age.jaxexport [--coverage=0.9]     # JAX alone
  python -m launch.export --workdir=DIR --out=age.onnx --format=onnx             # onnxruntime alone
  python -m launch.export --workdir=DIR --out=FOLDER --with_faces                 # photo -> ages, onnxruntime alone

See age_jax/inference/export_jax.py (and export_onnx.py: the same function as ONNX; export_faces.py: the
folder with the face detector and faces/portable.py, its numpy glue) for what the files hold and
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
_WITH_FACES = flags.DEFINE_bool("with_faces", False, "Write --out as a folder that turns a photo into boxes, "
                                  "ages and intervals with onnxruntime, numpy and pillow alone: the age model "
                                  "and MTCNN's three nets (ONNX and jax.export), portable.py, meta.json, "
                                  "README.txt. --format is then not used.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  if _WITH_FACES.value:
    if flags.FLAGS["format"].present:
      raise app.UsageError("--with_faces writes both formats into the folder; drop --format")
    from age_jax.inference import export_faces
    meta = export_faces.export_folder(_WORKDIR.value, _OUT.value, _STEP.value, _COVERAGE.value, _PLATFORMS.value,
                                      calibrate=_CALIBRATE.value)
    print(f"wrote {_OUT.value}/: {meta['age']['model']} step {meta['age']['step']} with MTCNN; run: "
          f"cd {_OUT.value} && {meta['usage']}")
    return
  if _FORMAT.value == "onnx":
    from age_jax.inference import export_onnx
    outputs = export_onnx.export_workdir(_WORKDIR.value, _OUT.value, _STEP.value, _COVERAGE.value,
                                         calibrate=_CALIBRATE.value)
    print(f"wrote {_OUT.value}: ONNX opset {export_onnx.OPSET}, input 'faces', outputs {outputs}")
    return
  from age_jax.inference import export_jax as export
  meta = export.export_workdir(_WORKDIR.value, _OUT.value, _STEP.value, _COVERAGE.value, _PLATFORMS.value,
                              calibrate=_CALIBRATE.value)
  print(f"wrote {_OUT.value}: {meta['model']} / {meta['formulation']} step {meta['step']}, outputs "
        f"{meta['outputs']}, platforms {meta['platforms']}")


if __name__ == "__main__":
  app.run(main)
