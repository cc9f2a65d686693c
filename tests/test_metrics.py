"""Metrics against hand computations and against LAE Table 2."""
import math

import numpy as np
import pytest

from age_jax import ages, metrics

PRED = np.array([20.4, 22.6, 30.0, 41.5])
TRUE = np.array([20.0, 20.0, 33.0, 40.0])


def test_mae():
  assert metrics.mae(PRED, TRUE) == pytest.approx((0.4 + 2.6 + 3.0 + 1.5) / 4)


def test_ccs_rounds_predictions_to_whole_years():
  # rounded predictions 20, 23, 30, 42 -> errors 0, 3, 3, 2
  np.testing.assert_array_equal(metrics.ccs(PRED, TRUE, [0, 1, 2, 3, 10]), [1, 1, 2, 4, 4])
  np.testing.assert_allclose(metrics.ccs_fraction(PRED, TRUE, [0, 2]), [0.25, 0.5])
  # raw errors 0.4, 2.6, 3, 1.5; h(x) = 1 for x <= 0 counts an error equal to t
  np.testing.assert_array_equal(metrics.ccs(PRED, TRUE, [0, 1, 2, 3], round_predictions=False), [0, 1, 2, 4])
  assert metrics.ccs([20.5], [21.0], [0])[0] == 1  # halves round up


def test_rccs_is_the_difference_of_ccs():
  pred_b = np.array([25.0, 20.0, 33.0, 30.0])  # errors 5, 0, 0, 10
  # a: CCS(0..3) = 1, 1, 2, 4; b: 2, 2, 2, 2
  np.testing.assert_array_equal(metrics.rccs(PRED, pred_b, TRUE, [0, 1, 2, 3]), [-1, -1, 0, 2])
  assert len(metrics.rccs(PRED, pred_b, TRUE)) == 11  # t = 0..10 by default


@pytest.mark.parametrize("mae,sigma,aar", [  # LAE Table 2: AAR from MAE and sigma (eq. 6)
    (1.97, 1.93, 6.10), (1.93, 1.65, 6.42), (1.78, 1.33, 6.89), (1.85, 1.37, 6.78),
    (1.71, 1.11, 7.18), (1.89, 0.37, 7.74), (1.86, 0.20, 7.94)])
def test_aar_reproduces_lae_table_2(mae, sigma, aar):
  assert metrics.aar_from(mae, sigma) == pytest.approx(aar, abs=1e-9)


def test_aar_terms_floor_at_zero():
  assert metrics.aar_from(8.0, 4.0) == 0.0
  assert metrics.aar_from(8.0, 1.0) == pytest.approx(2.0)


def test_aar_all_groups():
  true = np.array([5.0, 15, 25, 35, 45, 55, 65, 75])
  pred = true + np.arange(1, 9)  # group j (1-based) has error j
  got = metrics.aar(pred, true)
  # MAE 4.5; sigma = sqrt(mean((j - 4.5)^2)) = sqrt(2 * (12.25 + 6.25 + 2.25 + 0.25) / 8) = sqrt(5.25)
  assert got["mae"] == pytest.approx(4.5)
  assert got["sigma"] == pytest.approx(math.sqrt(5.25))
  assert got["aar"] == pytest.approx(2.5 + 3 - math.sqrt(5.25))
  assert got["group_mae"] == pytest.approx(list(range(1, 9)))
  assert got["group_count"] == [1] * 8 and got["groups_used"] == 8


def test_aar_with_empty_groups_uses_the_non_empty_ones():
  true = np.array([15.0, 35.0, 35.0])
  pred = np.array([19.0, 34.0, 36.0])  # errors 4, 1, 1: MAE 2, MAE^2 = 4, MAE^4 = 1
  got = metrics.aar(pred, true)
  assert got["group_mae"] == [None, 4.0, None, 1.0, None, None, None, None]
  assert got["group_count"] == [0, 1, 0, 2, 0, 0, 0, 0] and got["groups_used"] == 2
  assert got["sigma"] == pytest.approx(math.sqrt(((4 - 2) ** 2 + (1 - 2) ** 2) / 2))
  assert got["aar"] == pytest.approx(5 + 3 - math.sqrt(2.5))
  assert metrics.sigma_from([None, float("nan"), 3.0], 2.0) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="non-empty"):
    metrics.sigma_from([None] * 8, 2.0)


def test_mae_per_age():
  got = metrics.mae_per_age([21.0, 23.0, 30.0, 40.0], [20.0, 20.0, 33.0, 20.0])
  assert got == {"age": [20, 33], "mae": [pytest.approx((1 + 3 + 20) / 3), 3.0], "count": [3, 1]}


def test_mae_by_label_skips_unknown_and_accuracy():
  got = metrics.mae_by_label(PRED, TRUE, [0, 1, 1, -1])
  assert got == {"0": {"mae": pytest.approx(0.4), "count": 1}, "1": {"mae": pytest.approx(2.8), "count": 2}}
  assert metrics.accuracy([0, 1, 0, 1], [0, 1, 1, -1]) == pytest.approx(2 / 3)
  assert metrics.accuracy([0, 1], [-1, -1]) is None


def test_shape_and_empty_errors():
  with pytest.raises(ValueError, match="3 predicted ages but 2 true ages"):
    metrics.mae([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match="no examples"):
    metrics.aar([], [])


def test_balanced_maes_by_hand():
  # errors 0.4, 2.6, 3.0, 1.5; groups (LAE Table 1): 20 -> 11-20, 33 -> 31-40, 40 -> 31-40
  balanced = metrics.balanced(PRED, TRUE)
  assert balanced["group_balanced_mae"] == pytest.approx(((0.4 + 2.6) / 2 + (3.0 + 1.5) / 2) / 2)
  # ages present 20, 33, 40: per-age MAEs 1.5, 3.0, 1.5
  assert balanced["age_balanced_mae"] == pytest.approx((1.5 + 3.0 + 1.5) / 3)
  assert "shot" not in balanced


def test_shots_follow_the_training_count_of_the_true_age():
  # training counts by whole year: age 20 -> 150 (many), 33 -> 100 (medium: not over 100),
  # 40 -> 19 (few); halves round up, unknown (-1) ages are left out
  train = np.concatenate([np.full(150, 19.5), np.full(100, 33.0), np.full(19, 40.2), [-1.0] * 5])
  counts = ages.per_year_counts(train)
  assert counts[20] == 150 and counts[33] == 100 and counts[40] == 19 and counts.sum() == 269
  np.testing.assert_array_equal(metrics.shot_of([20, 33, 40, 20.0, 99.0], counts), [0, 1, 2, 0, 2])
  shot = metrics.balanced(PRED, TRUE, counts)["shot"]
  assert shot["many"] == {"mae": pytest.approx((0.4 + 2.6) / 2), "count": 2}
  assert shot["medium"] == {"mae": pytest.approx(3.0), "count": 1}
  assert shot["few"] == {"mae": pytest.approx(1.5), "count": 1}
  assert metrics.balanced([1.0], [20.0], counts)["shot"]["few"] == {"mae": None, "count": 0}
