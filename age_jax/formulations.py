"""Formulations: a head size, a pure per-example loss and an age decoder, by name.

(Placeholder holding only MAE regression until the formulations issue lands.)
"""
import dataclasses
from typing import Callable

import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class Formulation:
  name: str
  num_outputs: int
  # (outputs (B, num_outputs) float32, ages (B,) float32) -> per-example loss (B,)
  loss: Callable
  # outputs (B, num_outputs) -> predicted ages (B,) float32
  decode: Callable


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "mae",
      "regression_offset": 33.0,  # predicted age = offset + scale * output
      "regression_scale": 20.0,
  })


def get_formulation(cfg) -> Formulation:
  if cfg.name != "mae":
    raise ValueError(f"config.formulation.name={cfg.name!r}; known: ['mae']")
  decode = lambda out: cfg.regression_offset + cfg.regression_scale * out[:, 0]
  return Formulation("mae", 1, lambda out, ages: jnp.abs(decode(out) - ages), decode)
