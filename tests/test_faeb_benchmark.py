"""The FAEB protocol end to end on generated databases and a tiny model: two splits trained,
each tested on its own test folders and on another database, the table's numbers against the
evaluation path of launch.evaluate, and a re-run that resumes without redoing anything."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from age_jax import checkpoint, evaluate, faeb_benchmark
from age_jax.train import evaluator as evaluator_lib
from tests.data import fake_datasets as fd
from tests.tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
  base = tmp_path_factory.mktemp("faeb_dbs")
  img_root, json_dir = base / "faces", base / "jsons"
  os.makedirs(json_dir)
  tiny = fd.faeb_entries(n_per_folder=3, db="Tiny", aligned=True, seed=1)
  clap = fd.faeb_entries(n_per_folder=2, folders=range(3), db="Clap", seed=2)
  fd.write_faeb_images(str(img_root), tiny, size=12, seed=1)
  fd.write_faeb_images(str(img_root), clap, size=12, seed=2)
  for name, entries in (("Tiny_aligned", tiny), ("Clap_aligned", clap)):
    with open(json_dir / f"{name}.json", "w") as f:
      json.dump(entries, f)
  return str(img_root), str(json_dir)


def _cfg(data_dir):
  return tiny_config(**{"data.data_dir": data_dir, "data.cache": "memory", "model.dropout_rate": 0.0,
                        "optim.schedule": "constant", "train.batch_size": 8, "eval.batch_size": 8,
                        "train.num_steps": 2})


def test_two_splits_give_the_table_and_a_rerun_resumes(databases, tmp_path, monkeypatch):
  img_root, json_dir = databases
  root = str(tmp_path / "faeb")
  cfg = _cfg(str(tmp_path / "tfds"))
  table = faeb_benchmark.run(cfg, root, "Tiny", [0, 1], ["Clap"], img_root, json_dir)
  rows = {r["database"]: r for r in table["rows"]}
  assert set(rows) == {"Tiny", "Clap"} and rows["Tiny"]["own_test_folders"]
  assert rows["Tiny"]["crop"] == ["faeb"] and rows["Clap"]["crop"] == ["original"]   # aligned vs plain JSON
  for k in (0, 1):
    workdir = os.path.join(root, "Tiny", f"split{k}")
    own = evaluate.evaluate_workdir(workdir, split=f"faeb{k}_test", out_dir=str(tmp_path / f"ev{k}"))
    assert own["num_examples"] == 6 == rows["Tiny"]["num_examples"][str(k)]   # two folders of three
    np.testing.assert_allclose(rows["Tiny"]["mae_per_split"][str(k)], own["mae"], rtol=1e-6)
    np.testing.assert_allclose(rows["Tiny"]["cs5_per_split"][str(k)], own["ccs"]["fraction"][5])
    assert rows["Clap"]["num_examples"][str(k)] == 6   # another database: every folder
  maes = [rows["Tiny"]["mae_per_split"][k] for k in ("0", "1")]
  np.testing.assert_allclose(rows["Tiny"]["mae_mean"], np.mean(maes))
  np.testing.assert_allclose(rows["Tiny"]["mae_std"], np.std(maes, ddof=1))
  written = json.load(open(os.path.join(root, "Tiny", "faeb_table.json")))
  assert written == json.loads(json.dumps(table))
  md = open(os.path.join(root, "Tiny", "faeb_table.md")).read()
  assert f"| Tiny (own test folders) | {np.mean(maes):.2f} ± {np.std(maes, ddof=1):.2f} |" in md

  # A requeued job: nothing is trained or evaluated again, the table is the same.
  def refuse(*a, **k):
    raise AssertionError("evaluated again")
  monkeypatch.setattr(faeb_benchmark, "Evaluator", refuse)
  again = faeb_benchmark.run(cfg, root, "Tiny", [0, 1], ["Clap"], img_root, json_dir)
  assert again == table
  assert checkpoint.Checkpointer(os.path.join(root, "Tiny", "split1"), read_only=True).latest_step() == 2


def test_bad_requests_fail_before_training(databases, tmp_path):
  img_root, json_dir = databases
  cfg = _cfg(str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"splits 0\.\.0"):
    faeb_benchmark.run(cfg, str(tmp_path / "r"), "Clap", [0, 1], [], img_root, json_dir)
  with pytest.raises(FileNotFoundError, match="Nowhere_aligned.json"):
    faeb_benchmark.run(cfg, str(tmp_path / "r"), "Tiny", [0], ["Nowhere"], img_root, json_dir)
  assert not os.path.exists(tmp_path / "r")
  assert faeb_benchmark.parse_splits("0-4") == [0, 1, 2, 3, 4] and faeb_benchmark.parse_splits("1,3") == [1, 3]
  with pytest.raises(ValueError, match="--splits"):
    faeb_benchmark.parse_splits("0..4")


@pytest.mark.slow
def test_cli_runs_one_split_and_prints_the_table(databases, tmp_path):
  img_root, json_dir = databases
  env = dict(os.environ, AGE_JAX_COMPILATION_CACHE=os.path.join(ROOT, ".jax_cache"), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  run = subprocess.run(
      [sys.executable, "-m", "launch.faeb", "--config=configs/quickstart.py", f"--workdir={tmp_path / 'faeb'}",
       f"--img_root={img_root}", f"--json_dir={json_dir}", "--train=Tiny", "--splits=0", "--test=Clap",
       f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.model.name=xing_baseline",
       "--config.model.conv_features=(8,8,8)", "--config.model.fc_features=(16,16)",
       "--config.data.load_size=72", "--config.data.image_size=64", "--config.train.batch_size=8",
       "--config.eval.batch_size=8", "--config.train.num_steps=2", "--config.train.eval_every=0"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "| Tiny (own test folders) |" in run.stdout and "| Clap |" in run.stdout
  assert os.path.isfile(tmp_path / "faeb" / "Tiny" / "faeb_table.md")
