"""Evaluation reports, their files and plots, and the RCCS comparison (also through launch.compare)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from age_jax import report as report_lib

PRED = [20.4, 22.6, 30.0, 75.5, 5.2]
TRUE = [20.0, 20.0, 33.0, 77.0, 5.0]
GENDER = [0, 1, 1, 0, -1]
RACE = [0, 0, 1, 1, 1]
NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report(**kw):
  return report_lib.evaluation_report(PRED, TRUE, gender=GENDER, race=RACE, pred_gender=[0, 1, 0, 0, 1],
                                      pred_race=[0, 0, 1, 1, 1], file_names=NAMES, **kw)


def test_evaluation_report_contents():
  r = _report()
  json.dumps(r, allow_nan=False)  # serialisable, no NaN
  assert r["num_examples"] == 5
  assert r["mae"] == pytest.approx((0.4 + 2.6 + 3 + 1.5 + 0.2) / 5)
  # rounded predictions 20, 23, 30, 76, 5 -> errors 0, 3, 3, 1, 0
  assert r["ccs"]["count"][:5] == [2, 3, 3, 5, 5] and r["ccs"]["threshold"] == list(range(11))
  assert r["ccs"]["fraction"][1] == pytest.approx(0.6)
  assert r["aar"]["group_count"] == [1, 2, 0, 1, 0, 0, 0, 1]  # ages 5; 20, 20; 33; 77
  assert r["aar"]["group_mae"][2] is None
  assert r["gender"]["accuracy"] == pytest.approx(3 / 4)  # the unknown 5th is skipped
  assert r["gender"]["mae_per_label"]["1"] == {"mae": pytest.approx(2.8), "count": 2}
  assert r["race"]["accuracy"] == 1.0
  # race * 2 + gender: (0,0)->0, (1,0)->1, (0,1)->2, (1,1)->3; the example with unknown gender is skipped
  assert sorted(r["gender_race"]["mae_per_label"]) == ["0", "1", "2", "3"]
  assert r["predictions"]["file_name"] == NAMES
  assert r["predictions"]["pred_age"] == PRED and r["predictions"]["pred_gender"][4] == 1


def test_report_without_labels_and_bad_inputs():
  r = report_lib.evaluation_report(PRED, TRUE, gender=[-1] * 5)
  assert "gender" not in r and "race" not in r and "gender_race" not in r
  with pytest.raises(ValueError, match="non-finite"):
    report_lib.evaluation_report([1.0, float("nan")], [1.0, 2.0])
  with pytest.raises(ValueError, match="file names"):
    report_lib.evaluation_report(PRED, TRUE, file_names=NAMES[:2])


def test_write_report_files_and_plots(tmp_path):
  written = report_lib.write_report(_report(), str(tmp_path))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["ccs.png", "mae_per_age.png", "mae_per_age_group.png", "mae_per_gender_race.png", "report.json"]
  for path in written:
    if path.endswith(".png"):
      with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert report_lib.load_report(str(tmp_path)) == json.loads(json.dumps(_report()))
  text = report_lib.format_table(report_lib.load_report(str(tmp_path / "report.json")))
  assert "MAE           1.540" in text and "71+" in text and "gender acc.   0.750" in text


def _other():
  # method b on the same images in another order: predictions e, d, c, b, a
  return report_lib.evaluation_report([5.0, 77.0, 36.0, 20.0, 21.0], TRUE[::-1], file_names=NAMES[::-1])


def test_compare_reports_rccs_aligned_by_file_name():
  a, b = _report(), _other()
  comparison = report_lib.compare_reports(a, b, "A", "B")
  # a rounded errors 0, 3, 3, 1, 0; b (aligned a..e) errors 1, 0, 3, 0, 0
  # CCS_a(0..3) = 2, 3, 3, 5; CCS_b = 3, 4, 4, 5
  assert comparison["rccs"][:4] == [-1, -1, -1, 0] and len(comparison["rccs"]) == 11
  assert comparison["metrics"]["A"]["mae"] == pytest.approx(a["mae"])
  assert comparison["metrics"]["B"]["gender_accuracy"] is None
  text = report_lib.format_comparison(comparison)
  assert "RCCS^A_B(t): t=0:-1" in text


def test_compare_rejects_different_test_sets():
  a = _report()
  other = report_lib.evaluation_report(PRED, TRUE, file_names=["x.jpg"] + NAMES[1:])
  with pytest.raises(ValueError, match="different test sets"):
    report_lib.compare_reports(a, other)
  shifted = report_lib.evaluation_report(PRED, np.array(TRUE) + 1)
  with pytest.raises(ValueError, match="true ages differ"):
    report_lib.compare_reports(report_lib.evaluation_report(PRED, TRUE), shifted)


def test_launch_compare(tmp_path):
  report_lib.write_report(_report(), str(tmp_path / "net_a"))
  report_lib.write_report(_other(), str(tmp_path / "net_b"))
  out = tmp_path / "cmp"
  result = subprocess.run(
      [sys.executable, "-m", "launch.compare", f"--a={tmp_path / 'net_a'}", f"--b={tmp_path / 'net_b' / 'report.json'}",
       f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "RCCS^net_a_net_b(t): t=0:-1" in result.stdout
  assert sorted(os.listdir(out)) == ["comparison.json", "comparison.txt", "rccs.png"]
  assert json.loads((out / "comparison.json").read_text())["rccs"][:4] == [-1, -1, -1, 0]


def test_launch_compare_takes_workdirs_for_their_own_test_reports(tmp_path):
  # README: `launch.compare --a=workdirs/mae --b=workdirs/mse`: a workdir stands for the report
  # `launch.evaluate --workdir=W` writes (its config's dataset and eval split); without it, the
  # error names the command that makes it.
  from age_jax import config as config_lib, evaluate
  cfg = config_lib.default_config()
  for name, report in (("mae", _report()), ("mse", _other())):
    os.makedirs(tmp_path / name)
    (tmp_path / name / config_lib.CONFIG_FILE).write_text(cfg.to_json())
    report_lib.write_report(report, evaluate.own_report_dir(str(tmp_path / name)))
  assert evaluate.own_report_dir(str(tmp_path / "mae")) == str(tmp_path / "mae" / "eval" / "utkface_test")
  compare = lambda a, b: subprocess.run(
      [sys.executable, "-m", "launch.compare", f"--a={a}", f"--b={b}", f"--out={tmp_path / 'cmp'}"], cwd=ROOT,
      capture_output=True, text=True, timeout=120)
  done = compare(tmp_path / "mae", tmp_path / "mse")
  assert done.returncode == 0, done.stderr
  assert "RCCS^mae_mse(t): t=0:-1" in done.stdout
  os.makedirs(tmp_path / "fresh")
  (tmp_path / "fresh" / config_lib.CONFIG_FILE).write_text(cfg.to_json())
  done = compare(tmp_path / "mae", tmp_path / "fresh")
  assert done.returncode != 0 and f"launch.evaluate --workdir={tmp_path / 'fresh'}" in done.stderr, done.stderr[-2000:]
