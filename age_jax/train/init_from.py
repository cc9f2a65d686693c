"""Starting a model from other weights: a training workdir's checkpoint, or a PyTorch state dict.

`config.model.init_from`:
  a workdir (local or gs://)                  every params / batch_stats leaf whose path and
                                               shape match is copied from its latest checkpoint
                                               (e.g. a face-identity pre-training run: the
                                               backbone transfers, a head of another size does not);
  a .safetensors / .npz / .pth state dict      torchvision / timm names (models/pretrained.py),
                                               the 1000-way classifier skipped.
`config.model.pretrained` ('torchvision:resnet50'): the official file, fetched, hash-checked and
converted once (models/weights_hub.py), then loaded as a state dict.
What was and wasn't loaded is logged by path. The same leaf matching carries parameters across
stages whose heads differ (train/loop.py).
"""
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from age_jax import storage
from age_jax.models import pretrained, weights_hub


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (k,)))
    return out
  return {prefix: tree}


def copy_matching(target: dict, source: dict):
  """target's pytree (nested dicts of host arrays) with each leaf replaced by source's at the same
  path when the shapes agree. Returns (tree, loaded paths, [(path, reason) not loaded], unused
  source paths)."""
  flat_target, flat_source = _flatten(target), _flatten(source)
  loaded, kept = [], []

  def pick(path, leaf):
    if path not in flat_source:
      kept.append(("/".join(path), "not in the source"))
      return leaf
    value = flat_source[path]
    if tuple(np.shape(value)) != tuple(np.shape(leaf)):
      kept.append(("/".join(path), f"shape {tuple(np.shape(value))} in the source, {tuple(np.shape(leaf))} here"))
      return leaf
    loaded.append("/".join(path))
    return np.asarray(value, dtype=np.asarray(leaf).dtype)

  def rebuild(tree, prefix=()):
    if isinstance(tree, dict):
      return {k: rebuild(v, prefix + (k,)) for k, v in tree.items()}
    return pick(prefix, tree)

  unused = sorted("/".join(p) for p in flat_source if p not in flat_target)
  return rebuild(target), loaded, kept, unused


def _checkpoint_variables(workdir: str) -> dict:
  directory = storage.path(workdir) / "checkpoints"   # a local folder or a gs:// URI
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"config.model.init_from={workdir!r}: no checkpoint in {directory}")
  # No target: the saved arrays come back as numpy, whatever model or mesh wrote them.
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  if state.get("ema"):  # the moving average, which the run evaluates with (train/state.py)
    return {"params": state["ema"]["params"], "batch_stats": state["ema"].get("batch_stats", {})}
  return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


def copy_variables(target: dict, source: dict):
  """copy_matching over the 'params' and 'batch_stats' collections. Returns (variables, number of
  arrays loaded, [(path, reason)] of parameters not loaded, unused source parameter paths)."""
  out, count = {}, 0
  for collection in ("params", "batch_stats"):
    out[collection], loaded, kept, unused = copy_matching(target.get(collection, {}), source.get(collection, {}))
    count += len(loaded)
    if collection == "params":
      params_kept, params_unused = kept, unused
  return out, count, params_kept, params_unused


def start_source(model_cfg) -> str:
  """Where a fresh run's weights come from: config.model.init_from, or the fetched file of
  config.model.pretrained, or '' (random initialization)."""
  if model_cfg.get("pretrained"):
    return weights_hub.fetch(model_cfg.pretrained)
  return model_cfg.init_from


def load_variables(path: str, variables: dict, model_name: str) -> tuple[dict, str]:
  """(variables with the source's weights copied in, a one-line summary)."""
  if storage.path(path).is_dir():
    out, count, kept, unused = copy_variables(variables, _checkpoint_variables(path))
    if len(kept) == len(_flatten(variables["params"])):
      raise ValueError(f"config.model.init_from={path!r}: no parameter of this model matches the checkpoint "
                       "by path and shape")
    for p, why in kept:
      logging.info("init_from %s: not loaded %s: %s", path, p, why)
    for p in unused:
      logging.info("init_from %s: unused from the source: %s", path, p)
    fresh = f" ({', '.join(p for p, _ in kept[:6])}{', ...' if len(kept) > 6 else ''})" if kept else ""
    extra = f", unused from the source: {', '.join(unused[:6])}{', ...' if len(unused) > 6 else ''}" if unused else ""
    return out, f"init_from {path}: {count} arrays loaded, {len(kept)} parameters kept fresh{fresh}{extra}"
  if not storage.path(path).exists():  # a local file, or gs:// through the same layer as the workdir
    where = ""
    if jax.process_count() > 1:  # every process loads it: each host needs the file, or a bucket
      where = (f" on process {jax.process_index()} (host {socket.gethostname()}); copy it to every host "
               "(launch/tpu_pod.sh data FILE) or give a gs:// path")
    raise FileNotFoundError(f"config.model.init_from={path!r} does not exist{where} (a workdir or a "
                            ".safetensors/.npz/.pth)")
  new = pretrained.load_pretrained(path, variables, model_name)
  return new, f"init_from {path}: the {model_name} backbone loaded from the state dict, the head fresh"
