"""Progress lines, a JSON-lines metrics file and TensorBoard event files (tensorboardX, no TF).

Only process 0 writes; every process may call it. A gs:// workdir gets metrics.jsonl only (the
event files are appended to, which an object store cannot do).
"""
import json
import time

import jax

from age_jax import storage


class MetricLogger:

  def __init__(self, workdir: str, total_steps: int, examples_per_step: int, steps_per_epoch: float):
    self.is_main = jax.process_index() == 0
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self.steps_per_epoch = max(steps_per_epoch, 1e-9)
    self._last = None  # (step, time) of the previous progress line
    self._jsonl = self._tb = None
    if self.is_main:
      self._jsonl = storage.LineLog(storage.path(workdir) / "metrics.jsonl")
      if not storage.is_uri(workdir):
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(storage.path(workdir) / "tensorboard"))  # ~ expanded, as the workdir

  def write(self, step: int, scalars: dict, prefix: str = "train"):
    if not self.is_main:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **scalars}) + "\n")
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(f"{prefix}/{name}", value, step)
      self._tb.flush()

  def progress(self, step: int, scalars: dict, learning_rate: float):
    """One line: step, epoch, loss, lr, images/s and ETA since the previous line."""
    now = time.time()
    rate = eta = float("nan")
    if self._last is not None and step > self._last[0]:
      steps_per_s = (step - self._last[0]) / (now - self._last[1])
      rate = steps_per_s * self.examples_per_step
      eta = (self.total_steps - step) / steps_per_s
    self._last = (step, now)
    scalars = dict(scalars, learning_rate=learning_rate, images_per_s=rate)
    self.write(step, scalars)
    if self.is_main:
      terms = " ".join(f"{k}={float(v):.4g}" for k, v in scalars.items()
                       if k not in ("learning_rate", "images_per_s"))
      print(f"step {step}/{self.total_steps} epoch {step / self.steps_per_epoch:.2f} {terms} "
            f"lr={learning_rate:.3g} {rate:.1f} img/s ETA {_duration(eta)}", flush=True)

  def restart_clock(self, step: int):
    self._last = (step, time.time())

  def close(self):
    if self.is_main:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _duration(seconds: float) -> str:
  if seconds != seconds:  # nan
    return "-"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
