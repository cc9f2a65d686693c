"""Heads that differ from a plain Dense(num_outputs) 'age_head'.

CORAL (Cao et al. 2020) needs rank-consistent ordinal logits: one weight vector shared by
all K-1 thresholds and one bias each, logits_k = w.x + b_k. Any backbone gives it: the
backbone's own age head is built with a single output (w.x + b0) and K-1 biases are added
(b0 + b_k is still one bias per threshold, so rank consistency holds).

Face-identity pre-training (LAE 2.2, AM-softmax / CosFace) needs the cosines between the
backbone's features (its penultimate layer, the one an age head reads) and one weight column per
identity, the class weights W (D, num_identities), kept in the parameter 'identity_head'. The
backbone is built without an age head, and its parameters sit at the same paths as in an age
model (shared scope), so an age run's model.init_from copies the whole backbone and leaves
'identity_head' unused and 'age_head' fresh.
"""
import flax.linen as nn
import jax.numpy as jnp

from age_jax import losses


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


class IdentityHead(nn.Module):
  """{'features', 'identity': (B, num_identities) cosines of the features with W's columns}; the
  scale and margin of AM-softmax belong to the loss (formulations.py)."""
  backbone: nn.Module        # built with num_outputs=0: features only
  num_identities: int

  def setup(self):
    nn.share_scope(self, self.backbone)   # the backbone's parameter paths stay those of an age model

  @nn.compact
  def __call__(self, images, train: bool = False):
    outputs = dict(self.backbone(images, train=train))
    features = outputs["features"]
    # LeCun normal: unit-norm columns at the start (W is normalised anyway; its norm only sets
    # the gradient's size, which shrinks as 1 / |w|).
    weights = self.param("identity_head", nn.initializers.lecun_normal(),
                         (features.shape[-1], self.num_identities), jnp.float32)
    outputs["identity"] = losses.cosine_similarity(features, weights)
    return outputs
