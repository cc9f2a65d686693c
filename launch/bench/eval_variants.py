"""One trained run scored four ways: its raw weights and their moving average (where the run kept
one, config.train.ema_decay > 0), each with one and with five evaluation views (data.eval_views),
on the validation and test splits: MAE, group-balanced MAE and sigma (issue 26's quickstart levers).

  python -m launch.bench.eval_variants --workdir=W
"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training workdir.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_jax()
  from age_jax import checkpoint, evaluate, metrics
  from age_jax.train.evaluator import Evaluator

  exp, cfg, state, normalizer = evaluate.restore(_WORKDIR.value, adjusted=False)
  weights = {"ema" if cfg.train.ema_decay > 0 else "raw": state}
  if cfg.train.ema_decay > 0:
    ckpt = checkpoint.Checkpointer(_WORKDIR.value, read_only=True)
    weights["raw"] = evaluate._restore_weights(ckpt, exp.abstract_state, int(state.step), ema=False)
    ckpt.close()
  print("| weights | views | split | MAE | group-balanced MAE | sigma |\n|---|---|---|---|---|---|")
  for name, variant in sorted(weights.items(), reverse=True):
    for views in (1, 5):
      cfg.data.eval_views = views
      for split in (cfg.data.val_split, cfg.data.eval_split):
        p = Evaluator(exp, cfg, normalizer, split).predict(variant)
        pred, true = p["pred_age"], p["age"]
        print(f"| {name} | {views} | {split} | {metrics.mae(pred, true):.3f} | "
              f"{metrics.balanced(pred, true)['group_balanced_mae']:.3f} | {metrics.aar(pred, true)['sigma']:.2f} |",
              flush=True)


if __name__ == "__main__":
  app.run(main)
