"""Runs a command as N cooperating JAX processes on this machine, each with M fake CPU devices:
the multi-host code paths (jax.distributed, per-process input, orbax from every process) without
a cluster.

  python -m launch.local_cluster --num_processes=2 --devices_per_process=2 -- \\
      python -m launch.train --config=configs/quickstart.py --workdir=/tmp/run

Each process gets $AGE_JAX_COORDINATOR (127.0.0.1 and a free port), $AGE_JAX_NUM_PROCESSES,
$AGE_JAX_PROCESS_ID, JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=M;
the launchers read these (age_jax/distributed.py). Output lines are prefixed with [process i].
If one process fails the others are stopped; the exit status is the first failure's.
"""
import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, devices_per_process: int, port: int,
                base_env=None) -> dict:
  env = dict(os.environ if base_env is None else base_env)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env.update({
      "AGE_JAX_COORDINATOR": f"127.0.0.1:{port}",
      "AGE_JAX_NUM_PROCESSES": str(num_processes),
      "AGE_JAX_PROCESS_ID": str(process_id),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]),
      "PYTHONUNBUFFERED": "1",
  })
  return env


@dataclasses.dataclass
class Result:
  process_id: int
  returncode: int | None   # None: stopped at the time limit
  output: str              # stdout and stderr, interleaved


def run(command: list[str], num_processes: int, devices_per_process: int = 1, timeout_s: float = 600,
        env=None, cwd=None, echo: bool = False) -> list[Result]:
  """Starts the processes, waits for all (at most timeout_s), and returns each one's result.
  One process failing stops the others (they would wait for it in a collective)."""
  port = free_port()
  procs, outputs, readers = [], [], []
  for i in range(num_processes):
    p = subprocess.Popen(command, env=process_env(i, num_processes, devices_per_process, port, env), cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines = []
    reader = threading.Thread(target=_collect, args=(p.stdout, lines, f"[process {i}] " if echo else None),
                              daemon=True)
    reader.start()
    procs.append(p)
    outputs.append(lines)
    readers.append(reader)
  deadline = time.monotonic() + timeout_s
  timed_out = False
  while any(p.poll() is None for p in procs):
    failed = any(p.poll() not in (None, 0) for p in procs)
    if failed or time.monotonic() > deadline:
      timed_out = not failed
      break
    time.sleep(0.1)
  if any(p.poll() is None for p in procs):
    time.sleep(0 if timed_out else 2.0)  # a failure: give the others a moment to report theirs
    for p in procs:
      _stop(p)
  for r in readers:
    r.join(timeout=5)
  results = []
  for i, p in enumerate(procs):
    code = None if timed_out and p.returncode in (-signal.SIGTERM, -signal.SIGKILL) else p.returncode
    results.append(Result(i, code, "".join(outputs[i])))
  return results


def _collect(stream, lines, prefix):
  for line in stream:
    lines.append(line)
    if prefix is not None:
      sys.stdout.write(prefix + line)
      sys.stdout.flush()


def _stop(p):
  if p.poll() is not None:
    return
  try:
    os.killpg(p.pid, signal.SIGTERM)  # the process group of this child only (start_new_session)
    p.wait(timeout=5)
  except (ProcessLookupError, subprocess.TimeoutExpired):
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    p.wait()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   usage="%(prog)s [--num_processes N] [--devices_per_process M] -- COMMAND ...")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--timeout", type=float, default=3600, help="seconds before every process is stopped")
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be positive")
  results = run(command, args.num_processes, args.devices_per_process, args.timeout, echo=True)
  failed = [r for r in results if r.returncode != 0]
  for r in failed:
    why = "timed out" if r.returncode is None else f"exited with status {r.returncode}"
    print(f"[local_cluster] process {r.process_id} {why}", file=sys.stderr)
  return next((r.returncode or 1 for r in failed), 0)


if __name__ == "__main__":
  sys.exit(main())
