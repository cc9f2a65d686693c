"""Export with the face detector: one folder that turns a photo into boxes, ages and intervals
with a bare Python that has onnxruntime, numpy and pillow (nothing of age_jax, no JAX).

  DIR/meta.json        every number the glue uses: meta['detector'] (FaceDetector.settings() and
                       faces/find.py's photo pad and landmark refinement), meta['nets'] (file names,
                       input shapes, output order), meta['age'] (the age model's input contract,
                       outputs, interval), meta['usage']
  DIR/README.txt       the usage lines
  DIR/portable.py      the reference glue (faces/portable.py, copied): pyramid, P/R/O-Net, NMS,
                       calibration, squaring, landmark refinement, antialiased similarity warp, age
  DIR/age.onnx         the age model (uint8 canonical crops -> age, spread, low, high)
  DIR/age.jaxexport    the same model as export_jax.py's artifact (runs with JAX alone)
  DIR/{pnet,rnet,onet}.onnx and .jaxexport   MTCNN's nets: uint8 NHWC RGB in (the (x - 127.5) / 128
                       scaling inside), batch symbolic, P-Net's height and width symbolic too
The folder is written beside `out` and renamed into place, so a failed export leaves no half folder.
"""
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp

from age_jax import conformal
from age_jax.inference import export_jax as export
from age_jax.faces import find
from age_jax.faces import UTKFACE_CHIP_SIZE, FaceDetector, detector as detector_lib, portable

NETS = ("pnet", "rnet", "onet")
NET_INPUTS = {"pnet": "b, h, w, 3", "rnet": "b, 24, 24, 3", "onet": "b, 48, 48, 3"}
NET_OUTPUTS = {"pnet": ["prob", "offsets"], "rnet": ["prob", "offsets"], "onet": ["prob", "offsets", "landmarks"]}
FORMAT_VERSION = 1
GLUE, README = "portable.py", "README.txt"
README_TEXT = """Photo -> faces, ages and intervals ({model}, step {step}); needs only onnxruntime, numpy and pillow:

  python portable.py . photo.jpg [more.jpg ...]      # from this folder: one JSON line per photo
  # or: from portable import load; faces = load(FOLDER).photo(rgb_uint8_array)

Each face: box (x0, y0, x1, y1), score, five landmarks (image-left eye, image-right eye, nose,
image-left and image-right mouth corners), age, and low/high (the conformal interval, where the
model has one). meta.json holds the detector's settings and the age model's input contract.
"""


def detector_settings(detector: FaceDetector | None = None) -> dict:
  """meta['detector']: the cascade's numbers and the Predictor's detection rules around it
  (faces.find.detect: the photo's edge pad, the landmark refinement in the canonical frame)."""
  settings = (detector or FaceDetector()).settings()
  settings.update(photo_pad_fraction=find.PAD_FRACTION, refine=True, refine_size=UTKFACE_CHIP_SIZE)
  return settings


def export_net(net: str, platforms=export.PLATFORMS):
  """One MTCNN net as a jax.export.Exported (uint8 NHWC in; symbolic shapes of NET_INPUTS)."""
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(NET_INPUTS[net]), jnp.uint8)
  return jax.export.export(jax.jit(detector_lib.net_function(net)), platforms=tuple(platforms))(spec)


def net_onnx(net: str):
  """One MTCNN net as an onnx.ModelProto, converted from its jaxpr (inference/jaxpr_onnx.py, with
  symbolic_pooling's rule for P-Net's SAME pool over a symbolic size)."""
  from age_jax.inference import jaxpr_onnx, symbolic_pooling  # noqa: F401 - P-Net's pool over any size
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(NET_INPUTS[net]), jnp.uint8)
  return jaxpr_onnx.convert(detector_lib.net_function(net), spec, input_names=["images"],
                            output_names=NET_OUTPUTS[net])


def _age_onnx(workdir, path, step, coverage, calibrate) -> list[str]:
  """Writes the age model as ONNX; returns its output names in the session's order."""
  from age_jax.inference import export_onnx
  return export_onnx.export_workdir(workdir, path, step, coverage, calibrate=calibrate)


def _fresh_target(out: str) -> None:
  """out may be new, an empty folder, or an earlier export folder (replaced); anything else is refused."""
  if not os.path.exists(out):
    return
  if not os.path.isdir(out):
    raise ValueError(f"--out={out} is a file; --with_faces writes a folder")
  entries = os.listdir(out)
  if entries and portable.META not in entries:
    raise ValueError(f"--out={out} is a folder with other files in it ({sorted(entries)[:3]} ...); give a new or "
                     "empty folder (an earlier --with_faces export there is replaced)")


def export_folder(workdir: str, out: str, step: int | None = None, coverage: float = conformal.DEFAULT_COVERAGE,
                  platforms=export.PLATFORMS, calibrate: bool = False, detector: FaceDetector | None = None) -> dict:
  """Writes the folder (module doc) for the workdir's checkpoint; returns its meta.json dict."""
  import onnx  # checked first: nothing is written without it
  _fresh_target(out)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the export is an ordinary folder
  try:
    age_outputs = _age_onnx(workdir, os.path.join(tmp, "age.onnx"), step, coverage, calibrate)  # refuses first
    age_meta = export.export_workdir(workdir, os.path.join(tmp, "age.jaxexport"), step, coverage, platforms,
                                     calibrate=calibrate)
    nets = {}
    for net in NETS:
      with open(os.path.join(tmp, f"{net}.jaxexport"), "wb") as f:
        f.write(bytes(export_net(net, platforms).serialize()))
      onnx.save(net_onnx(net), os.path.join(tmp, f"{net}.onnx"))
      nets[net] = {"onnx": f"{net}.onnx", "jax": f"{net}.jaxexport", "input": NET_INPUTS[net],
                   "input_dtype": "uint8", "input_scaling": "(x - 127.5) / 128 inside the net",
                   "outputs": NET_OUTPUTS[net]}
    shutil.copyfile(portable.__file__, os.path.join(tmp, GLUE))
    meta = {"format": "age_jax photo export", "format_version": FORMAT_VERSION, "detector": detector_settings(detector),
            "nets": nets, "age": {"onnx": "age.onnx", "jax": "age.jaxexport", "outputs": age_outputs,
                                  "input": age_meta["input"], "interval": age_meta["interval"],
                                  "model": age_meta["model"], "formulation": age_meta["formulation"],
                                  "step": age_meta["step"]},
            "usage": f"python {GLUE} . photo.jpg   # needs onnxruntime, numpy, pillow; prints one JSON line per photo"}
    with open(os.path.join(tmp, portable.META), "w") as f:
      json.dump(meta, f, indent=1)
    with open(os.path.join(tmp, README), "w") as f:
      f.write(README_TEXT.format(model=meta["age"]["model"], step=meta["age"]["step"]))
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return meta
