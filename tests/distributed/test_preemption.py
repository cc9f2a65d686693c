"""A preemption notice in a 2-process run (SIGTERM to ONE process, as a preemptible host or a
SLURM time limit gives): JAX's preemption sync point makes both save the same step and stop
with one line; the checkpoint restores at that step."""
import os
import signal
import subprocess
import sys
import time

import pytest

from age_jax import checkpoint, evaluate
from launch import local_cluster
from tests.train.test_stop_and_lock import CONFIG, REPO, _logged_steps, _saved_step, data  # noqa: F401


@pytest.mark.slow  # two JAX processes start up: the costliest of the stop tests
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(data, tmp_path):
  workdir = str(tmp_path / "run")
  port = local_cluster.free_port()
  env = dict(os.environ, AGE_JAX_COMPILATION_CACHE=os.path.join(REPO, ".jax_cache"))
  command = [sys.executable, "-m", "launch.train", f"--config={CONFIG}", f"--workdir={workdir}",
             f"--config.data.manual_dir={data[0]}", f"--config.data.data_dir={data[1]}",
             "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000"]
  procs = [subprocess.Popen(command, cwd=REPO, env=local_cluster.process_env(i, 2, 1, port, env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.monotonic() + 180
    while max(_logged_steps(workdir), default=0) < 3:
      assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
      assert time.monotonic() < deadline, "the 2-process run did not reach step 3"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 1 writes no logs: the notice must travel
    outputs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  steps = []
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 143 and "Traceback" not in err, err[-3000:]
    steps.append(_saved_step(err))
  assert steps[0] == steps[1] >= 3
  assert checkpoint.Checkpointer(workdir).latest_step() == steps[0]
  assert int(evaluate.restore(workdir)[2].step) == steps[0]
