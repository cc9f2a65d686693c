"""The exported artifact: portable StableHLO (no custom calls of ours), symbolic batch, and the
same ages and intervals as the checkpoint on real faces, run by a Python without age_jax/flax/orbax."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from age_jax import conformal, models
from age_jax.inference import export_jax as export
from age_jax.inference.restore import restore
from age_jax.train.evaluator import Evaluator
from tests.serving.conftest import face_records

# What README.md tells a user to run, with age_jax, flax and orbax made unimportable.
BARE_PYTHON = """
import sys
for name in ("age_jax", "flax", "orbax", "orbax.checkpoint"):
  sys.modules[name] = None
import json, zipfile
import jax, numpy as np
z = zipfile.ZipFile(sys.argv[1])
model = jax.export.deserialize(bytearray(z.read("model.jax")))
faces = np.load(sys.argv[2])
out = {k: np.asarray(v).tolist() for k, v in model.call(faces).items()}
out["small_batch_age"] = np.asarray(model.call(faces[:3])["age"]).tolist()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def artifact(trained_workdir, tmp_path_factory):
  workdir, _, _ = trained_workdir
  path = str(tmp_path_factory.mktemp("export") / "age.jaxexport")
  meta = export.export_workdir(workdir, path)
  return path, meta


def test_artifact_has_no_custom_calls_of_ours(trained_workdir, artifact):
  workdir, _, _ = trained_workdir
  exported, meta = export.load_artifact(artifact[0])
  assert meta["platforms"] == ["cpu", "cuda", "tpu"] and tuple(exported.platforms) == ("cpu", "cuda", "tpu")
  assert meta["outputs"] == ["age", "high", "low", "spread"]
  text = exported.mlir_module()
  assert "age_jax_" not in text and "onednn" not in text.lower()
  assert "custom_call" not in text.replace("stablehlo.custom_call @shape_assertion", "")
  assert str(exported.in_avals[0].shape[0]) == "b"  # symbolic batch
  if models.get_lowering("auto").name == "onednn":  # the checkpoint's own jit does use them
    exp, cfg, state, _ = restore(workdir)
    lowered = exp.jit_predict_step().lower(state.params, state.batch_stats, {
        "image": np.zeros((16, 64, 64, 3), np.float32)})
    assert re.search(r"custom_call @(age_jax_|CustomSPMDPartitioning)", lowered.as_text())


def test_bare_python_gives_the_checkpoints_ages_and_intervals(trained_workdir, artifact, tmp_path):
  workdir, folder, real = trained_workdir
  exp, cfg, state, normalizer = restore(workdir)
  records = face_records(folder, 24)
  expected = Evaluator(exp, cfg, normalizer, records=records).predict(state)
  low, high = conformal.load(workdir, int(state.step), False).intervals(expected["pred_age"], expected["pred_spread"], 0.9)
  assert np.all(np.isfinite(high))
  from age_jax.data import pipeline
  faces = np.stack([pipeline.decode_image(r["image"], cfg.data.load_size) for r in records])
  np.save(tmp_path / "faces.npy", faces)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  run = subprocess.run([sys.executable, "-c", BARE_PYTHON, artifact[0], str(tmp_path / "faces.npy")],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout)
  assert np.ptp(expected["pred_age"]) > 0.01  # faces get different ages: parity is not trivial
  np.testing.assert_allclose(out["age"], expected["pred_age"], atol=1e-4)
  np.testing.assert_allclose(out["spread"], expected["pred_spread"], atol=1e-4)
  np.testing.assert_allclose(out["low"], low, atol=1e-4)
  np.testing.assert_allclose(out["high"], high, atol=1e-4)
  np.testing.assert_allclose(out["small_batch_age"], expected["pred_age"][:3], atol=1e-4)
  if not real:
    pytest.skip("parity held on synthetic faces; no ../shared UTKFace copy for real ones")


def test_lae_preset_is_refused_with_the_reason(trained_workdir):
  _, cfg, _, _ = restore(trained_workdir[0])
  cfg.data.augment = "lae"
  with pytest.raises(ValueError, match="augment='lae'"):
    export.center_crop_offsets(cfg)


