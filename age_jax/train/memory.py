"""Compile-only memory and FLOP analysis of a train step (see launch/bench/memory_check.py)."""
import os


def fake_cpu_devices(n: int):
  # Must happen before JAX starts its backend; harmless on GPU/TPU (the flag concerns the host platform).
  if n > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}").strip()


def build_config(base, model, image_size, batch_per_device, num_devices, fsdp, dtype=None, formulation=None,
                 conv_lowering="xla"):
  from age_jax import config as config_lib
  cfg = config_lib.default_config() if base is None else base
  with cfg.unlocked():
    cfg.model.name = model
    cfg.data.image_size = image_size
    cfg.data.load_size = max(cfg.data.load_size, image_size)
    cfg.train.batch_size = batch_per_device * num_devices
    cfg.mesh.data, cfg.mesh.fsdp = -1, fsdp
    cfg.model.conv_lowering = conv_lowering
    if dtype:
      cfg.model.dtype = dtype
    if formulation:
      cfg.formulation.name = formulation
  return cfg


def analyse(cfg, devices=None) -> dict:
  """Lowers and compiles the train step of cfg on the given devices; returns the per-device figures."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from age_jax.train import experiment, sharding

  exp = experiment.build(cfg, devices)
  train_step = exp.jit_train_step()
  b, s = cfg.train.batch_size, cfg.data.image_size
  labels = lambda dtype: jax.ShapeDtypeStruct((b,), dtype, sharding=exp.batch_sharding)
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32, sharding=exp.batch_sharding),
           "age": labels(jnp.float32), "gender": labels(jnp.int32), "race": labels(jnp.int32)}
  rng = jax.eval_shape(lambda: jax.random.key(0))
  compiled = train_step.lower(exp.abstract_state, batch, rng).compile()
  memory = compiled.memory_analysis()
  # XLA's CPU backend counts (and runs) depthwise weight gradients as dense convolutions, so the
  # train step's FLOP count is only trusted on accelerators; the forward count is exact everywhere.
  variables = lambda p, bs: {"params": p, "batch_stats": bs} if bs else {"params": p}
  forward = jax.jit(lambda p, bs, x: exp.model.apply(variables(p, bs), x, train=False),
                    in_shardings=(exp.state_sharding.params, exp.state_sharding.batch_stats, exp.batch_sharding))
  forward_cost = _flops(forward.lower(exp.abstract_state.params, exp.abstract_state.batch_stats,
                                      batch["image"]).compile())
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(exp.abstract_state.params))
  figures = {
      "model": cfg.model.name, "image_size": s, "global_batch": b, "devices": exp.mesh.devices.size,
      "mesh": dict(exp.mesh.shape), "backend": jax.default_backend(), "params": num_params,
      "state_bytes_per_device": sharding.bytes_per_device(exp.abstract_state),
      "train_flops_per_device_step": _flops(compiled),
      "forward_flops_per_device_step": forward_cost,
  }
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                "temp_size_in_bytes", "generated_code_size_in_bytes"):
    figures[field] = int(getattr(memory, field, -1)) if memory is not None else -1
  # Arguments (state + batch) stay alive; outputs alias the donated state; temporaries peak on top.
  figures["peak_bytes_estimate"] = (figures["argument_size_in_bytes"] + figures["output_size_in_bytes"]
                                    - figures["alias_size_in_bytes"] + figures["temp_size_in_bytes"])
  return figures


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")
