"""Evaluation reports: the metrics of both papers as one JSON-serialisable dict, its PNG plots, a
text table, and the side-by-side comparison of two reports (RCCS, Xing Fig. 5).

The report keeps every per-example prediction ('predictions'), so two runs can be compared later
without re-running either. Plots use matplotlib's Figure directly (Agg canvas): no pyplot, no
global backend change, safe in worker processes and without a display.
"""
import io
import json
import os

import numpy as np
from matplotlib.figure import Figure

from age_jax import metrics, storage

REPORT_FILE = "report.json"
_PREDICTION_DIGITS = 5


def _known(values):
  return values is not None and np.any(np.asarray(values) >= 0)


def _label_section(pred_age, true_age, labels, predicted):
  section = {"num_known": int(np.sum(np.asarray(labels) >= 0)),
             "mae_per_label": metrics.mae_by_label(pred_age, true_age, labels),
             "accuracy": None}
  if predicted is not None:
    section["accuracy"] = metrics.accuracy(predicted, labels)
  return section


def _as_list(values, kind):
  values = np.asarray(values).reshape(-1)
  if kind is float:
    return [round(float(v), _PREDICTION_DIGITS) for v in values]
  return [kind(v) for v in values]


def evaluation_report(pred_age, true_age, gender=None, race=None, pred_gender=None, pred_race=None,
                      file_names=None, train_counts=None) -> dict:
  """All metrics of Xing 2017 and LAE, and the balanced MAEs, for one set of predictions;
  JSON-serialisable (no NaN).

  train_counts: training images per whole-year age (ages.per_year_counts) for the
  many/medium/few-shot MAEs; without it the report has the group- and age-balanced MAEs only.
  gender / race: true labels (-1 = unknown), pred_gender / pred_race: predicted labels. A section
  appears for a label when some true values are known; accuracy when predictions exist too.
  """
  pred_age = np.asarray(pred_age, np.float64).reshape(-1)
  true_age = np.asarray(true_age, np.float64).reshape(-1)
  n = metrics.absolute_errors(pred_age, true_age).size  # also checks the shapes
  for name, values in (("pred_age", pred_age), ("true_age", true_age)):
    if not np.all(np.isfinite(values)):
      raise ValueError(f"{name} has {int(np.sum(~np.isfinite(values)))} non-finite values (a diverged model?)")
  thresholds = list(metrics.CCS_THRESHOLDS)
  counts = metrics.ccs(pred_age, true_age, thresholds)
  report = {
      "num_examples": n,
      "mae": metrics.mae(pred_age, true_age),
      "ccs": {"threshold": thresholds, "count": [int(c) for c in counts],
              "fraction": [float(c) / n for c in counts], "rounded_predictions": True},
      "aar": metrics.aar(pred_age, true_age),
      "balanced": metrics.balanced(pred_age, true_age, train_counts),
      "mae_per_age": metrics.mae_per_age(pred_age, true_age),
  }
  predictions = {"pred_age": _as_list(pred_age, float), "true_age": _as_list(true_age, float)}
  for name, labels, predicted in (("gender", gender, pred_gender), ("race", race, pred_race)):
    if _known(labels):
      report[name] = _label_section(pred_age, true_age, labels, predicted)
      predictions[name] = _as_list(labels, int)
    if predicted is not None:
      predictions[f"pred_{name}"] = _as_list(predicted, int)
  if _known(gender) and _known(race):
    g, r = np.asarray(gender).reshape(-1), np.asarray(race).reshape(-1)
    combined = np.where((g >= 0) & (r >= 0), r * 2 + g, -1)  # race-major, as models.multitask.group_ids
    report["gender_race"] = {"group": "race * 2 + gender",
                             "mae_per_label": metrics.mae_by_label(pred_age, true_age, combined)}
  if file_names is not None:
    if len(file_names) != n:
      raise ValueError(f"{len(file_names)} file names for {n} predictions")
    predictions["file_name"] = [str(f) for f in file_names]
  report["predictions"] = predictions
  return report


