"""Deterministic split protocols over groups (see curation.assign_groups).

Every protocol assigns whole groups, so byte-identical images and images of one subject never
land in two splits. Decisions depend only on a salted hash of the group key, never on the order
in which files were listed, so a file keeps its split when others are added or removed.
"""
import collections
import hashlib
import json
import os

from age_jax.data.builders.records import SourceExample


def unit_hash(key: str, salt: str) -> float:
  """A uniform number in [0, 1) fixed by (salt, key)."""
  digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def _groups(examples):
  groups = collections.defaultdict(list)
  for example in examples:
    groups[example.group].append(example)
  return groups


def fraction_split(examples: list[SourceExample], fractions: dict[str, float], salt: str) -> dict[str, list]:
  """Each group goes to a split by where its hash falls in the cumulative fractions."""
  total = sum(fractions.values())
  if abs(total - 1) > 1e-9:
    raise ValueError(f"split fractions {fractions} sum to {total}, expected 1")
  out = {name: [] for name in fractions}
  for key, members in _groups(examples).items():
    u, edge = unit_hash(key, salt), 0.0
    for name, fraction in fractions.items():
      edge += fraction
      if u < edge:
        break
    out[name].extend(members)
  return out


def balanced_folds(examples: list[SourceExample], num_folds: int, salt: str) -> None:
  """Sets example.fold: groups in hash order, each to the fold with the fewest images so far."""
  if num_folds < 2:
    raise ValueError(f"num_folds={num_folds}; expected at least 2")
  sizes = [0] * num_folds
  groups = _groups(examples)
  for key in sorted(groups, key=lambda k: unit_hash(k, salt)):
    fold = min(range(num_folds), key=lambda f: (sizes[f], f))
    for example in groups[key]:
      example.fold = fold
    sizes[fold] += len(groups[key])


def subject_folds(examples: list[SourceExample]) -> list[str]:
  """Leave-one-person-out: fold k holds the k-th subject in sorted order. Returns the subjects."""
  subjects = sorted({e.subject for e in examples})
  if "" in subjects:
    raise ValueError("leave-one-person-out needs a subject for every image")
  index = {s: i for i, s in enumerate(subjects)}
  for example in examples:
    example.fold = index[example.subject]
  return subjects


def fill_to_targets(examples: list[SourceExample], cell_of, targets: dict, split_names: list[str],
                    rest: str, salt: str) -> tuple[dict[str, list], dict]:
  """Subject-exclusive balanced subsets (the S1/S2/S3 scheme of Guo & Mu 2010, Xing Table 2).

  cell_of(example) -> a cell key (e.g. (race, gender)) or None. For each cell in targets, groups
  wholly inside the cell are taken in hash order into split_names[0] while they fit its target,
  then into split_names[1], ...; everything else goes to `rest`. Returns (splits, shortfalls):
  a shortfall is a cell whose target could not be met exactly.
  """
  out = {name: [] for name in split_names + [rest]}
  shortfalls = {}
  by_cell = collections.defaultdict(list)
  for key, members in _groups(examples).items():
    cells = {cell_of(e) for e in members}
    cell = cells.pop() if len(cells) == 1 else None
    if cell in targets:
      by_cell[cell].append((unit_hash(key, salt), members))
    else:
      out[rest].extend(members)
  for cell, target in targets.items():
    queue = [members for _, members in sorted(by_cell.get(cell, []), key=lambda t: t[0])]
    for name in split_names:
      remaining, left = target, []
      for members in queue:
        if len(members) <= remaining:
          out[name].extend(members)
          remaining -= len(members)
        else:
          left.append(members)
      queue = left
      if remaining:
        shortfalls[f"{name}:{cell}"] = remaining
    for members in queue:
      out[rest].extend(members)
  return out, shortfalls


# ---- split files: {split name: [file names]} so that others can reproduce a split ----

def write_split_file(path: str, splits: dict[str, list[str]]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({name: sorted(files) for name, files in sorted(splits.items())}, f, indent=1)


def read_split_file(path: str) -> dict[str, list[str]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"split_file {path} does not exist; expected a JSON object "
                            "{split name: [file names]}")
  try:
    with open(path) as f:
      splits = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"split_file {path} is not valid JSON: {e}") from e
  if not isinstance(splits, dict) or not all(
      isinstance(v, list) and all(isinstance(n, str) for n in v) for v in splits.values()):
    raise ValueError(f"split_file {path}: expected a JSON object {{split name: [file names]}}")
  seen = {}
  for name, files in splits.items():
    for file_name in files:
      if file_name in seen:
        raise ValueError(f"split_file {path}: {file_name} is in both {seen[file_name]!r} and {name!r}")
      seen[file_name] = name
  return splits


def apply_split_file(examples: list[SourceExample], path: str, report) -> dict[str, list]:
  """Splits as the file lists them; kept files it does not list are dropped and counted."""
  splits = read_split_file(path)
  split_of = {n: name for name, files in splits.items() for n in files}
  out = {name: [] for name in splits}
  for example in examples:
    name = split_of.pop(example.file_name, None)
    if name is None:
      report.drop("not_in_split_file", example.file_name)
    else:
      out[name].append(example)
  report.counts["split_file_names_not_found"] = len(split_of)
  # Identical images must not straddle splits, even when a user-made file says so.
  where = collections.defaultdict(set)
  for name, members in out.items():
    for example in members:
      where[example.group].add(name)
  for group, names in where.items():
    if len(names) > 1:
      files = sorted(e.file_name for e in examples if e.group == group)
      raise ValueError(f"split_file {path} puts identical images or one subject ({files}) "
                       f"into several splits {sorted(names)}")
  return out
