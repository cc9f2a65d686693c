"""Index samplers: intended distributions, Xing's age-aware visiting order, determinism, resuming."""
import pickle

import numpy as np
import pytest

from age_jax.data import samplers

# A long-tailed toy split: age 1 has 1 face, age 2 has 3, age 30 has 6, age 80 has 2.
AGES = np.array([30, 2, 30, 30, 80, 2, 30, 1, 30, 2, 80, 30], np.float32)
MEMBERS = {1: [7], 2: [1, 5, 9], 30: [0, 2, 3, 6, 8, 11], 80: [4, 10]}


def _take(ds, start, stop):
  return [int(ds[i]) for i in range(start, stop)]


def _within_binomial(counts, probabilities, draws, sigmas=5.0):
  """Every count within `sigmas` standard deviations of its binomial mean. For a fair
  sampler a 5-sigma miss has probability < 6e-7 per count, so a failure means a biased one."""
  expected = draws * np.asarray(probabilities)
  std = np.sqrt(draws * np.asarray(probabilities) * (1 - np.asarray(probabilities)))
  return np.all(np.abs(np.asarray(counts) - expected) <= sigmas * std), (counts, expected, std)


def test_class_ids_for_each_grouping():
  labels = {"age": np.array([0, 10, 10.4, 11, 70, 70.6, 116], np.float32),
            "gender": np.array([0, 1, -1, 1, 0, 1, 0]), "race": np.array([4, 0, 2, -1, 1, 3, 0])}
  np.testing.assert_array_equal(samplers.class_ids(labels, "age"), [0, 10, 10, 11, 70, 71, 116])
  # LAE Table 1: 1-10, 11-20, ..., 61-70, 71+ (0 joins the first group).
  np.testing.assert_array_equal(samplers.class_ids(labels, "age_group"), [0, 0, 1, 1, 6, 7, 7])
  np.testing.assert_array_equal(samplers.class_ids(labels, "gender_race"), [4, 5, -1, -1, 1, 8, 0])
  np.testing.assert_array_equal(samplers.class_ids(labels, "race"), [4, 0, 2, -1, 1, 3, 0])
  with pytest.raises(ValueError, match="balance_by='fold'.*expected one of"):
    samplers.class_ids(labels, "fold")
  with pytest.raises(ValueError, match="needs the label 'gender'"):
    samplers.class_ids({"age": labels["age"]}, "gender_race")


def test_members_by_class_groups_indices_and_drops_unknown():
  members = samplers.members_by_class(np.array([3, -1, 0, 3, 0, 7]))
  assert [m.tolist() for m in members] == [[2, 4], [0, 3], [5]]
  with pytest.raises(ValueError, match="no training record has a known label"):
    samplers.members_by_class(np.array([-1, -1]))


def test_unknown_sampler_and_empty_split_are_named():
  with pytest.raises(ValueError, match="config.data.sampler='balanced'"):
    samplers.index_sampler("balanced", {"age": AGES}, len(AGES), 0)
  with pytest.raises(ValueError, match="empty"):
    samplers.index_sampler("shuffle", {"age": AGES[:0]}, 0, 0)
  with pytest.raises(ValueError, match="12 labels for 13 records"):
    samplers.index_sampler("age_aware", {"age": AGES}, 13, 0)


def test_shuffle_visits_every_record_once_per_epoch():
  ds = samplers.index_sampler("shuffle", {"age": AGES}, len(AGES), seed=3)
  epochs = [_take(ds, e * 12, (e + 1) * 12) for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))
  assert epochs[0] != epochs[1]


def test_age_aware_walks_the_age_list_in_shuffled_passes():
  # Xing 4.1: each pass over the age list takes every age exactly once, in a fresh order.
  ds = samplers.index_sampler("age_aware", {"age": AGES}, len(AGES), seed=0)
  ages = [int(AGES[i]) for i in _take(ds, 0, 4 * 50)]
  orders = [tuple(ages[4 * p:4 * p + 4]) for p in range(50)]
  assert all(sorted(order) == [1, 2, 30, 80] for order in orders)
  assert len(set(orders)) > 10  # reshuffled: 50 passes drawn from 24 orders are not all alike


