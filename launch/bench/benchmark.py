"""Training and inference speed of a model on this machine, optionally against PyTorch.

  python -m launch.bench.benchmark --model=xing_baseline --image_size=227 --batch_size=32 \
      [--lowering=auto[,xla,patches,...]] [--dtype=float32|bfloat16] [--steps=N] [--rounds=R] [--torch]
  python -m launch.bench.benchmark --all [--torch]   # the issue's table: Xing @227, ResNet-18 @64/112/224

One training step = forward + MAE loss + backward + SGD with momentum 0.9 (no weight decay), on
random images; self-contained (not age_jax/train) so it measures the model, not the pipeline.
Prints per contestant: compile time of the train step, train and eval images/s (median over
rounds), model FLOPs per image (3 x the forward FLOPs of XLA's cost analysis, the usual MFU
convention; XLA's count of the whole train step too), achieved GFLOP/s and its fraction of this
machine's peak (a large matmul in the run's dtype, measured in the same run: 4096^2 on the CPU,
8192^2 on an accelerator), compiled memory, process RSS and, on GPU/TPU, the device's peak memory.
Several lowerings (comma-separated) and PyTorch eager run in interleaved rounds, so a ratio
stays fair when other processes share the cores.
"""
import resource
import statistics
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "xing_baseline", "Registry name (age_jax.models.names()).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 227, "Square input side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step.")
_LOWERING = flags.DEFINE_string("lowering", "auto", "Conv lowering(s), comma-separated, each one "
                                "of age_jax.models.layers.LOWERINGS; each is timed in the same rounds.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (params stay float32).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per round (eval: the same count).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the median round is reported.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time the PyTorch eager twin (launch/bench/benchmark_torch.py).")
_TORCH_DEVICE = flags.DEFINE_enum("torch_device", "cpu", ["cpu", "cuda"], "Where the PyTorch twin runs "
                                  "(cuda: channels-last, autocast for bfloat16).")
_EVAL = flags.DEFINE_bool("eval", True, "Also time inference (train=False forward).")
_ALL = flags.DEFINE_bool("all", False, "Run the issue's rows: xing_baseline@227 and resnet18@64/112/224, batch 32.")
_OUTPUTS = flags.DEFINE_integer("num_outputs", 1, "Head size (1: MAE regression).")
_COMPILER_OPTIONS = flags.DEFINE_bool("compiler_options", True, "Compile with the lowering's XLA options "
                                      "(models.get_lowering; --nocompiler_options: XLA's defaults).")

ALL_ROWS = (("xing_baseline", 227, 32), ("resnet18", 64, 32), ("resnet18", 112, 32), ("resnet18", 224, 32))
PEAK_SIZE = 4096
ACCELERATOR_PEAK_SIZE = 8192  # 4096^2 is too small to fill a GPU/TPU
LEARNING_RATE = 1e-3
MOMENTUM = 0.9


def _best_seconds(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def measure_peak_gflops(dtype_name="float32", size=None, repeats=3):
  """Best-of-`repeats` GFLOP/s of one size^2 x size^2 matmul: this machine's practical peak."""
  import jax
  import jax.numpy as jnp
  size = size or (PEAK_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_PEAK_SIZE)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  return 2 * size ** 3 / _best_seconds(lambda: matmul(a).block_until_ready(), repeats) / 1e9


def measure_torch_peak_gflops(dtype_name="float32", device="cpu", repeats=3):
  import torch
  from launch.bench import benchmark_torch
  size = PEAK_SIZE if device == "cpu" else ACCELERATOR_PEAK_SIZE
  a = torch.randn(size, size, device=device).to(benchmark_torch.torch_dtype(dtype_name))
  def matmul():
    a @ a
    if device == "cuda":
      torch.cuda.synchronize()
  matmul()
  return 2 * size ** 3 / _best_seconds(matmul, repeats) / 1e9


def _flops(compiled):
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def _compiled_bytes(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def forward_flops_per_image(model_name, image_size, dtype_name, num_outputs):
  """XLA's FLOP count of one inference forward pass with XLA's own convolutions: the lowering-
  independent 'model FLOPs' (im2col lowerings make XLA count extra work for padding taps).
  Counted by the CPU compiler whatever the backend: the GPU one leaves out the convolutions it
  hands to cuDNN."""
  import jax
  import jax.numpy as jnp
  from age_jax import config as config_lib, models
  cfg = config_lib.default_config().model
  cfg.name, cfg.conv_lowering, cfg.dtype = model_name, "xla", dtype_name
  model = models.get_model(cfg, num_outputs)
  on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32, sharding=on_cpu)
  variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_cpu),
                           jax.eval_shape(model.init, jax.random.key(0), images))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return _flops(apply.lower(variables, images).compile())


