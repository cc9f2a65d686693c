"""Every command of README.md's bash blocks, copied from the README and run for real, in order, with
tiny settings, in a sandbox folder (the repository's code linked in, so relative outputs such as
ages.csv or workdirs/ land there): a renamed flag, module, config field or output breaks a test.

The README's placeholders become generated data (a UTKFace-named folder, an FG-NET folder, photos);
real UTKFace chips are used where the ../shared copy exists (or AGE_JAX_UTKFACE names one), so the
detector finds the faces; with generated faces, which it does not find, predict and evaluate take
`--faces=crops` and the detected-faces calibration is not run. Training commands get TINY_TRAIN
in place of the README's same flags, the benchmark TINY_BENCH. Commands a test cannot run (a fresh machine's
set-up, a cluster, a cloud project, the network, all of UTKFace) are in NOT_RUN with the reason;
a README command neither run nor listed fails test_every_readme_command_is_run_or_says_why.
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.test_readme import readme_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UTKFACE = os.environ.get("AGE_JAX_UTKFACE") or os.path.join(ROOT, "..", "shared", "data", "utkface", "UTKFace")

# A README command (its words joined by spaces) containing the key is not run, for this reason.
NOT_RUN = {
    "launch/quickstart.sh": "sets up the machine (pip install -e .) and trains 9000 steps; test_readme runs it up to "
                            "its first check",
    "python3 -m venv .venv": "creates an environment (the suite's own command: .ci/run runs it verbatim)",
    "/pip install": "installs into the environment the suite runs in (the test extra includes serve)",
    "-m pytest": "the suite itself",
    "--config.model.pretrained=torchvision:resnet50": "downloads ImageNet weights (network); tests/models cover "
                                                      "pretrained starts from files",
    "launch.faeb ": "its split file names all 20,708 images of the UTKFace folder; tests/test_faeb_benchmark.py runs the "
                    "protocol on a generated database",
    "sbatch launch/slurm.sbatch": "needs a SLURM cluster (its launch.train flags parse: test_readme)",
    "export TPU_NAME=": "a Cloud TPU project's settings",
    "bash launch/tpu_pod.sh": "needs a Cloud TPU project (gcloud); its launch.train flags parse: test_readme",
}
NEEDS_DETECTED_FACES = ("--calibrate_faces=detected",)   # not run on generated faces
DETECT_BY_DEFAULT = ("launch.predict", "--folder=/path/to/other/faces")  # --faces=crops on generated faces

TINY_TRAIN = ["--config.model.name=xing_baseline", "--config.model.conv_features=(8,8,8)",
              "--config.model.fc_features=(16,16)", "--config.data.load_size=72", "--config.data.image_size=64",
              "--config.train.batch_size=8", "--config.eval.batch_size=8", "--config.train.num_steps=2",
              "--config.train.checkpoint_every=2", "--config.train.log_every=1", "--config.optim.warmup_steps=0"]
TINY_BENCH = ["--steps=1", "--rounds=1", "--batch_size=2"]

# What a command must leave behind (globs in the sandbox), by a key of its words.
EXPECT = {
    "--workdir=workdirs/mae --config.data.manual_dir": "workdirs/mae/checkpoints/*",
    "--split=validation": "workdirs/mae/eval/*validation/report.json",
    "--dataset=fgnet": "workdirs/mae/eval/fgnet*/report.json",
    "--folder=/path/to/other/faces": "workdirs/mae/eval/*other_faces/report.json",
    "launch.compare": "workdirs/mae_vs_mse/comparison.json",
    "launch.predict": "drawn/*.jpg",
    "--calibrate_faces=detected": "workdirs/mae/calibrations/*_detected.json",
    "launch.export": "age.jaxexport",
    "launch.local_cluster": "workdirs/local2/checkpoints/*",
}


def _joined(words):
  return " ".join(words)


def _not_run(words):
  line = _joined(words)
  return next((why for key, why in NOT_RUN.items() if key in line), None)


def _runnable(words):
  """Only `.venv/bin/python -m launch...` commands run: anything else (an install, a script that sets a
  machine up) must be in NOT_RUN, checked for every command before any runs."""
  return list(words[:2]) == [".venv/bin/python", "-m"] and words[2].startswith("launch.")


def test_every_readme_command_is_run_or_says_why():
  # Cheap: the classification itself, so a new README command states whether it runs.
  keys_used = set()
  for words in readme_commands():
    line = _joined(words)
    keys_used |= {k for k in NOT_RUN if k in line}
  assert keys_used == set(NOT_RUN), f"NOT_RUN entries matching no README command: {sorted(set(NOT_RUN) - keys_used)}"
  run = [c for c in readme_commands() if not _not_run(c)]
  unsafe = [_joined(c) for c in run if not _runnable(c)]
  assert not unsafe, f"README commands neither launchers nor in NOT_RUN: {unsafe}"
  modules = {w for c in run for w in c if w.startswith("launch.")}
  assert {"launch.train", "launch.evaluate", "launch.compare", "launch.predict", "launch.serve", "launch.export",
          "launch.local_cluster", "launch.preflight", "launch.bench.benchmark"} <= modules, modules


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Sandbox:
  def __init__(self, path, real_faces):
    from tests.data import fake_datasets as fd
    self.path, self.real = str(path), real_faces
    for name in ("age_jax", "launch", "configs", "splits"):  # no pyproject.toml: nothing can be installed from here
      os.symlink(os.path.join(ROOT, name), os.path.join(self.path, name))
    venv = os.path.join(ROOT, ".venv")
    if os.path.isdir(venv):
      os.symlink(venv, os.path.join(self.path, ".venv"))
    data = os.path.join(self.path, "data")
    self.places = {"/path/to/UTKFace": os.path.join(data, "UTKFace"), "/path/to/FGNET": os.path.join(data, "FGNET"),
                   "/path/to/other/faces": os.path.join(data, "other_faces"),
                   "/path/to/photos": os.path.join(data, "photos")}
    if real_faces:   # 90 chips to train on, 8 others as the labelled folder and the photos
      names = sorted(os.listdir(UTKFACE))
      chosen = [names[i] for i in range(0, len(names), len(names) // 98)[:98]]
      for folder, part in (("/path/to/UTKFace", chosen[:90]), ("/path/to/other/faces", chosen[90:]),
                           ("/path/to/photos", chosen[90:])):
        os.makedirs(self.places[folder])
        for name in part:
          shutil.copy(os.path.join(UTKFACE, name), self.places[folder])
    else:
      fd.make_utkface_folder(self.places["/path/to/UTKFace"], n=90, quirks=False, size=48)
      fd.make_utkface_folder(self.places["/path/to/other/faces"], n=8, quirks=False, size=48, seed=5)
      fd.make_utkface_folder(self.places["/path/to/photos"], n=8, quirks=False, size=48, seed=6)
    fd.make_fgnet_folder(self.places["/path/to/FGNET"], subjects=3, images_per_subject=2)
    self.env = {**os.environ, "JAX_PLATFORMS": "cpu",
                "AGE_JAX_COMPILATION_CACHE": os.environ.get("AGE_JAX_TEST_CACHE", os.path.join(ROOT, ".jax_cache"))}
    self.env.pop("XLA_FLAGS", None)  # the suite's 8 fake devices: the commands run as a user runs them

  def words(self, words):
    """The README's words with the placeholders replaced and the tiny settings appended."""
    out = []
    for w in words:
      if w == ".venv/bin/python" and not os.path.exists(os.path.join(self.path, ".venv")):
        w = sys.executable
      for placeholder, here in sorted(self.places.items(), key=lambda kv: -len(kv[0])):
        w = w.replace(placeholder, here)
      out.append(w)
    line = _joined(words)
    tiny = []
    if "launch.train" in words:
      tiny = TINY_TRAIN + [f"--config.data.data_dir={os.path.join(self.path, 'tfds')}"]
    if "launch.bench.benchmark" in words:
      tiny = TINY_BENCH
    if not self.real and any(k in line for k in DETECT_BY_DEFAULT):
      tiny = ["--faces=crops"]
    names = {flag.split("=")[0] + "=" for flag in tiny}   # a flag given twice is refused: replace the README's
    return [w for w in out if not any(w.startswith(n) for n in names)] + tiny

  def run(self, words, timeout=900):
    done = subprocess.run(words, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{_joined(words)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done

  def serve(self, words):
    """Starts the server, asks its health and one photo's ages, stops it."""
    port = _free_port()
    words = [w.replace("--port=8000", f"--port={port}") for w in words]
    assert f"--port={port}" in words, words
    process = subprocess.Popen(words, cwd=self.path, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
      deadline, health = time.time() + 600, None
      while time.time() < deadline and process.poll() is None:
        try:
          health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5))
          break
        except OSError:
          time.sleep(1)
      assert health and health["status"] == "ok", f"{_joined(words)}: no health answer (exit {process.poll()})"
      photo = open(glob.glob(os.path.join(self.places["/path/to/photos"], "*"))[0], "rb").read()
      body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jpg\"\r\n"
              b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--XyZ--\r\n")
      request = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict?faces=crops", data=body, method="POST",
                                       headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
      answer = json.load(urllib.request.urlopen(request, timeout=300))
      assert len(answer["faces"]) == 1 and answer["faces"][0]["age"] > 0, answer
    finally:
      os.killpg(process.pid, signal.SIGTERM)
      output = process.communicate(timeout=60)[0]
    return output


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
  test_every_readme_command_is_run_or_says_why()  # nothing but launchers runs, whatever the README says
  real = os.path.isdir(UTKFACE)
  box = Sandbox(tmp_path, real)
  ran, skipped = [], []
  for words in readme_commands():
    line = _joined(words)
    if _not_run(words) or (not real and any(k in line for k in NEEDS_DETECTED_FACES)):
      skipped.append(line)
      continue
    if "launch.compare" in words:  # compares the runs' own test reports: evaluate one, and a second run
      box.run(box.words([".venv/bin/python", "-m", "launch.evaluate", "--workdir=workdirs/mae"]))
      shutil.copytree(os.path.join(box.path, "workdirs", "mae"), os.path.join(box.path, "workdirs", "mse"))
    assert _runnable(words), line
    command = box.words(list(words))
    if "launch.serve" in words:
      box.serve(command)
    else:
      box.run(command)
    expected = next((pattern for key, pattern in EXPECT.items() if key in line), None)
    if expected:
      assert glob.glob(os.path.join(box.path, expected)), f"{line}: left no {expected}"
    ran.append(line)
  runnable = [c for c in readme_commands() if not _not_run(c)]
  assert len(ran) == len(runnable) - (0 if real else len(NEEDS_DETECTED_FACES)), (ran, skipped)
  print(f"ran {len(ran)} README commands ({'real' if real else 'generated'} faces); not run: {skipped}")
