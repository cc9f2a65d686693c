"""Load PyTorch (torchvision / timm) ImageNet weights into our params and batch_stats.

    variables = load_pretrained("resnet18.safetensors", variables, "resnet18")

The file is a state dict in `.safetensors`, `.npz` or `.pth` form (a `.pth` is read without torch,
models/torch_files.py; config.model.pretrained fetches official files, models/weights_hub.py). Tensors are moved to flax layout:
  conv weight  (O, I/groups, kh, kw) -> kernel (kh, kw, I/groups, O)
  linear weight (out, in)            -> kernel (in, out); VGG's FC6 also reorders its inputs
                                        from torch's (c, h, w) flattening to our (h, w, c)
  BatchNorm weight, bias             -> params scale, bias
            running_mean, running_var-> batch_stats mean, var  (num_batches_tracked is dropped)
The 1000-way classifier is skipped by default (our 'age_head' keeps its initialization).
Any missing, unexpected or mis-shaped tensor raises one ValueError listing all of them.

Multi-task variables (models/multitask.py) load too: every subtree holding backbone layers
('trunk', 'shared', 'group_<k>', 'group_classifier') takes the matching tensors, so a
NetVGG-Hybrid starts from ImageNet VGG-16 in its shared part and in each group estimator.
Names: torchvision for every family; timm's tf_efficientnetv2_* names are recognized too
(timm's ResNet names equal torchvision's). timm's tf_ weights were trained with TF 'SAME'
padding; our convolutions pad symmetrically like torchvision, so they fit less exactly.
"""
import io
import re

import jax
import numpy as np

from age_jax import storage
from age_jax.models.efficientnetv2 import FUSED, STAGES as EFFICIENTNETV2_STAGES
from age_jax.models.resnet import RESNETS
from age_jax.models.vgg import VGG16_BLOCKS

