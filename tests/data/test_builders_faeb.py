"""The FAEB builder: FAEB's real FG-Net JSONs with generated images at their paths, a small
AgeDB-style database with every quirk, FAEB's split table, and FAEB's crop against a hand
computation of where each output pixel samples the source."""
import collections
import copy
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from age_jax.data import datasets
from age_jax.data.builders import faeb_protocol
from tests.data import fake_datasets as fd

REAL = "/work/shared/faeb"
needs_real = pytest.mark.skipif(not os.path.isfile(os.path.join(REAL, "FG-Net.json")),
                                reason="FAEB's JSON files are not in /work/shared/faeb")


def _json(path, entries):
  with open(path, "w") as f:
    json.dump(entries, f)
  return path


@needs_real
def test_real_fgnet_json_builds_1002_entries_82_subjects_and_its_folders(tmp_path):
  with open(os.path.join(REAL, "FG-Net.json")) as f:
    entries = json.load(f)
  root = str(tmp_path / "faces")
  differ = fd.write_faeb_images(root, entries, size=8, upper_names=True)
  assert differ > 0   # the JSON's '.jpg' / lower-case letters against the release's upper case
  report = datasets.prepare("faeb", root, str(tmp_path / "tfds"), json=os.path.join(REAL, "FG-Net.json"))
  assert report["listed"] == report["kept"] == 1002 and report["dropped_total"] == 0
  assert report["subjects"] == 82 and report["case_mismatch"] == differ
  assert report["folds"] == {str(k): v for k, v in sorted(collections.Counter(e["folder"] for e in entries).items())}
  assert report["crop"] == "original" and report["faeb_splits"] == []   # FG-NET: test-only in FAEB
  # One folder per subject: leave-one-person-out through the folds.
  test = datasets.load_split("faeb", str(tmp_path / "tfds"), "fold9_test", json=os.path.join(REAL, "FG-Net.json"))
  assert len(test) == 13 and {r["subject"] for r in test} == {"9"}
  with pytest.raises(ValueError, match="FAEB only tests on it"):
    datasets.load_split("faeb", str(tmp_path / "tfds"), "faeb0_train", json=os.path.join(REAL, "FG-Net.json"))


@needs_real
def test_real_aligned_fgnet_subset_gets_faeb_crops(tmp_path):
  with open(os.path.join(REAL, "FG-Net_aligned.json")) as f:
    entries = json.load(f)[:12]
  root = str(tmp_path / "faces")
  fd.write_faeb_images(root, entries, size=32)
  path = _json(str(tmp_path / "FG-Net_aligned.json"), entries)
  report = datasets.prepare("faeb", root, str(tmp_path / "tfds"), json=path)
  assert report["kept"] == 12 and report["crop"] == "faeb"
  record = datasets.load_split("faeb", str(tmp_path / "tfds"), "full", json=path)[0]
  assert record["crop"] in (b"faeb", "faeb")
  side = faeb_protocol.output_side()
  assert Image.open(io.BytesIO(record["image"])).size == (side, side) == (281, 281)


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
  base = tmp_path_factory.mktemp("faeb")
  entries = fd.faeb_entries(n_per_folder=3)
  root = str(base / "faces")
  fd.write_faeb_images(root, entries, upper_names=False)
  return base, root, entries


def test_ten_folder_splits_follow_faebs_table(tiny_db, tmp_path):
  _, root, entries = tiny_db
  path = _json(str(tmp_path / "Tiny.json"), entries)
  report = datasets.prepare("faeb", root, str(tmp_path / "tfds"), json=path)
  assert report["subjects"] == 10 and report["kept"] == 30
  assert report["faeb_splits"] == [f"faeb{k}_{p}" for k in range(5) for p in ("train", "val", "test")]
  folders = lambda split: {r["fold"] for r in datasets.load_split("faeb", str(tmp_path / "tfds"), split, json=path)}
  assert folders("faeb0_train") == set(range(6)) and folders("faeb0_val") == {6, 7} and folders("faeb0_test") == {8, 9}
  assert folders("faeb1_test") == {0, 1} and folders("faeb2_test") == {2, 3}
  # FAEB's benchmark files: splits 3 and 4 rotate by one folder.
  assert folders("faeb3_train") == {5, 6, 7, 8, 9, 0} and folders("faeb3_val") == {1, 2} and folders("faeb3_test") == {3, 4}
  assert folders("faeb4_test") == {4, 5}
  rec = {r["file_name"]: r for r in datasets.load_split("faeb", str(tmp_path / "tfds"), "full", json=path)}
  first = entries[0]
  got = rec[first["img_path"]]
  assert got["subject"] == first["name"] and got["age"] == first["age"] and got["gender"] == 0   # M
  with pytest.raises(ValueError, match="splits 0..4"):
    datasets.load_split("faeb", str(tmp_path / "tfds"), "faeb5_test", json=path)


