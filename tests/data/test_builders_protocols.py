"""MORPH II, WebFace, MIVIA, FG-NET, All-Age-Faces, the generic labelled folder and the identity folder on generated
files in each published layout: counts, labels, protocols, subject exclusivity, determinism, bad input."""
import collections
import os
import shutil

import numpy as np
import pytest

from age_jax.data import datasets
from tests.data import fake_datasets as fd

MORPH_SCALE = 3 / 1285   # S1/S2 cells: 3 female and round(3980 * 3 / 1285) = 9 male images


def _records(name, data_dir, split, **options):
  return list(datasets.load_split(name, data_dir, split, **options))


def _subjects(records):
  return {r["subject"] for r in records}


@pytest.fixture(scope="module")
def morph(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("morph"))
  fd.make_morph_folder(path)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return path, data_dir, datasets.prepare("morph2", path, data_dir, s_scale=MORPH_SCALE)


def test_morph_s_protocol_is_balanced_and_subject_exclusive(morph):
  _, data_dir, report = morph
  assert report["listed"] == 96 and report["splits"] == {"S1": 24, "S2": 24, "S3": 48}
  assert report["s_shortfalls"] == {}
  by_split = {s: _records("morph2", data_dir, s, s_scale=MORPH_SCALE) for s in ("S1", "S2", "S3")}
  for split in ("S1", "S2"):
    cells = collections.Counter((r["race"], r["gender"]) for r in by_split[split])
    assert cells == {(1, 0): 9, (1, 1): 3, (0, 0): 9, (0, 1): 3}
  assert {r["race"] for r in by_split["S3"]} == {0, 1, 2, 4}   # Hispanic -> Others (4), Asian -> 2
  s1, s2, s3 = (_subjects(by_split[s]) for s in ("S1", "S2", "S3"))
  assert not (s1 & s2) and not (s1 & s3) and not (s2 & s3)
  assert len(_records("morph2", data_dir, "S2+S3", s_scale=MORPH_SCALE)) == 72


def test_morph_folds_are_subject_exclusive_and_balanced(morph):
  _, data_dir, report = morph
  sizes = [int(report["folds"][str(k)]) for k in range(5)]
  assert sum(sizes) == 96 and max(sizes) - min(sizes) <= 3
  seen = {}
  for k in range(5):
    test = _records("morph2", data_dir, f"fold{k}_test", s_scale=MORPH_SCALE)
    train = _records("morph2", data_dir, f"fold{k}_train", s_scale=MORPH_SCALE)
    assert len(test) == sizes[k] and len(train) == 96 - sizes[k]
    assert not (_subjects(test) & _subjects(train)) and all(r["fold"] == k for r in test)
    for r in test:
      assert seen.setdefault(r["file_name"], k) == k
  assert len(seen) == 96


def test_morph_split_is_deterministic(morph, tmp_path):
  path, data_dir, _ = morph
  datasets.prepare("morph2", path, str(tmp_path), s_scale=MORPH_SCALE)
  for split in ("S1", "fold2_test"):
    a = sorted(r["file_name"] for r in _records("morph2", data_dir, split, s_scale=MORPH_SCALE))
    b = sorted(r["file_name"] for r in _records("morph2", str(tmp_path), split, s_scale=MORPH_SCALE))
    assert a == b


@pytest.mark.parametrize("field, value, message", [
    ("photo", "Album2/missing.JPG", r"morph_2008_nonCommercial.csv:5: image file 'Album2/missing.JPG' does not exist"),
    ("age", "forty", r"morph_2008_nonCommercial.csv:5: age 'forty' is not a number"),
    ("age", "-3", r"morph_2008_nonCommercial.csv:5: age '-3' must be a finite number >= 0"),
    ("race", "Z", r"morph_2008_nonCommercial.csv:5: race 'Z'"),
])
def test_morph_bad_rows_name_file_and_line_or_are_skipped(tmp_path, field, value, message):
  path = str(tmp_path / "m")
  rows = fd.make_morph_folder(path, subjects_per_cell=1, others=0)["rows"]
  rows[3][field] = value
  fd.write_csv(os.path.join(path, "morph_2008_nonCommercial.csv"), rows, fd.MORPH_COLUMNS)
  with pytest.raises(ValueError, match=message):
    datasets.prepare("morph2", path, str(tmp_path / "d"))
  report = datasets.prepare("morph2", path, str(tmp_path / "d"), skip_bad_labels=True)
  assert report["dropped"] == {"bad_label_row": 1} and report["listed"] == len(rows) - 1


