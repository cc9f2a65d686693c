"""Every sharding decision in one place: the mesh, and how batches and state are laid out on it.

Data parallelism: the batch is split along the mesh's 'data' axis, the train state is
replicated. The same jitted step runs on 1 CPU, 8 GPUs or a pod: only the mesh changes.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  data = mesh_cfg.data if mesh_cfg.data != -1 else len(devices)
  if data <= 0 or data != len(devices):
    raise ValueError(f"config.mesh.data={mesh_cfg.data} does not match the {len(devices)} available devices "
                     f"(use -1 for all of them)")
  return Mesh(np.asarray(devices).reshape(data), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, abstract_state):
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> int:
  """Returns the per-process batch size; the global batch must split evenly over devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"{field}={global_batch_size} is not divisible by the {n} devices of the mesh")
  return global_batch_size // jax.process_count()


def to_global(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's local arrays into global jax.Arrays sharded along 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
