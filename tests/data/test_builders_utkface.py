"""UTKFace builder on a generated release folder: every quirk, the report, splits and errors."""
import collections
import hashlib
import json
import os
import shutil

import pytest

from age_jax.data import datasets
from age_jax.data.builders import utkface
from tests.data import fake_datasets as fd


def _all_records(data_dir, **options):
  out = {}
  for split in ("train", "validation", "test"):
    for record in datasets.load_split("utkface", data_dir, split, **options):
      out[record["file_name"]] = (split, record)
  return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("utk") / "UTKFace")
  return path, fd.make_utkface_folder(path, n=40, quirks=True)


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return data_dir, datasets.prepare("utkface", folder[0], data_dir)


@pytest.mark.parametrize("name, expected", [
    ("24_0_1_20170116220224657 .jpg.chip.jpg", (24.0, 0, 1)),
    ("55_0_0_20170116232725357jpg.chip.jpg", (55.0, 0, 0)),
    ("39_1_20170116174525125.jpg.chip.jpg", (39.0, 1, -1)),
    ("116_1_4_20170120134639935.jpg.chip.jpg", (116.0, 1, 4)),
    ("1_0_2_20161219140530307.jpg", (1.0, 0, 2)),
])
def test_parse_name_reads_release_names_and_quirks(name, expected):
  parsed = utkface.parse_name(name)
  assert (parsed["age"], parsed["gender"], parsed["race"]) == expected


@pytest.mark.parametrize("name", ["not_a_face.jpg", "30_2_0_20170101.jpg.chip.jpg", "30_0_7_2017010100.jpg",
                                  "abc_0_0_20170101000.jpg.chip.jpg"])
def test_parse_name_rejects_other_names(name):
  assert utkface.parse_name(name) is None


def test_report_counts_every_quirk(folder, built):
  _, written = folder
  data_dir, report = built
  assert report["listed"] == len(written["labels"])
  assert report["kept"] == written["expected_kept_default"] == sum(report["splits"].values())
  assert report["dropped"] == {"duplicate_conflicting_labels": 5, "duplicate_same_labels": 1,
                               "unparsable_name": 1}
  assert report["duplicate_groups_same_labels"] == 1 and report["duplicate_groups_conflicting_labels"] == 2
  assert sorted(report["files"]["race_missing"]) == sorted(n for n, l in fd.UTK_MALFORMED.items() if l[2] == -1)
  assert len(report["files"]["malformed_separator"]) == 2
  with open(os.path.join(report["data_dir"], datasets.REPORT_FILE)) as f:
    assert json.load(f)["kept"] == report["kept"]


def test_records_hold_original_bytes_and_labels_from_names(folder, built):
  path, written = folder
  records = _all_records(built[0])
  assert len(records) == written["expected_kept_default"]
  for name, (_, record) in records.items():
    assert (record["age"], record["gender"], record["race"]) == written["labels"][name]
    assert record["subject"] == "" and record["fold"] == -1
    with open(os.path.join(path, name), "rb") as f:
      assert record["image"] == f.read()
  for name in fd.UTK_MALFORMED:
    assert name in records
  same = written["same_label_duplicates"][0]
  assert sum(n in records for n in same) == 1 and min(same) in records
  for group in written["conflicting_duplicates"]:
    assert not any(n in records for n in group)


def test_keep_conflicting_keeps_one_copy_per_label_in_one_split(folder, tmp_path):
  path, written = folder
  report = datasets.prepare("utkface", path, str(tmp_path), keep_conflicting_duplicates=True)
  assert report["config"] == "keep_conflicting_duplicates-true"
  assert report["kept"] == written["expected_kept_keep_conflicting"]
  records = _all_records(str(tmp_path), keep_conflicting_duplicates=True)
  first = written["conflicting_duplicates"][0]          # labels A, A, B
  kept = [n for n in first if n in records]
  assert len(kept) == 2 and {records[n][1]["age"] for n in kept} == {30.0, 31.0}
  # Byte-identical images never straddle splits.
  split_of_bytes = collections.defaultdict(set)
  for split, record in records.values():
    split_of_bytes[hashlib.sha256(record["image"]).hexdigest()].add(split)
  assert all(len(s) == 1 for s in split_of_bytes.values())
  copies = collections.Counter(hashlib.sha256(r["image"]).hexdigest() for _, r in records.values())
  assert max(copies.values()) == 2


