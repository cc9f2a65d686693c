"""UTKFace (Aligned & Cropped faces, Zhang et al. CVPR 2017) from the official release folder.

Labels are in the names: [age]_[gender]_[race]_[date&time].jpg.chip.jpg. Quirks of the release
handled here (see the data README): a space before '.jpg', a missing dot ('...357jpg.chip.jpg')
and three names without the race field; these are parsed leniently (race = -1 when missing) and
listed in the report. Splits: train/validation/test = 80/10/10 by a hash of the image bytes, so
byte-identical images always share a split and the split does not depend on listing order.
"""
import os
import re

from age_jax.data.builders import base, labels_csv, splits
from age_jax.data.builders.records import UNKNOWN, SourceExample, is_image

# race is optional (three release names lack it); the date is 8+ digits, so '39_1_2017...' reads
# as age 39, gender 1, no race. Tolerates a space or a missing dot before the extension.
_NAME = re.compile(
    r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?:(?P<race>[0-4])_)?(?P<date>\d{8,})?"
    r"(?P<sep>\s*\.?)(?P<ext>jpg\.chip\.jpg|jpe?g|png)$", re.IGNORECASE)

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def parse_name(name: str) -> dict | None:
  """{'age', 'gender', 'race', 'quirks': [...]} from a UTKFace file name, or None."""
  match = _NAME.match(name)
  if not match:
    return None
  quirks = []
  if match["race"] is None:
    quirks.append("race_missing")
  if match["sep"] != ".":
    quirks.append("malformed_separator")
  return {"age": float(match["age"]), "gender": int(match["gender"]),
          "race": UNKNOWN if match["race"] is None else int(match["race"]), "quirks": quirks}


class Utkface(base.AgeDatasetBuilder):
  """UTKFace; manual_dir is the folder of *.jpg.chip.jpg files (e.g. .../UTKFace)."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must be the UTKFace release folder holding files named "
                                  "[age]_[gender]_[race]_[date&time].jpg.chip.jpg directly inside it.")
  DESCRIPTION = "UTKFace aligned and cropped faces, labels parsed from the file names."
  HOMEPAGE = "https://susanqq.github.io/UTKFace/"

  def list_examples(self, manual_dir, report):
    examples = []
    for name in sorted(os.listdir(manual_dir)):
      path = os.path.join(manual_dir, name)
      if not os.path.isfile(path) or not is_image(name):
        continue
      parsed = parse_name(name)
      if parsed is None:
        report.drop("unparsable_name", name)
        continue
      try:
        labels_csv.check_age(parsed["age"], path)
      except labels_csv.BadLabel as e:
        hint = labels_csv.BadLabel(f"{e}; rename the file, or build with skip_bad_labels=True to skip "
                                   "and count it")
        labels_csv.handle_bad(hint, report, self.options["skip_bad_labels"], "impossible_age")
        continue
      for quirk in parsed["quirks"]:
        report.note(quirk, name)
      examples.append(SourceExample(path=path, file_name=name, age=parsed["age"],
                                    gender=parsed["gender"], race=parsed["race"]))
    if not examples:
      raise ValueError(f"utkface: no file in {manual_dir} has a UTKFace name "
                       "([age]_[gender]_[race]_[date&time].jpg.chip.jpg)")
    return examples

  def assign_splits(self, examples, report):
    return splits.fraction_split(examples, SPLIT_FRACTIONS, salt="utkface")
