"""Model registry: get_model(model_config, num_outputs, multitask=None) -> flax.linen.Module.

Every model's __call__(images, train) returns a dict of named outputs
('features' always; 'age' unless it is a face-identity model, whose head gives 'identity';
'gender', 'race', ... where the model has them).
With a multitask config whose kind is not 'none', the named model is the trunk of a
Xing 2017 multi-task network (models/multitask.py); only trunks in MULTITASK_TRUNKS can.

Convolutions and max pooling run as config.model.conv_lowering says: get_model resolves it once
(get_lowering) and hands every backbone the lowering's `conv` and `max_pool` (models/layers.py).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from age_jax.models import heads, layers, multitask as multitask_lib
from age_jax.models.baseline import XingBaseline
from age_jax.models.efficientnetv2 import STAGES as _EFFICIENTNETV2_STAGES, efficientnetv2
from age_jax.models.resnet import RESNETS, resnet
from age_jax.models.vgg import VGG16

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_lowering(conv_lowering: str) -> layers.Lowering:
  """config.model.conv_lowering -> how the model's convolutions and max pooling run, and the XLA
  options its jits need. 'xla', and 'auto' off the CPU, never import the CPU corner (age_jax.cpu)."""
  if conv_lowering not in layers.LOWERINGS:
    raise ValueError(f"conv lowering must be one of {layers.LOWERINGS}, got {conv_lowering!r}")
  if conv_lowering == "xla" or (conv_lowering == "auto" and jax.default_backend() != "cpu"):
    return layers.XLA
  from age_jax import cpu  # only a CPU lowering loads the CPU corner
  return cpu.lowering(conv_lowering)


def _xing_baseline(cfg, num_outputs):
  lowering = get_lowering(cfg.conv_lowering)
  return XingBaseline(num_outputs=num_outputs, conv_features=tuple(cfg.conv_features),
                      fc_features=tuple(cfg.fc_features), dropout_rate=cfg.dropout_rate,
                      conv=lowering.conv, max_pool=lowering.max_pool, dtype=_DTYPES[cfg.dtype])


def _vgg16(cfg, num_outputs):
  # FC widths stay VGG's 4096 (config.model.fc_features sizes the Xing baseline only).
  lowering = get_lowering(cfg.conv_lowering)
  return VGG16(num_outputs=num_outputs, dropout_rate=cfg.dropout_rate,
               conv=lowering.conv, max_pool=lowering.max_pool, dtype=_DTYPES[cfg.dtype])


def _resnet(name, cfg, num_outputs):
  lowering = get_lowering(cfg.conv_lowering)
  return resnet(name, num_outputs=num_outputs, width=cfg.resnet_width, conv=lowering.conv,
                max_pool=lowering.max_pool, dtype=_DTYPES[cfg.dtype])


def _efficientnetv2(name, cfg, num_outputs):
  return efficientnetv2(name, num_outputs=num_outputs, dropout_rate=cfg.dropout_rate,
                        stochastic_depth_rate=cfg.get("stochastic_depth_rate", 0.2),
                        conv=get_lowering(cfg.conv_lowering).conv, dtype=_DTYPES[cfg.dtype])


_REGISTRY = {
    "xing_baseline": _xing_baseline,
    "vgg16": _vgg16,
    **{name: functools.partial(_resnet, name) for name in RESNETS},
    **{name: functools.partial(_efficientnetv2, name) for name in _EFFICIENTNETV2_STAGES},
}

# Trunks with the stem/top/head parts the multi-task networks need.
MULTITASK_TRUNKS = ("xing_baseline", "vgg16")


def names():
  return sorted(_REGISTRY)


def _multitask_model(cfg, mt, num_outputs):
  if cfg.name not in MULTITASK_TRUNKS:
    raise ValueError(f"config.multitask.kind={mt.kind!r} needs a trunk with stem/top/head parts; "
                     f"config.model.name={cfg.name!r} is not one of {list(MULTITASK_TRUNKS)}")
  dtype = _DTYPES[cfg.dtype]
  # A constructor taking `name=`: the registry's module, re-created with its own field values.
  template = _REGISTRY[cfg.name](cfg, num_outputs)
  fields = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)
            if f.init and f.name not in ("parent", "name")}
  make_trunk = functools.partial(type(template), **fields)
  make_branch = functools.partial(
      multitask_lib.Branch, reduce=mt.branch_reduce, pool=mt.branch_pool,
      fc_features=tuple(mt.branch_features), dropout_rate=cfg.dropout_rate,
      conv=template.conv, dtype=dtype)
  if mt.kind == "parallel":
    return multitask_lib.Parallel(make_trunk, mt.num_races, dtype=dtype)
  if mt.kind == "deep":
    return multitask_lib.DeeplySupervised(make_trunk, make_branch, mt.num_races, dtype=dtype)
  if mt.kind == "hybrid":
    return multitask_lib.Hybrid(make_trunk, make_branch, mt.num_races, groups=mt.groups,
                                group_classifier=mt.group_classifier, dtype=dtype)
  raise ValueError(f"config.multitask.kind={mt.kind!r}; expected one of {list(multitask_lib.KINDS)}")


HEADS = ("dense", "coral", "identity")


def get_model(cfg, num_outputs: int, multitask=None, head: str = "dense", head_bias_init=None):
  """cfg: config.model; multitask: config.multitask (None or kind 'none' = single task);
  head: the formulation's head kind, 'dense', 'coral' or 'identity' (see models/heads.py), whose
  biases start at head_bias_init when given."""
  if head == "identity":
    if multitask is not None and multitask.kind != "none":
      raise ValueError(f"config.multitask.kind={multitask.kind!r}: a face-identity model has no age "
                       "heads; set config.multitask.kind='none'")
    return heads.IdentityHead(get_model(cfg, 0), num_identities=num_outputs)
  if head == "coral":
    bias = None if head_bias_init is None else tuple(float(b) for b in head_bias_init)
    return heads.CoralHead(get_model(cfg, 1, multitask), num_thresholds=num_outputs, bias_init=bias)
  if head != "dense":
    raise ValueError(f"unknown head kind {head!r}; expected one of {list(HEADS)}")
  if cfg.name not in _REGISTRY:
    raise ValueError(f"config.model.name={cfg.name!r} is not a known model; known: {names()}")
  if cfg.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype={cfg.dtype!r}; expected one of {sorted(_DTYPES)}")
  if multitask is not None and multitask.kind != "none":
    return _multitask_model(cfg, multitask, num_outputs)
  return _REGISTRY[cfg.name](cfg, num_outputs)