class JaxContestant:
  """A jitted SGD train step and eval forward of one model/lowering/dtype, ready to time."""

  def __init__(self, model_name, image_size, batch_size, lowering, dtype_name, num_outputs,
               use_compiler_options=True):
    import jax
    import jax.numpy as jnp
    import optax
    from age_jax import config as config_lib, models

    cfg = config_lib.default_config()
    cfg.model.name, cfg.model.conv_lowering, cfg.model.dtype = model_name, lowering, dtype_name
    cfg.data.image_size, cfg.data.load_size = image_size, max(image_size, cfg.data.load_size)
    self.name = f"jax[{lowering},{dtype_name}]"
    self.model_cfg = cfg.model
    self.batch_size = batch_size
    model = models.get_model(cfg.model, num_outputs)
    keys = jax.random.split(jax.random.key(cfg.seed), 4)
    images = jax.random.normal(keys[0], (batch_size, image_size, image_size, 3), jnp.float32)
    ages = jax.random.uniform(keys[1], (batch_size,), jnp.float32, 1.0, 90.0)
    variables = jax.jit(model.init)(keys[2], images[:1])
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

    def loss_fn(params, extra, images, ages, rng):
      out, updates = model.apply({"params": params, **extra}, images, train=True,
                                 rngs={"dropout": rng}, mutable=list(extra))
      return jnp.mean(jnp.abs(out["age"][:, 0] - ages)), updates

    def train_step(state, images, ages, rng):
      params, extra, opt_state = state
      (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, images, ages, rng)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), extra, opt_state), loss

    def eval_step(params, extra, images):
      return model.apply({"params": params, **extra}, images, train=False)["age"]

    self.state = (params, extra, tx.init(params))
    self.images, self.ages, self.rng = images, ages, keys[3]
    options = models.get_lowering(lowering).compiler_options if use_compiler_options else None
    start = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=0).lower(self.state, images, ages, self.rng)
    self.train_compiled = lowered.compile(options)
    self.compile_s = time.perf_counter() - start
    start = time.perf_counter()
    self.eval_compiled = jax.jit(eval_step).lower(params, extra, images).compile(options)
    self.eval_compile_s = time.perf_counter() - start
    self.train_step_flops = _flops(self.train_compiled) / batch_size
    self.train_bytes = _compiled_bytes(self.train_compiled)
    self.eval_flops = _flops(self.eval_compiled) / batch_size
    self.run_train(1)  # first run allocates
    self.run_eval(1)
    stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
    self.device_peak_bytes = stats.get("peak_bytes_in_use", 0)

  def run_train(self, steps):
    loss = None
    for _ in range(steps):
      self.state, loss = self.train_compiled(self.state, self.images, self.ages, self.rng)
    loss.block_until_ready()

  def run_eval(self, steps):
    out = None
    for _ in range(steps):
      out = self.eval_compiled(self.state[0], self.state[1], self.images)
    out.block_until_ready()


class TorchContestant:
  """The PyTorch eager twin with torch.optim.SGD(momentum=0.9)."""

  def __init__(self, model_cfg, image_size, batch_size, dtype_name, num_outputs, device="cpu"):
    import torch
    from launch.bench import benchmark_torch
    torch.manual_seed(0)
    where = f"{torch.get_num_threads()} threads" if device == "cpu" else device
    self.name = f"torch[{torch.__version__},{dtype_name},{where}]"
    self.batch_size = batch_size
    self.device = device
    self.dtype = benchmark_torch.torch_dtype(dtype_name)
    # channels-last is cuDNN's fast layout (and JAX's NHWC); on the CPU, PyTorch's default is faster.
    layout = torch.channels_last if device == "cuda" else torch.contiguous_format
    self.model = benchmark_torch.get_torch_model(model_cfg, num_outputs, image_size).to(
        device, memory_format=layout)
    self.images = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=layout)
    self.ages = torch.rand(batch_size, device=device) * 89 + 1
    self.opt = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    self.compile_s = 0.0
    self.run_train(1)
    self.run_eval(1)

  def run_train(self, steps):
    import torch
    self.model.train()
    for _ in range(steps):
      self.opt.zero_grad(set_to_none=True)
      with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype != torch.float32):
        age = self.model(self.images)[:, 0].float()
      torch.mean(torch.abs(age - self.ages)).backward()
      self.opt.step()
    self._wait()

  def _wait(self):
    import torch
    if self.device == "cuda":
      torch.cuda.synchronize()

  def run_eval(self, steps):
    import torch
    self.model.eval()
    with torch.no_grad(), torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype != torch.float32):
      for _ in range(steps):
        self.model(self.images)
    self._wait()


def _interleaved_rates(contestants, method, steps, rounds):
  """{name: [images/s per round]}: every contestant runs once per round, in turn."""
  rates = {c.name: [] for c in contestants}
  for _ in range(rounds):
    for c in contestants:
      start = time.perf_counter()
      getattr(c, method)(steps)
      rates[c.name].append(steps * c.batch_size / (time.perf_counter() - start))
  return rates