def load_report(path: str) -> dict:
  """A report from report.json or from the folder holding it."""
  path = storage.path(path)
  if path.is_dir():
    path = path / REPORT_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: expected a report.json written by age_jax.report.write_report")
  return json.loads(path.read_text())


def _write_json(obj, path):
  storage.write_text(path, json.dumps(obj, indent=1, allow_nan=False))


# --- plots ---

def _save(fig, path):
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  storage.write_bytes(path, png.getvalue())
  return path


def plot_ccs(report, path):
  fig = Figure(figsize=(5.5, 4))
  ax = fig.add_subplot()
  ccs = report["ccs"]
  ax.plot(ccs["threshold"], [100 * f for f in ccs["fraction"]], marker="o")
  ax.set(xlabel="threshold t (years)", ylabel="CCS(t) (% of test images)", ylim=(0, 100),
         title=f"Cumulative correct score, n={report['num_examples']}")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_mae_per_age(report, path):
  per_age = report["mae_per_age"]
  fig = Figure(figsize=(8, 4))
  ax = fig.add_subplot()
  counts_ax = ax.twinx()
  counts_ax.bar(per_age["age"], per_age["count"], width=0.9, color="0.85", label="test images")
  counts_ax.set_ylabel("test images per age")
  ax.plot(per_age["age"], per_age["mae"], marker=".", color="C0", label="MAE")
  ax.axhline(report["mae"], color="C3", linestyle="--", linewidth=1, label=f"overall MAE {report['mae']:.2f}")
  ax.set(xlabel="true age (years)", ylabel="MAE (years)", title="MAE per age")
  ax.set_zorder(counts_ax.get_zorder() + 1)  # the MAE line over the count bars
  ax.patch.set_visible(False)
  ax.legend(loc="upper left")
  return _save(fig, path)


def plot_mae_per_group(report, path):
  aar = report["aar"]
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  x = np.arange(len(aar["group_names"]))
  heights = [m if m is not None else 0.0 for m in aar["group_mae"]]
  bars = ax.bar(x, heights, color="C0")
  for bar, m, c in zip(bars, aar["group_mae"], aar["group_count"]):
    ax.annotate(f"{m:.2f}\nn={c}" if m is not None else "empty", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=7)
  ax.axhline(aar["mae"], color="C3", linestyle="--", linewidth=1, label=f"MAE {aar['mae']:.2f}")
  ax.set_xticks(x, aar["group_names"])
  ax.set(xlabel="age group (LAE Table 1)", ylabel="MAE (years)",
         title=f"MAE per age group: sigma={aar['sigma']:.2f}, AAR={aar['aar']:.2f}")
  ax.margins(y=0.2)
  ax.legend()
  return _save(fig, path)


