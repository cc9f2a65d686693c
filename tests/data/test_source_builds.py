"""One build per source: two folders of one dataset name, or a folder before and after an edit,
never share or delete each other's build; concurrent builds agree; a crashed build is cleaned
or rebuilt. Labels that cannot be true are refused (or skipped and counted); CSV paths stay
inside their folder; a spreadsheet's BOM is read."""
import glob
import os
import shutil
import threading

import pytest

from age_jax.data import datasets
from age_jax.data.builders import curation, labels_csv
from tests.data import fake_datasets as fd


def test_two_folders_of_one_name_keep_their_own_builds(tmp_path):
  data_dir = str(tmp_path / "tfds")
  a, b = str(tmp_path / "a" / "UTKFace"), str(tmp_path / "b" / "UTKFace")
  fd.make_utkface_folder(a, n=12, quirks=False, seed=0)
  fd.make_utkface_folder(b, n=30, quirks=False, seed=1)
  built_a = datasets.prepare("utkface", a, data_dir)
  built_b = datasets.prepare("utkface", b, data_dir)
  assert built_a["data_dir"] != built_b["data_dir"] and not built_b["reused"]
  assert datasets.prepare("utkface", a, data_dir)["reused"]  # b did not replace a's build
  n_a = sum(built_a["splits"].values())
  train_a = datasets.load_split("utkface", data_dir, "train", fingerprint=built_a["fingerprint"])
  assert len(train_a) == built_a["splits"]["train"] and n_a == 12
  with pytest.raises(ValueError, match="2 different sources .*fingerprint"):
    datasets.load_split("utkface", data_dir, "train")

  # An edited folder gets a new build; the old one stays for the run that trained on it.
  with open(os.path.join(a, fd.utk_name(33, 1, 2, 999)), "wb") as f:
    f.write(fd.jpeg_bytes(999))
  edited = datasets.prepare("utkface", a, data_dir)
  assert edited["kept"] == 13 and edited["data_dir"] != built_a["data_dir"]
  pinned = datasets.prepare("utkface", a, data_dir, fingerprint=built_a["fingerprint"])
  assert pinned["reused"] and pinned["data_dir"] == built_a["data_dir"] and pinned["kept"] == 12
  shutil.rmtree(os.path.dirname(os.path.dirname(os.path.dirname(built_a["data_dir"]))))
  with pytest.raises(ValueError, match=f"fingerprint={built_a['fingerprint']}.*changed"):
    datasets.prepare("utkface", a, data_dir, fingerprint=built_a["fingerprint"])


def test_concurrent_builds_of_one_source_agree(tmp_path):
  data_dir, folder = str(tmp_path / "tfds"), str(tmp_path / "UTKFace")
  fd.make_utkface_folder(folder, n=16, quirks=False)
  barrier, reports, errors = threading.Barrier(2), [], []

  def build():
    barrier.wait()
    try:
      reports.append(datasets.prepare("utkface", folder, data_dir))
    except Exception as e:  # noqa: BLE001 - reported below
      errors.append(e)

  threads = [threading.Thread(target=build) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  assert sorted(r["reused"] for r in reports) == [False, True]
  assert len({r["data_dir"] for r in reports}) == 1
  assert len(datasets.load_split("utkface", data_dir, "train")) == reports[0]["splits"]["train"]


def test_a_crashed_build_is_cleaned_and_a_build_without_its_report_rebuilt(tmp_path):
  data_dir, folder = str(tmp_path / "tfds"), str(tmp_path / "UTKFace")
  fd.make_utkface_folder(folder, n=12, quirks=False)
  first = datasets.prepare("utkface", folder, data_dir)
  leftover = os.path.join(os.path.dirname(first["data_dir"]), "incomplete.ABC123_1.0.0")
  os.makedirs(leftover)
  os.remove(os.path.join(first["data_dir"], datasets.REPORT_FILE))
  again = datasets.prepare("utkface", folder, data_dir)
  assert not again["reused"] and again["kept"] == 12
  assert os.path.isfile(os.path.join(again["data_dir"], datasets.REPORT_FILE))
  assert not glob.glob(os.path.join(os.path.dirname(first["data_dir"]), "incomplete.*"))


def test_impossible_utkface_ages_are_refused_or_skipped_and_counted(tmp_path):
  folder = str(tmp_path / "UTKFace")
  fd.make_utkface_folder(folder, n=10, quirks=False)
  bad = "999_0_0_20170101000000999.jpg.chip.jpg"
  with open(os.path.join(folder, bad), "wb") as f:
    f.write(fd.jpeg_bytes(5))
  with pytest.raises(ValueError, match=f"{bad}: age 999.0 is above 120 years.*skip_bad_labels"):
    datasets.prepare("utkface", folder, str(tmp_path / "d"))
  report = datasets.prepare("utkface", folder, str(tmp_path / "d"), skip_bad_labels=True)
  assert report["dropped"]["impossible_age"] == 1 and report["kept"] == 10
  with pytest.raises(ValueError, match="age 999.0 is above 120 years"):
    datasets.folder_source(folder)


def _csv(tmp_path, text: str, encoding="utf-8"):
  root = tmp_path / "faces"
  root.mkdir(exist_ok=True)
  (root / "a.jpg").write_bytes(fd.jpeg_bytes(1))
  (tmp_path / "outside.jpg").write_bytes(fd.jpeg_bytes(2))
  path = root / "labels.csv"
  path.write_text(text, encoding=encoding)
  return str(path), str(root)


@pytest.mark.parametrize("age", ["999", "1e6", "-3", "nan"])
def test_csv_ages_that_cannot_be_true_are_refused_naming_the_row(tmp_path, age):
  path, root = _csv(tmp_path, f"file,age\na.jpg,{age}\n")
  with pytest.raises(labels_csv.BadLabel, match=f"labels.csv:2: age '{age}' (is above 120|must be a finite)"):
    labels_csv.read_labels_csv(path, root, curation.Report(), skip_bad=False)
  report = curation.Report()
  assert labels_csv.read_labels_csv(path, root, report, skip_bad=True) == []
  assert report.dropped["bad_label_row"] == 1


def test_csv_with_a_bom_is_read(tmp_path):
  path, root = _csv(tmp_path, "file,age\na.jpg,30\n", encoding="utf-8-sig")
  [example] = labels_csv.read_labels_csv(path, root, curation.Report(), skip_bad=False)
  assert example.age == 30.0 and example.file_name == "a.jpg"


@pytest.mark.parametrize("name", ["../outside.jpg", "ABSOLUTE"])
def test_csv_paths_outside_the_folder_are_refused_naming_the_row(tmp_path, name):
  name = str(tmp_path / "outside.jpg") if name == "ABSOLUTE" else name
  path, root = _csv(tmp_path, f"file,age\na.jpg,30\n{name},40\n")
  with pytest.raises(labels_csv.BadLabel, match="labels.csv:3: image file .* is not a path inside"):
    labels_csv.read_labels_csv(path, root, curation.Report(), skip_bad=False)