_BN_LEAVES = {("params", "scale"): "weight", ("params", "bias"): "bias",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
_IGNORED_SUFFIXES = (".num_batches_tracked",)

# --- module names: ours (a path inside one backbone) -> torch prefix, per family ----------


def _vgg_feature_indices():
  """conv{b}_{i} -> index in torchvision's `features` Sequential (conv, ReLU, ..., MaxPool)."""
  table, idx = {}, 0
  for b, widths in enumerate(VGG16_BLOCKS):
    for i in range(len(widths)):
      table[f"conv{b + 1}_{i + 1}"] = idx
      idx += 2
    idx += 1  # the block's max-pool
  return table


_VGG_FEATURES = _vgg_feature_indices()


def _vgg_module(path, head):
  if len(path) != 1:
    return None
  name = path[0]
  if name in _VGG_FEATURES:
    return f"features.{_VGG_FEATURES[name]}"
  return {"fc6": "classifier.0", "fc7": "classifier.3", "age_head": head}.get(name)


def _resnet_module(path, head):
  if path == ("age_head",):
    return head
  if len(path) == 1 and path[0] in ("conv1", "bn1"):
    return path[0]
  if len(path) == 2:
    block = re.fullmatch(r"layer(\d)_(\d+)", path[0])
    inner = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(path[1], path[1])
    if block and re.fullmatch(r"(conv|bn)[123]|downsample\.[01]", inner):
      return f"layer{block[1]}.{block[2]}.{inner}"
  return None


_EFFNET_TORCHVISION = {
    "fused1": {"conv": "0.0", "bn": "0.1"},
    "fused": {"expand_conv": "0.0", "expand_bn": "0.1", "project_conv": "1.0", "project_bn": "1.1"},
    "mb": {"expand_conv": "0.0", "expand_bn": "0.1", "dw_conv": "1.0", "dw_bn": "1.1",
           "se_reduce": "2.fc1", "se_expand": "2.fc2", "project_conv": "3.0", "project_bn": "3.1"},
}
_EFFNET_TIMM = {
    "fused1": {"conv": "conv", "bn": "bn1"},
    "fused": {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2"},
    "mb": {"expand_conv": "conv_pw", "expand_bn": "bn1", "dw_conv": "conv_dw", "dw_bn": "bn2",
           "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
           "project_bn": "bn3"},
}


def _effnet_module(stages, timm: bool):
  def module(path, head):
    top = {"stem_conv": ("features.0.0", "conv_stem"), "stem_bn": ("features.0.1", "bn1"),
           "head_conv": (f"features.{len(stages) + 1}.0", "conv_head"),
           "head_bn": (f"features.{len(stages) + 1}.1", "bn2")}
    if path == ("age_head",):
      return head
    if len(path) == 1 and path[0] in top:
      return top[path[0]][timm]
    block = re.fullmatch(r"stage(\d+)_(\d+)", path[0]) if len(path) == 2 else None
    if not block or not 1 <= int(block[1]) <= len(stages):
      return None
    s, j = int(block[1]), int(block[2])
    kind, expand = stages[s - 1][0], stages[s - 1][1]
    table = (_EFFNET_TIMM if timm else _EFFNET_TORCHVISION)[
        "mb" if kind != FUSED else ("fused1" if expand == 1 else "fused")]
    if path[1] not in table:
      return None
    return f"blocks.{s - 1}.{j}.{table[path[1]]}" if timm else f"features.{s}.{j}.block.{table[path[1]]}"
  return module


def _family(model_name: str, timm: bool):
  """(module-name mapper, torch name of the classifier) for a registry model name."""
  if model_name == "vgg16":
    return _vgg_module, "classifier.6"
  if model_name in RESNETS:
    return _resnet_module, "fc"
  if model_name in EFFICIENTNETV2_STAGES:
    return _effnet_module(EFFICIENTNETV2_STAGES[model_name], timm), ("classifier" if timm else "classifier.1")
  raise ValueError(f"no pretrained-weight mapping for model {model_name!r}; known: "
                   f"{sorted(['vgg16', *RESNETS, *EFFICIENTNETV2_STAGES])}")


# --- tensors: torch layout <-> ours ----------------------------------------------------------


def _to_ours(torch_value, our_shape, is_vgg_fc6):
  if len(our_shape) == 4:  # conv: OIHW -> HWIO
    return torch_value.transpose(2, 3, 1, 0)
  if len(our_shape) == 2 and is_vgg_fc6:  # (out, c*h*w) -> (h*w*c, out)
    out, inputs = torch_value.shape
    c = VGG16_BLOCKS[-1][-1]
    side = int(round((inputs // c) ** 0.5))
    return torch_value.reshape(out, c, side, side).transpose(2, 3, 1, 0).reshape(inputs, out)
  if len(our_shape) == 2:
    return torch_value.T
  return torch_value


def _to_torch(our_value, is_vgg_fc6):
  if our_value.ndim == 4:
    return our_value.transpose(3, 2, 0, 1)
  if our_value.ndim == 2 and is_vgg_fc6:
    inputs, out = our_value.shape
    c = VGG16_BLOCKS[-1][-1]
    side = int(round((inputs // c) ** 0.5))
    return our_value.reshape(side, side, c, out).transpose(3, 2, 0, 1).reshape(out, inputs)
  if our_value.ndim == 2:
    return our_value.T
  return our_value


def _torch_leaf(collection, leaf, module_is_bn):
  if module_is_bn:
    return _BN_LEAVES.get((collection, leaf))
  if collection == "params":
    return {"kernel": "weight", "bias": "bias"}.get(leaf)
  return None


def _targets(variables, model_name, timm, include_head):
  """torch key -> list of (collection, path) leaves it fills (a key may fill several subtrees)."""
  module_of, head = _family(model_name, timm)
  targets = {}
  for collection in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0]
    for key_path, _ in flat:
      path = tuple(k.key for k in key_path)
      module_path, leaf = path[:-1], path[-1]
      # A backbone layer at the top, or one level down inside a multi-task subtree.
      for start in (0, 1):
        prefix = module_of(module_path[start:], head) if len(module_path) > start else None
        if prefix is not None:
          break
      if prefix is None or (prefix == head and not include_head):
        continue
      is_bn = collection == "batch_stats" or "scale" in _leaf_names(variables, collection, module_path)
      name = _torch_leaf(collection, leaf, is_bn)
      if name is not None:
        targets.setdefault(f"{prefix}.{name}", []).append((collection, path))
  return targets


def _leaf_names(variables, collection, module_path):
  node = variables.get(collection, {})
  for p in module_path:
    node = node[p]
  return set(node)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _is_vgg_fc6(model_name, path):
  return model_name == "vgg16" and path[-2] == "fc6"


def _read(path: str) -> dict:
  """Through the storage layer, so a gs:// file reads as a local one does."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load
    return load(storage.path(path).read_bytes())
  if path.endswith(".npz"):
    with np.load(io.BytesIO(storage.path(path).read_bytes())) as data:
      return {k: data[k] for k in data.files}
  if path.endswith((".pth", ".pt")):   # torch.save'd, read without torch
    from age_jax.models import torch_files
    return torch_files.read_state_dict(path)
  raise ValueError(f"pretrained weights {path!r}: expected a .safetensors, .npz or .pth state dict")


# --- public API ------------------------------------------------------------------------------


def load_pretrained(path: str, variables: dict, model_name: str, *, skip_head: bool = True) -> dict:
  """Returns `variables` with every backbone tensor replaced by the file's; see module doc."""
  return load_state_dict(_read(path), variables, model_name, skip_head=skip_head, source=path)


def load_state_dict(state: dict, variables: dict, model_name: str, *, skip_head: bool = True,
                    source: str = "state dict") -> dict:
  timm = model_name in EFFICIENTNETV2_STAGES and "conv_stem.weight" in state
  targets = _targets(variables, model_name, timm, include_head=not skip_head)
  if not targets:
    raise ValueError(f"{source}: the variables hold no {model_name} layers (top-level params: "
                     f"{sorted(variables.get('params', {}))}); is model_name right?")
  head = _family(model_name, timm)[1]
  ignorable = lambda k: k.endswith(_IGNORED_SUFFIXES) or (skip_head and k.startswith(head + "."))
  missing = sorted(k for k in targets if k not in state)
  extra = sorted(k for k in state if k not in targets and not ignorable(k))
  misshaped = []
  # Fresh dicts (leaves as numpy) so the caller's variables stay untouched.
  new = {c: jax.tree.map(np.asarray, v) if c in ("params", "batch_stats") else v for c, v in variables.items()}
  for key, leaves in targets.items():
    if key not in state:
      continue
    for collection, leaf_path in leaves:
      ours = _get(new[collection], leaf_path)
      fc6 = _is_vgg_fc6(model_name, leaf_path)
      expected = _to_torch(np.zeros(ours.shape, np.int8), fc6).shape
      if tuple(state[key].shape) != tuple(expected):
        misshaped.append(f"{key}: file {tuple(state[key].shape)}, model expects {tuple(expected)} "
                         f"(ours {'/'.join((collection,) + leaf_path)} {tuple(ours.shape)})")
        continue
      value = np.asarray(_to_ours(np.asarray(state[key]), ours.shape, fc6), dtype=ours.dtype)
      _get(new[collection], leaf_path[:-1])[leaf_path[-1]] = value
  if missing or extra or misshaped:
    lines = [f"{source} does not fit {model_name} (skip_head={skip_head}):"]
    for title, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", misshaped)):
      if items:
        lines.append(f"  {len(items)} {title}: " + ", ".join(items))
    raise ValueError("\n".join(lines))
  return new


def export_state_dict(variables: dict, model_name: str, *, include_head: bool = True) -> dict:
  """Our variables as a torchvision-named state dict (numpy): the inverse of load_state_dict."""
  targets = _targets(variables, model_name, timm=False, include_head=include_head)
  state = {}
  for key, leaves in targets.items():
    collection, leaf_path = leaves[0]
    value = _to_torch(np.asarray(_get(variables[collection], leaf_path)), _is_vgg_fc6(model_name, leaf_path))
    # Contiguous: safetensors.numpy.save_file writes a transposed view's memory, not its values.
    state[key] = np.ascontiguousarray(value)
  return state
