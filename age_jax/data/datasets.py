"""The dataset access API: prepare a dataset once, then read its splits by random access.

  report = prepare('utkface', manual_dir='/data/UTKFace', data_dir='')   # builds once
  train = load_split('utkface', '', 'train')          # len(train), train[i] -> dict
  labels = split_labels(train)                        # {'age': array, ...} for samplers

Records are dicts {'image': original file bytes, 'age': float, 'gender': int, 'race': int,
'subject': str, 'file_name': str, 'fold': int} (+ 'landmarks' for FG-NET, + 'identity', the
integer class of the subject, for identity datasets, whose ages are -1). Split names are the
stored ones ('train', 'validation', 'test'; MORPH 'S1', 'S2', 'S3'; 'full' for k-fold datasets,
as TFDS reserves 'all') with TFDS slicing and joining ('train[:10%]', 'S2+S3'), and for datasets with folds the virtual
splits 'fold{k}_train' (every fold but k) and 'fold{k}_test' (fold k), and FAEB's
'faeb{k}_train' / 'faeb{k}_val' / 'faeb{k}_test' (builders/faeb_protocol.py).

Each source folder has its own build, data_dir/by_source/<folder>-<hash of its path and contents>;
a run records the build's fingerprint (config.data.fingerprint) and reads only that build.
"""
import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import time
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from age_jax import locks
from age_jax.data.builders import faeb_protocol, records as records_lib

REPORT_FILE = "build_report.json"
SOURCES_DIR = "by_source"
LABELS_DIR = "split_labels"
_BUILDERS = {
    "utkface": "age_jax.data.builders.utkface:Utkface",
    "morph2": "age_jax.data.builders.morph:Morph2",
    "webface": "age_jax.data.builders.webface:Webface",
    "mivia": "age_jax.data.builders.mivia:Mivia",
    "fgnet": "age_jax.data.builders.fgnet:Fgnet",
    "faeb": "age_jax.data.builders.faeb:Faeb",
    "all_age_faces": "age_jax.data.builders.all_age_faces:AllAgeFaces",
    "labelled_folder": "age_jax.data.builders.labelled_folder:LabelledFolder",
    "identity_folder": "age_jax.data.builders.identity_folder:IdentityFolder",
}
_FOLD_SPLIT = re.compile(r"fold(\d+)_(train|test)")


def names() -> list[str]:
  return sorted(_BUILDERS)


def default_data_dir() -> str:
  return os.path.expanduser(os.path.join("~", ".cache", "age_jax", "tfds"))


def builder_class(name: str):
  if name not in _BUILDERS:
    raise ValueError(f"unknown dataset {name!r} (config.data.name); known datasets: {names()}")
  module, cls = _BUILDERS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def builder(name: str, data_dir: str = "", **options):
  """The TFDS builder of a dataset for these build options (nothing is built)."""
  cls = builder_class(name)
  config = cls.make_config(options)
  # TFDS refuses a custom config named like a class one: the defaults use the class's 'default'.
  return cls(data_dir=data_dir or default_data_dir(), file_format="array_record",
             config="default" if config.name == "default" else config)


def _is_prepared(b) -> bool:
  return os.path.isfile(os.path.join(b.data_dir, "dataset_info.json")) and \
      os.path.isfile(os.path.join(b.data_dir, REPORT_FILE))


def source_root(data_dir: str, manual_dir: str, fingerprint: str) -> str:
  """Where the build of one source lives: one folder per (real source path, contents), so two
  folders of one dataset name, or one folder before and after an edit, never share a build."""
  real = os.path.realpath(manual_dir)
  digest = hashlib.sha256(f"{real}\n{fingerprint}".encode()).hexdigest()[:12]
  slug = re.sub(r"[^A-Za-z0-9.-]+", "_", os.path.basename(real))[:40]
  return os.path.join(data_dir or default_data_dir(), SOURCES_DIR, f"{slug}-{digest}")


