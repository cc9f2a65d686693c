"""All-Age-Faces (AAF): 13,322 aligned faces, ages 2-80, with the official train/val lists.

Layout: 'aglined faces/' (sic; 'aligned faces/' is accepted too) with files like 00000A02.jpg
(image id, 'A', age) and 'image sets/train.txt', 'image sets/val.txt' with lines
'<file> <label>'. Gender comes from the id as documented: ids 0-7380 female, the rest male
(the lists' second column is not needed). Images in neither list are dropped and counted.
Subjects are not known (one id per image).
"""
import os
import re

from age_jax.data.builders import base, labels_csv
from age_jax.data.builders.labels_csv import BadLabel
from age_jax.data.builders.records import SourceExample, relative_name

FACE_DIRS = ("aglined faces", "aligned faces")
LISTS = {"train": "train.txt", "validation": "val.txt"}
LAST_FEMALE_ID = 7380
_NAME = re.compile(r"^(?P<id>\d{5})A(?P<age>\d{2})\.jpe?g$", re.IGNORECASE)


class AllAgeFaces(base.AgeDatasetBuilder):
  """All-Age-Faces; manual_dir is the 'All-Age-Faces Dataset' folder."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must be the 'All-Age-Faces Dataset' folder with "
                                  "'aglined faces/' and 'image sets/train.txt', 'image sets/val.txt'.")
  DESCRIPTION = "All-Age-Faces aligned faces with the official train/validation lists."

  def list_examples(self, manual_dir, report):
    face_dir = next((os.path.join(manual_dir, d) for d in FACE_DIRS
                     if os.path.isdir(os.path.join(manual_dir, d))), None)
    if face_dir is None:
      raise FileNotFoundError(f"all_age_faces: none of {list(FACE_DIRS)} in {manual_dir}; "
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    self._official = self._read_lists(manual_dir, report)
    examples = []
    for name in sorted(os.listdir(face_dir)):
      match = _NAME.match(name)
      if not match:
        if name.lower().endswith((".jpg", ".jpeg")):
          report.drop("unparsable_name", name)
        continue
      image_id = int(match["id"])
      path = os.path.join(face_dir, name)
      examples.append(SourceExample(path=path, file_name=relative_name(path, manual_dir),
                                    age=float(match["age"]), gender=1 if image_id <= LAST_FEMALE_ID else 0))
    return examples

  def _read_lists(self, manual_dir, report) -> dict[str, str]:
    split_of = {}
    for split, list_name in LISTS.items():
      path = os.path.join(manual_dir, "image sets", list_name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"all_age_faces: no official list {path}; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      with open(path) as f:
        for line, text in enumerate(f, start=1):
          fields = text.split()
          if not fields:
            continue
          try:
            if not _NAME.match(os.path.basename(fields[0])):
              raise BadLabel(f"{path}:{line}: {fields[0]!r} is not an AAF image name like 00000A02.jpg")
            name = os.path.basename(fields[0]).lower()
            if name in split_of:
              raise BadLabel(f"{path}:{line}: {fields[0]} is already listed in {split_of[name]!r}")
            split_of[name] = split
          except BadLabel as e:
            labels_csv.handle_bad(e, report, self.options["skip_bad_labels"])
    return split_of

  def assign_splits(self, examples, report):
    planned = {split: [] for split in LISTS}
    for example in examples:
      split = self._official.get(os.path.basename(example.file_name).lower())
      if split is None:
        report.drop("not_in_official_lists", example.file_name)
      else:
        planned[split].append(example)
    return planned
