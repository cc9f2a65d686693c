"""The shared layers (age_jax/models/layers.py); the CPU lowerings are tested in tests/cpu."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from age_jax.models import layers


def test_conv_rejects_channels_not_divisible_by_groups():
  with pytest.raises(ValueError, match="input channels 6 and features 4 must both be divisible by "
                                       "feature_group_count 3"):
    layers.Conv(4, 3, feature_group_count=3).init(jax.random.key(0), jnp.ones((1, 4, 4, 6)))


def test_conv_is_xla_convolution_by_default_with_flax_parameter_names():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  conv = layers.Conv(4, 3, strides=2, padding="SAME")
  params = conv.init(jax.random.key(1), x)["params"]
  assert set(params) == {"kernel", "bias"} and params["kernel"].shape == (3, 3, 3, 4)
  expected = lax.conv_general_dilated(x, params["kernel"], (2, 2), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
  np.testing.assert_allclose(conv.apply({"params": params}, x), expected, rtol=1e-6, atol=1e-6)
  assert layers.XLA.conv.keywords == {"convolution": layers.xla_conv}