def test_corrupt_image_raises_naming_it_or_is_skipped_and_counted(tmp_path):
  path = str(tmp_path / "UTKFace")
  written = fd.make_utkface_folder(path, n=10, quirks=False, corrupt=True)
  with pytest.raises(ValueError, match=f"corrupt image .*{written['corrupt']}"):
    datasets.prepare("utkface", path, str(tmp_path / "a"))
  report = datasets.prepare("utkface", path, str(tmp_path / "b"), skip_corrupt=True)
  assert report["dropped"] == {"corrupt_image": 1} and report["kept"] == 10
  assert report["files"]["corrupt_image"] == [written["corrupt"]]


def test_splits_are_80_10_10_by_image_bytes_and_stable_under_removal(tmp_path):
  full = str(tmp_path / "full")
  fd.make_utkface_folder(full, n=300, quirks=False, size=8)
  report = datasets.prepare("utkface", full, str(tmp_path / "d1"))
  counts = report["splits"]
  assert counts["train"] + counts["validation"] + counts["test"] == 300
  assert 0.72 < counts["train"] / 300 < 0.88 and 0.05 < counts["validation"] / 300 < 0.15
  # A subset of the files (as if some were held out) keeps every file's split.
  subset = str(tmp_path / "subset")
  os.makedirs(subset)
  for name in sorted(os.listdir(full))[::3]:
    shutil.copy(os.path.join(full, name), subset)
  datasets.prepare("utkface", subset, str(tmp_path / "d2"))
  split_full = {n: s for n, (s, _) in _all_records(str(tmp_path / "d1")).items()}
  split_sub = {n: s for n, (s, _) in _all_records(str(tmp_path / "d2")).items()}
  assert len(split_sub) == 100 and all(split_full[n] == s for n, s in split_sub.items())


def test_prepare_is_idempotent_and_rebuilds_when_the_folder_changes(tmp_path):
  path, data_dir = str(tmp_path / "UTKFace"), str(tmp_path / "tfds")
  fd.make_utkface_folder(path, n=12, quirks=False)
  first = datasets.prepare("utkface", path, data_dir)
  info = os.path.join(first["data_dir"], "dataset_info.json")
  stamp = os.path.getmtime(info)
  again = datasets.prepare("utkface", path, data_dir)
  assert again["reused"] and not first["reused"] and os.path.getmtime(info) == stamp
  assert datasets.prepare("utkface", "", data_dir)["reused"]   # no folder needed once prepared
  with open(os.path.join(path, fd.utk_name(33, 1, 2, 999)), "wb") as f:
    f.write(fd.jpeg_bytes(999))
  rebuilt = datasets.prepare("utkface", path, data_dir)
  assert not rebuilt["reused"] and rebuilt["kept"] == 13


def test_bad_folders_fail_before_any_work(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
    datasets.prepare("utkface", missing, str(tmp_path / "d"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="empty.* is empty"):
    datasets.prepare("utkface", str(empty), str(tmp_path / "d"))
  unnamed = tmp_path / "unnamed"
  unnamed.mkdir()
  (unnamed / "face.jpg").write_bytes(fd.jpeg_bytes(1))
  with pytest.raises(ValueError, match="no file in .*unnamed has a UTKFace name"):
    datasets.prepare("utkface", str(unnamed), str(tmp_path / "d"))
  with pytest.raises(ValueError, match="manual_dir is empty"):
    datasets.prepare("utkface", "", str(tmp_path / "d"))
  assert not os.path.exists(tmp_path / "d" / "utkface" / "default" / "1.0.0")


def test_unknown_options_and_datasets_are_named(tmp_path):
  with pytest.raises(ValueError, match=r"unknown builder option\(s\) \['shuffle'\].*known options"):
    datasets.prepare("utkface", "x", str(tmp_path), shuffle=True)
  with pytest.raises(ValueError, match="skip_corrupt='yes'.*expected a bool"):
    datasets.prepare("utkface", "x", str(tmp_path), skip_corrupt="yes")
  with pytest.raises(ValueError, match="unknown dataset 'imdb'.*utkface"):
    datasets.prepare("imdb", "x", str(tmp_path))
