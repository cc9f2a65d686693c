"""The base config: every field's default, in one place, and its validation.

Experiment configs in configs/ start from `default_config()` and override fields;
`validate()` runs once, before any long work, and names the offending field.
"""
import ml_collections

from age_jax import formulations


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict({
      "name": "utkface",            # builder name, see age_jax.data.datasets
      "manual_dir": "",             # the folder of source files the user downloaded
      "data_dir": "",               # where the prepared ArrayRecord dataset lives ('' = ~/.cache/age_jax/tfds)
      "builder_options": ml_collections.ConfigDict({
          "keep_conflicting_duplicates": False,
          "skip_corrupt": False,
      }),
      "train_split": "train",
      "val_split": "validation",
      "eval_split": "test",
      "load_size": 256,             # decoded images are resized to load_size^2 (Xing 4.1: 256)
      "image_size": 227,            # network input (random crop when training, centre crop at eval)
      "augment": "xing",            # preset name, see age_jax.data.augment
      "normalize": "mean_image",    # 'mean_image' (Xing 3.1.1) | 'imagenet'
      "pixel_scale": 1.0 / 255.0,   # applied after mean subtraction
      "cache": "none",              # 'memory': decode+resize each image once and keep it in RAM
      "sampler": "shuffle",
      "num_threads": 2,             # grain read threads for decode/augment
      "prefetch": 2,                # batches prefetched to device
  })

  c.model = ml_collections.ConfigDict({
      "name": "xing_baseline",
      "conv_lowering": "auto",      # 'auto' | 'xla' | 'patches'
      "dtype": "float32",           # compute dtype; params stay float32
      "conv_features": (96, 256, 384),
      "fc_features": (512, 512),
      "dropout_rate": 0.5,
  })

  c.formulation = formulations.default_config()

  # Xing 4.1: SGD, momentum 0.9, weight decay 5e-4, lr 1e-3 / 10 every 10k iterations.
  c.optim = ml_collections.ConfigDict({
      "name": "sgd",                # 'sgd' | 'adamw'
      "learning_rate": 1e-3,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 5e-4,         # L2 added to the gradient (Caffe); kernels only
      "schedule": "step",           # 'step' | 'cosine' | 'onecycle' | 'constant'
      "step_every": 10_000,
      "step_factor": 0.1,
      "warmup_steps": 0,
      "grad_clip_norm": 0.0,        # 0 = off
  })

  c.train = ml_collections.ConfigDict({
      "batch_size": 128,            # global, across all devices and processes
      "num_steps": 50_000,
      "log_every": 100,
      "checkpoint_every": 5_000,
      "eval_every": 0,              # validation MAE every N steps (0 = only at the end)
      "max_to_keep": 2,
  })

  c.eval = ml_collections.ConfigDict({
      "batch_size": 256,
  })

  c.mesh = ml_collections.ConfigDict({
      "data": -1,                   # -1: all devices on the data axis
  })
  return c


_CHOICES = {
    "data.augment": ("xing", "none"),
    "data.normalize": ("mean_image", "imagenet"),
    "data.cache": ("none", "memory"),
    "data.sampler": ("shuffle",),
    "model.dtype": ("float32", "bfloat16"),
    "model.conv_lowering": ("auto", "xla", "patches"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("step", "cosine", "onecycle", "constant"),
}

_POSITIVE = ("data.load_size", "data.image_size", "train.batch_size", "train.num_steps",
             "train.log_every", "train.checkpoint_every", "eval.batch_size", "optim.learning_rate")


def _get(cfg, dotted):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks values that ml_collections' types cannot; raises ValueError naming the field."""
  for field, choices in _CHOICES.items():
    if _get(cfg, field) not in choices:
      raise ValueError(f"config.{field}={_get(cfg, field)!r}; expected one of {list(choices)}")
  for field in _POSITIVE:
    if not _get(cfg, field) > 0:
      raise ValueError(f"config.{field}={_get(cfg, field)!r}; expected a positive number")
  if cfg.data.image_size > cfg.data.load_size:
    raise ValueError(f"config.data.image_size={cfg.data.image_size} is larger than "
                     f"config.data.load_size={cfg.data.load_size}; crops are taken from the loaded image")
  if not 0 <= cfg.model.dropout_rate < 1:
    raise ValueError(f"config.model.dropout_rate={cfg.model.dropout_rate}; expected 0 <= rate < 1")
  from age_jax import models  # the registry lists what exists
  if cfg.model.name not in models.names():
    raise ValueError(f"config.model.name={cfg.model.name!r}; known models: {models.names()}")
  formulations.get_formulation(cfg.formulation)  # raises with the known names
  return cfg
