"""launch/bench/longtail_table.py's validation read-out: each row's final validation record, which
sweeps are chosen on (issue 26: choose on validation, report on test)."""
import json

from launch.bench import longtail_table


def test_the_final_validation_record_is_the_last_one(tmp_path):
  lines = [{"step": 10, "split": "train", "mae": 9.0}, {"step": 10, "split": "validation", "mae": 6.0},
           {"step": 20, "split": "validation", "mae": 5.5, "group_balanced_mae": 6.1, "aar": 2.0},
           {"step": 20, "split": "train", "mae": 4.0}]
  text = "\n".join(json.dumps(x) for x in lines) + '\n{"step": 30, "split": "valid'   # cut short by a crash
  (tmp_path / "metrics.jsonl").write_text(text)
  assert longtail_table._final_validation(str(tmp_path)) == lines[2]
  assert longtail_table._final_validation(str(tmp_path / "missing")) is None
