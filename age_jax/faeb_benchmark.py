"""The FAEB protocol (Paplham & Franc, CVPR 2024) as one run: train on one database's splits,
test each split's model on its own test folders and on every other database, and write the
FAEB table (MAE and CS(5), mean ± std over the splits, per test database).

Layout under the root folder (launch/faeb.py's --workdir):
  <root>/<train db>/split{k}/                   a training workdir per split (resumable)
  <root>/<train db>/split{k}/faeb_eval/<db>.json that split's result on one test database
  <root>/<train db>/faeb_table.md, faeb_table.json
Re-running the same command resumes an unfinished split, skips finished evaluations and
rewrites the table from every result found, so a requeued cluster job picks up where it stopped.
Another database is tested on all its folders (FAEB's benchmark files: tst = every folder);
the training database on split k's own test folders.
"""
import json
import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from age_jax import evaluate, storage
from age_jax.data import datasets, run_data
from age_jax.data.builders import faeb as faeb_builder, faeb_protocol
from age_jax.train import loop
from age_jax.train.evaluator import Evaluator

TABLE_NAME = "faeb_table"
EVAL_DIR = "faeb_eval"
CS_THRESHOLD = 5   # FAEB's CS metric: the fraction of faces with |predicted - true| <= 5 years


def parse_splits(text: str) -> list[int]:
  """'0-4' -> [0, 1, 2, 3, 4]; '0,2' -> [0, 2]; '3' -> [3]."""
  out = []
  for part in text.split(","):
    part = part.strip()
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not match:
      raise ValueError(f"--splits={text!r}: expected split numbers like '0-4' or '0,2'")
    first, last = int(match[1]), int(match[2] or match[1])
    if last < first:
      raise ValueError(f"--splits={text!r}: {part} is an empty range")
    out.extend(k for k in range(first, last + 1) if k not in out)
  return out


