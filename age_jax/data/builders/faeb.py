"""One database of the Facial Age Estimation Benchmark (FAEB, Paplham & Franc, CVPR 2024), from
its JSON file (builder option `json`, plain or `_aligned`) and the folder its `img_path`s are
relative to (manual_dir).

Each JSON entry: img_path, age, folder (0-9, subject-exclusive; FG-NET: one per subject), a
subject id, optionally gender (M / F) and, in `_aligned` files, aligned_bbox (the four corners
x0 y0 .. x3 y3 of a rotated face box, 1-based). The subject is the first of `id_num`, `name`,
`number` the entry has: AgeDB has both name (the person) and number (the image), so the name wins.
Records keep the JSON's img_path as file_name and its folder as fold; everything is stored in
split 'full' and FAEB's splits are the virtual splits faeb{k}_train / _val / _test
(faeb_protocol.py); FG-NET's 82 subject folders also give fold{k}_train / fold{k}_test.

Real-world quirks, each counted in the build report:
- an img_path whose case differs from the file on disk (FG-NET: '009A16b.jpg' for '009A16b.JPG')
  is matched case-insensitively when exactly one file fits ('case_mismatch');
- a missing file and an unknown age (-1) are refused, naming the entry, unless skip_missing_files
  / skip_unknown_ages ('missing_file', 'unknown_age'); any other bad entry follows skip_bad_labels;
- byte-identical images are all kept (the JSON is the protocol), counted in 'identical_groups'.
The face (record field `crop`, and the report's 'crop'): 'faeb' when the file has aligned_bbox
(FAEB's own crop, faeb_protocol.faeb_crop, stored as JPEG), 'canonical' with canonical_crop=True
(detected and aligned onto our canonical crop, face_crops.py), else 'original' (the file's bytes).
"""
import collections
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from age_jax.data.builders import base, face_crops, faeb_protocol, labels_csv
from age_jax.data.builders.labels_csv import BadLabel
from age_jax.data.builders.records import UNKNOWN, SourceExample, to_tfds_example
from age_jax.faces import read_rgb

SUBJECT_KEYS = ("id_num", "name", "number")
REQUIRED_KEYS = ("img_path", "age", "folder")


