"""Where a train step's convolution time goes: each 3x3+ convolution of ResNet-18 (or the Xing
baseline) timed alone, forward, input gradient and weight gradient separately, per lowering and
optionally in PyTorch (its oneDNN kernels: conv2d, and convolution_backward for one gradient).

  python -m launch.bench_conv --model=resnet18 --image_size=224 [--lowering=auto,xla] [--torch]

Prints one line per distinct layer: milliseconds and GFLOP/s of each direction (every direction
costs the forward's FLOPs), the sum over the network's layers (repeats counted), and the
fraction of the train step's convolution time that each direction takes. The stem's input
gradient is left out: no train step computes the gradient of the images.
"""
import time

from absl import app, flags

_MODEL = flags.DEFINE_enum("model", "resnet18", ["resnet18", "xing_baseline"], "Whose convolutions.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per call.")
_LOWERING = flags.DEFINE_string("lowering", "auto,xla", "Conv lowerings, comma-separated.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time PyTorch's CPU convolutions.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement; the best is kept.")


def _out(size, k, s, p):
  return (size + 2 * p - k) // s + 1


def conv_layers(model, image_size):
  """[(name, map size, cin, cout, kernel, stride, pad, repeats, is_stem)] of the model's
  convolutions with kernels above 1x1 (1x1s are matmuls in every lowering)."""
  if model == "resnet18":
    size = _out(image_size, 7, 2, 3)
    rows = [("stem 7x7/2", image_size, 3, 64, 7, 2, 3, 1, True)]
    size = _out(size, 3, 2, 1)  # max pool
    cin = 64
    for stage in range(4):
      width = 64 * 2 ** stage
      stride = 1 if stage == 0 else 2
      if stride == 2:
        rows.append((f"stage{stage + 1} 3x3/2", size, cin, width, 3, 2, 1, 1, False))
        size = _out(size, 3, 2, 1)
      rows.append((f"stage{stage + 1} 3x3", size, width, width, 3, 1, 1, 4 if stride == 1 else 3, False))
      cin = width
    return rows
  size = _out(image_size, 7, 4, 0)  # Xing baseline: conv1 7x7/4, pool, conv2 5x5, pool, conv3 3x3
  size2 = _out(size, 3, 2, 0)
  size3 = _out(size2, 3, 2, 0)
  return [("conv1 7x7/4", image_size, 3, 96, 7, 4, 0, 1, True),
          ("conv2 5x5", size2, 96, 256, 5, 1, 2, 1, False),
          ("conv3 3x3", size3, 256, 384, 3, 1, 1, 1, False)]


def _best_ms(fn, repeats):
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def jax_times(lowering, batch, size, cin, cout, k, stride, pad, repeats):
  """(forward, input gradient, weight gradient) milliseconds with one lowering."""
  import jax
  from age_jax.models import layers
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, cin))
  w = jax.random.normal(keys[1], (k, k, cin, cout)) * 0.05
  pads = ((pad, pad), (pad, pad))
  conv = lambda x, w: layers.conv(x, w, stride, pads, 1, lowering)  # noqa: E731
  dy = jax.random.normal(keys[2], jax.eval_shape(conv, x, w).shape)
  options = layers.compiler_options(lowering)
  compile_ = lambda f, *args: jax.jit(f).lower(*args).compile(options)  # noqa: E731
  forward = compile_(conv, x, w)
  dx = compile_(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], x, w, dy)
  dw = compile_(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0], x, w, dy)
  return (_best_ms(lambda: forward(x, w).block_until_ready(), repeats),
          _best_ms(lambda: dx(x, w, dy).block_until_ready(), repeats),
          _best_ms(lambda: dw(x, w, dy).block_until_ready(), repeats))


def torch_times(batch, size, cin, cout, k, stride, pad, repeats):
  import torch
  x = torch.randn(batch, cin, size, size).contiguous(memory_format=torch.channels_last)
  w = (torch.randn(cout, cin, k, k) * 0.05).contiguous(memory_format=torch.channels_last)
  with torch.no_grad():
    y = torch.nn.functional.conv2d(x, w, None, stride, pad)
    dy = torch.randn_like(y)

    def backward(mask):
      return torch.ops.aten.convolution_backward(dy, x, w, None, (stride, stride), (pad, pad), (1, 1),
                                                 False, (0, 0), 1, mask)
    return (_best_ms(lambda: torch.nn.functional.conv2d(x, w, None, stride, pad), repeats),
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
  for name, size, cin, cout, k, stride, pad, count, is_stem in conv_layers(_MODEL.value, _IMAGE_SIZE.value):
    out = _out(size, k, stride, pad)
    gflop = 2 * batch * out * out * k * k * cin * cout / 1e9
    print(f"{name}, {size} px, {cin}->{cout}, x{count} ({gflop:.2f} GFLOP per direction):", flush=True)
    for contestant, times_of in contestants.items():
      times = times_of(batch, size, cin, cout, k, stride, pad, repeats)
      if is_stem:
        times = (times[0], 0.0, times[2])
      for i, t in enumerate(times):
        totals[contestant][i] += count * t
      cells = " | ".join("-" if t == 0 else f"{t:7.1f} ({gflop / t * 1e3:4.0f})" for t in times)
      print(f"  {contestant:>8}: {cells}", flush=True)
  print("sum over the network's layers, ms: forward | input grad | weight grad | all")
  for contestant, t in totals.items():
    print(f"  {contestant:>8}: {t[0]:7.0f} | {t[1]:7.0f} | {t[2]:7.0f} | {sum(t):7.0f}")


if __name__ == "__main__":
  app.run(main)
