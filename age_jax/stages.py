"""Training in stages (LAE's decoupled training, Xing's hybrid three-step training) as config.

`config.stages` maps stage names to overrides of the base config, nested like it. Stages run in
the sorted order of their names (ConfigDict keeps no insertion order), so number them:
    c.stages.stage1_representation = {"train": {"num_steps": 3000}}
    c.stages.stage2_classifier = {"train": {"num_steps": 1000, "trainable": "head"},
                           "data": {"sampler": "class_balanced"},
                           "formulation": {"name": "lae_stage2", "lae_mae": 5.1}}
Each stage runs `train.num_steps` steps of its own config (or `train.num_epochs` epochs of
`train.train_size` examples, which training fills in from the training split), starting from the previous stage's
parameters with a fresh optimizer (its own schedule). Global steps count across stages, so a
checkpoint's step says which stage it belongs to and a run resumes mid-stage. With no stages,
the base config is the one stage.
"""
import dataclasses
import math

import ml_collections


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  cfg: ml_collections.ConfigDict   # the base config with this stage's overrides
  first_step: int                  # global step before this stage's first update
  last_step: int                   # global step after its last update

def merge_overrides(base: ml_collections.ConfigDict, overrides, path: str):
  for key, value in overrides.items():
    if key not in base:
      raise ValueError(f"config.{path}{key} is not a config field (stage overrides mirror the base config)")
    if isinstance(base[key], ml_collections.ConfigDict):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ValueError(f"config.{path}{key} must be a nested dict of overrides, got {value!r}")
      merge_overrides(base[key], value, f"{path}{key}.")
    else:
      base[key] = value


def plan(cfg: ml_collections.ConfigDict) -> list[Stage]:
  named = sorted(cfg.stages.items()) if len(cfg.stages) else [("train", {})]
  stages, step = [], 0
  for index, (name, overrides) in enumerate(named):
    stage_cfg = ml_collections.ConfigDict(cfg.to_dict())
    del stage_cfg.stages
    merge_overrides(stage_cfg, overrides, f"stages.{name}.")
    stage_cfg.stages = ml_collections.ConfigDict()
    train = stage_cfg.train
    if train.num_epochs > 0 and train.train_size > 0:
      train.num_steps = math.ceil(train.num_epochs * train.train_size / train.batch_size)
    stages.append(Stage(index, name, stage_cfg, step, step + stage_cfg.train.num_steps))
    step += stage_cfg.train.num_steps
  return stages


def needs_previous_mae(stage: Stage) -> bool:
  """LAE eq. 4/5 with formulation.lae_mae < 0: the stage takes `mae` from the validation MAE of
  the stage before it, measured when that stage ends (see train/loop.py)."""
  f = stage.cfg.formulation
  return f.name == "lae_stage2" and f.lae_mae < 0


def with_lae_mae(stage: Stage, mae: float) -> Stage:
  cfg = ml_collections.ConfigDict(stage.cfg.to_dict())
  cfg.formulation.lae_mae = float(mae)
  return dataclasses.replace(stage, cfg=cfg)


def total_steps(stages: list[Stage]) -> int:
  return stages[-1].last_step


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage a checkpoint at `step` was written in (the last one for the final step)."""
  for stage in stages:
    if stage.first_step < step <= stage.last_step:
      return stage
  return stages[0]
