"""The long-tail table (issue 26): a stage-1 run, its post-hoc logit adjustment (tau chosen on
the validation split, train/posthoc.py) and stage-2 runs from its weights, on the test split:
MAE, group- and age-balanced MAE, many/medium/few-shot MAE, sigma, AAR, three group MAEs, time.

  python -m launch.bench.longtail_table --stage1=W [--row=NAME=WORKDIR ...] [--times=OUT/times.txt]
      [--out=OUT/table.md]

Stage-2 rows are read from their workdirs' eval/<source>/report.json (launch.evaluate writes it);
their time from --times ('NAME train_s=SECONDS' lines, as launch/bench/longtail_table.sh writes).
Each stage-2 row's final validation figures (metrics.jsonl: MAE, group-balanced MAE, AAR) are printed
and kept in the JSON, so that sweeps are chosen on validation and reported on test.
"""
import json
import os

from absl import app, flags

from launch import common

_STAGE1 = flags.DEFINE_string("stage1", None, "The stage-1 workdir (a finished softmax-head run).")
_ROWS = flags.DEFINE_multi_string("row", [], "NAME=WORKDIR of a stage-2 run; repeat, in table order.")
_TIMES = flags.DEFINE_string("times", "", "'NAME train_s=S' lines: each row's training time.")
_OUT = flags.DEFINE_string("out", "", "Also write the table (markdown) and its rows (JSON beside it) here.")
flags.mark_flag_as_required("stage1")

_GROUPS = ("1-10", "61-70", "71+")


def _row(name, report, seconds=None) -> dict:
  a, b = report["aar"], report["balanced"]
  groups = dict(zip(a["group_names"], a["group_mae"]))
  return {"run": name, "mae": report["mae"], "group_balanced_mae": b["group_balanced_mae"],
          "age_balanced_mae": b["age_balanced_mae"], **{s: v["mae"] for s, v in b["shot"].items()},
          "sigma": a["sigma"], "aar": a["aar"], **{g: groups[g] for g in _GROUPS}, "seconds": seconds}


def _markdown(rows) -> str:
  cells = lambda r: [r["run"]] + [f"{r[k]:.3f}" if k in ("mae", "group_balanced_mae") else
                                  ("-" if r[k] is None else f"{r[k]:.2f}")
                                  for k in ("mae", "group_balanced_mae", "age_balanced_mae", "many", "medium", "few",
                                            "sigma", "aar", *_GROUPS)] + [
      "-" if r["seconds"] is None else f"{r['seconds']:.0f}"]
  head = ["run", "MAE", "group-bal. MAE", "age-bal. MAE", "many", "medium", "few", "sigma", "AAR", *_GROUPS, "train s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in rows])


def _times(path) -> dict:
  if not path or not os.path.exists(path):
    return {}
  out = {}
  for line in open(path):
    name, _, seconds = line.strip().partition(" train_s=")
    if seconds:
      out[name] = float(seconds)
  return out


def _final_validation(workdir) -> dict | None:
  """The run's last validation record in metrics.jsonl (training writes it when the run ends)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  found = None
  for line in open(path):
    try:
      record = json.loads(line)
    except ValueError:   # a line cut short by a crash
      continue
    if record.get("split") == "validation":
      found = record
  return found


def _report_of(workdir, source):
  with open(os.path.join(workdir, "eval", source, "report.json")) as f:
    return json.load(f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  from age_jax import formulations, losses, report as report_lib
  from age_jax.data import datasets, run_data
  from age_jax.inference.restore import restore
  from age_jax.train import posthoc
  from age_jax.train.evaluator import Evaluator, predict_source

  exp, cfg, state, normalizer = restore(_STAGE1.value, adjusted=False)
  train_ages = datasets.split_labels(run_data.load_split(cfg, cfg.data.train_split))["age"]
  f = formulations.with_age_counts(cfg.formulation, train_ages)
  log_prior, bins = formulations.log_prior(f), losses.bin_ages(f.num_classes, f.min_age)
  predict = exp.jit_predict_step(view_log_probs=True)
  found = {}
  for split in (cfg.data.val_split, cfg.data.eval_split):
    source = Evaluator(exp, cfg, normalizer, split).source
    found[split] = predict_source(exp, cfg, normalizer, predict, state, source)
  val, test = found[cfg.data.val_split], found[cfg.data.eval_split]
  sweep = posthoc.sweep(val["pred_age_log_probs"], val["age"], log_prior, bins)
  tau = posthoc.choose(sweep, f.logit_adjustment_budget)
  counts = run_data.training_age_counts(cfg)
  scored = lambda t: report_lib.evaluation_report(
      posthoc.adjusted_ages(test["pred_age_log_probs"], log_prior, bins, t), test["age"], train_counts=counts)
  times = _times(_TIMES.value)
  rows = [_row("stage 1", scored(0.0), times.get("stage1")),
          _row(f"post-hoc logit adjustment, tau={tau:g} (chosen on validation)", scored(tau), 0.0)]
  source = f"{cfg.data.name}_{cfg.data.eval_split}"
  for entry in _ROWS.value:
    name, _, workdir = entry.rpartition("=")  # a name may hold "=", a workdir never
    rows.append(_row(name, _report_of(workdir, source), times.get(name)))
    rows[-1]["validation"] = _final_validation(workdir)
  table = _markdown(rows)
  print("validation sweep (tau: MAE / group-balanced MAE / sigma): " + "  ".join(
      f"{r['tau']:g}: {r['mae']:.3f}/{r['group_balanced_mae']:.3f}/{r['sigma']:.2f}" for r in sweep))
  for r in rows:
    v = r.get("validation")
    if v:
      print(f"validation, {r['run']}: MAE {v['mae']:.3f} / group-balanced MAE {v['group_balanced_mae']:.3f} / AAR "
            f"{v['aar']:.2f}")
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w") as out:
      out.write(table + "\n")
    with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as out:
      json.dump({"rows": rows, "validation_sweep": sweep, "tau": tau}, out, indent=1)


if __name__ == "__main__":
  app.run(main)
