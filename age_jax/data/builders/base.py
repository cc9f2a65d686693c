"""The base TFDS builder: list -> verify + hash -> resolve duplicates -> group -> split -> ArrayRecord.

A dataset subclass only lists its files with their labels (`list_examples`) and applies its
protocol (`assign_splits`). Build options are not constructor arguments (they would break
tfds.data_source and pickling into grain workers): each distinct set of options is a
BuilderConfig whose name is derived from the non-default options, e.g. 'default' or
'keep_conflicting_duplicates-true_skip_corrupt-true', so the prepared variants live side by side
under data_dir/<dataset>/<config>/<version>.
"""
import dataclasses
import hashlib
import os
import re
import time

import numpy as np
import tensorflow_datasets as tfds

from age_jax.data.builders import curation, face_crops, splits
from age_jax.data.builders.records import SourceExample, common_features, to_tfds_example
from age_jax.faces import CROP_SIZE

COMMON_OPTIONS = {
    "skip_corrupt": False,                 # skip and count images PIL cannot decode (else raise)
    "keep_conflicting_duplicates": False,  # keep one copy per distinct label of identical images
    "skip_bad_labels": False,              # skip and count bad label rows / landmark files (else raise)
    "split_file": "",                      # JSON {split: [file names]} replacing the protocol
    "canonical_crop": False,               # store each face aligned onto the canonical crop (face_crops.py)
    "crop_size": CROP_SIZE,                # its side in pixels
}


@dataclasses.dataclass(eq=False)
class AgeBuilderConfig(tfds.core.BuilderConfig):
  options: dict = dataclasses.field(default_factory=dict)


