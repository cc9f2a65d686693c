"""Every sharding decision in one place: the mesh, and how batches and state are laid out on it.

The mesh has two axes, ('data', 'fsdp'), over all devices of all processes:
  - the batch is split over both axes (every device sees batch_size / num_devices examples);
  - parameters, batch statistics and optimizer state are split over 'fsdp' (each large array
    along its largest dimension divisible by the fsdp size) and replicated over 'data'.
fsdp=1 is plain data parallelism. With fsdp>1, XLA all-gathers each parameter where the
step uses it and reduce-scatters its gradient, so a device holds 1/fsdp of the state
(ZeRO-3 / FSDP). The same jitted step runs on 1 CPU, 8 GPUs or a pod: only the mesh changes.
'fsdp' is the inner axis so its collectives stay on the fastest links (ICI, NVLink);
'data' spans hosts, where only the gradient all-reduce crosses.
"""
import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device
DEFAULT_FSDP_MIN_SIZE = 2**18


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from config.mesh; data=-1 takes all devices not used by fsdp."""
  fsdp = mesh_cfg.get("fsdp", 1)
  if fsdp < 1 or num_devices % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {num_devices} available devices")
  data = num_devices // fsdp if mesh_cfg.data == -1 else mesh_cfg.data
  if data < 1 or data * fsdp != num_devices:
    raise ValueError(f"config.mesh.data={mesh_cfg.data} does not match the {num_devices} available devices "
                     f"(config.mesh.data x config.mesh.fsdp = {mesh_cfg.data} x {fsdp} = {data * fsdp}; "
                     "use config.mesh.data=-1 for all devices not on the fsdp axis)")
  return data, fsdp


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  all_devices = devices is None
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(_device_grid(shape, devices, all_devices), MESH_AXES)


def _device_grid(shape, devices, all_devices: bool) -> np.ndarray:
  if all_devices and devices[0].platform == "tpu":
    # Follows the physical torus so that the inner (fsdp) axis rides neighbouring ICI links. An fsdp
    # size that is not a whole torus axis (2, 4, 8 on a 16x16 v5e-256) needs an axis split in two.
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  # Process-major order: each process's devices hold a contiguous block of the batch, so the
  # global batch is the processes' local batches in process order (see data/pipeline.py).
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return np.asarray(devices, dtype=object).reshape(shape)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp_size: int, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> P:
  """Where one array of the state is split: its largest dimension divisible by fsdp_size
  (the last such one on ties), or nowhere for small arrays and awkward shapes."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  candidates = [i for i, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  return P(*([None] * axis + ["fsdp"]))


def state_sharding(mesh: Mesh, abstract_state, fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE):
  """A NamedSharding per state leaf. The rule depends only on a leaf's shape, so a parameter and
  its optimizer moments (same shape) always live on the same devices."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, fsdp_min_size)), abstract_state)


def bytes_per_device(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs (or arrays) carrying shardings."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> int:
  """Returns this process's share of the global batch, which must split evenly over devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"{field}={global_batch_size} is not divisible by the {n} devices of the mesh "
                     f"(config.mesh.data x config.mesh.fsdp = {' x '.join(map(str, mesh.devices.shape))})")
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  return global_batch_size // n * local


def to_global(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's local arrays into global jax.Arrays split over the whole mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
