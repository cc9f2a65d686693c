"""Where a train step's convolution time goes: each distinct convolution of a model (kernels
above 1x1; 1x1s are matmuls in every lowering) timed alone, forward, input gradient and weight
gradient separately, per lowering and optionally in PyTorch (its oneDNN kernels: conv2d, and
convolution_backward for one gradient at a time).

  python -m launch.bench.bench_conv --model=resnet18 --image_size=224 [--lowering=auto,xla] [--torch]

Prints per distinct convolution the milliseconds and GFLOP/s of each direction (each costs the
forward's FLOPs), then the sums over the model's convolutions (repeats counted). The input
gradient of a convolution of the images is left out: no train step computes it. Only square
convolutions of square maps are listed (every 3x3+ convolution of ResNets, VGG-16 and the Xing
baseline); grouped (depthwise) ones are skipped: PyTorch's and XLA's layouts for them differ.
"""
import collections
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "resnet18", "Registry name (age_jax.models.names()).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per call.")
_LOWERING = flags.DEFINE_string("lowering", "auto,xla", "Conv lowerings, comma-separated.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time PyTorch's CPU convolutions.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement; the best is kept.")

# One convolution as the model calls it: input map side and channels, output channels, square
# kernel, stride and explicit ((top, bottom), (left, right)) padding.
ConvShape = collections.namedtuple("ConvShape", "size cin cout kernel stride pads")


def model_convolutions(model_name, image_size):
  """{ConvShape: how many times the model's forward pass runs it}, in call order, read off
  the model by tracing it (jax.eval_shape) with every layers.Conv call recorded."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from age_jax import config as config_lib, models
  from age_jax.models import layers
  cfg = config_lib.default_config().model
  cfg.name, cfg.conv_lowering = model_name, "xla"
  model = models.get_model(cfg, 1)
  counts = collections.Counter()

  def record(next_fun, args, kwargs, context):
    conv = context.module
    if isinstance(conv, layers.Conv) and context.method_name == "__call__":
      x = args[0]
      (kh, kw), stride_hw = layers.pair(conv.kernel_size), layers.pair(conv.strides)
      if conv.feature_group_count == 1 and (kh, kw) != (1, 1) and kh == kw and stride_hw[0] == stride_hw[1] \
          and x.shape[1] == x.shape[2]:
        pads = layers.explicit_padding(x.shape[1:3], (kh, kw), stride_hw, conv.padding)
        counts[ConvShape(x.shape[1], x.shape[3], conv.features, kh, stride_hw[0], pads)] += 1
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    counts.clear()  # init and apply trace the same calls: count one forward pass
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  return dict(counts)


def _out(shape):
  return (shape.size + sum(shape.pads[0]) - shape.kernel) // shape.stride + 1


def _best_ms(fn, repeats):
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def jax_times(lowering, batch, shape, repeats):
  """(forward, input gradient, weight gradient) milliseconds with one lowering."""
  import jax
  from age_jax import models
  lowering = models.get_lowering(lowering)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, shape.size, shape.size, shape.cin))
  w = jax.random.normal(keys[1], (shape.kernel, shape.kernel, shape.cin, shape.cout)) * 0.05
  conv = lambda x, w: lowering.convolution(x, w, shape.stride, shape.pads, 1)  # noqa: E731
  dy = jax.random.normal(keys[2], jax.eval_shape(conv, x, w).shape)
  options = lowering.compiler_options
  compile_ = lambda f: jax.jit(f).lower(x, w, dy).compile(options)  # noqa: E731
  forward = compile_(lambda x, w, dy: conv(x, w))
  dx = compile_(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  dw = compile_(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  return tuple(_best_ms(lambda f=f: f(x, w, dy).block_until_ready(), repeats) for f in (forward, dx, dw))


def torch_times(batch, shape, repeats):
  import torch
  (top, bottom), (left, right) = shape.pads
  channels_last = torch.channels_last
  x = torch.randn(batch, shape.cin, shape.size, shape.size).contiguous(memory_format=channels_last)
  x = torch.nn.functional.pad(x, (left, right, top, bottom)).contiguous(memory_format=channels_last)
  w = (torch.randn(shape.cout, shape.cin, shape.kernel, shape.kernel) * 0.05).contiguous(memory_format=channels_last)
  stride = (shape.stride, shape.stride)
  with torch.no_grad():
    dy = torch.randn_like(torch.nn.functional.conv2d(x, w, None, stride))

    def backward(mask):
      return torch.ops.aten.convolution_backward(dy, x, w, None, stride, (0, 0), (1, 1), False, (0, 0), 1, mask)
    return (_best_ms(lambda: torch.nn.functional.conv2d(x, w, None, stride), repeats),
            _best_ms(lambda: backward((True, False, False)), repeats),
            _best_ms(lambda: backward((False, True, False)), repeats))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  lowerings = [s.strip() for s in _LOWERING.value.split(",") if s.strip()]
  contestants = {name: (lambda *a, name=name: jax_times(name, *a)) for name in lowerings}
  if _TORCH.value:
    contestants["torch"] = torch_times
  batch, repeats = _BATCH.value, _REPEATS.value
  totals = {name: [0.0, 0.0, 0.0] for name in contestants}
  print(f"{_MODEL.value} @ {_IMAGE_SIZE.value} px, batch {batch}: ms (GFLOP/s) forward | input grad | weight grad")
  for shape, count in model_convolutions(_MODEL.value, _IMAGE_SIZE.value).items():
    out = _out(shape)
    gflop = 2 * batch * out * out * shape.kernel ** 2 * shape.cin * shape.cout / 1e9
    print(f"{shape.kernel}x{shape.kernel}/{shape.stride} on {shape.size} px, {shape.cin}->{shape.cout}, "
          f"x{count} ({gflop:.2f} GFLOP per direction):", flush=True)
    for contestant, times_of in contestants.items():
      times = list(times_of(batch, shape, repeats))
      if shape.size == _IMAGE_SIZE.value and shape.cin == 3:
        times[1] = 0.0  # the images' gradient
      for i, t in enumerate(times):
        totals[contestant][i] += count * t
      cells = " | ".join("-" if t == 0 else f"{t:7.1f} ({gflop / t * 1e3:4.0f})" for t in times)
      print(f"  {contestant:>8}: {cells}", flush=True)
  print("sum over the model's convolutions, ms: forward | input grad | weight grad | all")
  for contestant, t in totals.items():
    print(f"  {contestant:>8}: {t[0]:7.0f} | {t[1]:7.0f} | {t[2]:7.0f} | {sum(t):7.0f}")


if __name__ == "__main__":
  app.run(main)