def database_json(db: str, json_dir: str, aligned: bool) -> str:
  """A database given as a .json path, or as a name in json_dir: NAME_aligned.json when aligned
  (FAEB's benchmarks use the aligned files), else NAME.json."""
  if db.endswith(".json"):
    path = db
  else:
    path = os.path.join(json_dir or ".", f"{db}_aligned.json" if aligned else f"{db}.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"database {db!r}: {path} does not exist (give a FAEB .json path, or "
                            "--json_dir holding NAME.json / NAME_aligned.json)")
  return os.path.abspath(path)


def database_name(db: str) -> str:
  name = os.path.basename(db)
  return re.sub(r"(_aligned)?\.json$", "", name)


def check_splits(json_path: str, splits: list[int]) -> None:
  """Fails before any training when the database has fewer FAEB splits than asked."""
  folders = {e.get("folder") for e in faeb_builder.read_database(json_path) if isinstance(e, dict)}
  table = faeb_protocol.splits_for(f for f in folders if isinstance(f, int))
  if not table:
    raise ValueError(f"{json_path}: its folders are neither 0-9 nor 0-2, so FAEB trains on no split of it "
                     "(FG-NET is test-only); give it to --test")
  wrong = [k for k in splits if k >= len(table)]
  if wrong:
    raise ValueError(f"--splits asks for split(s) {wrong}, but {json_path} has FAEB splits 0..{len(table) - 1}")


def split_config(base_cfg, json_path: str, img_root: str, k: int):
  """The run config of split k: the faeb dataset from this JSON, FAEB's folders as the splits."""
  cfg = base_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.name = "faeb"
    cfg.data.manual_dir = os.path.abspath(img_root)
    cfg.data.builder_options.json = json_path
    cfg.data.train_split, cfg.data.val_split, cfg.data.eval_split = (
        f"faeb{k}_train", f"faeb{k}_val", f"faeb{k}_test")
  return cfg


def _prepare_everywhere(fn):
  """fn() on process 0 first (it builds), then on the others (they find the build)."""
  result = fn() if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("faeb database prepared")
    if result is None:
      result = fn()
  return result


def evaluate_split(workdir: str, k: int, train_name: str, tests: dict[str, str], img_root: str) -> dict:
  """{test db: result} for the split's model; each result is kept in faeb_eval/<db>.json and
  not recomputed. tests: {name: json path}."""
  out_dir = os.path.join(workdir, EVAL_DIR)
  results, todo = {}, []
  for name in tests:
    path = storage.path(out_dir) / f"{name}.json"
    if path.exists():
      results[name] = json.loads(path.read_text())
    else:
      todo.append(name)
  if not todo:
    return results
  exp, cfg, state, normalizer = evaluate.restore(workdir)
  for name in todo:
    if name == train_name:
      records, split = run_data.load_split(cfg, f"faeb{k}_test"), f"faeb{k}_test"
      built = datasets.build_report("faeb", run_data.data_dir(cfg), fingerprint=cfg.data.fingerprint,
                                    **dict(cfg.data.builder_options))
    else:
      options = dict(cfg.data.builder_options, json=tests[name])
      options.pop("split_file", None)   # another database: its own files, every folder
      built = _prepare_everywhere(lambda: datasets.prepare("faeb", img_root, run_data.data_dir(cfg), **options))
      records, split = datasets.load_split("faeb", run_data.data_dir(cfg), "full", **options), "full"
    report = Evaluator(exp, cfg, normalizer, records=records).report(state)
    results[name] = {"database": name, "split": split, "faeb_split": k, "num_examples": report["num_examples"],
                     "mae": report["mae"], "cs5": report["ccs"]["fraction"][CS_THRESHOLD],
                     "crop": built.get("crop", ""), "step": int(state.step), "workdir": os.path.abspath(workdir)}
    print(f"[faeb] split {k}: {name} ({split}) MAE {results[name]['mae']:.3f}, CS(5) "
          f"{100 * results[name]['cs5']:.1f}% on {report['num_examples']} faces", flush=True)
    if jax.process_index() == 0:
      storage.write_text(storage.path(out_dir) / f"{name}.json", json.dumps(results[name], indent=1))
  return results


def summarize(per_split: dict[int, dict[str, dict]], train_name: str, test_names: list[str]) -> dict:
  """The FAEB table: per test database, MAE and CS(5) mean and sample std (ddof=1) over the
  splits that have a result (std null with one split)."""
  rows = []
  for name in test_names:
    found = {k: r[name] for k, r in sorted(per_split.items()) if name in r}
    maes = np.array([r["mae"] for r in found.values()], np.float64)
    cs5 = np.array([r["cs5"] for r in found.values()], np.float64)
    std = lambda x: float(np.std(x, ddof=1)) if x.size > 1 else None
    rows.append({"database": name, "own_test_folders": name == train_name, "splits": sorted(found),
                 "crop": sorted({r.get("crop", "") for r in found.values()}),
                 "mae_mean": float(maes.mean()) if maes.size else None, "mae_std": std(maes),
                 "cs5_mean": float(cs5.mean()) if cs5.size else None, "cs5_std": std(cs5),
                 "mae_per_split": {str(k): r["mae"] for k, r in found.items()},
                 "cs5_per_split": {str(k): r["cs5"] for k, r in found.items()},
                 "num_examples": {str(k): r["num_examples"] for k, r in found.items()}})
  return {"protocol": "FAEB (Paplham & Franc, CVPR 2024)", "train_database": train_name, "rows": rows}


def markdown(table: dict) -> str:
  def pm(mean, std, scale=1.0, digits=2):
    if mean is None:
      return "-"
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")
  lines = [f"FAEB table: trained on {table['train_database']} (mean ± sample std over splits)", "",
           "| test database | MAE | CS(5) % | splits | face crop |", "|---|---|---|---|---|"]
  for row in table["rows"]:
    name = row["database"] + (" (own test folders)" if row["own_test_folders"] else "")
    lines.append(f"| {name} | {pm(row['mae_mean'], row['mae_std'])} | "
                 f"{pm(row['cs5_mean'], row['cs5_std'], 100, 1)} | {','.join(map(str, row['splits']))} | "
                 f"{','.join(row['crop'])} |")
  return "\n".join(lines) + "\n"


def run(base_cfg, root: str, train_db: str, splits: list[int], test_dbs: list[str], img_root: str,
        json_dir: str = "", aligned: bool = True) -> dict:
  """Trains and tests every split (see the module doc); returns the table."""
  train_json = database_json(train_db, json_dir, aligned)
  train_name = database_name(train_db)
  tests = {train_name: train_json}
  for db in test_dbs:
    tests.setdefault(database_name(db), database_json(db, json_dir, aligned))
  check_splits(train_json, splits)
  base = os.path.join(root, train_name)
  per_split = {}
  for k in splits:
    workdir = os.path.join(base, f"split{k}")
    print(f"[faeb] split {k}: training in {workdir}", flush=True)
    loop.train(split_config(base_cfg, train_json, img_root, k), workdir)
    per_split[k] = evaluate_split(workdir, k, train_name, tests, img_root)
  table = summarize(per_split, train_name, list(tests))
  if jax.process_index() == 0:
    storage.write_text(storage.path(base) / f"{TABLE_NAME}.json", json.dumps(table, indent=1))
    storage.write_text(storage.path(base) / f"{TABLE_NAME}.md", markdown(table))
  return table
