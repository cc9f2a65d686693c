"""One tiny trained workdir shared by the export and serving tests: a distribution head
(dldl_v2, so intervals are face-dependent) trained a few steps on real UTKFace faces where the
../shared copy exists (synthetic faces otherwise), calibrated when training ends."""
import os
import shutil

import pytest

from age_jax.train import loop
from tests.data.fake_datasets import make_utkface_folder
from tests.tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ../shared beside the repository; AGE_JAX_SHARED names another copy (a git worktree's ../ has none)
UTKFACE = os.path.join(os.environ.get("AGE_JAX_SHARED", os.path.join(ROOT, "..", "shared")), "data", "utkface", "UTKFace")
NUM_FACES = 200  # enough for a 20-example validation split: finite 90% intervals


def real_faces(n: int) -> list[str]:
  """Paths of n real UTKFace files spread over the release ([] where it is absent)."""
  if not os.path.isdir(UTKFACE):
    return []
  names = sorted(os.listdir(UTKFACE))
  return [os.path.join(UTKFACE, names[i]) for i in range(0, len(names), len(names) // n)[:n]]


def face_records(folder: str, n: int) -> list[dict]:
  """The first n images of a folder as records ({'image': bytes, 'file_name'}), sorted by name."""
  names = sorted(os.listdir(folder))[:n]
  return [{"image": open(os.path.join(folder, name), "rb").read(), "file_name": name} for name in names]


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """(workdir, folder of its faces, whether they are real)."""
  folder = str(tmp_path_factory.mktemp("faces") / "UTKFace")
  faces = real_faces(NUM_FACES)
  if faces:
    os.makedirs(folder)
    for path in faces:
      shutil.copy(path, folder)
  else:
    make_utkface_folder(folder, n=NUM_FACES, quirks=False, size=48)
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_config(**{"data.manual_dir": folder, "data.data_dir": str(tmp_path_factory.mktemp("tfds")),
                       "data.cache": "memory", "formulation.name": "dldl_v2", "train.num_steps": 6,
                       "train.checkpoint_every": 6, "optim.learning_rate": 3e-3})
  loop.train(cfg, workdir)
  return workdir, folder, bool(faces)
