"""Label files: a CSV of (file, age[, gender, race, subject]) and strict value parsing.

Every error names the file and line. With skip_bad a bad row is skipped and counted
('bad_label_row') instead; a bad header is always an error (nothing after it can be trusted).
"""
import csv
import math
import os

from age_jax.data.builders.records import UNKNOWN, SourceExample, relative_name

LABELS_FILE = "labels.csv"
COLUMNS = ("file", "age", "gender", "race", "subject")
REQUIRED = ("file", "age")
# No verified human age exceeds 122; ages past this are typos or sentinel values (999).
MAX_AGE = 120


class BadLabel(ValueError):
  """A bad label row or label file; `where` is 'file:line'."""


def parse_age(text: str, where: str) -> float:
  try:
    age = float(text)
  except (TypeError, ValueError):
    raise BadLabel(f"{where}: age {text!r} is not a number") from None
  return check_age(age, where, text)


def check_age(age: float, where: str, text=None) -> float:
  shown = repr(text) if text is not None else age
  if not math.isfinite(age) or age < 0:
    raise BadLabel(f"{where}: age {shown} must be a finite number >= 0")
  if age > MAX_AGE:
    raise BadLabel(f"{where}: age {shown} is above {MAX_AGE} years, not a possible age")
  return age


def parse_code(text: str, field: str, allowed: range, where: str) -> int:
  """'' or -1 -> unknown (-1); otherwise an integer in `allowed`."""
  text = (text or "").strip()
  if text in ("", "-1"):
    return UNKNOWN
  try:
    value = int(text)
  except ValueError:
    raise BadLabel(f"{where}: {field} {text!r} is not an integer in {allowed.start}..{allowed.stop - 1}") from None
  if value not in allowed:
    raise BadLabel(f"{where}: {field} {value} is not in {allowed.start}..{allowed.stop - 1} (or -1 / empty)")
  return value


GENDER_WORDS = {"m": 0, "male": 0, "f": 1, "female": 1}


def parse_gender(text: str, where: str) -> int:
  """0 / 1 as the other codes, or M / F / male / female in any case (0 male, 1 female)."""
  word = (text or "").strip().lower()
  if word in GENDER_WORDS:
    return GENDER_WORDS[word]
  try:
    return parse_code(text, "gender", range(2), where)
  except BadLabel:
    raise BadLabel(f"{where}: gender {text.strip()!r} is not one of 0 / 1, M / F, male / female "
                   "(or -1 / empty for unknown)") from None


def handle_bad(error: BadLabel, report, skip_bad: bool, reason: str = "bad_label_row") -> None:
  if not skip_bad:
    raise error
  report.drop(reason, str(error))


def image_path(root: str, name: str, where: str) -> str:
  """The image's path; names are relative to the folder and may not leave it."""
  path = os.path.normpath(os.path.join(root, name))
  if os.path.isabs(name) or os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) != \
      os.path.abspath(root):
    raise BadLabel(f"{where}: image file {name!r} is not a path inside {root}")
  if not os.path.isfile(path):
    raise BadLabel(f"{where}: image file {name!r} does not exist under {root}")
  return path


def read_labels_csv(csv_path: str, image_root: str, report, skip_bad: bool,
                    required: tuple = REQUIRED) -> list[SourceExample]:
  """Rows of a labels CSV with a header (columns among COLUMNS; `required` ones must be there and
  filled: file and age for age datasets, file and subject for identity datasets, whose missing
  or empty ages are unknown, -1)."""
  with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM
    rows = list(csv.reader(f))
  if not rows:
    raise ValueError(f"{csv_path}: empty labels file; expected a header with columns {list(COLUMNS)}")
  header = [h.strip().lower() for h in rows[0]]
  unknown = [h for h in header if h not in COLUMNS]
  if unknown:
    raise ValueError(f"{csv_path}:1: unknown column(s) {unknown}; expected columns among {list(COLUMNS)}")
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f"{csv_path}:1: missing required column(s) {missing}; header is {header}")
  examples, seen = [], set()
  for line, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    where = f"{csv_path}:{line}"
    try:
      if len(row) != len(header):
        raise BadLabel(f"{where}: {len(row)} fields, expected {len(header)} ({header})")
      values = dict(zip(header, (cell.strip() for cell in row)))
      name = values["file"]
      if name in seen:
        raise BadLabel(f"{where}: file {name!r} is listed twice")
      path = image_path(image_root, name, where)
      if "subject" in required and not values["subject"]:
        raise BadLabel(f"{where}: the subject (identity) is empty")
      age = parse_age(values["age"], where) if "age" in required or values.get("age", "") else UNKNOWN
      examples.append(SourceExample(
          path=path, file_name=relative_name(path, image_root), age=age,
          gender=parse_gender(values.get("gender", ""), where),
          race=parse_code(values.get("race", ""), "race", range(5), where),
          subject=values.get("subject", "")))
      seen.add(name)
    except BadLabel as e:
      handle_bad(e, report, skip_bad)
  return examples
