"""VGG-16, ResNet-18/34/50, EfficientNetV2-S/M/L: exact reference parameter counts (eval_shape
only, nothing compiled), torchvision's BatchNorm settings, and real forward/backward passes on
small variants of each family."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import config as config_lib, models
from age_jax.models import layers
from age_jax.models.efficientnetv2 import FUSED, MB, EfficientNetV2
from age_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from age_jax.models.vgg import VGG16, adaptive_avg_pool


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _patches():
  """The conv and max_pool get_model hands a backbone for conv_lowering='patches'."""
  lowering = models.get_lowering("patches")
  return {"conv": lowering.conv, "max_pool": lowering.max_pool}


def _shapes(model, size=224):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


# torchvision's published parameter counts (ImageNet 1000-way classifier).
@pytest.mark.parametrize("name, expected", [
    ("vgg16", 138_357_544), ("resnet18", 11_689_512), ("resnet34", 21_797_672),
    ("resnet50", 25_557_032), ("efficientnetv2_s", 21_458_488), ("efficientnetv2_m", 54_139_356),
    ("efficientnetv2_l", 118_515_272)])
def test_parameter_counts_equal_the_reference_architectures(name, expected):
  cfg = config_lib.default_config().model
  cfg.name = name
  shapes = _shapes(models.get_model(cfg, num_outputs=1000))
  assert _count(shapes["params"]) == expected
  assert ("batch_stats" in shapes) == (name != "vgg16")
  assert shapes["params"]["age_head"]["kernel"].shape[-1] == 1000


def test_head_size_follows_the_formulation_and_vgg_fc6_sees_7x7x512_at_any_input_size():
  cfg = config_lib.default_config().model
  cfg.name = "vgg16"
  for size in (32, 227):
    params = _shapes(models.get_model(cfg, num_outputs=101), size)["params"]
    assert params["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
    assert params["age_head"]["kernel"].shape == (4096, 101)


def test_adaptive_average_pool_uses_torch_bins():
  # 5 -> 3 bins: [0, 2), [1, 4), [3, 5) (start floor(i*5/3), end ceil((i+1)*5/3)).
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  y = np.asarray(adaptive_avg_pool(x, 3))[0, :, :, 0]
  bins = [(0, 2), (1, 4), (3, 5)]
  grid = np.arange(25.0).reshape(5, 5)
  expected = [[grid[a:b, c:d].mean() for c, d in bins] for a, b in bins]
  np.testing.assert_allclose(y, expected)
  # Smaller than the target: each input cell is repeated (bins of one cell).
  np.testing.assert_allclose(adaptive_avg_pool(jnp.ones((1, 1, 1, 2)) * 3.0, 7), np.full((1, 7, 7, 2), 3.0))


def _train_step_grads(model, size=32, seed=0):
  images = jax.random.normal(jax.random.key(seed), (2, size, size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), images)

  @jax.jit
  def step(variables):
    def loss(params):
      out, updates = model.apply({**variables, "params": params}, images, train=True,
                                 rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
      return jnp.sum(out["age"] ** 2), (out, updates)
    return jax.grad(loss, has_aux=True)(variables["params"])
  grads, (out, updates) = step(variables)
  return variables, grads, out, updates


def _assert_every_parameter_gets_a_gradient(grads):
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.slow
def test_vgg16_forward_backward_small():
  model = VGG16(num_outputs=3, fc_features=(16, 16), dropout_rate=0.0, **_patches())
  variables, grads, out, _ = _train_step_grads(model)
  assert out["age"].shape == (2, 3) and out["features"].shape == (2, 16)
  _assert_every_parameter_gets_a_gradient(grads)


@pytest.mark.slow
def test_resnet_forward_backward_updates_batch_stats_with_torch_momentum():
  # BasicBlock and Bottleneck stages with downsampling; one block per stage keeps compilation short.
  for block in (BasicBlock, Bottleneck):
    model = ResNet(stage_sizes=(1, 2), block=block, num_outputs=2, **_patches())
    variables, grads, out, updates = _train_step_grads(model)
    width = 128 * block.expansion
    assert out["features"].shape == (2, width) and out["age"].shape == (2, 2)
    _assert_every_parameter_gets_a_gradient(grads)
    assert "downsample_conv" in variables["params"]["layer2_0"]
    assert ("downsample_conv" in variables["params"]["layer1_0"]) == (block is Bottleneck)
    # Running mean starts at 0: after one step it is 0.1 * (batch mean of conv1's output).
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    _, inter = model.apply(variables, images, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    conv1 = inter["intermediates"]["conv1"]["__call__"][0]
    np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)


_TINY_EFFNET = ((FUSED, 1, 3, 1, 8, 8, 2), (FUSED, 4, 3, 2, 8, 16, 1), (MB, 4, 3, 2, 16, 16, 2))


@pytest.mark.slow
def test_efficientnetv2_forward_backward_and_stochastic_depth_only_in_training():
  model = EfficientNetV2(stages=_TINY_EFFNET, num_outputs=2, dropout_rate=0.0, stochastic_depth_rate=0.5,
                         conv=_patches()["conv"])
  variables, grads, out, updates = _train_step_grads(model)
  assert out["features"].shape == (2, 1280)
  _assert_every_parameter_gets_a_gradient(grads)
  block = variables["params"]["stage3_1"]
  # SE squeezes to the block's input width // 4 (16 // 4), expanded width 16 * 4.
  assert block["se_reduce"]["kernel"].shape == (1, 1, 64, 4)
  assert block["dw_conv"]["kernel"].shape == (3, 3, 1, 64)
  assert set(variables["params"]["stage1_0"]) == {"conv", "bn"}
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  train = lambda seed: apply(variables, images, train=True, rngs={"dropout": jax.random.key(seed)},
                             mutable=("batch_stats",))[0]["age"]
  assert not np.allclose(train(3), train(4))  # residual branches dropped at random
  np.testing.assert_array_equal(apply(variables, images, train=False)["age"],
                                apply(variables, images, train=False)["age"])


def test_bfloat16_computes_in_bf16_with_float32_params_and_outputs():
  model = ResNet(stage_sizes=(1,), block=BasicBlock, num_outputs=1, **_patches(),
                 dtype=jnp.bfloat16)
  images = jnp.ones((2, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  out = jax.jit(model.apply)(variables, images)
  assert out["features"].dtype == jnp.bfloat16 and out["age"].dtype == jnp.float32


def test_every_convolution_is_the_project_conv_layer():
  # The configured lowering reaches every convolution only if all of them are layers.Conv.
  import flax.linen as nn
  for model in (VGG16(), ResNet(stage_sizes=(1, 1), block=Bottleneck), EfficientNetV2(stages=_TINY_EFFNET)):
    seen = set()
    def spy(next_fun, args, kwargs, context):
      seen.add(type(context.module))
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(spy):
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert layers.Conv in seen
    assert not any(issubclass(t, (nn.Conv, nn.ConvTranspose, nn.ConvLocal)) for t in seen)


@pytest.mark.parametrize("name,multitask", [("xing_baseline", "deep"), ("vgg16", "none"), ("resnet50", "none"),
                                            ("efficientnetv2_s", "none")])
def test_get_model_hands_the_lowering_to_every_convolution_and_pooling(name, multitask):
  # 'patches' runs no XLA convolution or reduce_window max: any left in the traced program is a
  # layer built without the conv / max_pool get_model chose (blocks, branches, squeeze-excitation).
  cfg = config_lib.default_config()
  cfg.model.name, cfg.multitask.kind = name, multitask
  size = 227 if name == "xing_baseline" else 32
  images = jnp.zeros((1, size, size, 3))
  programs = {}
  for lowering in ("xla", "patches"):
    cfg.model.conv_lowering = lowering
    model = models.get_model(cfg.model, 2, cfg.multitask)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    programs[lowering] = str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, images))
  assert "conv_general_dilated" in programs["xla"]
  assert "conv_general_dilated" not in programs["patches"]
  assert ("reduce_window_max" in programs["xla"]) == (name != "efficientnetv2_s")
  assert "reduce_window_max" not in programs["patches"]


def test_resnet_width_scales_every_convolution_and_the_features():
  from age_jax.models.resnet import resnet
  full = jax.tree_util.tree_flatten_with_path(_shapes(resnet("resnet18", num_outputs=7), 64)["params"])[0]
  half = dict(jax.tree_util.tree_flatten_with_path(_shapes(resnet("resnet18", num_outputs=7, width=32), 64)["params"])[0])
  assert len(full) == len(half) == 62
  for path, leaf in full:
    name = jax.tree_util.keystr(path)
    if "age_head" in name:
      expected = (256, 7) if name.endswith("['kernel']") else (7,)
    elif name.endswith("['kernel']"):  # (kh, kw, in, out): both channel counts halve, except the RGB input
      kh, kw, c_in, c_out = leaf.shape
      expected = (kh, kw, c_in if c_in == 3 else c_in // 2, c_out // 2)
    else:
      expected = (leaf.shape[0] // 2,)
    assert half[path].shape == expected, name
