"""MORPH II (Album 2, 2008 non-commercial release) with its metadata CSV.

Layout: manual_dir holds the metadata CSV (morph_2008_nonCommercial.csv: id_num, picture_num,
dob, doa, race, gender, facial_hair, age, age_diff, glasses, photo) and the images under the
relative paths of its `photo` column (e.g. Album2/003999_1M61.JPG). Only id_num, race, gender,
age and photo are read; other columns are ignored.

Splits (Xing et al. 2017, Sec. 3.1.2 and Table 2, after Guo & Mu 2010): S1 and S2 each hold
3,980 male and 1,285 female images of Black and of White subjects (balanced in race and gender),
S3 the rest; subject-exclusive. Train on S1, test on 'S2+S3'; train on S2, test on 'S1+S3'.
Also subject-exclusive random folds (`fold` feature; splits 'fold{k}_train' / 'fold{k}_test').
Race codes follow UTKFace: W->0, B->1, A->2, H and O->4 (Others).
"""
import csv
import os

from age_jax.data.builders import base, labels_csv, splits
from age_jax.data.builders.labels_csv import BadLabel
from age_jax.data.builders.records import SourceExample, relative_name

CSV_NAME = "morph_2008_nonCommercial.csv"
REQUIRED = ("id_num", "race", "gender", "age", "photo")
RACES = {"W": 0, "B": 1, "A": 2, "H": 4, "O": 4}
GENDERS = {"M": 0, "F": 1}
# Images per (race, gender) cell in each of S1 and S2 (Xing Table 2).
S_TARGETS = {(1, 0): 3980, (1, 1): 1285, (0, 0): 3980, (0, 1): 1285}


class Morph2(base.AgeDatasetBuilder):
  """MORPH II; manual_dir holds the metadata CSV and the image folders it points to."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"manual_dir must hold the MORPH II metadata CSV ({CSV_NAME}) and "
                                  "the image files at the relative paths of its 'photo' column.")
  DESCRIPTION = "MORPH II Album 2 with Guo & Mu S1/S2/S3 and subject-exclusive random folds."
  OPTIONS = {
      "num_folds": 5,
      # Scales the S1/S2 cell sizes of Table 2 (1.0 = the paper); for subsets and tests.
      "s_scale": 1.0,
  }

  def list_examples(self, manual_dir, report):
    csv_path = find_csv(manual_dir)
    skip = self.options["skip_bad_labels"]
    with open(csv_path, newline="") as f:
      rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
      raise ValueError(f"{csv_path}:1: missing column(s) {missing}; expected a MORPH II metadata header "
                       f"with {list(REQUIRED)}")
    column = {name: header.index(name) for name in REQUIRED}
    examples = []
    for line, row in enumerate(rows[1:], start=2):
      if not any(cell.strip() for cell in row):
        continue
      where = f"{csv_path}:{line}"
      try:
        if len(row) < len(header):
          raise BadLabel(f"{where}: {len(row)} fields, expected {len(header)}")
        value = lambda name: row[column[name]].strip()
        race, gender = value("race").upper(), value("gender").upper()
        if race not in RACES:
          raise BadLabel(f"{where}: race {race!r} is not one of {sorted(RACES)}")
        if gender not in GENDERS:
          raise BadLabel(f"{where}: gender {gender!r} is not one of {sorted(GENDERS)}")
        if not value("id_num"):
          raise BadLabel(f"{where}: empty id_num")
        path = labels_csv.image_path(manual_dir, value("photo"), where)
        examples.append(SourceExample(path=path, file_name=relative_name(path, manual_dir),
                                      age=labels_csv.parse_age(value("age"), where), gender=GENDERS[gender],
                                      race=RACES[race], subject=value("id_num")))
      except BadLabel as e:
        labels_csv.handle_bad(e, report, skip)
    return examples

  def assign_splits(self, examples, report):
    scale = self.options["s_scale"]
    targets = {cell: int(round(n * scale)) for cell, n in S_TARGETS.items()}
    planned, shortfalls = splits.fill_to_targets(
        examples, lambda e: (e.race, e.gender), targets, ["S1", "S2"], "S3", salt="morph2-s")
    report.counts["s_targets"] = {f"race{r}_gender{g}": n for (r, g), n in targets.items()}
    report.counts["s_shortfalls"] = {k: int(v) for k, v in shortfalls.items()}
    splits.balanced_folds(examples, self.options["num_folds"], salt="morph2-folds")
    return planned


def find_csv(manual_dir: str) -> str:
  """The metadata CSV: morph_2008_nonCommercial.csv, else the only *.csv in manual_dir."""
  preferred = os.path.join(manual_dir, CSV_NAME)
  if os.path.isfile(preferred):
    return preferred
  candidates = sorted(n for n in os.listdir(manual_dir) if n.lower().endswith(".csv"))
  if len(candidates) != 1:
    raise FileNotFoundError(f"morph2: expected {CSV_NAME} (or exactly one .csv) in {manual_dir}; "
                            f"found {candidates or 'none'}")
  return os.path.join(manual_dir, candidates[0])
