"""Heads that differ from a plain Dense(num_outputs) 'age_head'.

CORAL (Cao et al. 2020) needs rank-consistent ordinal logits: one weight vector shared by
all K-1 thresholds and one bias each, logits_k = w.x + b_k. Any backbone gives it: the
backbone's own age head is built with a single output (w.x + b0) and K-1 biases are added
(b0 + b_k is still one bias per threshold, so rank consistency holds).
"""
import flax.linen as nn
import jax.numpy as jnp


class CoralHead(nn.Module):
  backbone: nn.Module        # built with num_outputs=1
  num_thresholds: int        # K - 1
  bias_init: tuple | None = None  # initial biases (formulations.coral_bias_init); None: zeros

  @nn.compact
  def __call__(self, images, train: bool = False):
    outputs = dict(self.backbone(images, train=train))
    init = nn.initializers.zeros if self.bias_init is None else (
        lambda key, shape, dtype: jnp.asarray(self.bias_init, dtype).reshape(shape))
    biases = self.param("coral_bias", init, (self.num_thresholds,), jnp.float32)
    outputs["age"] = outputs["age"][:, :1] + biases
    return outputs