def _median_ratio(a, b):
  return statistics.median(x / y for x, y in zip(a, b))


def benchmark_row(model_name, image_size, batch_size, lowerings, dtype_name, steps, rounds,
                  with_torch, with_eval, num_outputs, peak, torch_device="cpu", use_compiler_options=True):
  """Times one model/size; prints its report and returns a summary dict."""
  import os
  print(f"\n=== {model_name} @ {image_size} px, batch {batch_size}, {dtype_name}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores ===", flush=True)
  jax_side = []
  for lowering in lowerings:
    c = JaxContestant(model_name, image_size, batch_size, lowering, dtype_name, num_outputs, use_compiler_options)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{c.name}: train-step compile {c.compile_s:.1f} s (eval {c.eval_compile_s:.1f} s); "
          f"XLA's FLOP count per image: forward {c.eval_flops / 1e9:.3f} G, train step "
          f"{c.train_step_flops / 1e9:.3f} G; compiled train-step memory "
          f"{c.train_bytes / 2**30:.2f} GiB; process peak RSS so far {rss:.2f} GiB"
          + (f"; device peak memory so far {c.device_peak_bytes / 2**30:.2f} GiB" if c.device_peak_bytes else ""),
          flush=True)
    jax_side.append(c)
  contestants = list(jax_side)
  if with_torch:
    contestants.append(TorchContestant(jax_side[0].model_cfg, image_size, batch_size, dtype_name, num_outputs,
                                       torch_device))
  train = _interleaved_rates(contestants, "run_train", steps, rounds)
  evals = _interleaved_rates(contestants, "run_eval", steps, rounds) if with_eval else {}
  model_flops = 3 * forward_flops_per_image(model_name, image_size, dtype_name, num_outputs)
  print(f"model FLOPs/image (3 x XLA's forward count with 'xla' convolutions): {model_flops / 1e9:.3f} G")
  summary = {"model": model_name, "image_size": image_size, "batch_size": batch_size, "rows": []}
  for c in contestants:
    rate = statistics.median(train[c.name])
    gflops = rate * model_flops / 1e9
    line = (f"{c.name}: train {rate:.1f} img/s ({gflops:.1f} GFLOP/s, {gflops / peak:.0%} of peak)")
    if with_eval:
      line += f", eval {statistics.median(evals[c.name]):.1f} img/s"
    row = {"name": c.name, "train": rate, "eval": statistics.median(evals[c.name]) if with_eval else None,
           "mfu": gflops / peak, "compile_s": c.compile_s}
    if with_torch and c is not contestants[-1]:
      torch_name = contestants[-1].name
      row["ratio"] = _median_ratio(train[c.name], train[torch_name])
      line += f"; JAX/PyTorch train {row['ratio']:.2f}"
      if with_eval:
        line += f", eval {_median_ratio(evals[c.name], evals[torch_name]):.2f}"
    summary["rows"].append(row)
    print(line, flush=True)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  from age_jax import models
  from age_jax.models import layers
  lowerings = [s.strip() for s in _LOWERING.value.split(",") if s.strip()]
  for lowering in lowerings:
    if lowering not in layers.LOWERINGS:
      raise app.UsageError(f"--lowering={lowering!r}; expected one of {layers.LOWERINGS}")
  peak = measure_peak_gflops(_DTYPE.value)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); 'auto' lowering -> "
        f"{models.get_lowering('auto').name}; measured peak (large {_DTYPE.value} matmul): {peak:.1f} GFLOP/s",
        flush=True)
  if _TORCH.value:
    device = _TORCH_DEVICE.value
    # The run's dtype only: a CPU without native bf16 (AVX2) takes minutes for a bf16 matmul this big.
    print(f"PyTorch's peak on {device} (large {_DTYPE.value} matmul): "
          f"{measure_torch_peak_gflops(_DTYPE.value, device):.1f} GFLOP/s", flush=True)
  rows = ALL_ROWS if _ALL.value else ((_MODEL.value, _IMAGE_SIZE.value, _BATCH.value),)
  summaries = [benchmark_row(m, s, b, lowerings, _DTYPE.value, _STEPS.value, _ROUNDS.value, _TORCH.value,
                             _EVAL.value, _OUTPUTS.value, peak, _TORCH_DEVICE.value,
                             _COMPILER_OPTIONS.value)
               for m, s, b in rows]
  if len(summaries) > 1:
    print("\n| model, input | contestant | train img/s | MFU | compile s | JAX/PyTorch |")
    print("|---|---|---|---|---|---|")
    for s in summaries:
      for r in s["rows"]:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        print(f"| {s['model']}, {s['image_size']} px | {r['name']} | {r['train']:.1f} | {r['mfu']:.0%} "
              f"| {r['compile_s']:.1f} | {ratio} |")


if __name__ == "__main__":
  app.run(main)
