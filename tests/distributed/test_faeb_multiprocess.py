"""launch.faeb as 2 JAX processes on localhost gives the table of 1 process (a pod runs the same
command on every process; process 0 builds the databases and writes the results)."""
import json
import os
import sys

import numpy as np
import pytest

from launch import local_cluster
from tests.data import fake_datasets as fd

pytestmark = pytest.mark.slow  # real multi-process runs: minutes of start-up and compilation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "tests", "distributed", "run_config.py")


def _run(tmp_path, name, num_processes, img_root, json_dir):
  env = dict(os.environ, AGE_JAX_COMPILATION_CACHE=os.path.join(REPO, ".jax_cache"))
  command = [sys.executable, "-m", "launch.faeb", f"--config={CONFIG}", f"--workdir={tmp_path / name}",
             f"--img_root={img_root}", f"--json_dir={json_dir}", "--train=Tiny", "--splits=0", "--test=Clap", "--aligned=false",
             f"--config.data.data_dir={tmp_path / ('tfds_' + name)}", "--config.train.num_steps=2",
             "--config.eval.batch_size=8"]
  results = local_cluster.run(command, num_processes, 1, 400, env=env, cwd=REPO)
  for r in results:
    assert r.returncode == 0, f"process {r.process_id}: {r.output[-4000:]}"
  with open(tmp_path / name / "Tiny" / "faeb_table.json") as f:
    return json.load(f), results


def test_two_processes_write_the_table_of_one(tmp_path):
  img_root, json_dir = tmp_path / "faces", tmp_path / "jsons"
  os.makedirs(json_dir)
  for name, entries in (("Tiny", fd.faeb_entries(n_per_folder=4, db="Tiny", seed=1)),
                        ("Clap", fd.faeb_entries(n_per_folder=2, folders=range(3), db="Clap", seed=2))):
    fd.write_faeb_images(str(img_root), entries, size=12, seed=len(name))
    with open(json_dir / f"{name}.json", "w") as f:
      json.dump(entries, f)
  one, _ = _run(tmp_path, "one", 1, img_root, json_dir)
  two, results = _run(tmp_path, "two", 2, img_root, json_dir)
  for a, b in zip(one["rows"], two["rows"]):
    assert a["database"] == b["database"] and a["num_examples"] == b["num_examples"]
    np.testing.assert_allclose(b["mae_per_split"]["0"], a["mae_per_split"]["0"], rtol=1e-4)
  assert sum("| Tiny (own test folders) |" in r.output for r in results) == 2   # each prints the table