class Faeb(base.AgeDatasetBuilder):
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir is the folder the FAEB JSON's img_paths are relative to "
                                  "(FAEB's img_dir, e.g. the one holding FG-NET/ and AgeDB/); give the "
                                  "JSON as builder option json.")
  DESCRIPTION = "One FAEB database (JSON + images) with FAEB's five subject-exclusive splits."
  HOMEPAGE = "https://github.com/paplhjak/Facial-Age-Estimation-Benchmark"
  OPTIONS = {
      "json": "",                  # the FAEB database file (e.g. AgeDB_aligned.json)
      "skip_missing_files": False,  # skip and count entries whose image is not on disk (else raise)
      "skip_unknown_ages": False,   # skip and count entries of age -1 (else raise)
      "faeb_input_size": faeb_protocol.INPUT_SIZE,            # FAEB crop: model input side
      "faeb_input_extension": faeb_protocol.INPUT_EXTENSION,  # and the margin around it
  }
  FILE_OPTIONS = ("split_file", "json")
  RESOLVE_DUPLICATES = False

  @classmethod
  def make_config(cls, options):
    if not options.get("json"):
      raise ValueError("dataset 'faeb' needs builder option json: the FAEB database file "
                       "(config.data.builder_options.json, e.g. AgeDB_aligned.json)")
    return super().make_config(options)

  def extra_features(self):
    return {"crop": tfds.features.Text()}

  def crop_mode(self) -> str:
    if self.options["canonical_crop"]:
      return "canonical"
    return "faeb" if self._has_boxes else "original"

  # ---- listing ----
  def list_examples(self, manual_dir, report):
    path = self.options["json"]
    entries = read_database(path)
    self._has_boxes = any(e.get("aligned_bbox") for e in entries)
    finder = CaseInsensitiveFinder(manual_dir)
    examples, seen = [], {}
    report.counts["json_entries"] = len(entries)
    report.counts["case_mismatch"] = 0
    for index, entry in enumerate(entries):
      name = entry.get("img_path")
      where = f"{path} entry {index} ({name!r})"
      try:
        example = self._example(entry, where, finder, report)
      except BadLabel as e:
        labels_csv.handle_bad(e, report, self.options["skip_bad_labels"])
        continue
      if example is None:
        continue
      if example.file_name in seen:
        raise ValueError(f"{where}: img_path is listed twice (first at entry {seen[example.file_name]})")
      seen[example.file_name] = index
      examples.append(example)
    return examples

  def _example(self, entry, where, finder, report):
    if not isinstance(entry, dict):
      raise BadLabel(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
      raise BadLabel(f"{where}: missing field(s) {missing}; FAEB entries have {list(REQUIRED_KEYS)}")
    name = entry["img_path"]
    if entry["age"] in (-1, "-1"):
      if not self.options["skip_unknown_ages"]:
        raise ValueError(f"{where}: age -1 (unknown); build with skip_unknown_ages=True to skip and count such entries")
      report.drop("unknown_age", name)
      return None
    if isinstance(entry["age"], bool) or not isinstance(entry["age"], (int, float)):
      raise BadLabel(f"{where}: age {entry['age']!r} is not a number")
    age = labels_csv.check_age(float(entry["age"]), where)
    folder = entry["folder"]
    if not isinstance(folder, int) or isinstance(folder, bool) or folder < 0:
      raise BadLabel(f"{where}: folder {folder!r} is not an integer >= 0")
    bbox = entry.get("aligned_bbox")
    if self.crop_mode() == "faeb":
      if not bbox or len(bbox) != 8 or not all(isinstance(v, (int, float)) for v in bbox):
        raise BadLabel(f"{where}: aligned_bbox {bbox!r} is not 8 numbers (x0 y0 x1 y1 x2 y2 x3 y3)")
    image_path, case_fixed = finder.find(name, where)
    if image_path is None:
      if not self.options["skip_missing_files"]:
        raise FileNotFoundError(f"{where}: no image {name!r} under {finder.root}; build with "
                                "skip_missing_files=True to skip and count missing images")
      report.drop("missing_file", name)
      return None
    if case_fixed:
      report.counts["case_mismatch"] += 1
      report.note("case_mismatch", name)
    subject = next((str(entry[k]) for k in SUBJECT_KEYS if entry.get(k) not in (None, "")), "")
    gender = entry.get("gender")
    gender = UNKNOWN if gender is None else labels_csv.parse_gender(str(gender), where)
    race = entry.get("race")   # not in FAEB's files; our UTKFace file keeps the name's code
    race = UNKNOWN if race is None else labels_csv.parse_code(str(race), "race", range(5), where)
    extras = {"aligned_bbox": np.asarray(bbox, np.float64)} if bbox else {}
    return SourceExample(path=image_path, file_name=name, age=age, gender=gender, race=race, subject=subject,
                         fold=folder, extras=extras)

  # ---- curation hooks ----
  def before_split(self, examples, report):
    by_hash = collections.defaultdict(list)
    for example in examples:
      by_hash[example.sha256].append(example)
    groups = [g for g in by_hash.values() if len(g) > 1]
    report.counts["identical_groups"] = len(groups)
    for group in groups:
      if len({e.fold for e in group}) > 1:
        for example in group:
          report.note("identical_across_folders", example.file_name)
    return examples

  def assign_splits(self, examples, report):
    folders = collections.Counter(e.fold for e in examples)
    report.counts["subjects"] = len({e.subject for e in examples if e.subject})
    report.counts["crop"] = self.crop_mode()
    report.counts["faeb_splits"] = faeb_protocol.split_names(folders)
    return {"full": list(examples)}

  # ---- writing ----
  def _generate_examples(self, members):
    mode = self.crop_mode()
    for example in members:
      extras = {k: v for k, v in example.extras.items() if k != "aligned_bbox"}
      if mode == "canonical":
        image = face_crops.canonical_jpeg(example.path, example.extras["landmarks"], self.options["crop_size"])
      elif mode == "faeb":
        image = faeb_jpeg(example.path, example.extras["aligned_bbox"], self.options["faeb_input_size"],
                          self.options["faeb_input_extension"])
      else:
        with open(example.path, "rb") as f:
          image = f.read()
      record = to_tfds_example(_with_extras(example, extras), image)
      record["crop"] = mode
      yield example.file_name, record


def _with_extras(example, extras):
  copy = SourceExample(**{**example.__dict__, "extras": extras})
  return copy


def faeb_jpeg(path: str, bbox, input_size: int, input_extension: float) -> bytes:
  crop = faeb_protocol.faeb_crop(read_rgb(path), bbox, input_size, input_extension)
  buf = io.BytesIO()
  Image.fromarray(crop).save(buf, "JPEG", quality=face_crops.JPEG_QUALITY)
  return buf.getvalue()


def read_database(path: str) -> list:
  """The JSON's entries; a clear error naming the file when it is not a FAEB database."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"faeb: database file {path} does not exist")
  try:
    with open(path) as f:
      entries = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"faeb: database file {path} is not valid JSON: {e}") from e
  if not isinstance(entries, list) or not entries:
    raise ValueError(f"faeb: database file {path} must be a non-empty JSON list of entries "
                     f"({{'img_path', 'age', 'folder', ...}}), got {type(entries).__name__}")
  return entries


class CaseInsensitiveFinder:
  """Resolves a relative path under root: exactly, else component by component ignoring case
  when exactly one entry fits. find() -> (path or None, whether case differed)."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self._listings = {}

  def _listing(self, folder):
    if folder not in self._listings:
      table = collections.defaultdict(list)
      try:
        for name in os.listdir(folder):
          table[name.lower()].append(name)
      except OSError:
        pass
      self._listings[folder] = table
    return self._listings[folder]

  def find(self, name: str, where: str):
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or os.path.isabs(str(name)) or ".." in parts:
      raise BadLabel(f"{where}: img_path {name!r} is not a path inside {self.root}")
    exact = os.path.join(self.root, *parts)
    if os.path.isfile(exact):
      return exact, False
    folder = self.root
    for part in parts:
      matches = self._listing(folder).get(part.lower(), [])
      if part in matches:
        folder = os.path.join(folder, part)
      elif len(matches) == 1:
        folder = os.path.join(folder, matches[0])
      elif len(matches) > 1:
        raise BadLabel(f"{where}: img_path {name!r} matches several files ignoring case in {folder}: {matches}")
      else:
        return None, False
    return (folder, True) if os.path.isfile(folder) else (None, False)
