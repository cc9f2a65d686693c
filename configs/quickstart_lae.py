"""LAE's decoupled training (Bao et al. 2021, 2.4) at the quickstart's scale.

Stage 1 (representation) is configs/quickstart.py as it is (DLDL-v2, 9,000 steps of 64).
Stage 2 (classification) follows LAE 3.3 for the classifier: only the FC layer (`age_head`)
learns, the backbone runs as at inference, on class-balanced batches (each age equally
likely), with L_ld + (L_er - mae)^2 (eq. 4) and mae = stage 1's validation MAE (eq. 5); SGD
with momentum 0.9 and OneCycle over 8 epochs, base lr 0.001 x batch / 256, weight decay 5e-4.

    --config=configs/quickstart_lae.py             both stages in one workdir;
    --config=configs/quickstart_lae.py:classifier  stage 2 alone, from a finished stage 1:
        add --config.model.init_from=STAGE1_WORKDIR (mae: its weights' validation MAE).
"""
from configs import quickstart

_CLASSIFIER = {
    "train": {"num_epochs": 8.0, "trainable": "head", "eval_every": 0},
    "data": {"sampler": "class_balanced", "balance_by": "age"},
    "optim": {"name": "sgd", "momentum": 0.9, "schedule": "onecycle", "learning_rate": 0.001,
              "lr_reference_batch": 256, "weight_decay": 5e-4, "warmup_steps": 0},
    "formulation": {"name": "lae_stage2", "lae_mae": -1.0},
}


def get_config(arg: str = ""):
  c = quickstart.get_config()
  if arg == "classifier":
    for section, overrides in _CLASSIFIER.items():
      c[section].update(overrides)
    return c
  if arg:
    raise ValueError(f"configs/quickstart_lae.py:{arg}: expected no argument or 'classifier'")
  c.stages.stage1_representation = {}
  c.stages.stage2_classifier = _CLASSIFIER
  return c
