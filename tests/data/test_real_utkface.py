"""The UTKFace builder on the real release copy in ../shared (skipped where it is absent)."""
import os

import numpy as np
import pytest

from age_jax import config as config_lib
from age_jax.data import datasets, pipeline

UTKFACE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "..", "shared", "data", "utkface", "UTKFace")
pytestmark = pytest.mark.skipif(not os.path.isdir(UTKFACE), reason="no ../shared UTKFace copy")


@pytest.mark.slow
def test_real_release_builds_with_every_quirk_handled(tmp_path):
  report = datasets.prepare("utkface", UTKFACE, str(tmp_path))
  # 20,708 files; 259 groups of identical images with conflicting labels (531 files) dropped,
  # 118 extra copies of identical, identically labelled images dropped.
  assert report["listed"] == len(os.listdir(UTKFACE)) == 20_708
  assert report["dropped"] == {"duplicate_conflicting_labels": 531, "duplicate_same_labels": 118}
  assert report["kept"] == 20_059 == sum(report["splits"].values())
  assert sorted(report["files"]["race_missing"]) == [
      "39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
      "61_1_20170109150557335.jpg.chip.jpg"]
  fractions = np.array([report["splits"][s] for s in ("train", "validation", "test")]) / report["kept"]
  np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.02)

  test = datasets.load_split("utkface", str(tmp_path), "test")
  labels = datasets.split_labels(test)
  assert len(labels["age"]) == report["splits"]["test"] and labels["age"].min() >= 1
  # No image is in two splits.
  names = {s: set(datasets.split_labels(datasets.load_split("utkface", str(tmp_path), s))["file_name"])
           for s in ("train", "validation", "test")}
  assert not (names["train"] & names["test"]) and not (names["train"] & names["validation"])

  data = config_lib.default_config().data
  data.update(dict(load_size=72, image_size=64, num_threads=1))
  source = pipeline.LoadedSource(test, 72, cache="none")
  batch = next(pipeline.eval_batches(source, data, global_batch_size=8, normalizer=pipeline.Normalizer("imagenet")))
  assert batch["image"].shape == (8, 64, 64, 3) and np.isfinite(batch["image"]).all()
