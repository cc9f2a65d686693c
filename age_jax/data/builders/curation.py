"""Curation shared by all builders: verify and hash every image, resolve exact duplicates,
and group images that must stay in one split (byte-identical copies, same subject).

Duplicate policy (UTKFace has a few hundred byte-identical groups, most with disagreeing labels):
- labels agree: keep one copy (the first file name in sorted order), drop the rest;
- labels disagree: drop the whole group (default: we cannot tell which label is right), or with
  keep_conflicting_duplicates keep one copy per distinct (age, gender, race) label.
"""
import collections
import concurrent.futures
import hashlib
import io

from PIL import Image

from age_jax.data.builders.records import SourceExample


class Report:
  """Counts of what a build read, kept and dropped, by reason; ends up as JSON."""

  def __init__(self):
    self.dropped = collections.Counter()
    self.notes = collections.defaultdict(list)   # reason -> file names (for the JSON report)
    self.counts = {}

  def drop(self, reason: str, file_name: str = "", n: int = 1):
    self.dropped[reason] += n
    if file_name:
      self.notes[reason].append(file_name)

  def note(self, what: str, file_name: str):
    self.notes[what].append(file_name)

  def as_dict(self) -> dict:
    return {"dropped": dict(sorted(self.dropped.items())),
            "dropped_total": int(sum(self.dropped.values())),
            "files": {k: sorted(v) for k, v in sorted(self.notes.items())},
            **self.counts}


def read_and_verify(path: str) -> tuple[bytes, str | None]:
  """(bytes, None) or (bytes, error message) when PIL cannot decode the whole image."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # a full decode: verify() alone misses truncated JPEGs
  except Exception as e:  # PIL raises several types for broken files
    return data, f"{type(e).__name__}: {e}"
  return data, None


def hash_and_verify(examples: list[SourceExample], report: Report, *, skip_corrupt: bool,
                    num_threads: int = 2) -> list[SourceExample]:
  """Sets sha256 on every example; a corrupt image raises (naming it) or is skipped and counted."""
  def work(example):
    data, error = read_and_verify(example.path)
    return hashlib.sha256(data).hexdigest(), error

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    results = list(pool.map(work, examples, chunksize=64))
  kept = []
  for example, (digest, error) in zip(examples, results):
    if error is not None:
      if not skip_corrupt:
        raise ValueError(f"corrupt image {example.path}: PIL cannot decode it ({error}); "
                         "fix or remove the file, or build with skip_corrupt=True to skip and count it")
      report.drop("corrupt_image", example.file_name)
      continue
    example.sha256 = digest
    kept.append(example)
  return kept


def resolve_duplicates(examples: list[SourceExample], report: Report, *, keep_conflicting: bool,
                       label_of=SourceExample.labels) -> list[SourceExample]:
  """label_of(example): what copies must agree on (default (age, gender, race); an identity
  dataset's subject)."""
  by_hash = collections.defaultdict(list)
  for example in examples:
    by_hash[example.sha256].append(example)
  kept, groups_same, groups_conflicting = [], 0, 0
  for digest in sorted(by_hash):
    group = sorted(by_hash[digest], key=lambda e: e.file_name)
    if len(group) == 1:
      kept.append(group[0])
      continue
    distinct = {}
    for example in group:
      distinct.setdefault(label_of(example), example)  # first file name per distinct label
    if len(distinct) == 1:
      groups_same += 1
      kept.append(group[0])
      for example in group[1:]:
        report.drop("duplicate_same_labels", example.file_name)
    else:
      groups_conflicting += 1
      if keep_conflicting:
        kept.extend(distinct.values())
        for example in group:
          if distinct[label_of(example)] is not example:
            report.drop("duplicate_same_labels", example.file_name)
      else:
        for example in group:
          report.drop("duplicate_conflicting_labels", example.file_name)
  report.counts["duplicate_groups_same_labels"] = groups_same
  report.counts["duplicate_groups_conflicting_labels"] = groups_conflicting
  kept.sort(key=lambda e: e.file_name)
  return kept


def assign_groups(examples: list[SourceExample]) -> None:
  """example.group = a key shared by everything linked through identical bytes or a subject.

  Union-find over keys 'h:<sha256>' and 's:<subject>'; the group name is the smallest key of
  its component, so it does not depend on the order in which files were listed.
  """
  parent = {}

  def find(key):
    parent.setdefault(key, key)
    while parent[key] != key:
      parent[key] = parent[parent[key]]
      key = parent[key]
    return key

  def union(a, b):
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)

  for example in examples:
    find("h:" + example.sha256)
    if example.subject:
      union("h:" + example.sha256, "s:" + example.subject)
  for example in examples:
    example.group = find("h:" + example.sha256)