def test_three_folder_database_has_one_split(tmp_path):
  entries = fd.faeb_entries(n_per_folder=2, folders=range(3), db="CLAP")
  root = str(tmp_path / "faces")
  fd.write_faeb_images(root, entries)
  path = _json(str(tmp_path / "CLAP2016.json"), entries)
  report = datasets.prepare("faeb", root, str(tmp_path / "tfds"), json=path)
  assert report["faeb_splits"] == ["faeb0_train", "faeb0_val", "faeb0_test"]
  test = datasets.load_split("faeb", str(tmp_path / "tfds"), "faeb0_test", json=path)
  assert {r["fold"] for r in test} == {2} and len(test) == 2
  with pytest.raises(ValueError, match="splits 0..0"):
    datasets.load_split("faeb", str(tmp_path / "tfds"), "faeb1_train", json=path)


def test_missing_files_unknown_ages_and_case_are_refused_by_name_or_counted(tiny_db, tmp_path):
  _, root, entries = tiny_db
  entries = copy.deepcopy(entries)
  entries[3]["age"] = -1
  entries[5]["img_path"] = entries[5]["img_path"].upper()   # matched ignoring case
  entries.append({**entries[0], "img_path": "TinyDB/TinyDB/absent.jpg", "number": "x"})
  path = _json(str(tmp_path / "Quirks.json"), entries)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match=r"entry 3 .*age -1.*skip_unknown_ages"):
    datasets.prepare("faeb", root, data_dir, json=path)
  with pytest.raises(FileNotFoundError, match=r"entry 30 .*absent\.jpg.*skip_missing_files"):
    datasets.prepare("faeb", root, data_dir, json=path, skip_unknown_ages=True)
  report = datasets.prepare("faeb", root, data_dir, json=path, skip_unknown_ages=True, skip_missing_files=True)
  assert report["dropped"] == {"missing_file": 1, "unknown_age": 1}
  assert report["files"]["missing_file"] == ["TinyDB/TinyDB/absent.jpg"]
  assert report["files"]["unknown_age"] == [entries[3]["img_path"]]
  assert report["case_mismatch"] == 1 and report["files"]["case_mismatch"] == [entries[5]["img_path"]]
  assert report["kept"] == 29


def test_bad_entries_name_the_entry_and_subject_keys(tmp_path):
  entries = fd.faeb_entries(n_per_folder=1, folders=range(3))
  root = str(tmp_path / "faces")
  fd.write_faeb_images(root, entries)
  bad = copy.deepcopy(entries)
  bad[1]["folder"] = "two"
  with pytest.raises(ValueError, match=r"entry 1 .*folder 'two'"):
    datasets.prepare("faeb", root, str(tmp_path / "t1"), json=_json(str(tmp_path / "b1.json"), bad))
  with pytest.raises(ValueError, match="needs builder option json"):
    datasets.prepare("faeb", root, str(tmp_path / "t2"))
  # id_num (FG-NET) is the subject when present; number only when nothing else names the person.
  ids = copy.deepcopy(entries)
  for i, e in enumerate(ids):
    del e["name"]
    if i == 0:
      e["id_num"] = 7
  path = _json(str(tmp_path / "ids.json"), ids)
  datasets.prepare("faeb", root, str(tmp_path / "t3"), json=path)
  subjects = {r["file_name"]: r["subject"] for r in datasets.load_split("faeb", str(tmp_path / "t3"), "full", json=path)}
  assert subjects[ids[0]["img_path"]] == "7" and subjects[ids[1]["img_path"]] == ids[1]["number"]


