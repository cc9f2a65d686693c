"""The training objective: model outputs + batch -> per-example loss and named terms.

The train step calls `per_example_loss` and averages over the batch with the mask;
it never looks inside. Multi-task terms (gender, race, group) join here.
"""
import jax.numpy as jnp


def per_example_loss(outputs: dict, batch: dict, formulation, cfg) -> tuple[jnp.ndarray, dict]:
  """Returns (loss (B,), {term name: (B,) values}) for one batch."""
  age_loss = formulation.loss(outputs["age"], batch["age"])
  return age_loss, {"age_loss": age_loss}
