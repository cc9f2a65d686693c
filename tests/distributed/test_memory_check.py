"""launch/bench/memory_check.py compiles without running: per-device state bytes follow the mesh."""
import jax

from age_jax.train import memory as memory_check
from tests.tiny import tiny_config


def test_memory_check_reports_the_sharded_state_and_the_step_cost():
  base = tiny_config(**{"mesh.fsdp_min_size": 256})
  cfg = memory_check.build_config(base, "xing_baseline", image_size=64, batch_per_device=4, num_devices=2,
                                  fsdp=2)
  assert cfg.train.batch_size == 8 and cfg.model.conv_lowering == "xla"
  figures = memory_check.analyse(cfg, jax.devices()[:2])
  assert figures["mesh"] == {"data": 1, "fsdp": 2}
  # Params per device: half of conv1..3 kernels and fc2 (3608 / 2 = 1804 floats) + 201 replicated
  # floats; the same again for SGD momentum; plus two int32 counters (step, optimizer count).
  assert figures["state_bytes_per_device"] == 4 * 2 * (1804 + 201) + 2 * 4
  assert figures["forward_flops_per_device_step"] > 0
  assert figures["train_flops_per_device_step"] > 2 * figures["forward_flops_per_device_step"]
  assert figures["peak_bytes_estimate"] >= figures["argument_size_in_bytes"] > 0
