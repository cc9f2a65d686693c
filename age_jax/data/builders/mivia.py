"""MIVIA Age Dataset of the Guess The Age contest 2021 (training part).

Layout (contest release): training_caip_contest.csv, rows 'image path,age' without a header,
paths relative to the folder training_caip_contest/. Ages are float (apparent age). Split
train/validation = 4:1 at random (Bao et al. 2021, Sec. 3.4), by a hash of the group; when the
image path has a directory (a VGGFace2 identity such as n000002/0001_01.jpg) that directory is
the subject, so identities do not straddle the split.
"""
import csv
import os

from age_jax.data.builders import base, labels_csv, splits
from age_jax.data.builders.labels_csv import BadLabel
from age_jax.data.builders.records import SourceExample, relative_name

CSV_NAME = "training_caip_contest.csv"
IMAGE_DIR = "training_caip_contest"
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.2}


class Mivia(base.AgeDatasetBuilder):
  """MIVIA / Guess The Age 2021; manual_dir holds the CSV and the image folder."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"manual_dir must hold {CSV_NAME} (rows: image path, age) and the "
                                  f"folder {IMAGE_DIR}/ with the images.")
  DESCRIPTION = "MIVIA Age Dataset (Guess The Age 2021), 4:1 random train/validation split."

  def list_examples(self, manual_dir, report):
    csv_path = os.path.join(manual_dir, CSV_NAME)
    if not os.path.isfile(csv_path):
      raise FileNotFoundError(f"mivia: no {CSV_NAME} in {manual_dir}; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    root = os.path.join(manual_dir, IMAGE_DIR)
    examples = []
    with open(csv_path, newline="") as f:
      for line, row in enumerate(csv.reader(f), start=1):
        if not any(cell.strip() for cell in row):
          continue
        where = f"{csv_path}:{line}"
        try:
          if len(row) != 2:
            raise BadLabel(f"{where}: {len(row)} fields, expected 2 (image path, age)")
          name = row[0].strip()
          path = labels_csv.image_path(root, name, where)
          subject = os.path.dirname(name.replace("\\", "/"))
          examples.append(SourceExample(path=path, file_name=relative_name(path, manual_dir),
                                        age=labels_csv.parse_age(row[1].strip(), where), subject=subject))
        except BadLabel as e:
          labels_csv.handle_bad(e, report, self.options["skip_bad_labels"])
    return examples

  def assign_splits(self, examples, report):
    return splits.fraction_split(examples, SPLIT_FRACTIONS, salt="mivia")
