"""A calibration belongs to the weights it was computed on: predict, serve, export and evaluate
refuse one of another step (naming both steps and the command that fixes it), calibrate on the
spot when asked, and calibrating one step keeps every other step's calibration."""
import json
import os
import shutil

import pytest

from age_jax import conformal, evaluate
from age_jax.inference import export_jax as export, predict


@pytest.fixture
def moved_workdir(trained_workdir, tmp_path):
  """A copy of the trained workdir (step 6) whose only calibration says it belongs to step 3,
  as after `evaluate --step=3 --calibrate` or a run extended after its calibration."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir[0], workdir)
  folder = os.path.join(workdir, conformal.CALIBRATION_DIR)
  [name] = os.listdir(folder)
  assert name == "step_6_plain_chips.json"  # training calibrated its final weights, in their own file
  data = json.load(open(os.path.join(folder, name)))
  data["step"] = 3
  os.remove(os.path.join(folder, name))
  with open(os.path.join(folder, conformal.file_name(3, False, "chips")), "w") as f:
    json.dump(data, f)
  return workdir


def _refusal_names_both_steps_and_the_fix(error, workdir):
  message = str(error.value)
  assert "step 6" in message and "step 3" in message
  assert f"python -m launch.evaluate --workdir={workdir} --step=6 --calibrate" in message


def test_predict_serve_and_export_refuse_another_steps_calibration_evaluate_leaves_it_out(moved_workdir):
  with pytest.raises(conformal.CalibrationMismatch) as error:
    predict.Predictor(moved_workdir)  # launch.predict and launch.serve build this
  _refusal_names_both_steps_and_the_fix(error, moved_workdir)
  with pytest.raises(conformal.CalibrationMismatch) as error:
    export.export_workdir(moved_workdir, os.path.join(moved_workdir, "age.jaxexport"))
  _refusal_names_both_steps_and_the_fix(error, moved_workdir)
  assert not os.path.exists(os.path.join(moved_workdir, "age.jaxexport"))
  # Evaluation still reports the metrics, without intervals rather than another step's.
  report = evaluate.evaluate_workdir(moved_workdir, out_dir=os.path.join(moved_workdir, "eval"))
  assert "intervals" not in report and report["step"] == 6


def test_calibrating_on_the_spot_keeps_the_other_steps_calibration(moved_workdir, trained_workdir):
  before = conformal.load(moved_workdir, 3, False)
  predictor = predict.Predictor(moved_workdir, calibrate=True)
  assert predictor.calibration.step == 6 and predictor.calibration.mirror is False
  original = conformal.load(trained_workdir[0], 6, False)  # what training computed on the same weights
  assert predictor.calibration.scores.tolist() == pytest.approx(original.scores.tolist(), abs=1e-4)
  kept = conformal.load(moved_workdir, 3, False)
  assert kept.scores.tolist() == before.scores.tolist()
  face = predictor.crop_ages([predict._resize(__import__("numpy").zeros((80, 80, 3), "uint8"), 72)])[0]
  assert face.low is not None and face.calibrated_on == f"chips:{original.source}"
