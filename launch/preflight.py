"""Before a long job, on every host of it (launch/tpu_pod.sh preflight, or srun on SLURM):
  python -m launch.preflight --workdir=gs://bucket/runs/x --config=configs/x.py [--config.key=value]
On your own machine, before creating a pod (no devices, no joining):
  python -m launch.preflight --config=configs/x.py --accelerator=v5litepod-16

Names every problem it finds, one line each, and exits 1 if there is any: a JAX version
outside the tested range, a coordinator this process cannot join, a batch size the devices
(or an --accelerator type's devices) do not divide, and every call on the workdir that fails,
with the missing permission and the role that grants it (age_jax/preflight.py).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config to check batch sizes of.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir the job will use (checked by writing, listing, "
                               "reading and renaming a probe file of this process's own).")
_ACCELERATOR = flags.DEFINE_string("accelerator", None, "A Cloud TPU type (v4-32, v5litepod-16 or v5e-16, ...): "
                                   "check the config against its devices and hosts here, without joining a run.")


def run_checks(config, workdir, accelerator) -> tuple[list[str], list[str]]:
  """(problem lines, what was checked)."""
  from age_jax import preflight, pod_types
  problems, checked = preflight.jax_problems(), ["jax version"]
  who = ""
  if accelerator:
    try:
      pod = pod_types.parse(accelerator)
    except ValueError as e:
      return problems + [f"--accelerator: {e}"], checked
    checked.append(f"batch sizes on {pod.name} ({pod.num_devices} devices, {pod.num_hosts} hosts)")
    if config is not None:
      problems += preflight.batch_problems(config, pod.num_devices, pod.num_hosts,
                                           f"{pod.name} ({pod.num_devices} devices, {pod.num_hosts} hosts)")
  else:
    try:
      common.setup_distributed()
    except Exception as e:  # an unreachable coordinator, a refused backend, bad flags: all named
      return problems + [f"joining the run failed: {e}"], checked + ["coordinator"]
    import jax
    n, hosts = jax.device_count(), jax.process_count()
    who = f"process {jax.process_index()}/{hosts}" if hosts > 1 else ""
    checked.append(f"coordinator and batch sizes on this run's {n} {jax.default_backend()} devices, {hosts} processes")
    if config is not None:
      problems += preflight.batch_problems(config, n, hosts, f"this run's {n} devices")
  if workdir:
    checked.append(f"workdir {workdir}")
    problems += preflight.workdir_problems(workdir, who)
  return problems, checked


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (_CONFIG.value or _WORKDIR.value or _ACCELERATOR.value):
    raise app.UsageError("give --workdir, --config and/or --accelerator to check")
  common.refuse_repeated_flags(sys.argv[1:])
  problems, checked = run_checks(_CONFIG.value, _WORKDIR.value, _ACCELERATOR.value)
  for line in problems:
    print(f"preflight PROBLEM: {line}", flush=True)
  verdict = f"{len(problems)} problem(s)" if problems else "OK"
  print(f"preflight {verdict}; checked: {'; '.join(checked)}", flush=True)
  sys.exit(1 if problems else 0)


if __name__ == "__main__":
  app.run(main)