def test_age_aware_visits_every_face_of_an_age_before_repeating_one():
  ds = samplers.index_sampler("age_aware", {"age": AGES}, len(AGES), seed=1)
  drawn = _take(ds, 0, 4 * 18)  # 18 passes: 3 rounds of age 30's 6 faces, 6 of age 2's, 9 of age 80's
  for age, members in MEMBERS.items():
    visits = [i for i in drawn if AGES[i] == age]
    assert len(visits) == 18
    rounds = [visits[k:k + len(members)] for k in range(0, 18, len(members))]
    assert all(sorted(r) == members for r in rounds), (age, rounds)
  thirties = [i for i in drawn if AGES[i] == 30]
  assert thirties[:6] != thirties[6:12]  # reshuffled when used up


def test_class_balanced_draws_classes_then_members_uniformly():
  # LAE 2.4: class uniform (1/4 each although age 30 has 6x the faces of age 1), member uniform.
  draws = 40_000
  ds = samplers.index_sampler("class_balanced", {"age": AGES}, len(AGES), seed=5, balance_by="age")
  drawn = np.array(_take(ds, 0, draws))
  class_counts = [np.isin(drawn, m).sum() for m in MEMBERS.values()]
  ok, info = _within_binomial(class_counts, [0.25] * 4, draws)
  assert ok, info
  member_counts = [np.sum(drawn == i) for i in MEMBERS[30]]
  ok, info = _within_binomial(member_counts, [1 / 24] * 6, draws)
  assert ok, info
  # A sampler that ignored classes would give age 30 half the draws, far outside the bound.
  assert not _within_binomial([np.isin(np.arange(12), m).sum() * draws / 12 for m in MEMBERS.values()],
                              [0.25] * 4, draws)[0]


def test_class_balanced_by_gender_race_never_draws_unknown_records():
  gender = np.array([0, 0, 0, 0, 1, 1, -1, 1])
  race = np.array([0, 0, 0, 2, 2, -1, 0, 2])
  ds = samplers.index_sampler("class_balanced", {"age": np.full(8, 20.0), "gender": gender, "race": race},
                              8, seed=0, balance_by="gender_race")
  drawn = np.array(_take(ds, 0, 9_000))
  assert not np.isin(drawn, [5, 6]).any()
  # Groups (0,0) = {0,1,2}, (0,2) = {3}, (1,2) = {4, 7}: a third of the draws each.
  counts = [np.isin(drawn, [0, 1, 2]).sum(), np.sum(drawn == 3), np.isin(drawn, [4, 7]).sum()]
  ok, info = _within_binomial(counts, [1 / 3] * 3, 9_000)
  assert ok, info


@pytest.mark.parametrize("name", ["shuffle", "age_aware", "class_balanced"])
def test_deterministic_and_resumable_by_position(name):
  first = samplers.index_sampler(name, {"age": AGES}, len(AGES), seed=7)
  again = samplers.index_sampler(name, {"age": AGES}, len(AGES), seed=7)
  other = samplers.index_sampler(name, {"age": AGES}, len(AGES), seed=8)
  sequence = _take(first, 0, 200)
  assert sequence == _take(again, 0, 200)
  assert sequence != _take(other, 0, 200)
  # Resume at position 57 and read process 1 of 3's slice, as the pipeline does, from a fresh
  # sampler (empty caches) and from a pickled one (grain workers get it that way).
  for ds in (samplers.index_sampler(name, {"age": AGES}, len(AGES), seed=7), pickle.loads(pickle.dumps(first))):
    assert list(ds[57:][:100]) == sequence[57:157]
    assert list(ds[1::3][:40]) == sequence[1:120:3]
  assert int(first[10**15]) == int(again[10**15])  # far positions cost no more than near ones