def test_faeb_crop_samples_the_extended_rotated_box():
  # A linear image: bilinear sampling is exact on it, so each output pixel must equal the
  # image's value at the source point FAEB's corner mapping assigns to it (computed by hand).
  h, w = 300, 320
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  value = lambda x, y: 20 + 0.4 * x + 0.25 * y
  image = np.repeat(np.clip(value(xs, ys), 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
  angle = np.deg2rad(20)
  centre, half = np.array([160.0, 150.0]), 60.0
  u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
  corners = [centre - half * u - half * v, centre + half * u - half * v,
             centre + half * u + half * v, centre - half * u + half * v]
  bbox = (np.concatenate(corners) + 1).tolist()   # FAEB's boxes are 1-based
  crop = faeb_protocol.faeb_crop(image, bbox, input_size=40, input_extension=0.05)
  side = int(40 * 1.1)
  assert crop.shape == (side, side, 3)
  a, b, c, _ = [np.asarray(p) for p in corners]
  m = 0.05   # extended by 5% of the side along each edge
  ea = a - (b - a) * m - (c - b) * m
  eb = b + (b - a) * m - (c - b) * m
  ec = c + (b - a) * m + (c - b) * m
  for row, col in [(0, 0), (0, side - 1), (side - 1, side - 1), (side - 1, 0), (21, 13), (30, 40)]:
    point = ea + (eb - ea) * col / (side - 1) + (ec - eb) * row / (side - 1)
    assert abs(float(crop[row, col, 0]) - value(*point)) <= 1.5, (row, col)


def test_utkface_hash_folders_keep_identical_images_together(tmp_path):
  from age_jax.data.builders import faeb_hash_folders
  written = fd.make_utkface_folder(str(tmp_path / "UTKFace"), n=30, quirks=True)
  entries, unparsed = faeb_hash_folders.utkface_database(str(tmp_path / "UTKFace"))
  assert unparsed == written["unparsable"] and len(entries) == len(written["labels"])
  folder = {e["img_path"].split("/", 1)[1]: e["folder"] for e in entries}
  for name in written["labels"]:   # the stated rule, computed here independently
    data = open(tmp_path / "UTKFace" / name, "rb").read()
    assert folder[name] == int(__import__("hashlib").sha256(data).hexdigest()[:16], 16) % 10
  for group in written["same_label_duplicates"] + written["conflicting_duplicates"]:
    assert len({folder[n] for n in group}) == 1
  path = str(tmp_path / "UTKFace.json")
  faeb_hash_folders.write_database(path, entries)
  report = datasets.prepare("faeb", str(tmp_path), str(tmp_path / "tfds"), json=path)
  assert report["kept"] == len(entries) and report["identical_groups"] == 3   # every copy kept
  records = datasets.load_split("faeb", str(tmp_path / "tfds"), "full", json=path)
  labels = {r["file_name"].split("/", 1)[1]: (r["age"], r["gender"], r["race"]) for r in records}
  assert labels == written["labels"]


COMMITTED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "splits", "faeb", "UTKFace.json")


def test_committed_utkface_file_is_a_faeb_database_of_ten_folders():
  from age_jax.data.builders import faeb
  entries = faeb.read_database(COMMITTED)
  counts = collections.Counter(e["folder"] for e in entries)
  assert len(entries) == 20708 and sorted(counts) == list(range(10))
  assert all(0.09 < c / len(entries) < 0.11 for c in counts.values())
  assert len({e["img_path"] for e in entries}) == len(entries)
  assert faeb_protocol.split_names(counts)[:3] == ["faeb0_train", "faeb0_val", "faeb0_test"]


def test_canonical_crop_detects_instead_and_says_so(tmp_path, monkeypatch):
  from age_jax.data.builders import face_crops
  from age_jax.faces import align_to_canonical
  from tests import fake_faces
  fake = fake_faces.FakeDetector()
  monkeypatch.setattr(face_crops, "default_detector", lambda: fake)
  photos, chosen = fake_faces.faces_folder(str(tmp_path / "faces" / "DB"), fake)
  entries = [{"img_path": f"DB/{name}", "age": 30, "folder": k, "id_num": k,
              "aligned_bbox": [1, 1, 90, 1, 90, 90, 1, 90]} for k, name in enumerate(photos)]
  path = _json(str(tmp_path / "DB_aligned.json"), entries)
  report = datasets.prepare("faeb", str(tmp_path / "faces"), str(tmp_path / "tfds"), json=path,
                            canonical_crop=True, crop_size=64)
  assert report["crop"] == "canonical" and report["dropped"] == {"no_face": 1}
  for r in datasets.load_split("faeb", str(tmp_path / "tfds"), "full", json=path, canonical_crop=True, crop_size=64):
    name = r["file_name"].split("/")[1]
    assert r["crop"] in (b"canonical", "canonical")
    want = align_to_canonical(photos[name], chosen[name], 64)
    assert np.abs(np.asarray(Image.open(io.BytesIO(r["image"]))).astype(int) - want).mean() < 2
