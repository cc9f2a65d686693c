"""Pretrained import: torchvision key names and shapes written out by hand, round trips through
.safetensors/.npz, the layout conversions checked against torch's conv/linear semantics, errors
that list every problem, and loading into multi-task subtrees."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from age_jax.models import layers, multitask, pretrained
from age_jax.models.efficientnetv2 import efficientnetv2
from age_jax.models.resnet import resnet
from age_jax.models.vgg import VGG16


def _zeros(model, size=64):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _random_like(variables, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), variables)


# Keys and shapes of torchvision's state dicts (torchvision.models.*().state_dict()).
_TORCHVISION = {
    "resnet18": (102, {"conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
                       "layer1.0.conv2.weight": (64, 64, 3, 3),
                       "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                       "layer2.0.downsample.1.weight": (128,), "layer4.1.bn2.bias": (512,),
                       "fc.weight": (1000, 512), "fc.bias": (1000,)}),
    "vgg16": (32, {"features.0.weight": (64, 3, 3, 3), "features.5.weight": (128, 64, 3, 3),
                   "features.28.weight": (512, 512, 3, 3), "features.28.bias": (512,),
                   "classifier.0.weight": (4096, 25088), "classifier.3.weight": (4096, 4096),
                   "classifier.6.weight": (1000, 4096)}),
    "efficientnetv2_s": (None, {"features.0.0.weight": (24, 3, 3, 3), "features.0.1.weight": (24,),
                                "features.1.1.block.0.0.weight": (24, 24, 3, 3),
                                "features.2.0.block.0.0.weight": (96, 24, 3, 3),
                                "features.2.0.block.1.0.weight": (48, 96, 1, 1),
                                "features.4.0.block.0.0.weight": (256, 64, 1, 1),
                                "features.4.0.block.1.0.weight": (256, 1, 3, 3),
                                "features.4.0.block.2.fc1.weight": (16, 256, 1, 1),
                                "features.4.0.block.2.fc2.bias": (256,),
                                "features.6.14.block.3.1.running_mean": (256,),
                                "features.7.0.weight": (1280, 256, 1, 1),
                                "classifier.1.weight": (1000, 1280)}),
}
_MODELS = {"resnet18": lambda: resnet("resnet18", num_outputs=1000), "vgg16": lambda: VGG16(num_outputs=1000),
           "efficientnetv2_s": lambda: efficientnetv2("efficientnetv2_s", num_outputs=1000)}


@pytest.mark.parametrize("name", sorted(_TORCHVISION))
def test_exported_names_and_shapes_match_torchvision(name):
  num_keys, known = _TORCHVISION[name]
  state = pretrained.export_state_dict(_zeros(_MODELS[name]()), name)
  for key, shape in known.items():
    assert state[key].shape == shape, key
  if num_keys is not None:  # torchvision's count less the num_batches_tracked entries
    assert len(state) == num_keys


def test_round_trip_through_safetensors_and_npz_keeps_every_tensor(tmp_path):
  from safetensors.numpy import save_file
  variables = _random_like(_zeros(resnet("resnet18", num_outputs=1000), 32))
  state = pretrained.export_state_dict(variables, "resnet18")
  state["bn1.num_batches_tracked"] = np.array(5, np.int64)  # present in real files; ignored
  save_file(state, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **state)
  target = _zeros(resnet("resnet18", num_outputs=1000), 32)
  for path in ("w.safetensors", "w.npz"):
    loaded = pretrained.load_pretrained(str(tmp_path / path), target, "resnet18", skip_head=False)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # By default the classifier is skipped: our head keeps its own values.
  loaded = pretrained.load_pretrained(str(tmp_path / "w.npz"), target, "resnet18")
  np.testing.assert_array_equal(loaded["params"]["age_head"]["kernel"], 0)
  np.testing.assert_array_equal(loaded["params"]["layer3_1"]["conv2"]["kernel"],
                                variables["params"]["layer3_1"]["conv2"]["kernel"])


def test_converted_conv_and_vgg_fc6_compute_what_torch_computes():
  rng = np.random.default_rng(0)
  # A torch conv: NCHW input, OIHW weight (cross-correlation, pad 1), its weight in our Conv.
  w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
  x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
  torch_out = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
  conv = layers.Conv(5, 3, padding=((1, 1), (1, 1)))
  kernel = pretrained._to_ours(w, (3, 3, 3, 5), is_vgg_fc6=False)
  ours = conv.apply({"params": {"kernel": kernel, "bias": np.zeros(5)}}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(ours, np.asarray(torch_out).transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  # FC6: torch flattens (c, h, w), we flatten (h, w, c); the loaded kernel must agree.
  variables = _zeros(VGG16(num_outputs=1000), 32)
  state = pretrained.export_state_dict(variables, "vgg16")
  fc6 = rng.standard_normal((4096, 25088)).astype(np.float32) * 0.01
  state["classifier.0.weight"] = fc6
  loaded = pretrained.load_state_dict(state, variables, "vgg16")
  feats = rng.standard_normal((2, 512, 7, 7)).astype(np.float32)
  torch_fc6 = feats.reshape(2, -1) @ fc6.T
  our_fc6 = feats.transpose(0, 2, 3, 1).reshape(2, -1) @ loaded["params"]["fc6"]["kernel"]
  np.testing.assert_allclose(our_fc6, torch_fc6, rtol=1e-4, atol=1e-4)


def test_bad_file_lists_every_missing_extra_and_misshaped_tensor():
  variables = _zeros(resnet("resnet18", num_outputs=1000), 32)
  state = pretrained.export_state_dict(variables, "resnet18")
  del state["layer1.0.conv1.weight"], state["layer3.1.bn2.running_var"]
  state["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
  state["layer2.0.conv2.weight"] = np.zeros((128, 128, 5, 5), np.float32)
  with pytest.raises(ValueError) as err:
    pretrained.load_state_dict(state, variables, "resnet18")
  message = str(err.value)
  assert "2 missing: layer1.0.conv1.weight, layer3.1.bn2.running_var" in message
  assert "1 unexpected: layer5.0.conv1.weight" in message
  assert "layer2.0.conv2.weight: file (128, 128, 5, 5), model expects (128, 128, 3, 3)" in message
  with pytest.raises(ValueError, match="no pretrained-weight mapping for model 'xing_baseline'"):
    pretrained.load_state_dict(state, variables, "xing_baseline")


def test_timm_efficientnetv2_names_are_recognized():
  variables = _zeros(efficientnetv2("efficientnetv2_s", num_outputs=1000), 32)
  state = pretrained.export_state_dict(_random_like(variables), "efficientnetv2_s")
  renames = {"features.0.0.weight": "conv_stem.weight", "features.4.0.block.2.fc1.weight":
             "blocks.3.0.se.conv_reduce.weight", "features.2.0.block.1.0.weight": "blocks.1.0.conv_pwl.weight",
             "features.1.0.block.0.1.running_mean": "blocks.0.0.bn1.running_mean"}
  timm_state = {}
  targets = pretrained._targets(variables, "efficientnetv2_s", timm=True, include_head=False)
  tv_targets = pretrained._targets(variables, "efficientnetv2_s", timm=False, include_head=False)
  by_leaf = {tuple(v[0]): k for k, v in tv_targets.items()}
  for timm_key, leaves in targets.items():
    timm_state[timm_key] = state[by_leaf[tuple(leaves[0])]]
  for tv, tm in renames.items():
    np.testing.assert_array_equal(timm_state[tm], state[tv])
  loaded = pretrained.load_state_dict(timm_state, variables, "efficientnetv2_s")
  np.testing.assert_array_equal(loaded["params"]["stage4_0"]["se_reduce"]["kernel"],
                                state["features.4.0.block.2.fc1.weight"].transpose(2, 3, 1, 0))


def test_vgg_weights_fill_every_subtree_of_a_hybrid_network():
  make_trunk = functools.partial(VGG16, num_outputs=1, fc_features=(16, 16))
  make_branch = functools.partial(multitask.Branch, reduce=4, pool=2, fc_features=(8, 8))
  hybrid = multitask.Hybrid(make_trunk, make_branch, num_races=2, groups="race", group_classifier="branch")
  variables = _zeros(hybrid, 32)
  single = _random_like(_zeros(make_trunk(), 32))
  state = pretrained.export_state_dict(single, "vgg16")
  loaded = pretrained.load_state_dict(state, variables, "vgg16")
  p, s = loaded["params"], single["params"]
  assert set(p["shared"]) == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
  np.testing.assert_array_equal(p["shared"]["conv2_2"]["kernel"], s["conv2_2"]["kernel"])
  for g in ("group_0", "group_1"):
    np.testing.assert_array_equal(p[g]["conv5_3"]["kernel"], s["conv5_3"]["kernel"])
    np.testing.assert_array_equal(p[g]["fc6"]["kernel"], s["fc6"]["kernel"])
    np.testing.assert_array_equal(p[g]["age_head"]["kernel"], 0)  # head skipped
  np.testing.assert_array_equal(p["group_classifier"]["fc1"]["kernel"], 0)  # not a VGG layer
