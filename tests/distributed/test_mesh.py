"""The ('data', 'fsdp') mesh on the 8 fake devices of tests/conftest.py: FSDP really shards the
state, gives the data-parallel numbers, and bad mesh or batch shapes fail clearly."""
import dataclasses
import itertools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from age_jax.train import sharding
from tests.tiny import tiny_config, train_steps


def _mesh_cfg(data=-1, fsdp=1):
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "fsdp_min_size": 1})


@pytest.mark.parametrize("shape, fsdp, min_size, expected", [
    ((3, 3, 64, 128), 4, 1, P(None, None, None, "fsdp")),  # largest divisible dim
    ((256, 100), 4, 1, P("fsdp")),
    ((100, 256), 8, 1, P(None, "fsdp")),
    ((8, 8), 4, 1, P(None, "fsdp")),                       # tie: the last one
    ((6, 10), 4, 1, P()),                                  # nothing divisible: replicated
    ((512, 512), 4, 512 * 512 + 1, P()),                   # below fsdp_min_size: replicated
    ((), 4, 0, P()),                                       # scalars (step, optimizer count)
    ((4096, 1000), 1, 1, P()),                             # fsdp=1: plain data parallelism
])
def test_fsdp_spec_picks_the_largest_divisible_dimension(shape, fsdp, min_size, expected):
  assert sharding.fsdp_spec(shape, fsdp, min_size) == expected


@pytest.mark.parametrize("data, fsdp, expected", [(-1, 1, (8, 1)), (-1, 4, (2, 4)), (2, 4, (2, 4)),
                                                  (1, 8, (1, 8))])
def test_mesh_shapes(data, fsdp, expected):
  mesh = sharding.make_mesh(_mesh_cfg(data, fsdp))
  assert mesh.axis_names == ("data", "fsdp")
  assert tuple(mesh.devices.shape) == expected


@pytest.mark.parametrize("data, fsdp, message", [
    (3, 1, r"config.mesh.data=3 does not match the 8 available devices \(config.mesh.data x "
           r"config.mesh.fsdp = 3 x 1 = 3;"),
    (4, 4, r"config.mesh.data=4 does not match the 8 available devices \(.* = 4 x 4 = 16;"),
    (-1, 3, r"config.mesh.fsdp=3 does not divide the 8 available devices"),
    (-1, 0, r"config.mesh.fsdp=0 does not divide"),
])
def test_a_mesh_that_does_not_match_the_devices_is_rejected(data, fsdp, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(_mesh_cfg(data, fsdp))


def test_batch_not_divisible_by_the_whole_mesh_is_rejected():
  mesh = sharding.make_mesh(_mesh_cfg(2, 4))
  with pytest.raises(ValueError, match=r"config.train.batch_size=20 is not divisible by the 8 devices "
                                       r"of the mesh \(config.mesh.data x config.mesh.fsdp = 2 x 4\)"):
    sharding.check_batch_size(20, mesh)
  assert sharding.check_batch_size(24, mesh) == 24  # one process: the whole global batch


def _train(cfg, num_steps=3):
  return train_steps(cfg, num_steps=num_steps)


@pytest.mark.slow
def test_fsdp_shards_params_and_optimizer_state_and_matches_data_parallel():
  # fsdp_min_size=256 makes the tiny model's conv kernels and fc2 (16x16) large enough to split.
  fsdp_cfg = tiny_config(**{"mesh.fsdp": 4, "mesh.fsdp_min_size": 256})
  exp, state, fsdp_losses = _train(fsdp_cfg)
  assert exp.mesh.shape == {"data": 2, "fsdp": 4}

  kernel = state.params["conv2"]["kernel"]                        # (5, 5, 8, 8): split on Cout
  assert kernel.sharding.spec == P(None, None, None, "fsdp")
  assert {s.data.shape for s in kernel.addressable_shards} == {(5, 5, 8, 2)}
  # A device holds a quarter of Cout; the 2 devices of each fsdp column along 'data' hold the same quarter.
  assert len({str(s.index) for s in kernel.addressable_shards}) == 4
  momentum = state.opt_state[1][0].trace["conv2"]["kernel"]       # optax sgd trace: same layout
  assert momentum.sharding == kernel.sharding
  assert state.params["fc2"]["kernel"].sharding.spec == P(None, "fsdp")
  assert state.params["fc1"]["kernel"].sharding.spec == P()       # 8x16 = 128 < 256: replicated
  assert state.params["conv2"]["bias"].sharding.spec == P()
  # Per device: a quarter of conv1..3 kernels and fc2 (1176+1600+576+256)/4 = 902 floats, plus the
  # replicated biases, fc1 and head: 24+16+16+128+16+1 = 201 floats.
  assert sharding.bytes_per_device(state.params) == 4 * (902 + 201)
  assert sharding.bytes_per_device(exp.abstract_state.params) == 4 * (902 + 201)

  _, dp_state, dp_losses = _train(tiny_config())
  np.testing.assert_allclose(fsdp_losses, dp_losses, rtol=1e-5, atol=1e-5)
  assert dp_losses[0] != dp_losses[-1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(state.params), jax.device_get(dp_state.params))


@dataclasses.dataclass(frozen=True)
class MockTpuDevice:  # the attributes jax's mesh_utils reads, as in jax's own mesh_utils tests
  id: int
  process_index: int
  coords: tuple
  core_on_chip: int
  device_kind: str
  platform: str = "tpu"
  slice_index: int = 0


def _mock_torus(x, y, z, kind, host_chips=(2, 2, 1)):
  """One device per chip (v4/v5p megacore, v5e/v6e single core); 4 chips per host."""
  hosts_x, hosts_y = x // host_chips[0], y // host_chips[1]
  devices = []
  for k, j, i in itertools.product(range(z), range(y), range(x)):
    host = i // host_chips[0] + j // host_chips[1] * hosts_x + k // host_chips[2] * hosts_x * hosts_y
    devices.append(MockTpuDevice(len(devices), host, (i, j, k), 0, kind))
  return devices


@pytest.mark.parametrize("topology, kind", [((16, 16, 1), "TPU v5 lite"), ((4, 4, 4), "TPU v4")])
@pytest.mark.parametrize("fsdp", [2, 4, 8])
def test_fsdp_groups_are_physical_neighbours_on_a_tpu_torus(monkeypatch, topology, kind, fsdp):
  devices = _mock_torus(*topology, kind)
  monkeypatch.setattr(jax, "devices", lambda *a: devices)
  grid = sharding.make_mesh(_mesh_cfg(-1, fsdp)).devices
  assert grid.shape == (len(devices) // fsdp, fsdp)
  assert sorted(d.id for d in grid.flat) == list(range(len(devices)))
  for group in grid:  # one fsdp group: a line or block of the torus, no wider than its size
    coords = np.array([d.coords for d in group])
    assert np.prod(coords.max(0) - coords.min(0) + 1) == fsdp
