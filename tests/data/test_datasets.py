"""The dataset access API: load_split slicing, split_labels (and its cache), folder_source, pickling."""
import os
import pickle

import numpy as np
import pytest

from age_jax.data import datasets
from tests.data import fake_datasets as fd


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("utk") / "UTKFace")
  written = fd.make_utkface_folder(path, n=60, quirks=False)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  report = datasets.prepare("utkface", path, data_dir)
  return path, data_dir, report, written


def test_names_lists_every_builder():
  assert datasets.names() == sorted(["utkface", "morph2", "webface", "mivia", "fgnet", "all_age_faces",
                                     "labelled_folder", "identity_folder", "faeb"])
  for name in datasets.names():
    assert datasets.builder_class(name).name == name


def test_load_split_records_slicing_and_joining(prepared):
  _, data_dir, report, written = prepared
  train = datasets.load_split("utkface", data_dir, "train")
  assert len(train) == report["splits"]["train"]
  record = train[0]
  assert set(record) == {"image", "age", "gender", "race", "subject", "file_name", "fold"}
  assert isinstance(record["image"], bytes) and isinstance(record["age"], float)
  assert isinstance(record["gender"], int) and isinstance(record["file_name"], str)
  assert (record["age"], record["gender"], record["race"]) == written["labels"][record["file_name"]]
  assert train[-1] == train[len(train) - 1]
  with pytest.raises(IndexError):
    train[len(train)]
  half = datasets.load_split("utkface", data_dir, "train[:50%]")
  assert len(half) == (report["splits"]["train"] + 1) // 2
  both = datasets.load_split("utkface", data_dir, "validation+test")
  assert len(both) == report["splits"]["validation"] + report["splits"]["test"]
  with pytest.raises(ValueError, match=r"split 'dev' of dataset 'utkface'.*stored splits: \['test', 'train', 'validation'\]"):
    datasets.load_split("utkface", data_dir, "dev")


def test_load_split_before_prepare_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared.*run datasets.prepare"):
    datasets.load_split("utkface", str(tmp_path), "train")


def test_split_labels_match_the_records_and_are_cached(prepared):
  _, data_dir, report, _ = prepared
  source = datasets.load_split("utkface", data_dir, "train")
  labels = datasets.split_labels(source)
  assert labels["age"].dtype == np.float32 and labels["race"].dtype == np.int32
  for i in range(len(source)):
    r = source[i]
    assert (labels["age"][i], labels["gender"][i], labels["race"][i], labels["file_name"][i]) == (
        r["age"], r["gender"], r["race"], r["file_name"])
  cache = os.path.join(report["data_dir"], datasets.LABELS_DIR, "train.npz")
  assert os.path.isfile(cache)
  again = datasets.split_labels(datasets.load_split("utkface", data_dir, "train"))
  np.testing.assert_array_equal(again["age"], labels["age"])
  # Any plain sequence of records works too (read record by record).
  plain = datasets.split_labels([source[0], source[1]])
  np.testing.assert_array_equal(plain["age"], labels["age"][:2])


def test_record_source_pickles_for_grain_workers(prepared):
  _, data_dir, _, _ = prepared
  source = datasets.load_split("utkface", data_dir, "test")
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == len(source) and copy[3] == source[3]


def test_folder_source_reads_utkface_names(tmp_path):
  written = fd.make_utkface_folder(str(tmp_path), n=5, quirks=False)
  source = datasets.folder_source(str(tmp_path))
  assert len(source) == 5
  for i in range(5):
    r = source[i]
    assert (r["age"], r["gender"], r["race"]) == written["labels"][r["file_name"]]
    assert r["image"] == (tmp_path / r["file_name"]).read_bytes()
  assert datasets.split_labels(source)["age"].tolist() == [source[i]["age"] for i in range(5)]
  (tmp_path / "holiday.jpg").write_bytes(fd.jpeg_bytes(3))
  with pytest.raises(ValueError, match=r"1 image\(s\) have no UTKFace name.*holiday.jpg"):
    datasets.folder_source(str(tmp_path))


def test_folder_source_reads_a_labels_csv(tmp_path):
  rows = fd.make_labelled_folder(str(tmp_path), n=4, subjects=2)["rows"]
  source = datasets.folder_source(str(tmp_path))
  assert [(r["file_name"], r["age"], r["subject"]) for r in (source[i] for i in range(4))] == [
      (row["file"], float(row["age"]), row["subject"]) for row in rows]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    datasets.folder_source(str(tmp_path / "missing"))
