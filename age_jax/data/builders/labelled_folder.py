"""A generic labelled folder: images plus labels.csv (columns file, age[, gender, race, subject]).

`file` is a path relative to the folder. Splits: train/validation/test = 80/10/10 by a hash of
the group (identical images and, when given, subjects stay together).
"""
import os

from age_jax.data.builders import base, labels_csv, splits

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


class LabelledFolder(base.AgeDatasetBuilder):
  """Any folder with a labels.csv."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"manual_dir must hold {labels_csv.LABELS_FILE} with columns file, age "
                                  "and optionally gender (0 male, 1 female), race (0-4), subject.")
  DESCRIPTION = "Images with labels from a CSV."

  def list_examples(self, manual_dir, report):
    csv_path = os.path.join(manual_dir, labels_csv.LABELS_FILE)
    if not os.path.isfile(csv_path):
      raise FileNotFoundError(f"{self.name}: no {labels_csv.LABELS_FILE} in {manual_dir}; "
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return labels_csv.read_labels_csv(csv_path, manual_dir, report, self.options["skip_bad_labels"])

  def assign_splits(self, examples, report):
    return splits.fraction_split(examples, SPLIT_FRACTIONS, salt=self.name)