def test_labelled_folder_keeps_subjects_in_one_split_and_reads_labels(tmp_path):
  path = str(tmp_path / "f")
  rows = fd.make_labelled_folder(path, n=60, subjects=12)["rows"]
  report = datasets.prepare("labelled_folder", path, str(tmp_path / "d"))
  assert report["kept"] == 60
  found = {}
  for split in report["splits"]:
    for r in _records("labelled_folder", str(tmp_path / "d"), split):
      found[r["file_name"]] = (split, r)
  for row in rows:
    split, r = found[row["file"]]
    assert (r["age"], r["gender"], r["race"], r["subject"]) == (
        float(row["age"]), int(row["gender"]), int(row["race"]), row["subject"])
  split_of_subject = collections.defaultdict(set)
  for split, r in found.values():
    split_of_subject[r["subject"]].add(split)
  assert all(len(s) == 1 for s in split_of_subject.values())


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[2].update(file="images/nope.jpg"), r"labels.csv:4: image file 'images/nope.jpg' does not exist"),
    (lambda rows: rows[0].update(age="abc"), r"labels.csv:2: age 'abc' is not a number"),
    (lambda rows: rows[1].update(age="-1"), r"labels.csv:3: age '-1' must be"),
    (lambda rows: rows[1].update(gender="2"), r"labels.csv:3: gender '2' is not one of 0 / 1, M / F, male / female"),
    (lambda rows: rows[1].update(gender="x"), r"labels.csv:3: gender 'x' is not one of 0 / 1, M / F"),
])
def test_labelled_folder_bad_rows(tmp_path, edit, message):
  path = str(tmp_path / "f")
  rows = fd.make_labelled_folder(path, n=6)["rows"]
  edit(rows)
  fd.write_csv(os.path.join(path, "labels.csv"), rows, ("file", "age", "gender", "race", "subject"))
  with pytest.raises(ValueError, match=message):
    datasets.prepare("labelled_folder", path, str(tmp_path / "d"))
  assert datasets.prepare("labelled_folder", path, str(tmp_path / "d"), skip_bad_labels=True)["kept"] == 5


def test_labels_csv_gender_as_letters_or_words(tmp_path):
  path = str(tmp_path / "f")
  rows = fd.make_labelled_folder(path, n=6)["rows"]
  words = ["M", "f", "Male", "FEMALE", " m ", ""]
  for row, word in zip(rows, words):
    row["gender"] = word
  fd.write_csv(os.path.join(path, "labels.csv"), rows, ("file", "age", "gender", "race", "subject"))
  genders = {r.file_name: r.gender for r in datasets.folder_source(path).examples}
  assert [genders[row["file"]] for row in rows] == [0, 1, 0, 1, 0, -1]


def test_labelled_folder_unknown_column_is_an_error(tmp_path):
  path = str(tmp_path / "f")
  fd.make_labelled_folder(path, n=4, columns=("file", "age", "height"))
  with pytest.raises(ValueError, match=r"labels.csv:1: unknown column\(s\) \['height'\]"):
    datasets.prepare("labelled_folder", path, str(tmp_path / "d"), skip_bad_labels=True)


def test_split_file_round_trip_reproduces_the_splits(tmp_path):
  path, d1 = str(tmp_path / "f"), str(tmp_path / "d1")
  fd.make_labelled_folder(path, n=30, subjects=10)
  datasets.prepare("labelled_folder", path, d1)
  split_file = str(tmp_path / "splits.json")
  exported = datasets.export_split_file("labelled_folder", d1, split_file)
  # Swap two subjects' files between splits: the file decides, not the protocol.
  exported["train"], exported["test"] = exported["test"], exported["train"]
  from age_jax.data.builders import splits
  splits.write_split_file(split_file, exported)
  report = datasets.prepare("labelled_folder", path, str(tmp_path / "d2"), split_file=split_file)
  assert report["config"].startswith("split_file-")
  for split, files in exported.items():
    got = _records("labelled_folder", str(tmp_path / "d2"), split, split_file=split_file) if files else []
    assert sorted(r["file_name"] for r in got) == sorted(files)


def test_split_file_may_not_separate_a_subject(tmp_path):
  path = str(tmp_path / "f")
  rows = fd.make_labelled_folder(path, n=4, subjects=1)["rows"]
  split_file = str(tmp_path / "s.json")
  from age_jax.data.builders import splits
  splits.write_split_file(split_file, {"train": [r["file"] for r in rows[:2]], "test": [r["file"] for r in rows[2:]]})
  with pytest.raises(ValueError, match="into several splits"):
    datasets.prepare("labelled_folder", path, str(tmp_path / "d"), split_file=split_file)