def prepare(name: str, manual_dir: str, data_dir: str, *, fingerprint: str = "", **options) -> dict:
  """Builds the dataset from manual_dir once and returns the build report.

  Each source (its real path and its contents: names, sizes, labels) gets its own build
  (source_root); an existing one is reused (report 'reused': True), a changed folder is built
  anew beside the old build, which stays for the runs that trained on it. An empty manual_dir
  reuses the build found in data_dir (see find_build). fingerprint: the build a run trained on;
  kept even when the folder has changed since, refused when it is gone.
  Concurrent calls are safe: a build holds a lock on its folder, and TFDS renames a finished
  build into place.
  """
  if not manual_dir:
    try:
      return {**_read_report(find_build(name, data_dir, fingerprint=fingerprint, **options)), "reused": True}
    except FileNotFoundError:
      builder(name, data_dir, **options).listing(manual_dir)  # raises: no source folder given
  lister = builder(name, data_dir, **options)
  lister.listing(manual_dir)  # cheap (names, sizes, label files); fails early on a bad folder
  listed = lister.last_fingerprint
  if fingerprint and listed != fingerprint:
    try:
      b = find_build(name, data_dir, fingerprint=fingerprint, **options)
    except FileNotFoundError:
      raise ValueError(f"dataset {name!r}: config.data.fingerprint={fingerprint} (the data this run "
                       f"trained on) but {manual_dir} now lists as {listed}: its files or labels "
                       "changed and that build is gone from data_dir; restore the folder, or train a "
                       "new workdir") from None
    print(f"[age_jax] {name}: {manual_dir} changed since this run's build; using that build, "
          f"{b.data_dir}")
    return {**_read_report(b), "reused": True}
  root = source_root(data_dir, manual_dir, listed)
  with locks.held_where_supported(root + ".lock", "two runs preparing this source at once would collide"):
    b = builder(name, root, **options)
    _clean_crashed_builds(b)
    if _is_prepared(b):
      return {**_read_report(b), "reused": True}
    if os.path.isdir(b.data_dir):  # finished by TFDS but no report: a crash in between
      shutil.rmtree(b.data_dir)
      b = builder(name, root, **options)
    start = time.time()
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    report = {**b.build_report, "build_seconds": round(time.time() - start, 2), "data_dir": b.data_dir}
    tmp = os.path.join(b.data_dir, REPORT_FILE + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
      json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(b.data_dir, REPORT_FILE))
  print(summary(report))
  return {**report, "reused": False}


def _clean_crashed_builds(b) -> None:
  """Removes what a killed build left (TFDS's incomplete.* folders); the caller holds the lock,
  so none of them belongs to a build in progress."""
  parent = os.path.dirname(b.data_dir)
  for leftover in glob.glob(os.path.join(parent, "incomplete.*")):
    shutil.rmtree(leftover, ignore_errors=True)


def find_build(name: str, data_dir: str, *, fingerprint: str = "", **options):
  """The builder of the prepared build of this dataset and options in data_dir: the one with
  this fingerprint when given, else the only one (several different sources are ambiguous)."""
  cls = builder_class(name)
  config = cls.make_config(options).name
  found = {}
  for report_path in sorted(glob.glob(os.path.join(data_dir or default_data_dir(), SOURCES_DIR, "*",
                                                   cls.name, config, str(cls.VERSION), REPORT_FILE))):
    with open(report_path) as f:
      report = json.load(f)
    if not fingerprint or report.get("fingerprint") == fingerprint:
      found.setdefault(report.get("fingerprint"), (report_path, report))
  if not found:
    which = f"the build with fingerprint {fingerprint}" if fingerprint else "a build"
    raise FileNotFoundError(f"dataset {name!r} with config {config!r}: {which} is not prepared in "
                            f"{data_dir or default_data_dir()}; run datasets.prepare({name!r}, manual_dir, "
                            "data_dir, ...) first (launch.train does, from config.data.manual_dir)")
  if len(found) > 1:
    sources = sorted(r["manual_dir"] for _, r in found.values())
    raise ValueError(f"dataset {name!r}: {len(found)} different sources are prepared in "
                     f"{data_dir or default_data_dir()} ({sources}); give config.data.manual_dir or "
                     "config.data.fingerprint to pick one")
  report_path, _ = next(iter(found.values()))
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(report_path))))
  return builder(name, root, **options)


def summary(report: dict) -> str:
  dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"
  splits = ", ".join(f"{k} {v}" for k, v in report["splits"].items())
  return (f"[age_jax] {report['dataset']} ({report['config']}): listed {report['listed']}, kept "
          f"{report['kept']} ({splits}); dropped {report['dropped_total']} ({dropped}); "
          f"{report.get('build_seconds', '?')} s -> {report.get('data_dir', '')}")


def _read_report(b) -> dict:
  with open(os.path.join(b.data_dir, REPORT_FILE)) as f:
    return json.load(f)


def build_report(name: str, data_dir: str, *, fingerprint: str = "", **options) -> dict:
  return _read_report(find_build(name, data_dir, fingerprint=fingerprint, **options))


def stored_splits(name: str, data_dir: str, *, fingerprint: str = "", **options) -> list[str]:
  return sorted(find_build(name, data_dir, fingerprint=fingerprint, **options).info.splits.keys())


