"""The pasted-face test on real UTKFace faces (../shared; skipped without it): chips pasted into
larger photos (random background, scale 0.3-1x, rotation +-30 degrees, random offset), detected
and aligned, get the ages the chips themselves get through detection and alignment.

The model is a small one trained here on 1,200 other chips as they are (UTKFace chips are the
canonical crop's frame, so this is how the quickstart trains). It must respond to faces (its ages
spread out), and the test holds a negative control: the same photos resized whole, without
detection, must miss the chips' ages by far more than the bound, so misplaced faces fail it.

Bounds: >= 99% of faces found (both ways); the pasted faces' MAE against the true ages within 0.5
of the chips'; per face, the pasted age within 2.5 years of the chip's on average. The issue asks
1.0 for that last one: not reached, the models' ages move with any change of the input by about
as much (a face and its mirror image differ by years; BENCHMARK_RECORDS.md, "Pasted faces").
"""
import os

import numpy as np
import pytest

from tests.data.test_real_utkface import UTKFACE

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.isdir(UTKFACE), reason="no ../shared UTKFace copy")]
NUM_FACES = 100


def test_pasted_faces_get_the_chips_ages(tmp_path):
  from age_jax.data.builders import utkface
  from age_jax.faces import FaceDetector, read_rgb
  from age_jax.inference import pasted_faces, predict
  from age_jax.train import loop
  from tests.tiny import tiny_config
  names = sorted(n for n in os.listdir(UTKFACE) if utkface.parse_name(n) is not None)
  picked = np.linspace(0, len(names) - 1, 1300).astype(int)   # names start with the age: all ages
  test_names = [names[i] for i in picked[::13]][:NUM_FACES]
  train_dir = tmp_path / "UTKFace"
  train_dir.mkdir()
  for i in picked:
    if names[i] not in test_names:
      os.symlink(os.path.join(UTKFACE, names[i]), train_dir / names[i])
  cfg = tiny_config(**{"data.manual_dir": str(train_dir), "data.data_dir": str(tmp_path / "tfds"),
                       "data.cache": "memory", "model.conv_features": (16, 32, 64), "model.fc_features": (64, 64),
                       "model.dropout_rate": 0.0, "formulation.name": "mae", "optim.name": "adamw",
                       "optim.learning_rate": 2e-3, "optim.weight_decay": 1e-4, "optim.schedule": "cosine",
                       "train.batch_size": 32, "train.num_steps": 300, "train.log_every": 100,
                       "train.checkpoint_every": 300, "eval.batch_size": 32})
  loop.train(cfg, str(tmp_path / "run"))
  # Faces pasted at 0.3x are still ~48 px wide: a 40 px smallest face keeps the pyramid short.
  predictor = predict.Predictor(str(tmp_path / "run"), detector=FaceDetector(min_face_size=40))
  chips = [read_rgb(os.path.join(UTKFACE, n)) for n in test_names]
  ages = [utkface.parse_name(n)["age"] for n in test_names]
  result = pasted_faces.check(predictor, chips, ages, seed=1)
  summary = result["summary"]
  print(summary, "sd", np.nanstd(result["ages"]["chip_aligned"]))
  assert summary["found_chips"] >= 0.99 and summary["found_pasted"] >= 0.99
  assert np.nanstd(result["ages"]["chip_aligned"]) > 5.0              # the model tells faces apart
  maes = summary["mae_vs_true"]
  assert abs(maes["pasted_aligned"] - maes["chip_aligned"]) <= 0.5
  assert summary["pasted_vs_chip_aligned"] <= 2.5
  assert summary["whole_vs_chip_aligned"] > 5.0                      # the negative control
