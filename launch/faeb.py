"""The FAEB protocol in one command (Paplham & Franc, CVPR 2024):

  python -m launch.faeb --config=configs/quickstart.py --workdir=runs/faeb --img_root=FACES \
      --json_dir=FAEB_JSONS --train=AgeDB --splits=0-4 --test=AgeDB,FG-Net,UTKFace [--config.x=...]

Trains one workdir per split under WORKDIR/<train>/split{k} (re-running resumes), tests each on
its own test folders and on every other --test database (all folders), and writes
WORKDIR/<train>/faeb_table.md and .json: MAE and CS(5), mean ± std over the splits. A database
is a FAEB JSON path or a NAME found in --json_dir as NAME_aligned.json (--aligned, FAEB's
default) or NAME.json; every img_path is relative to --img_root. Runs as launch.train does on
one CPU or on every process of a pod (same flags for --distributed).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root folder of the split workdirs and the table.")
_TRAIN = flags.DEFINE_string("train", None, "The database to train on (name or .json).")
_TEST = flags.DEFINE_list("test", [], "Databases to test on (the training one: its split's test folders).")
_SPLITS = flags.DEFINE_string("splits", "0-4", "FAEB splits to run, e.g. 0-4 or 0,2.")
_IMG_ROOT = flags.DEFINE_string("img_root", None, "The folder every JSON's img_path is relative to.")
_JSON_DIR = flags.DEFINE_string("json_dir", "", "Folder of the FAEB database JSONs (for names).")
_ALIGNED = flags.DEFINE_bool("aligned", True, "Names resolve to NAME_aligned.json (FAEB's crop) "
                             "instead of NAME.json.")
flags.mark_flags_as_required(["config", "workdir", "train", "img_root"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.refuse_repeated_flags(sys.argv[1:])
  common.setup_jax()
  from age_jax import faeb_benchmark  # after the JAX set-up
  from age_jax.train import preemption, workdir
  try:
    splits = faeb_benchmark.parse_splits(_SPLITS.value)
    table = faeb_benchmark.run(_CONFIG.value, _WORKDIR.value, _TRAIN.value, splits, _TEST.value,
                               _IMG_ROOT.value, _JSON_DIR.value, _ALIGNED.value)
  except preemption.Stopped as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except workdir.WorkdirInUse as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(1)
  print(faeb_benchmark.markdown(table), flush=True)


if __name__ == "__main__":
  app.run(main)