def load_split(name: str, data_dir: str, split: str, *, fingerprint: str = "", **options) -> "RecordSource":
  """Random access to one split of a prepared dataset (see the module docstring for names);
  fingerprint picks the build of one source (see find_build)."""
  b = find_build(name, data_dir, fingerprint=fingerprint, **options)
  stored = sorted(b.info.splits.keys())
  fold_split = _FOLD_SPLIT.fullmatch(split)
  if faeb_protocol.SPLIT_NAME.fullmatch(split):
    whole = RecordSource(b.as_data_source("+".join(stored)), "+".join(stored), _labels_dir(b))
    folds = whole.labels()["fold"]
    try:
      chosen = faeb_protocol.folders_of(split, set(folds.tolist()) - {-1})
    except ValueError as e:
      raise ValueError(f"dataset {name!r}: {e}") from None
    return RecordSource(whole.source, whole.split, whole.labels_dir, np.flatnonzero(np.isin(folds, chosen)), name=split)
  if fold_split:
    k, part = int(fold_split[1]), fold_split[2]
    whole = RecordSource(b.as_data_source("+".join(stored)), "+".join(stored), _labels_dir(b))
    folds = whole.labels()["fold"]
    if k not in set(folds.tolist()):
      raise ValueError(f"split {split!r}: dataset {name!r} has folds {sorted(set(folds.tolist()) - {-1})}")
    indices = np.flatnonzero(folds == k if part == "test" else (folds != k) & (folds >= 0))
    return RecordSource(whole.source, whole.split, whole.labels_dir, indices, name=split)
  try:
    source = b.as_data_source(split)
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(f"split {split!r} of dataset {name!r}: {e}; stored splits: {stored}"
                     f"{' and fold{k}_train / fold{k}_test' if _has_folds(b) else ''}") from e
  return RecordSource(source, split, _labels_dir(b))


def _has_folds(b) -> bool:
  return bool(_read_report(b).get("folds"))


def _labels_dir(b) -> str:
  return os.path.join(b.data_dir, LABELS_DIR)


def _to_python(record: dict) -> dict:
  out = {}
  for key, value in record.items():
    if key in ("subject", "file_name"):
      out[key] = value.decode() if isinstance(value, bytes) else str(value)
    elif key == "age":
      out[key] = float(value)
    elif key in ("gender", "race", "fold", "identity"):
      out[key] = int(value)
    else:
      out[key] = value
  return out


class RecordSource(Sequence):
  """A split as a sequence of record dicts; `indices` selects a subset (virtual fold splits)."""

  def __init__(self, source, split: str, labels_dir: str, indices=None, name: str = ""):
    self.source, self.split, self.labels_dir = source, split, labels_dir
    self.indices = None if indices is None else np.asarray(indices, np.int64)
    self.name = name or split

  def __len__(self):
    return len(self.source) if self.indices is None else len(self.indices)

  def _index(self, i):
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for split {self.name!r} of {n} records")
    i = i % n
    return int(i if self.indices is None else self.indices[i])

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return _to_python(self.source[self._index(int(i))])

  def __getitems__(self, indices):
    return [_to_python(r) for r in self.source.__getitems__([self._index(int(i)) for i in indices])]

  def labels(self) -> dict[str, np.ndarray]:
    """Label arrays of the split, read once and cached beside the prepared dataset."""
    whole = self._whole_labels()
    if self.indices is None:
      return whole
    return {k: v[self.indices] for k, v in whole.items()}

  def _whole_labels(self):
    path = os.path.join(self.labels_dir, re.sub(r"[^A-Za-z0-9.+\-\[\]:%]", "_", self.split) + ".npz")
    if os.path.isfile(path):
      with np.load(path) as data:
        return dict(data)
    labels = _collect_labels(self.source, len(self.source))
    try:
      os.makedirs(self.labels_dir, exist_ok=True)
      tmp = path + f".tmp{os.getpid()}.npz"
      np.savez(tmp, **labels)
      os.replace(tmp, path)
    except OSError:
      pass  # a read-only data_dir: fine, just not cached
    return labels


_LABEL_DTYPES = {"age": np.float32, "gender": np.int32, "race": np.int32, "fold": np.int32}


def _collect_labels(source, n: int, chunk: int = 512) -> dict[str, np.ndarray]:
  dtypes = dict(_LABEL_DTYPES)
  if n and "identity" in source[0]:   # identity datasets only: age datasets keep their arrays as they were
    dtypes["identity"] = np.int32
  columns = {k: [] for k in (*dtypes, "subject", "file_name")}
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    ids = list(range(start, min(n, start + chunk)))
    batch = getitems(ids) if getitems else [source[i] for i in ids]
    for record in batch:
      record = _to_python(record)
      for key in columns:
        columns[key].append(record.get(key, "" if key in ("subject", "file_name") else -1))
  out = {k: np.asarray(columns[k], dtype) for k, dtype in dtypes.items()}
  out["subject"] = np.asarray(columns["subject"], dtype=str)
  out["file_name"] = np.asarray(columns["file_name"], dtype=str)
  return out