class AgeDatasetBuilder(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the dataset's release folder as manual_dir."
  BUILDER_CONFIGS = [AgeBuilderConfig(name="default")]
  OPTIONS: dict = {}          # dataset-specific option defaults, on top of COMMON_OPTIONS
  FILE_OPTIONS = ("split_file",)  # options naming a file: made absolute, named by its content's digest
  RESOLVE_DUPLICATES = True   # False: keep byte-identical copies (a published protocol lists them)
  DESCRIPTION = ""
  HOMEPAGE = ""

  # Nothing is downloaded, so there are no checksums. Overriding these also keeps TFDS from
  # resolving the module's resource path, which imports the absent `importlib_resources`.
  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    return None

  @tfds.core.utils.classproperty
  @classmethod
  def _checksums_path(cls):
    return None

  # ---- options and configs ----
  @classmethod
  def option_defaults(cls) -> dict:
    return {**COMMON_OPTIONS, **cls.OPTIONS}

  @classmethod
  def make_config(cls, options: dict) -> AgeBuilderConfig:
    """The config for these options; unknown options or wrong types raise ValueError."""
    defaults = cls.option_defaults()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
      raise ValueError(f"unknown builder option(s) {unknown} for dataset {cls.name!r}; "
                       f"known options: {sorted(defaults)}")
    resolved = {}
    for key, default in defaults.items():
      value = options.get(key, default)
      resolved[key] = _coerce(cls.name, key, value, default, is_file=key in cls.FILE_OPTIONS)
    if resolved["crop_size"] != defaults["crop_size"] and not resolved["canonical_crop"]:
      raise ValueError(f"builder option crop_size={resolved['crop_size']} for dataset {cls.name!r} needs "
                       "canonical_crop=True")
    if resolved["crop_size"] < 16:
      raise ValueError(f"builder option crop_size={resolved['crop_size']} for dataset {cls.name!r}: "
                       "expected at least 16 pixels")
    parts = []
    for key in sorted(resolved):
      value = resolved[key]
      if value == defaults[key]:
        continue
      if key in cls.FILE_OPTIONS:
        value = _file_digest(value, key)
      parts.append(f"{key}-{_slug(value)}")
    return AgeBuilderConfig(name="_".join(parts) or "default", options=resolved,
                            description=f"options {resolved}")

  @property
  def options(self) -> dict:
    return {**self.option_defaults(), **(self.builder_config.options or {})}

  # ---- what subclasses provide ----
  def list_examples(self, manual_dir: str, report: curation.Report) -> list[SourceExample]:
    raise NotImplementedError

  def assign_splits(self, examples: list[SourceExample], report: curation.Report) -> dict[str, list]:
    raise NotImplementedError

  def extra_features(self) -> dict:
    return {}

  def duplicate_label(self, example: SourceExample):
    """What byte-identical images must agree on to be one image (curation.resolve_duplicates)."""
    return example.labels()

  def before_split(self, examples: list[SourceExample], report: curation.Report) -> list[SourceExample]:
    """Last step before the split protocol (or split file), on the curated examples."""
    return examples

  # ---- TFDS hooks ----
  def _info(self) -> tfds.core.DatasetInfo:
    features = {**common_features(), **self.extra_features()}
    if self.options["canonical_crop"]:
      features.update(face_features())
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=tfds.features.FeaturesDict(features), homepage=self.HOMEPAGE)

  def _split_generators(self, dl_manager):
    planned = self.curate(os.fspath(dl_manager.manual_dir))
    # TFDS cannot write an empty split; the report still lists it with 0 images.
    return {name: self._generate_examples(members) for name, members in planned.items() if members}

  def _generate_examples(self, members):
    size = self.options["crop_size"] if self.options["canonical_crop"] else 0
    for example in members:
      if size:
        image = face_crops.canonical_jpeg(example.path, example.extras["landmarks"], size)
      else:
        with open(example.path, "rb") as f:
          image = f.read()
      yield example.file_name, to_tfds_example(example, image)

  # ---- the curation pipeline ----
  def listing(self, manual_dir: str) -> tuple[list[SourceExample], curation.Report]:
    """Cheap first step (names, label files): raises on a missing, empty or unparsable folder."""
    check_folder(manual_dir, self.name)
    report = curation.Report()
    examples = self.list_examples(manual_dir, report)
    if not examples:
      raise ValueError(f"{self.name}: no labelled images found in {manual_dir}; "
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    names = [e.file_name for e in examples]
    if len(set(names)) != len(names):
      raise ValueError(f"{self.name}: the same file name is listed twice in {manual_dir}")
    self.last_fingerprint = fingerprint(examples)
    return examples, report

  def curate(self, manual_dir: str) -> dict[str, list[SourceExample]]:
    """{split: examples}; sets self.build_report. 'listed' counts labelled images found; 'dropped'
    counts, by reason, both files rejected while listing (e.g. unparsable_name, bad_label_row)
    and images removed afterwards (corrupt_image, duplicate_*, not_in_*), so kept = listed -
    (drops after listing)."""
    start = time.time()
    examples, report = self.listing(manual_dir)
    listed = len(examples)
    options = self.options
    examples = curation.hash_and_verify(examples, report, skip_corrupt=options["skip_corrupt"])
    if self.RESOLVE_DUPLICATES:
      examples = curation.resolve_duplicates(examples, report,
                                             keep_conflicting=options["keep_conflicting_duplicates"],
                                             label_of=self.duplicate_label)
    if options["canonical_crop"]:
      examples = face_crops.locate_faces(examples, report, face_crops.default_detector, dataset=self.name)
    curation.assign_groups(examples)
    examples = self.before_split(examples, report)
    if options["split_file"]:
      planned = splits.apply_split_file(examples, options["split_file"], report)
    else:
      planned = self.assign_splits(examples, report)
    planned = {name: sorted(members, key=lambda e: e.file_name) for name, members in planned.items()}
    kept = sum(len(m) for m in planned.values())
    self.build_report = {
        "dataset": self.name, "config": self.builder_config.name, "options": options,
        "version": str(self.version), "manual_dir": os.path.abspath(manual_dir),
        "fingerprint": self.last_fingerprint,
        "listed": listed, "kept": kept,
        "splits": {name: len(members) for name, members in planned.items()},
        "folds": _fold_counts(planned),
        **report.as_dict(),
        "curate_seconds": round(time.time() - start, 2),
    }
    return planned


def face_features() -> dict:
  """What a canonical-crop build stores beside the crop: the chosen face in the source image."""
  return {"landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
          "face_box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
          "face_score": tfds.features.Scalar(np.float32)}


def check_folder(path: str, dataset: str) -> None:
  if not path:
    raise ValueError(f"{dataset}: no source folder given (config.data.manual_dir / manual_dir is empty)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{dataset}: source folder {path} does not exist or is not a directory")
  if not os.listdir(path):
    raise ValueError(f"{dataset}: source folder {path} is empty")


def fingerprint(examples: list[SourceExample]) -> str:
  """Identifies the source: file names, sizes and labels (a changed label file changes it)."""
  h = hashlib.sha256()
  for e in sorted(examples, key=lambda e: e.file_name):
    h.update(f"{e.file_name}\t{os.path.getsize(e.path)}\t{e.labels()}\t{e.subject}\n".encode())
  return h.hexdigest()[:16]


def _fold_counts(planned) -> dict:
  counts = {}
  for members in planned.values():
    for e in members:
      if e.fold >= 0:
        counts[e.fold] = counts.get(e.fold, 0) + 1
  return {str(k): counts[k] for k in sorted(counts)}


def _coerce(dataset, key, value, default, is_file=False):
  kind = type(default)
  if kind is bool:
    if isinstance(value, bool) or value in (0, 1):
      return bool(value)
  elif kind is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif kind is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif kind is str:
    if isinstance(value, str):
      return os.path.abspath(value) if is_file and value else value
  raise ValueError(f"builder option {key}={value!r} for dataset {dataset!r}: expected a {kind.__name__}")


def _file_digest(path: str, key: str = "split_file") -> str:
  if not os.path.isfile(path):
    what = "a JSON object {split name: [file names]}" if key == "split_file" else "a file"
    raise FileNotFoundError(f"{key} {path} does not exist; expected {what}")
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:10]


def _slug(value) -> str:
  text = str(value).lower() if isinstance(value, bool) else str(value)
  return re.sub(r"[^A-Za-z0-9.]+", "", text)