def test_onnx_gives_the_artifacts_ages_and_intervals(trained_workdir, artifact, tmp_path):
  ort = pytest.importorskip("onnxruntime")
  pytest.importorskip("onnx")
  from age_jax.inference import export_onnx
  workdir, folder, _ = trained_workdir
  path = str(tmp_path / "age.onnx")
  assert export_onnx.export_workdir(workdir, path) == ["age", "high", "low", "spread"]
  _, cfg, _, _ = restore(workdir)
  from age_jax.data import pipeline
  faces = np.stack([pipeline.decode_image(r["image"], cfg.data.load_size) for r in face_records(folder, 16)])
  session = ort.InferenceSession(path)
  got = dict(zip(["age", "high", "low", "spread"], session.run(None, {"faces": faces})))
  meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}  # as README says
  assert meta["input"]["shape"] == ["batch", cfg.data.load_size, cfg.data.load_size, 3]
  assert meta["interval"]["calibration_step"] == meta["step"] and meta["model"] == cfg.model.name
  want = export.load_artifact(artifact[0])[0].call(faces)
  for name in got:
    np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=1e-4, err_msg=name)


def test_the_artifact_states_its_input_contract_and_its_recipe_makes_the_predictors_crop(trained_workdir, artifact):
  import zipfile
  from PIL import Image
  from age_jax.faces import align_to_canonical, canonical
  from age_jax.inference.predict import _resize
  workdir, folder, _ = trained_workdir
  _, meta = export.load_artifact(artifact[0])
  contract = meta["input"]
  _, cfg, _, _ = restore(workdir)
  assert contract["colour_order"] == "RGB" and contract["value_range"] == [0, 255]
  assert contract["shape"] == ["batch", cfg.data.load_size, cfg.data.load_size, 3]
  np.testing.assert_allclose(contract["template_fractions"], canonical.CANONICAL_TEMPLATE, atol=1e-4)
  assert contract["landmark_order"][0] == "left_eye" and "canonical crop" in contract["face"]
  assert meta["interval"]["calibration_step"] == meta["step"] and meta["interval"]["calibration_faces"] == "chips"
  recipe = zipfile.ZipFile(artifact[0]).read(export.RECIPE_ENTRY).decode()
  assert "age_jax" not in recipe  # numpy + PIL only
  namespace = {}
  exec(compile(recipe, "align.py", "exec"), namespace)
  # A face in a larger, rotated photo, with the five points a detector would give for it.
  face = np.asarray(Image.open(os.path.join(folder, sorted(os.listdir(folder))[0])).convert("RGB").resize((200, 200)))
  photo = np.zeros((400, 400, 3), np.uint8)
  photo[90:290, 120:320] = face
  points = canonical.CANONICAL_TEMPLATE * 200 - 0.5 + [120, 90]
  centre, angle = points.mean(0), np.deg2rad(12)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  photo = np.asarray(Image.fromarray(photo).rotate(-12, Image.BILINEAR, center=tuple(centre)))
  points = (points - centre) @ rotation.T + centre  # PIL rotates counter-clockwise by -12 degrees: clockwise
  ours = _resize(align_to_canonical(photo, points, contract["crop_size"]), cfg.data.load_size)
  theirs = namespace["align"](photo, points, contract)
  assert theirs.shape == ours.shape == (cfg.data.load_size, cfg.data.load_size, 3)
  assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1
  upright = _resize(face, cfg.data.load_size)  # and the recipe undid the rotation
  assert np.abs(theirs.astype(float) - upright).mean() < 12


def test_a_run_that_mirrors_exports_the_mirrored_ages(trained_workdir):
  workdir, folder, _ = trained_workdir
  exp, cfg, state, normalizer = restore(workdir)
  cfg.eval.mirror = True  # exp.cfg is cfg: the Evaluator's predict step mirrors too
  records = face_records(folder, 8)
  expected = Evaluator(exp, cfg, normalizer, records=records).predict(state)
  portable_cfg, portable = export.portable_experiment(cfg)
  infer = export.inference_function(portable, portable_cfg, state, normalizer)
  from age_jax.data import pipeline
  faces = np.stack([pipeline.decode_image(r["image"], cfg.data.load_size) for r in records])
  out = infer(faces)
  np.testing.assert_allclose(out["age"], expected["pred_age"], atol=1e-4)
  cfg.eval.mirror = False
  plain = Evaluator(exp, cfg, normalizer, records=records).predict(state)
  assert np.abs(plain["pred_age"] - expected["pred_age"]).max() > 1e-4  # mirroring changed something


def test_inference_restores_the_parameters_without_the_optimizer_state(trained_workdir):
  import jax
  from age_jax import checkpoint
  from age_jax.train import experiment
  workdir = trained_workdir[0]
  exp, cfg, state, _ = restore(workdir)
  assert exp.tx is None and state.opt_state is None   # never built, never read
  full = checkpoint.Checkpointer(workdir, read_only=True).restore(experiment.build(cfg).abstract_state)
  assert int(state.step) == int(full.step)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get((state.params, state.batch_stats)),
               jax.device_get((full.params, full.batch_stats)))