def split_labels(source) -> dict[str, np.ndarray]:
  """{'age' float32, 'gender', 'race', 'fold' int32, 'subject', 'file_name' str} for a whole split
  (+ 'identity' int32 for identity datasets)."""
  if isinstance(source, (RecordSource, FolderSource)):
    return source.labels()
  return _collect_labels(source, len(source))


def export_split_file(name: str, data_dir: str, path: str, **options) -> dict[str, list[str]]:
  """Writes {split: [file names]} of a prepared dataset to JSON (reuse it with split_file=path)."""
  from age_jax.data.builders import splits as splits_lib
  result = {split: load_split(name, data_dir, split, **options).labels()["file_name"].tolist()
            for split in stored_splits(name, data_dir, **options)}
  splits_lib.write_split_file(path, result)
  return result


# ---- arbitrary labelled folders (evaluation) ----

class FolderSource(Sequence):
  """Records of a labelled folder; image bytes are read on access (with crop_size, the face
  aligned onto the canonical crop from the examples' landmarks)."""

  def __init__(self, examples: list[records_lib.SourceExample], crop_size: int = 0, face_counts=None):
    self.examples, self.crop_size, self.face_counts = examples, crop_size, face_counts

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    e = self.examples[i]
    if self.crop_size:
      from age_jax.data.builders import face_crops
      image = face_crops.canonical_jpeg(e.path, e.extras["landmarks"], self.crop_size)
    else:
      with open(e.path, "rb") as f:
        image = f.read()
    return {"image": image, "age": float(e.age), "gender": int(e.gender), "race": int(e.race),
            "subject": e.subject, "file_name": e.file_name, "fold": -1, **e.extras}

  def labels(self) -> dict[str, np.ndarray]:
    return {"age": np.asarray([e.age for e in self.examples], np.float32),
            "gender": np.asarray([e.gender for e in self.examples], np.int32),
            "race": np.asarray([e.race for e in self.examples], np.int32),
            "fold": np.full(len(self.examples), -1, np.int32),
            "subject": np.asarray([e.subject for e in self.examples], dtype=str),
            "file_name": np.asarray([e.file_name for e in self.examples], dtype=str)}


def folder_source(path: str, crop_size: int = 0) -> FolderSource:
  """A folder of UTKFace-named images, or of images with a labels.csv (file, age[, gender, race,
  subject]); every image is kept (no de-duplication): this is for evaluation. With crop_size,
  each image's face is found and aligned onto the canonical crop (face_crops.py's rule; images
  without a face are left out and counted in .face_counts)."""
  from age_jax.data.builders import base, curation, face_crops, labels_csv, utkface
  base.check_folder(path, "folder_source")
  csv_path = os.path.join(path, labels_csv.LABELS_FILE)
  if os.path.isfile(csv_path):
    examples = labels_csv.read_labels_csv(csv_path, path, curation.Report(), skip_bad=False)
  else:
    examples, unparsable = [], []
    for file_name in sorted(os.listdir(path)):
      full = os.path.join(path, file_name)
      if not (os.path.isfile(full) and records_lib.is_image(file_name)):
        continue
      parsed = utkface.parse_name(file_name)
      if parsed is None:
        unparsable.append(file_name)
        continue
      labels_csv.check_age(parsed["age"], full)
      examples.append(records_lib.SourceExample(path=full, file_name=file_name, age=parsed["age"],
                                                gender=parsed["gender"], race=parsed["race"]))
    if unparsable:
      raise ValueError(f"folder_source {path}: {len(unparsable)} image(s) have no UTKFace name "
                       f"([age]_[gender]_[race]_[date&time].jpg), e.g. {unparsable[:5]}; "
                       f"or give the folder a {labels_csv.LABELS_FILE} (columns file, age, ...)")
  if not examples:
    raise ValueError(f"folder_source {path}: no labelled images (UTKFace names or "
                     f"{labels_csv.LABELS_FILE} expected)")
  if not crop_size:
    return FolderSource(examples)
  report = curation.Report()
  with_faces = face_crops.locate_faces(examples, report, face_crops.default_detector, dataset=path)
  counts = {"detected_images": len(examples), "several_faces": report.counts["several_faces"],
            "no_face": report.dropped["no_face"], "no_face_files": report.notes["no_face"]}
  if not with_faces:
    raise ValueError(f"folder_source {path}: no face found in any of its {len(examples)} images")
  return FolderSource(with_faces, crop_size, counts)
