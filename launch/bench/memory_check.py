"""Compile the train step for a model, image size and per-device batch without running it, and
report what one device needs (XLA's memory analysis) and the step's FLOPs (XLA's cost analysis).

  python -m launch.bench.memory_check --model=efficientnetv2_m --image_size=384 --batch_per_device=32
  python -m launch.bench.memory_check --model=efficientnetv2_m --image_size=384 --batch_per_device=32 \\
      --devices=8 --fsdp=8        # on a CPU machine: 8 fake devices, state sharded 8 ways

On a CPU machine the figures are the CPU backend's buffer assignment: a guide to the size of
the activations and state, not the exact number a GPU or TPU compiler will choose; run the same
command on the accelerator for that. Nothing is allocated for the state or the batch.
"""

from absl import app, flags
from ml_collections import config_flags

from age_jax.train.memory import analyse, build_config, fake_cpu_devices

_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional experiment config (default: the base config).")
_MODEL = flags.DEFINE_string("model", "efficientnetv2_m", "config.model.name")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 384, "config.data.image_size")
_BATCH = flags.DEFINE_integer("batch_per_device", 32, "Examples per device per step.")
_DEVICES = flags.DEFINE_integer("devices", 0, "Devices to use (0: all). On CPU, fakes this many devices.")
_FSDP = flags.DEFINE_integer("fsdp", 1, "config.mesh.fsdp")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "config.model.dtype (default: the config's).")
_FORMULATION = flags.DEFINE_string("formulation", None, "config.formulation.name (default: the config's).")
_LOWERING = flags.DEFINE_enum("conv_lowering", "xla", ["auto", "xla", "patches"],
                              "config.model.conv_lowering; 'xla' is what GPUs and TPUs use ('auto' picks "
                              "'patches' on CPU, whose im2col buffers would inflate the figure).")



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fake_cpu_devices(_DEVICES.value)
  import jax
  devices = jax.devices()
  if _DEVICES.value:
    if _DEVICES.value > len(devices):
      raise app.UsageError(f"--devices={_DEVICES.value} but only {len(devices)} are available")
    devices = devices[:_DEVICES.value]
  cfg = build_config(_CONFIG.value, _MODEL.value, _IMAGE_SIZE.value, _BATCH.value, len(devices), _FSDP.value,
                     _DTYPE.value, _FORMULATION.value, _LOWERING.value)
  figures = analyse(cfg, devices)
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  print(f"{figures['model']} at {figures['image_size']} px, {_BATCH.value}/device x {figures['devices']} "
        f"{figures['backend']} devices, mesh {figures['mesh']}, {figures['params'] / 1e6:.1f} M params")
  print(f"  train state per device  {gib(figures['state_bytes_per_device'])}")
  print(f"  arguments {gib(figures['argument_size_in_bytes'])}, outputs {gib(figures['output_size_in_bytes'])} "
        f"(aliased {gib(figures['alias_size_in_bytes'])}), temporaries {gib(figures['temp_size_in_bytes'])}")
  print(f"  peak per device (estimate) {gib(figures['peak_bytes_estimate'])}")
  print(f"  FLOPs per device per step: forward {figures['forward_flops_per_device_step'] / 1e12:.2f} TFLOP "
        f"(training ~3x: {3 * figures['forward_flops_per_device_step'] / 1e12:.2f}); XLA's count for the train "
        f"step {figures['train_flops_per_device_step'] / 1e12:.2f} TFLOP (inflated on CPU by depthwise "
        "weight gradients)")


if __name__ == "__main__":
  app.run(main)
