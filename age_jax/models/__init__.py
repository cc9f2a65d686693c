"""Model registry: get_model(model_config, num_outputs) -> flax.linen.Module.

Every model's __call__(images, train) returns a dict of named outputs
('age' always; 'features', 'gender', 'race', ... where the model has them).
"""
import jax.numpy as jnp

from age_jax.models.baseline import XingBaseline

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _xing_baseline(cfg, num_outputs):
  return XingBaseline(num_outputs=num_outputs, conv_features=tuple(cfg.conv_features),
                      fc_features=tuple(cfg.fc_features), dropout_rate=cfg.dropout_rate,
                      conv_lowering=cfg.conv_lowering, dtype=_DTYPES[cfg.dtype])


_REGISTRY = {
    "xing_baseline": _xing_baseline,
}


def names():
  return sorted(_REGISTRY)


def register(name, factory):
  """factory(model_config, num_outputs) -> Module."""
  _REGISTRY[name] = factory


def get_model(cfg, num_outputs: int):
  if cfg.name not in _REGISTRY:
    raise ValueError(f"config.model.name={cfg.name!r} is not a known model; known: {names()}")
  if cfg.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype={cfg.dtype!r}; expected one of {sorted(_DTYPES)}")
  return _REGISTRY[cfg.name](cfg, num_outputs)