def test_webface_four_folds_cover_everything_once(tmp_path):
  path = str(tmp_path / "w")
  fd.make_labelled_folder(path, n=41)
  report = datasets.prepare("webface", path, str(tmp_path / "d"))
  assert report["splits"] == {"full": 41} and sorted(report["folds"].values()) == [10, 10, 10, 11]
  tests = [_records("webface", str(tmp_path / "d"), f"fold{k}_test") for k in range(4)]
  assert sorted(r["file_name"] for t in tests for r in t) == sorted(r["file_name"] for r in
                                                                   _records("webface", str(tmp_path / "d"), "full"))
  assert len(_records("webface", str(tmp_path / "d"), "fold1_train")) == 41 - len(tests[1])
  with pytest.raises(ValueError, match=r"stored splits: \[.full.\] and fold\{k\}_train"):
    datasets.load_split("webface", str(tmp_path / "d"), "train")
  with pytest.raises(ValueError, match="has folds"):
    datasets.load_split("webface", str(tmp_path / "d"), "fold7_test")


def test_mivia_four_to_one_without_sharing_identities(tmp_path):
  path = str(tmp_path / "m")
  rows = fd.make_mivia_folder(path, identities=40, per_identity=3)["rows"]
  report = datasets.prepare("mivia", path, str(tmp_path / "d"))
  assert report["kept"] == 120 and set(report["splits"]) == {"train", "validation"}
  assert 0.65 < report["splits"]["train"] / 120 < 0.95
  train, val = (_records("mivia", str(tmp_path / "d"), s) for s in ("train", "validation"))
  assert not (_subjects(train) & _subjects(val))
  ages = {r["file"]: float(r["age"]) for r in rows}
  for r in train + val:
    assert r["age"] == pytest.approx(ages[r["file_name"].split("/", 1)[1]], abs=1e-5)


def test_fgnet_leave_one_person_out_with_landmarks(tmp_path):
  path = str(tmp_path / "fg")
  written = fd.make_fgnet_folder(path, subjects=5)
  report = datasets.prepare("fgnet", path, str(tmp_path / "d"))
  assert report["kept"] == 15 and report["subjects"] == 5 and report["folds"] == {str(k): 3 for k in range(5)}
  for k in range(5):
    test = _records("fgnet", str(tmp_path / "d"), f"fold{k}_test")
    assert _subjects(test) == {f"{k + 1:03d}"}
    assert f"{k + 1:03d}" not in _subjects(_records("fgnet", str(tmp_path / "d"), f"fold{k}_train"))
    for r in test:
      expected = written[r["file_name"]]
      assert r["age"] == expected["age"] and r["gender"] == -1
      np.testing.assert_allclose(r["landmarks"], expected["landmarks"], atol=1e-3)


def _face_geometry_ok(five) -> bool:
  """Real geometry: eyes left-to-right and level within 5 degrees, the nose tip below the eyes
  and between them, the mouth below the nose, mouth corners left-to-right."""
  left_eye, right_eye, nose, mouth_left, mouth_right = five
  dx, dy = right_eye - left_eye
  return bool(dx > 0 and abs(np.degrees(np.arctan2(dy, dx))) < 5
              and max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
              and left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0])


def test_fgnet_markup_gives_real_face_geometry_and_aligns_the_drawn_eyes(tmp_path):
  from age_jax.data import pipeline
  from age_jax.data.builders import fgnet
  from age_jax.faces import align, canonical_template
  path = str(tmp_path / "fg")
  written = fd.make_fgnet_folder(path, subjects=2, images_per_subject=2)
  datasets.prepare("fgnet", path, str(tmp_path / "d"))
  records = _records("fgnet", str(tmp_path / "d"), "full")
  for r in records:
    points68 = fgnet.read_pts(os.path.join(path, "points", os.path.basename(r["file_name"])[:-4].lower() + ".pts"))
    assert _face_geometry_ok(r["landmarks"]), r["file_name"]
    assert not _face_geometry_ok(align.five_points_from_68(points68))  # the iBUG reading is not a face
  # Aligned with its landmarks, each drawn face has its dark eye discs on the canonical crop's eyes.
  size = 48
  for i in range(len(records)):
    image = pipeline.LoadedSource(records, size, align_faces=True)[i]["image"][..., 0].astype(float)
    for eye in canonical_template(size)[:2]:
      x0, y0 = np.round(eye).astype(int) - 3
      window = image[y0:y0 + 7, x0:x0 + 7] < 100
      yy, xx = np.nonzero(window)
      assert window.sum() >= 4
      np.testing.assert_allclose([xx.mean() + x0, yy.mean() + y0], eye, atol=1.0)


