"""The photo export (launch.export --with_faces): its numpy glue (faces/portable.py) reimplements
age_jax's detector, refinement and warp, so it must find the Predictor's faces and ages on real
photos, first with age_jax's own nets (in this process), then from a bare Python that can import
neither JAX nor age_jax, with every net in onnxruntime."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from age_jax.faces import portable
from tests.faces.conftest import CHIPS
from tests.serving.conftest import UTKFACE  # AGE_JAX_SHARED names the copy from a git worktree


# ---- the glue's parts against age_jax's own (numpy only: fast) ----

def test_the_glue_imports_only_numpy_pil_and_onnxruntime():
  tree = ast.parse(open(portable.__file__).read())
  roots = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      roots |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      roots.add(node.module.split(".")[0])
  assert roots <= {"json", "math", "os", "sys", "numpy", "PIL", "onnxruntime"}, roots


def test_the_glues_box_rules_equal_the_detectors():
  from age_jax.faces import find
  from age_jax.faces import Face, boxes
  rng = np.random.default_rng(0)
  corner = rng.uniform(0, 80, (60, 2))
  bxs = np.concatenate([corner, corner + rng.uniform(4, 40, (60, 2))], axis=1)
  scores, offsets = rng.uniform(size=60), rng.normal(0, 0.1, (60, 4))
  for method, threshold in (("union", 0.5), ("union", 0.7), ("min", 0.7)):
    kept = portable.nms(bxs, scores, threshold, method)
    np.testing.assert_array_equal(kept, boxes.nms(bxs, scores, threshold, method))
    assert 5 < len(kept) < 60  # the overlaps matter: some dropped, some kept
  for whole in (True, False):
    np.testing.assert_array_equal(portable.calibrate(bxs, offsets, whole), boxes.calibrate(bxs, offsets, whole))
  np.testing.assert_array_equal(portable.square(bxs), boxes.square(bxs))
  image = rng.integers(0, 256, (50, 70, 3), np.uint8)
  for box in ([-5, -3, 20, 30], [10, 12, 80, 60], [30, 30, 30, 30]):
    np.testing.assert_array_equal(portable.crop(image, box), boxes.crop(image, box))
  faces = [Face(box=b, score=0.9, landmarks=np.zeros((5, 2))) for b in bxs[:8]]
  assert portable.choose_face([{"box": f.box} for f in faces], 90, 70) == find.choose_face(faces, 90, 70)


@pytest.mark.parametrize("scale", [0.12, 0.45, 0.8, 2.5])
def test_the_glues_warp_is_age_jaxs_antialiased_warp(scale):
  from age_jax.faces import align, canonical
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (400, 500, 3), np.uint8)
  points = canonical.CANONICAL_TEMPLATE * 120 + [150, 140] + rng.normal(0, 3, (5, 2))
  size = int(round(120 * scale))
  matrix = portable.similarity(points, canonical.canonical_template(size))
  np.testing.assert_allclose(matrix, canonical.canonical_transform(points, size), atol=1e-12)
  ours = portable.warp_affine(image, matrix, size)
  np.testing.assert_array_equal(ours, align.warp_affine(image, matrix, size))
  if scale < 0.5:  # the prefilter acted: a plain bilinear warp of noise differs a lot
    plain = align.warp_affine(image, matrix, size, antialias=False)
    assert np.abs(plain.astype(float) - ours).mean() > 10


def test_the_glues_pyramid_follows_the_detectors_settings():
  from age_jax.inference import export_faces
  from age_jax.faces import find
  from age_jax.faces import FaceDetector
  for detector in (FaceDetector(), FaceDetector(min_face_size=40, scale_factor=0.6, thresholds=(0.5, 0.6, 0.7))):
    settings = export_faces.detector_settings(detector)
    assert settings["thresholds"] == list(detector.thresholds) and settings["retry_pad"] == detector.retry_pad
    assert settings["photo_pad_fraction"] == find.PAD_FRACTION
    glue = portable.Detector(json.loads(json.dumps(settings)), nets={})
    for h, w in ((480, 640), (37, 200), (12, 12), (3000, 2000)):
      assert glue.scales(h, w) == detector.scales(h, w)


def test_an_export_over_a_folder_of_other_files_is_refused(tmp_path):
  from age_jax.inference import export_faces
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "mine.jpg").write_bytes(b"x")
  with pytest.raises(ValueError, match="--out=.*other files"):
    export_faces._fresh_target(str(tmp_path / "photos"))
  (tmp_path / "file").write_bytes(b"x")
  with pytest.raises(ValueError, match="is a file"):
    export_faces._fresh_target(str(tmp_path / "file"))
  export_faces._fresh_target(str(tmp_path / "new"))  # new: fine


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
  from age_jax.inference import export_faces

  def refuse(*args):
    raise ValueError("ONNX export covers config.model.name='xing_baseline', not 'resnet18'")
  monkeypatch.setattr(export_faces, "_age_onnx", refuse)
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "meta.json").write_text("{}")  # an earlier export: kept when this one fails
  for out in ("new", "old"):
    with pytest.raises(ValueError, match="xing_baseline"):
      export_faces.export_folder("unused-workdir", str(tmp_path / out))
  assert sorted(os.listdir(tmp_path)) == ["old"] and os.listdir(tmp_path / "old") == ["meta.json"]


def test_with_faces_and_format_together_are_refused(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={tmp_path}", f"--out={tmp_path}/x",
                        "--with_faces", "--format=onnx"], cwd=root, capture_output=True, text=True, timeout=120)
  assert run.returncode != 0 and "drop --format" in run.stderr, run.stderr[-2000:]


# ---- real photos ----

def _photos():
  """Real UTKFace chips pasted into photos: three single faces at different scales and angles,
  one 640x480 photo with two faces, and one with none."""
  from age_jax.data import paste
  if not os.path.isdir(UTKFACE):
    pytest.skip("no ../shared UTKFace copy")
  chips = [np.asarray(Image.open(os.path.join(UTKFACE, n)).convert("RGB")) for n in CHIPS]
  rng = np.random.default_rng(3)
  photos = [paste.paste(chips[i], rng, 320, scale=(0.5, 1.2))[0] for i in (0, 2, 5)]
  two = paste.background(rng, 640)[:480].copy()
  two[60:60 + 160, 60:60 + 160] = np.asarray(Image.fromarray(chips[1]).resize((160, 160), Image.BILINEAR))
  two[200:200 + 240, 330:330 + 240] = np.asarray(Image.fromarray(chips[3]).resize((240, 240), Image.BILINEAR))
  photos.append(two)
  photos.append(paste.background(rng, 200))
  return photos


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def _assert_same_faces(ours, theirs, iou, age_tol, point_tol):
  """ours: the glue's faces per photo; theirs: the Predictor's FaceAge lists."""
  assert [len(f) for f in ours] == [len(f) for f in theirs], ([len(f) for f in ours], [len(f) for f in theirs])
  assert sum(len(f) for f in theirs) >= 5  # every pasted face found (two in one photo)
  ages, worst = [], {"iou": 1.0, "points": 0.0, "age": 0.0}
  for got, want in zip(ours, theirs):
    for g, w in zip(got, want):
      worst = {"iou": min(worst["iou"], _iou(g["box"], w.box)),
               "points": max(worst["points"], np.abs(g["landmarks"] - w.landmarks).max()),
               "age": max(worst["age"], abs(g["age"] - w.age))}
      assert _iou(g["box"], w.box) > iou
      assert np.abs(g["landmarks"] - w.landmarks).max() < point_tol
      assert abs(g["age"] - w.age) < age_tol
      for side in ("low", "high"):
        assert (g[side] is None) == (getattr(w, side) is None)
        if g[side] is not None:
          assert abs(g[side] - getattr(w, side)) < age_tol
      ages.append(w.age)
  assert np.ptp(ages) > 0.01 and theirs[0][0].low is not None  # distinct ages, with intervals
  print("worst of", len(ages), "faces:", worst)  # shown with pytest -s


@pytest.fixture(scope="module")
def predictor_and_photos(trained_workdir):
  from age_jax.inference import predict
  photos = _photos()
  predictor = predict.Predictor(trained_workdir[0])
  return predictor, photos, predictor.faces(photos)


def _jax_nets(detector):
  """The detector's own compiled nets as the glue's callables (inputs zero-padded to its buckets)."""
  import jax
  from age_jax.faces import detector as detector_lib

  def pnet(images):
    n, h, w, _ = images.shape
    batch = np.zeros((n, detector_lib._bucket(h), detector_lib._bucket(w), 3), np.uint8)
    batch[:, :h, :w] = images
    prob, offsets = jax.device_get(detector_lib._apply("pnet")(detector._params["pnet"], batch))
    return prob[:, :h // 2 - 5, :w // 2 - 5], offsets[:, :h // 2 - 5, :w // 2 - 5]

  def on_crops(net):
    def run(images):
      parts = []
      for start in range(0, len(images), 256):
        chunk = images[start:start + 256]
        batch = np.zeros((detector_lib._crop_batch(len(chunk)),) + chunk.shape[1:], np.uint8)
        batch[:len(chunk)] = chunk
        parts.append([o[:len(chunk)] for o in jax.device_get(detector_lib._apply(net)(detector._params[net], batch))])
      return [np.concatenate(p) for p in zip(*parts)]
    return run
  return {"pnet": pnet, "rnet": on_crops("rnet"), "onet": on_crops("onet")}


@pytest.mark.slow
def test_the_glue_with_age_jaxs_nets_finds_the_predictors_faces_and_ages(trained_workdir, predictor_and_photos,
                                                                           tmp_path):
  # Same nets, same numbers: the glue's own pyramid, NMS, refinement and warp must land on the
  # Predictor's boxes and points; the age model is the exported ONNX one (ages to 1e-3).
  ort = pytest.importorskip("onnxruntime")
  from age_jax.inference import export_faces, export_jax as export
  from age_jax.inference import export_onnx
  predictor, photos, expected = predictor_and_photos
  age_path = str(tmp_path / "age.onnx")
  names = export_onnx.export_workdir(trained_workdir[0], age_path)
  session = ort.InferenceSession(age_path)
  nets = _jax_nets(predictor.detector)
  nets["age"] = lambda faces: dict(zip(names, session.run(None, {"faces": faces})))
  meta = {"detector": export_faces.detector_settings(predictor.detector),
          "age": {"input": export.input_contract(predictor.cfg)}}
  glue = portable.Pipeline(json.loads(json.dumps(meta)), nets)
  _assert_same_faces([glue.photo(p) for p in photos], expected, iou=0.999, age_tol=1e-3, point_tol=1e-3)


def test_the_exported_jax_nets_take_any_batch_and_pnet_any_size():
  # Serialised and read back: P-Net on an odd size (its 2x2 pool then pads), R-/O-Net on a batch
  # other than the export's; outputs equal the detector's function.
  import jax
  from age_jax.inference import export_faces
  from age_jax.faces import detector as detector_lib
  rng = np.random.default_rng(4)
  shapes = {"pnet": [(2, 31, 45, 3)], "rnet": [(3, 24, 24, 3)], "onet": [(2, 48, 48, 3)]}
  for net, inputs in shapes.items():
    exported = jax.export.deserialize(export_faces.export_net(net, ["cpu"]).serialize())
    assert [str(d) for d in exported.in_avals[0].shape[:3]] == export_faces.NET_INPUTS[net].split(", ")[:3]
    for shape in inputs:
      images = rng.integers(0, 256, shape, np.uint8)
      got, want = exported.call(images), jax.jit(detector_lib.net_function(net))(images)
      assert len(got) == len(export_faces.NET_OUTPUTS[net])
      for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_the_onnx_nets_equal_the_detectors_on_any_size():
  # The converted nets in onnxruntime: P-Net on odd sizes (its SAME pool pads then, symbolic_pooling's
  # rule) and even ones, R-/O-Net on batches other than one.
  ort = pytest.importorskip("onnxruntime")
  import jax
  from age_jax.inference import export_faces
  from age_jax.faces import detector as detector_lib
  rng = np.random.default_rng(5)
  shapes = {"pnet": [(2, 31, 45, 3), (1, 24, 12, 3)], "rnet": [(3, 24, 24, 3)], "onet": [(2, 48, 48, 3)]}
  for net, inputs in shapes.items():
    model = export_faces.net_onnx(net)
    assert [o.name for o in model.graph.output] == export_faces.NET_OUTPUTS[net]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in inputs:
      images = rng.integers(0, 256, shape, np.uint8)
      want = jax.jit(detector_lib.net_function(net))(images)
      for g, w in zip(session.run(None, {"images": images}), want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, np.asarray(w), atol=1e-4)


# What a user runs: the folder's portable.py in a Python that has no age_jax and cannot import JAX.
BARE_PYTHON = """
import importlib.abc, runpy, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "age_jax", "flax", "orbax", "tensorflow", "tests"):
      raise ImportError(f"the bare runtime may not import {name}")
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_bare_python_cannot_import_jax_or_age_jax(tmp_path):
  # The blocker's negative control: a script that imports either fails; one that does not runs.
  for module, ok in (("jax", False), ("age_jax.faces", False), ("numpy, PIL.Image, onnxruntime", True)):
    script = tmp_path / "script.py"
    script.write_text(f"import {module}\nprint('ran')\n")
    run = subprocess.run([sys.executable, "-I", "-c", BARE_PYTHON, str(script)], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode == 0 and run.stdout == "ran\n") == ok, (module, run.stderr[-1000:])
    if not ok:
      assert "the bare runtime may not import" in run.stderr