def plot_mae_per_label(report, path):
  names = [n for n in ("gender", "race") if n in report]
  fig = Figure(figsize=(4 * len(names), 3.5))
  for i, name in enumerate(names):
    ax = fig.add_subplot(1, len(names), i + 1)
    per = report[name]["mae_per_label"]
    keys = sorted(per, key=int)
    bars = ax.bar(keys, [per[k]["mae"] for k in keys], color=f"C{i + 1}")
    for bar, k in zip(bars, keys):
      ax.annotate(f"{per[k]['mae']:.2f}\nn={per[k]['count']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                  ha="center", va="bottom", fontsize=7)
    accuracy = report[name]["accuracy"]
    ax.set(xlabel=f"{name} label", ylabel="MAE (years)",
           title=f"MAE per {name}" + (f" (accuracy {100 * accuracy:.1f}%)" if accuracy is not None else ""))
    ax.margins(y=0.25)
  return _save(fig, path)


def write_report(report: dict, out_dir: str) -> list:
  """Writes report.json and the PNG plots into out_dir; returns the written paths."""
  path = os.path.join(out_dir, REPORT_FILE)
  _write_json(report, path)
  written = [path,
             plot_ccs(report, os.path.join(out_dir, "ccs.png")),
             plot_mae_per_age(report, os.path.join(out_dir, "mae_per_age.png")),
             plot_mae_per_group(report, os.path.join(out_dir, "mae_per_age_group.png"))]
  if "gender" in report or "race" in report:
    written.append(plot_mae_per_label(report, os.path.join(out_dir, "mae_per_gender_race.png")))
  return written


# --- text ---

def _fmt(value, spec=".3f"):
  return "-" if value is None else format(value, spec)


def _faces_line(faces: dict) -> str:
  return (f"faces         detector run on {faces['detected_images']} images: {faces['no_face']} without a "
          f"face (left out), {faces['several_faces']} with several (the largest, most central kept)")


def _balanced_of(report: dict) -> dict:
  """The report's balanced MAEs; for a report written before they existed, from its predictions."""
  p = report["predictions"]
  return report.get("balanced") or metrics.balanced(p["pred_age"], p["true_age"])


def _balanced_line(balanced: dict) -> str:
  line = (f"balanced MAE  group {balanced['group_balanced_mae']:.3f}   age {balanced['age_balanced_mae']:.3f}")
  if "shot" in balanced:
    line += "   many/medium/few-shot " + " / ".join(
        f"{_fmt(v['mae'], '.2f')} (n={v['count']})" for v in balanced["shot"].values())
  return line


def format_table(report: dict) -> str:
  """The report's headline metrics as aligned text lines."""
  aar, ccs = report["aar"], report["ccs"]
  lines = [f"examples      {report['num_examples']}",
           *([_faces_line(report["faces"])] if "faces" in report else []),
           f"MAE           {report['mae']:.3f}",
           f"AAR           {aar['aar']:.3f}   (sigma {aar['sigma']:.3f} over {aar['groups_used']} age groups)",
           _balanced_line(_balanced_of(report)),
           "CCS(t)        " + "  ".join(f"t={t}:{100 * f:.1f}%" for t, f in zip(ccs["threshold"], ccs["fraction"])),
           "age group     " + "  ".join(f"{n:>7}" for n in aar["group_names"]),
           "  MAE         " + "  ".join(f"{_fmt(m, '7.2f'):>7}" for m in aar["group_mae"]),
           "  count       " + "  ".join(f"{c:>7}" for c in aar["group_count"])]
  for name in ("gender", "race"):
    if name in report:
      per = report[name]["mae_per_label"]
      parts = "  ".join(f"{k}: {per[k]['mae']:.2f} (n={per[k]['count']})" for k in sorted(per, key=int))
      lines.append(f"{name:<6} acc.   {_fmt(report[name]['accuracy'])}   MAE per label  {parts}")
  if "intervals" in report:
    lines.append(f"intervals     {report['intervals']['method']} conformal, calibrated on "
                 f"{report['intervals']['calibrated_on']} (n={report['intervals']['calibration_examples']})")
    for nominal, entry in report["intervals"]["by_coverage"].items():
      groups = entry["per_age_group"]
      lines.append(f"  {100 * float(nominal):g}%: coverage {_fmt(100 * entry['coverage'], '.1f')}% width "
                   f"{_fmt(entry['mean_width'], '.1f')} y; per age group " + "  ".join(
                       f"{g}:{_fmt(None if v['coverage'] is None else 100 * v['coverage'], '.0f')}%/"
                       f"{_fmt(v['mean_width'], '.0f')}" for g, v in groups.items()))
  return "\n".join(lines)


# --- comparing two reports (Xing Fig. 5) ---

def _aligned_predictions(a, b):
  """(pred_a, pred_b, true) on one test set; aligns by file name when both have distinct names."""
  pa, pb = a["predictions"], b["predictions"]
  names_a, names_b = pa.get("file_name"), pb.get("file_name")
  if names_a and names_b and len(set(names_a)) == len(names_a):
    if sorted(names_a) != sorted(names_b):
      raise ValueError("the two reports are on different test sets (their file names differ); "
                       "RCCS (Xing eq. 4) compares two methods on the same test images")
    position = {n: i for i, n in enumerate(names_b)}
    order = np.array([position[n] for n in names_a])
  else:
    if len(pa["true_age"]) != len(pb["true_age"]):
      raise ValueError(f"the two reports have {len(pa['true_age'])} and {len(pb['true_age'])} examples; "
                       "RCCS (Xing eq. 4) compares two methods on the same test images")
    order = np.arange(len(pb["true_age"]))
  true_a = np.asarray(pa["true_age"])
  if not np.allclose(true_a, np.asarray(pb["true_age"])[order]):
    raise ValueError("the two reports' true ages differ example by example: not the same test set "
                     "(or not in the same order, and without file names to align them)")
  return np.asarray(pa["pred_age"]), np.asarray(pb["pred_age"])[order], true_a


def compare_reports(a: dict, b: dict, name_a: str = "a", name_b: str = "b") -> dict:
  """RCCS^a_b(t) for t = 0..10 (Xing eq. 4; > 0 where a is better) and the headline metrics side by side."""
  pred_a, pred_b, true = _aligned_predictions(a, b)
  thresholds = list(metrics.CCS_THRESHOLDS)
  rows = {}
  for name, r in ((name_a, a), (name_b, b)):
    balanced = _balanced_of(r)
    rows[name] = {"mae": r["mae"], "aar": r["aar"]["aar"], "sigma": r["aar"]["sigma"],
                  "group_bal_mae": balanced["group_balanced_mae"], "age_bal_mae": balanced["age_balanced_mae"],
                  **{f"{s}_shot_mae": balanced.get("shot", {}).get(s, {}).get("mae") for s in metrics.SHOTS},
                  **{f"mae_{g}": m for g, m in zip(r["aar"]["group_names"], r["aar"]["group_mae"])},
                  **{f"ccs({t})": c for t, c in zip(r["ccs"]["threshold"], r["ccs"]["count"])},
                  "gender_accuracy": r.get("gender", {}).get("accuracy"),
                  "race_accuracy": r.get("race", {}).get("accuracy")}
  return {"names": [name_a, name_b], "num_examples": int(true.size), "threshold": thresholds,
          "rccs": [int(v) for v in metrics.rccs(pred_a, pred_b, true, thresholds)], "metrics": rows}


def format_comparison(comparison: dict) -> str:
  a, b = comparison["names"]
  rows_a, rows_b = comparison["metrics"][a], comparison["metrics"][b]
  width = max(12, len(a), len(b))
  lines = [f"{'metric':<16}{a:>{width}}{b:>{width}}{'a - b':>{width}}"]
  for key in rows_a:
    va, vb = rows_a[key], rows_b[key]
    diff = va - vb if va is not None and vb is not None else None
    spec = "d" if isinstance(va, int) and isinstance(vb, int) else ".3f"
    lines.append(f"{key:<16}{_fmt(va, spec):>{width}}{_fmt(vb, spec):>{width}}{_fmt(diff, spec):>{width}}")
  lines.append(f"RCCS^{a}_{b}(t): " + "  ".join(f"t={t}:{v:+d}" for t, v in zip(comparison["threshold"],
                                                                           comparison["rccs"])))
  return "\n".join(lines)


def plot_rccs(comparison: dict, path: str) -> str:
  """Bars of RCCS(t) with their values, as Xing Fig. 5."""
  a, b = comparison["names"]
  fig = Figure(figsize=(6, 4))
  ax = fig.add_subplot()
  values = comparison["rccs"]
  bars = ax.bar(comparison["threshold"], values, color=["C2" if v >= 0 else "C3" for v in values])
  for bar, v in zip(bars, values):
    ax.annotate(f"{v:+d}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                va="bottom" if v >= 0 else "top", fontsize=8)
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set(xlabel="threshold t (years)", ylabel=f"CCS_{a}(t) - CCS_{b}(t)",
         title=f"RCCS of {a} over {b} (n={comparison['num_examples']})")
  ax.margins(y=0.15)
  return _save(fig, path)


def write_comparison(comparison: dict, out_dir: str) -> list:
  json_path = os.path.join(out_dir, "comparison.json")
  _write_json(comparison, json_path)
  table_path = os.path.join(out_dir, "comparison.txt")
  storage.write_text(table_path, format_comparison(comparison) + "\n")
  return [json_path, table_path, plot_rccs(comparison, os.path.join(out_dir, "rccs.png"))]
