"""The base config: every field's default, in one place, and its validation.

Experiment configs in configs/ start from `default_config()` and override fields;
`validate()` runs once, before any long work, and names the offending field.
"""
import json

import jax
import ml_collections

from age_jax import formulations, storage
from age_jax.data import augment, samplers
from age_jax.models import layers, multitask


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict({
      "name": "utkface",            # builder name, see age_jax.data.datasets
      "manual_dir": "",             # the folder of source files the user downloaded
      "data_dir": "",               # where the prepared ArrayRecord dataset lives ('' = ~/.cache/age_jax/tfds)
      # The build of the source a run trained on (set by training, kept in config.json): evaluation
      # and resumes read exactly that build. '' = whatever manual_dir holds now.
      "fingerprint": "",
      # Options of the dataset builder (see age_jax/data/builders/base.py); each distinct set of
      # options is prepared once, side by side. Dataset-specific ones (e.g. MORPH's num_folds) can
      # be added here by an experiment config.
      "builder_options": ml_collections.ConfigDict({
          "keep_conflicting_duplicates": False,
          "skip_corrupt": False,
          "skip_bad_labels": False,
          "split_file": "",
          "canonical_crop": False,  # detect and align every face onto the canonical crop at build time
          "crop_size": 256,
      }),
      "train_split": "train",
      "val_split": "validation",
      "eval_split": "test",
      "load_size": 256,             # decoded images are resized to load_size^2 (Xing 4.1: 256)
      "image_size": 227,            # network input (random crop when training, centre crop at eval)
      "augment": "xing",            # preset name, see age_jax.data.augment
      "normalize": "mean_image",    # 'mean_image' (Xing 3.1.1) | 'imagenet'
      "pixel_scale": 1.0 / 255.0,   # applied after mean subtraction
      "cache": "disk",              # decoded images: 'disk' (array file beside the dataset, decoded once,
                                    # memory-mapped) | 'memory' (that file read into RAM) | 'none' (decode every read)
      "align": False,               # align at load time from the records' five landmarks (FG-NET; LAE 3.3)
      "sampler": "shuffle",         # 'shuffle' | 'age_aware' (Xing 4.1) | 'class_balanced' (LAE 2.4)
      "balance_by": "age",          # class_balanced: 'age' | 'age_group' | 'gender' | 'race' | 'gender_race'
      # 'lae' preset (LAE 2.3): random resized crop, colour jitter, RandAugment N, M.
      "crop_scale": (0.08, 1.0),
      "crop_ratio": (0.75, 4 / 3),
      "color_jitter": (0.4, 0.4, 0.4, 0.1),   # brightness, contrast, saturation, hue
      "randaugment_num_ops": 2,
      "randaugment_magnitude": 9,
      "randaugment_op_prob": 0.5,
      "face_rotation": 10.0,        # 'face' preset: degrees either way
      "face_scale": (0.9, 1.1),     # 'face' preset: zoom factors (> 1 zooms in)
      "eval_crop_fraction": 0.875,
      "eval_views": 1,              # 5: evaluation averages the centre crop and 4 crops shifted diagonally
      "eval_view_shift": 2,         # ... by this many pixels (centre-crop presets)  # 'lae' evaluation: resize to image_size / fraction, centre crop
      "num_threads": 2,             # grain read threads for decode/augment
      "num_workers": 0,             # grain worker processes (0: threads in the training process)
      "prefetch": 2,                # batches prefetched to device
  })

  c.model = ml_collections.ConfigDict({
      "name": "xing_baseline",
      "conv_lowering": "auto",      # 'auto' | 'xla' | 'patches' | 'hybrid' | 'onednn' (models/layers.py, age_jax/cpu)
      "dtype": "float32",           # compute dtype; params stay float32
      "conv_features": (96, 256, 384),
      "fc_features": (512, 512),
      "resnet_width": 64,           # ResNets: channels of the first stage, doubled per stage (He et al.: 64)
      "dropout_rate": 0.5,
      "stochastic_depth_rate": 0.2,  # EfficientNetV2 only
      "init_from": "",              # a workdir or a .safetensors/.npz/.pth: start from its weights (train/init_from.py)
      "pretrained": "",             # official weights by name, e.g. 'torchvision:resnet50' (models/weights_hub.py)
  })

  c.multitask = multitask.default_config()

  c.formulation = formulations.default_config()

  # Xing 4.1: SGD, momentum 0.9, weight decay 5e-4, lr 1e-3 / 10 every 10k iterations.
  c.optim = ml_collections.ConfigDict({
      "name": "sgd",                # 'sgd' | 'adamw'
      "learning_rate": 1e-3,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 5e-4,         # L2 added to the gradient (Caffe); kernels only
      "schedule": "step",           # 'step' | 'multistep' | 'cosine' | 'onecycle' | 'constant'
      "step_every": 10_000,
      "step_factor": 0.1,
      "milestones": (),             # 'multistep': fractions of the stage's steps where lr *= step_factor
      "lr_reference_batch": 0,      # > 0: lr = learning_rate * train.batch_size / this (LAE 3.3: 256)
      "warmup_steps": 0,
      "grad_clip_norm": 0.0,        # 0 = off
  })

  c.train = ml_collections.ConfigDict({
      "batch_size": 128,            # global, across all devices and processes
      "num_steps": 50_000,
      "num_epochs": 0.0,            # > 0: overrides num_steps with ceil(num_epochs * train_size / batch_size)
      "train_size": 0,              # training examples per epoch; filled in by training (config.json)
      "log_every": 100,
      "checkpoint_every": 5_000,
      "eval_every": 0,              # validation MAE every N steps (0 = only at the end)
      "max_to_keep": 2,
      "trainable": "all",           # 'all' | 'head' (only the age head learns; batch statistics frozen)
      "ema_decay": 0.0,             # > 0: keep a moving average of the weights and evaluate with it
  })

  c.eval = ml_collections.ConfigDict({
      "batch_size": 256,
      "mirror": False,              # average each face's prediction with its mirror image's
  })

  c.mesh = ml_collections.ConfigDict({
      "data": -1,                   # -1: all devices not on the fsdp axis
      "fsdp": 1,                    # devices sharing one copy of params/optimizer state (1 = pure data parallel)
      "fsdp_min_size": 2**18,       # arrays with fewer elements stay replicated (all-gathers cost latency)
  })
  # Named stages, each overriding fields of this config (see age_jax/stages.py).
  c.stages = ml_collections.ConfigDict()
  return c