@pytest.mark.slow
def test_the_exported_folder_finds_the_predictors_faces_from_a_bare_python(trained_workdir, predictor_and_photos,
                                                                             tmp_path):
  pytest.importorskip("onnxruntime")
  from age_jax.inference import export_faces
  predictor, photos, expected = predictor_and_photos
  folder = tmp_path / "export"
  meta = export_faces.export_folder(trained_workdir[0], str(folder), platforms=["cpu"])
  assert sorted(os.listdir(folder)) == sorted(["README.txt", "meta.json", "portable.py", "age.onnx", "age.jaxexport"] + [
      f"{n}.{s}" for n in export_faces.NETS for s in ("onnx", "jaxexport")])
  assert meta["detector"] == json.loads(json.dumps(export_faces.detector_settings(predictor.detector)))
  paths = []
  for i, photo in enumerate(photos):
    paths.append(str(tmp_path / f"photo{i}.png"))
    Image.fromarray(photo).save(paths[-1])
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  run = subprocess.run([sys.executable, "-I", "-c", BARE_PYTHON, str(folder / "portable.py"), str(folder),
                        str(broken), *paths], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 1 and not run.stderr.strip(), run.stderr[-3000:]  # the bad file counted, quietly
  lines = [json.loads(line) for line in run.stdout.splitlines()]
  assert lines[0]["file"] == str(broken) and "cannot read image" in lines[0]["error"]
  lines = lines[1:]  # the rest went on
  assert [line["file"] for line in lines] == paths
  ours = [[{**f, "box": np.asarray(f["box"]), "landmarks": np.asarray(f["landmarks"])} for f in line["faces"]]
          for line in lines]
  # The bounds: IoU > 0.9, ages and interval ends within 0.2 years; points within 1 px
  _assert_same_faces(ours, expected, iou=0.9, age_tol=0.2, point_tol=1.0)


def test_the_artifacts_align_recipe_antialiases_as_the_predictor_does():
  # A large face (3x the crop) of fine texture: the Predictor's crop is low-passed before the
  # bilinear warp (faces/align.py); the artifact's align.py recipe must make the same crop.
  from age_jax.inference import export_jax as export
  from age_jax.faces import align_to_canonical, canonical
  from age_jax.inference.predict import _resize
  namespace = {}
  exec(compile(export.ALIGN_RECIPE, "align.py", "exec"), namespace)
  rng = np.random.default_rng(6)
  photo = rng.integers(0, 256, (900, 900, 3), np.uint8)
  points = canonical.CANONICAL_TEMPLATE * 600 - 0.5 + [150, 120]
  contract = {"crop_size": 200, "template_fractions": canonical.CANONICAL_TEMPLATE.tolist(), "shape": ["batch", 72, 72, 3]}
  ours = _resize(align_to_canonical(photo, points, 200), 72)
  theirs = namespace["align"](photo, points, contract)
  assert theirs.shape == ours.shape and np.abs(theirs.astype(int) - ours).max() <= 1