def test_fgnet_bad_landmark_files(tmp_path):
  path = str(tmp_path / "fg")
  fd.make_fgnet_folder(path, subjects=2)
  pts = os.path.join(path, "points", "001a03.pts")
  lines = open(pts).read().splitlines()
  lines[5] = "12.0 oops"
  open(pts, "w").write("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"001a03.pts:6: expected 'x y', got '12.0 oops'"):
    datasets.prepare("fgnet", path, str(tmp_path / "d"))
  os.remove(os.path.join(path, "points", "002a11.pts"))
  report = datasets.prepare("fgnet", path, str(tmp_path / "d"), skip_bad_labels=True)
  assert report["dropped"] == {"bad_landmarks": 2} and report["kept"] == 4
  assert any("002a11.pts: missing landmark file" in f for f in report["files"]["bad_landmarks"])


def test_all_age_faces_official_lists_and_gender_from_id(tmp_path):
  path = str(tmp_path / "aaf")
  written = fd.make_aaf_folder(path)
  report = datasets.prepare("all_age_faces", path, str(tmp_path / "d"))
  assert report["dropped"] == {"not_in_official_lists": 1} and report["kept"] == len(written) - 1
  for split in ("train", "validation"):
    for r in _records("all_age_faces", str(tmp_path / "d"), split):
      w = written[os.path.basename(r["file_name"])]
      assert (split, r["gender"], r["age"]) == (w["split"], w["gender"], w["age"])


def test_identity_folder_classes_drops_and_split_by_image(tmp_path):
  path, data_dir = str(tmp_path / "ids"), str(tmp_path / "d")
  written = fd.make_identity_folder(path, identities=5, per_identity=8, singletons=2)
  shutil.copy(os.path.join(path, "id00", "000.jpg"), os.path.join(path, "id01", "copy.jpg"))  # one face, two names
  shutil.copy(os.path.join(path, "id02", "000.jpg"), os.path.join(path, "loose.jpg"))         # in no identity folder
  report = datasets.prepare("identity_folder", path, data_dir)
  # The copy conflicts with its original (two identities): both dropped; id00 then has 7 images.
  assert report["dropped"] == {"duplicate_conflicting_labels": 2, "identity_below_min_images": 2,
                               "not_in_an_identity_folder": 1}
  assert report["identities"] == [f"id{k:02d}" for k in range(5)] and report["num_identities"] == 5
  assert report["identities_dropped"] == 2 and report["kept"] == 39
  records = {s: _records("identity_folder", data_dir, s) for s in ("train", "validation")}
  assert set(report["splits"]) == {"train", "validation"} and 0 < len(records["validation"]) < 12
  for split, members in records.items():
    for r in members:
      assert r["identity"] == report["identities"].index(written[r["file_name"]]) and r["age"] == -1
      assert r["subject"] == written[r["file_name"]]
  # Split by image within identity: every identity trains, and some identity is on both sides.
  assert {r["identity"] for r in records["train"]} == set(range(5))
  assert {r["identity"] for r in records["validation"]} & {r["identity"] for r in records["train"]}
  assert datasets.load_split("identity_folder", data_dir, "train").labels()["identity"].dtype == np.int32
  stricter = datasets.prepare("identity_folder", path, str(tmp_path / "d8"), min_images=8)  # id00 has 7 left
  assert stricter["identities"] == ["id01", "id02", "id03", "id04"] and stricter["config"] == "min_images-8"


def test_identity_folder_reads_a_labels_csv_with_a_subject_column(tmp_path):
  path = str(tmp_path / "f")
  rows = fd.make_labelled_folder(path, n=12, subjects=3)["rows"]
  fd.write_csv(os.path.join(path, "labels.csv"), rows, ("file", "subject"))
  report = datasets.prepare("identity_folder", path, str(tmp_path / "d"))
  assert report["identities"] == ["p0", "p1", "p2"] and report["kept"] == 12
  found = [r for s, n in report["splits"].items() if n for r in _records("identity_folder", str(tmp_path / "d"), s)]
  assert sorted((r["file_name"], r["identity"]) for r in found) == sorted(
      (row["file"], int(row["subject"][1:])) for row in rows)
  rows[3]["subject"] = ""
  fd.write_csv(os.path.join(path, "labels.csv"), rows, ("file", "subject"))
  with pytest.raises(ValueError, match=r"labels.csv:5: the subject \(identity\) is empty"):
    datasets.prepare("identity_folder", path, str(tmp_path / "d"))