_CHOICES = {
    "data.augment": augment.PRESETS,
    "data.normalize": ("mean_image", "imagenet"),
    "data.cache": ("disk", "memory", "none"),
    "data.sampler": samplers.SAMPLERS,
    "model.dtype": ("float32", "bfloat16"),
    "model.conv_lowering": layers.LOWERINGS,
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("step", "multistep", "cosine", "onecycle", "constant"),
    "train.trainable": ("all", "head"),
}

_POSITIVE = ("data.load_size", "data.image_size", "train.batch_size", "train.num_steps",
             "train.log_every", "train.checkpoint_every", "train.max_to_keep", "eval.batch_size",
             "optim.learning_rate", "data.num_threads")
_NON_NEGATIVE = ("train.eval_every", "data.num_workers", "data.prefetch", "optim.warmup_steps",
                 "optim.weight_decay", "optim.grad_clip_norm")
# Models whose trunk takes one width per convolution block (a tuple of this length).
_CONV_BLOCKS = {"xing_baseline": 3}


def _get(cfg, dotted):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks values that ml_collections' types cannot, in every stage; raises ValueError
  naming the field."""
  from age_jax import stages
  for stage in stages.plan(cfg):
    if (stage.cfg.train.ema_decay > 0) != (cfg.train.ema_decay > 0):
      raise ValueError(f"stage {stage.name!r} turns config.train.ema_decay {'on' if stage.cfg.train.ema_decay else 'off'} "
                       "while the run's is not: a run keeps a moving average in every stage or in none")
    if stages.needs_previous_mae(stage):
      if (stage.index == 0 and not (stage.cfg.model.init_from or stage.cfg.model.get("pretrained"))) or \
          not stage.cfg.data.val_split:
        raise ValueError(f"stage {stage.name!r}: config.formulation.lae_mae < 0 takes the validation "
                         "MAE of the previous stage (or of the weights of config.model.init_from), but "
                         "there is neither or no config.data.val_split; set lae_mae (LAE eq. 5)")
      stage = stages.with_lae_mae(stage, 0.0)
    _validate_stage(stage.cfg)
    # Training fills age_counts when the top-level formulation needs them (train/loop.py).
    if formulations.needs_age_counts(stage.cfg.formulation) and not formulations.needs_age_counts(cfg.formulation):
      raise ValueError(f"stage {stage.name!r} needs config.formulation.age_counts (e.g. lds_reweight="
                       f"{stage.cfg.formulation.lds_reweight!r}), which training fills only when the top-level "
                       "config.formulation needs them; run that stage alone (config.model.init_from)")
  return cfg


def _validate_stage(cfg):
  for field, choices in _CHOICES.items():
    if _get(cfg, field) not in choices:
      raise ValueError(f"config.{field}={_get(cfg, field)!r}; expected one of {list(choices)}")
  for field in _POSITIVE:
    if not _get(cfg, field) > 0:
      raise ValueError(f"config.{field}={_get(cfg, field)!r}; expected a positive number")
  for field in _NON_NEGATIVE:
    if not _get(cfg, field) >= 0:
      raise ValueError(f"config.{field}={_get(cfg, field)!r}; expected a number >= 0")
  blocks = _CONV_BLOCKS.get(cfg.model.name)
  if blocks and len(cfg.model.conv_features) != blocks:
    raise ValueError(f"config.model.conv_features={tuple(cfg.model.conv_features)}: model "
                     f"{cfg.model.name!r} has {blocks} convolution blocks; give {blocks} widths")
  for field in ("model.conv_features", "model.fc_features"):
    if not all(isinstance(w, int) and w > 0 for w in _get(cfg, field)):
      raise ValueError(f"config.{field}={tuple(_get(cfg, field))}; expected positive integer widths")
  if cfg.data.augment != "lae" and cfg.data.image_size > cfg.data.load_size:
    raise ValueError(f"config.data.image_size={cfg.data.image_size} is larger than "
                     f"config.data.load_size={cfg.data.load_size}; crops are taken from the loaded image")
  augment.eval_transform(cfg.data.image_size, cfg.data.augment,   # names a bad eval_views
                         **augment.options_from_config(cfg.data, augment.EVAL_OPTIONS))
  margin = (cfg.data.load_size - cfg.data.image_size) // 2
  if cfg.data.eval_views > 1 and not 1 <= cfg.data.eval_view_shift <= margin:
    raise ValueError(f"config.data.eval_view_shift={cfg.data.eval_view_shift}; expected 1 to {margin} pixels "
                     f"(the margin between config.data.load_size and image_size)")
  if cfg.data.align and cfg.data.builder_options.get("canonical_crop", False):
    raise ValueError("config.data.align=True would align again the faces that "
                     "config.data.builder_options.canonical_crop=True already aligned; choose one")
  for field in ("train.num_epochs", "train.train_size", "optim.lr_reference_batch"):
    if not _get(cfg, field) >= 0:
      raise ValueError(f"config.{field}={_get(cfg, field)!r}; expected a number >= 0")
  milestones = tuple(cfg.optim.milestones)
  if list(milestones) != sorted(milestones) or not all(0 < m < 1 for m in milestones):
    raise ValueError(f"config.optim.milestones={milestones}; expected increasing fractions of the "
                     "stage's steps, each in (0, 1)")
  if cfg.optim.schedule == "multistep" and not milestones:
    raise ValueError("config.optim.schedule='multistep' needs config.optim.milestones")
  if not 0 <= cfg.train.ema_decay < 1:
    raise ValueError(f"config.train.ema_decay={cfg.train.ema_decay}; expected 0 (off) or a decay in (0, 1)")
  if not 0 <= cfg.model.dropout_rate < 1:
    raise ValueError(f"config.model.dropout_rate={cfg.model.dropout_rate}; expected 0 <= rate < 1")
  from age_jax import models  # the registry lists what exists
  if cfg.model.name not in models.names():
    raise ValueError(f"config.model.name={cfg.model.name!r}; known models: {models.names()}")
  if cfg.model.get("pretrained"):
    from age_jax.models import weights_hub
    if cfg.model.init_from:
      raise ValueError(f"config.model.pretrained={cfg.model.pretrained!r} and config.model.init_from="
                       f"{cfg.model.init_from!r}: give one start")
    fits = weights_hub.model_name(cfg.model.pretrained)
    if fits != cfg.model.name:
      raise ValueError(f"config.model.pretrained={cfg.model.pretrained!r} holds {fits} weights, but "
                       f"config.model.name={cfg.model.name!r}; set --config.model.name={fits}")
  if not (formulations.needs_age_counts(cfg.formulation) or formulations.needs_num_identities(cfg.formulation)):
    formulations.get_formulation(cfg.formulation)  # raises with the known names; else checked once
  else:                                            # the training data's counts are in
    formulations.check_fields(cfg.formulation)
  multitask.validate(cfg.multitask)
  if cfg.formulation.ranksim_weight > 0 and cfg.multitask.kind == "hybrid":
    raise ValueError("config.formulation.ranksim_weight > 0 with config.multitask.kind='hybrid': RankSim reads "
                     "the model's one feature vector, and the hybrid net has one per group; set it to 0")
  if cfg.formulation.ranksim_weight > 0 and cfg.train.trainable == "head":
    raise ValueError("config.formulation.ranksim_weight > 0 with config.train.trainable='head': RankSim "
                     "shapes the backbone's features, which a head-only run freezes; set it to 0 or train 'all'")
  if cfg.formulation.fds and cfg.train.trainable != "head":
    raise ValueError("config.formulation.fds=True with config.train.trainable='all': FDS here calibrates the "
                     "frozen backbone's features, whose statistics are computed once (train/fds_pass.py); "
                     "set config.train.trainable='head' (a stage 2 from trained weights) or fds=False")
  if cfg.formulation.fds and cfg.multitask.kind != "none":
    raise ValueError(f"config.formulation.fds=True with config.multitask.kind={cfg.multitask.kind!r}: FDS "
                     "calibrates the features of one age head; set config.multitask.kind='none'")
  if cfg.formulation.name in formulations.IDENTITY and cfg.multitask.kind != "none":
    raise ValueError(f"config.multitask.kind={cfg.multitask.kind!r} with config.formulation.name="
                     f"{cfg.formulation.name!r}: face-identity pre-training has no age heads; set "
                     "config.multitask.kind='none'")


# --- a run's config in its workdir (config.json) ---

CONFIG_FILE = "config.json"


def save(cfg, workdir: str):
  """Process 0 writes config.json; then every process checks that it sees the same workdir."""
  if jax.process_index() == 0:
    storage.write_text(storage.path(workdir) / CONFIG_FILE, cfg.to_json(indent=2))
  storage.check_shared(workdir)


def load(workdir: str) -> ml_collections.ConfigDict:
  path = storage.path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by launch.train")
  loaded = json.loads(path.read_text())
  cfg = default_config()
  stages = loaded.pop("stages", {})
  cfg.update_from_flattened_dict(flatten(loaded))
  cfg.stages = ml_collections.ConfigDict(stages)
  return cfg


def flatten(d, prefix=""):
  """Nested dicts -> {"a.b.c": value}, lists as tuples (what ConfigDict.update_from_flattened_dict takes)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out
