"""One rounding rule and one grouping of ages, wherever ages are rounded or grouped."""
import jax.numpy as jnp
import numpy as np

from age_jax import ages, formulations, losses, metrics
from age_jax.data import samplers

HALVES = np.array([0.5, 1.5, 2.5, 3.49, 3.5, 10.5])
UP = [1, 2, 3, 3, 4, 11]   # halves up; numpy's rint would give 0, 2, 2, 3, 4, 10


def test_every_rounding_of_ages_takes_halves_up():
  np.testing.assert_array_equal(ages.whole_years(HALVES), UP)
  np.testing.assert_array_equal(losses.age_to_class(jnp.asarray(HALVES), num_classes=20), UP)
  np.testing.assert_array_equal(np.nonzero(formulations.age_counts(HALVES, 20))[0], sorted(set(UP)))
  np.testing.assert_array_equal(samplers.class_ids({"age": HALVES}, "age"), UP)
  assert metrics.mae_per_age(HALVES, HALVES)["age"] == sorted(set(UP))
  # CCS(0) rounds predictions: 2.5 -> 3 matches a true age of 3, not 2
  np.testing.assert_array_equal(metrics.ccs([2.5, 2.5], [3.0, 2.0], [0]), [1])


def test_age_groups_of_lae_table_1_in_numpy_and_jax():
  years = [0, 1, 10, 10.5, 11, 20, 21, 61, 70, 71, 81, 82, 116]
  expected = [0, 0, 0, 1, 1, 1, 2, 6, 6, 7, 7, 7, 7]
  np.testing.assert_array_equal(ages.group_index(np.array(years)), expected)
  np.testing.assert_array_equal(ages.group_index(jnp.array(years, jnp.float32), jnp), expected)
  np.testing.assert_array_equal(samplers.class_ids({"age": np.array(years, np.float32)}, "age_group"), expected)
  assert ages.GROUP_NAMES == ("1-10", "11-20", "21-30", "31-40", "41-50", "51-60", "61-70", "71+")
