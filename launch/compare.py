"""Compare two evaluation reports on the same test set (Xing 2017, eq. 4 and Fig. 5):

  python -m launch.compare --a=DIR_OR_JSON --b=DIR_OR_JSON --out=DIR [--name_a=NetMAE --name_b=NetMSE]

DIR_OR_JSON: a report.json written by launch.evaluate, its folder, or a workdir (its own test
report, the one `launch.evaluate --workdir=W` writes). Prints the metrics side by
side and RCCS^a_b(t) for t = 0..10 (> 0 where a is better), and writes comparison.json,
comparison.txt and rccs.png into --out.
"""
import os

from absl import app, flags

_A = flags.DEFINE_string("a", None, "Report of method a: report.json, the folder holding it, or a workdir "
                         "(its test report from launch.evaluate).")
_B = flags.DEFINE_string("b", None, "Report of method b: as --a.")
_OUT = flags.DEFINE_string("out", None, "Folder for comparison.json, comparison.txt and rccs.png.")
_NAME_A = flags.DEFINE_string("name_a", None, "Label of a (default: its folder name).")
_NAME_B = flags.DEFINE_string("name_b", None, "Label of b (default: its folder name).")
flags.mark_flags_as_required(["a", "b", "out"])


def _report(path):
  """A report.json or its folder as given; a workdir (it holds config.json, no report.json) -> its test report."""
  if os.path.isfile(os.path.join(path, "report.json")) or not os.path.isfile(os.path.join(path, "config.json")):
    return path
  from age_jax import evaluate
  folder = evaluate.own_report_dir(path)
  if not os.path.isfile(os.path.join(folder, "report.json")):
    raise FileNotFoundError(f"{path} is a workdir without its test report ({folder}/report.json): "
                            f"run `python -m launch.evaluate --workdir={path}` first")
  return folder


def _default_name(path):
  path = os.path.abspath(path)
  return os.path.basename(os.path.dirname(path) if path.endswith(".json") else path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from age_jax import report
  name_a = _NAME_A.value or _default_name(_A.value)
  name_b = _NAME_B.value or _default_name(_B.value)
  if name_a == name_b:
    name_a, name_b = f"{name_a}(a)", f"{name_b}(b)"
  comparison = report.compare_reports(report.load_report(_report(_A.value)), report.load_report(_report(_B.value)),
                                      name_a, name_b)
  written = report.write_comparison(comparison, _OUT.value)
  print(report.format_comparison(comparison))
  print("wrote " + ", ".join(written), flush=True)


if __name__ == "__main__":
  app.run(main)
