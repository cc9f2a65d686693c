"""Index samplers: the order in which training records are visited, as a grain MapDataset.

A sampler is an endless MapDataset of record indices whose element i depends only on
(seed, i), so the data order is deterministic, shardable by position and resumable by step.

  'shuffle'         a fresh permutation of all records every epoch.
  'age_aware'       Xing 4.1: walk a shuffled list of the ages, taking the next face of each
                    age from that age's own shuffled list; a list is reshuffled when used up.
  'class_balanced'  LAE 2.4 (after Shen et al. 2016): draw a class uniformly, then a member of
                    it uniformly, i.i.d.; the class is any label (balance_by=...).
"""
import sys

import grain
import numpy as np

from age_jax import ages as ages_lib

SAMPLERS = ("shuffle", "age_aware", "class_balanced")
# What class_balanced can balance: a label of `labels`, or one of these derived groupings.
BALANCE_BY = ("age", "age_group", "gender", "race", "gender_race")

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
  """SplitMix64 finaliser: a bijective, well-mixed 64-bit hash (Steele et al. 2014)."""
  x = (x + 0x9E3779B97F4A7C15) & _MASK64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
  return x ^ (x >> 31)


def _uniform_below(h: int, n: int) -> int:
  """A 64-bit hash -> an integer in [0, n) (Lemire's multiply-shift; bias below n / 2^64)."""
  return (h * n) >> 64


def class_ids(labels: dict[str, np.ndarray], balance_by: str) -> np.ndarray:
  """The class (int >= 0, or -1 = unknown) of every record for the grouping `balance_by`.

  'age' rounds float ages to whole years; 'age_group' is LAE Table 1's eight groups (ages
  <= 10 -> 0, ..., > 70 -> 7, as age_jax.ages); 'gender_race' combines both labels and
  is unknown where either is.
  """
  def label(name):
    if name not in labels:
      raise ValueError(f"config.data.balance_by={balance_by!r} needs the label {name!r}; "
                       f"the training split has {sorted(labels)}")
    return np.asarray(labels[name])

  if balance_by == "age":
    ages = label("age").astype(np.float64)
    return np.where(ages >= 0, ages_lib.whole_years(ages), -1).astype(np.int64)
  if balance_by == "age_group":
    ages = label("age").astype(np.float64)
    return np.where(ages >= 0, ages_lib.group_index(ages), -1).astype(np.int64)
  if balance_by == "gender_race":
    gender, race = label("gender").astype(np.int64), label("race").astype(np.int64)
    if np.any(race >= ages_lib.NUM_RACES):
      raise ValueError(f"balance_by='gender_race' expects race codes 0..{ages_lib.NUM_RACES - 1}, got {race.max()}")
    return np.where((gender >= 0) & (race >= 0), gender * ages_lib.NUM_RACES + race, -1)
  if balance_by in labels:
    values = label(balance_by).astype(np.float64)
    return np.where(values >= 0, ages_lib.whole_years(values), -1).astype(np.int64)
  raise ValueError(f"config.data.balance_by={balance_by!r}; expected one of {list(BALANCE_BY)} "
                   f"or a label of the split {sorted(labels)}")


def members_by_class(classes: np.ndarray) -> list[np.ndarray]:
  """Record indices of each known class (class < 0 is unknown and left out), classes sorted."""
  classes = np.asarray(classes)
  known = np.flatnonzero(classes >= 0)
  if known.size == 0:
    raise ValueError("no training record has a known label for the balanced sampler")
  order = known[np.argsort(classes[known], kind="stable")]
  _, starts = np.unique(classes[order], return_index=True)
  return np.split(order, starts[1:])


class _ClassBalanced:
  """Element i: class c = U{0..C-1}, then member U{0..n_c-1}, both hashed from (seed, i)."""

  def __init__(self, members: list[np.ndarray], seed: int):
    self.members = members
    self.key = _mix64(seed & _MASK64)

  def __call__(self, i: int) -> int:
    h1 = _mix64(self.key ^ _mix64(2 * i))
    h2 = _mix64(self.key ^ _mix64(2 * i + 1))
    members = self.members[_uniform_below(h1, len(self.members))]
    return int(members[_uniform_below(h2, len(members))])


class _AgeAware:
  """Xing 4.1 as a function of the position i.

  The age list is walked in passes of A ages, each pass a fresh permutation. Position i is
  pass e = i // A, slot i % A. Every pass visits every age once, so age a has been visited
  exactly e times before i: its next face is slot e % n_a of that age's face permutation
  number e // n_a. Both permutations are seeded by (seed, which list, pass), so any element
  is computed directly; a small cache keeps sequential reading at O(1) per element.
  """

  _CACHE_SIZE = 4096

  def __init__(self, members: list[np.ndarray], seed: int):
    self.members = members
    self.seed = seed
    self._cache = {}

  def __getstate__(self):  # grain workers get the sampler pickled: send it without its cache
    return {"members": self.members, "seed": self.seed}

  def __setstate__(self, state):
    self.__init__(state["members"], state["seed"])

  def _permutation(self, kind: int, which: int, epoch: int, n: int) -> np.ndarray:
    key = (kind, which, epoch)
    perm = self._cache.get(key)
    if perm is None:
      if len(self._cache) >= self._CACHE_SIZE:
        self._cache.clear()
      perm = np.random.default_rng([self.seed, kind, which, epoch]).permutation(n)
      self._cache[key] = perm
    return perm

  def __call__(self, i: int) -> int:
    num_ages = len(self.members)
    age_pass, slot = divmod(i, num_ages)
    age = int(self._permutation(0, 0, age_pass, num_ages)[slot])
    faces = self.members[age]
    face_pass, offset = divmod(age_pass, len(faces))
    return int(faces[self._permutation(1, age, face_pass, len(faces))[offset]])


def _endless(fn) -> grain.MapDataset:
  return grain.MapDataset.range(sys.maxsize).map(fn)


def index_sampler(name: str, labels: dict[str, np.ndarray], num_records: int, seed: int,
                  balance_by: str = "age") -> grain.MapDataset:
  """An endless MapDataset of record indices in [0, num_records); element i is fixed by (seed, i).

  labels: per-record label arrays of the training split ('age' for 'age_aware'; the labels
  that balance_by needs for 'class_balanced'); records whose class is unknown (-1) are
  never drawn by the balanced samplers.
  """
  if num_records <= 0:
    raise ValueError("the training split is empty")
  if name == "shuffle":
    # A fresh permutation every epoch.
    return grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
  if name not in SAMPLERS:
    raise ValueError(f"config.data.sampler={name!r}; known samplers: {list(SAMPLERS)}")
  classes = class_ids(labels, "age" if name == "age_aware" else balance_by)
  if classes.shape != (num_records,):
    raise ValueError(f"sampler {name!r}: {classes.shape[0]} labels for {num_records} records")
  members = members_by_class(classes)
  if name == "age_aware":
    return _endless(_AgeAware(members, seed))
  return _endless(_ClassBalanced(members, seed))
