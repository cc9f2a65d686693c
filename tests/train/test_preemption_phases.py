"""preemption.StopRequests in one process: a signal in a named phase raises Stopped at once (no
`except Exception` on the way swallows it), a signal between steps only marks the step to stop
at, and the watchdog stands down once the training code has been left."""
import os
import signal
import time

import pytest

from age_jax.train import preemption


def _signal_self(signum):
  os.kill(os.getpid(), signum)
  time.sleep(0.5)  # the handler runs in the main thread at the next bytecode; not reached


def test_a_signal_in_a_phase_stops_it_at_once_through_except_exception(tmp_path, monkeypatch):
  monkeypatch.setattr(preemption, "GRACE_S", 0.3)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Stopped) as stopped:
    with preemption.StopRequests(str(tmp_path)) as stop:
      with stop.during("the decode-once pass"):
        try:
          _signal_self(signal.SIGTERM)
          pytest.fail("the phase went on after the signal")
        except Exception:  # a bad-file handler in a build must not swallow the stop
          pytest.fail("Stopped was caught as an Exception")
  assert stopped.value.exit_code == 143 and stopped.value.phase == "the decode-once pass"
  assert str(stopped.value).startswith("stopped by SIGTERM during the decode-once pass: nothing half-written")
  assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored
  time.sleep(0.6)  # past GRACE_S: the watchdog stood down when the block was left (else os._exit here)


class _SignalsWhenCollected:
  def __del__(self):
    _signal_self(signal.SIGTERM)  # the handler raises in here, where Python drops exceptions


def test_a_stop_raised_inside_a_destructor_is_raised_again_in_the_phase(tmp_path, monkeypatch, capfd):
  monkeypatch.setattr(preemption, "GRACE_S", 0.3)
  with pytest.raises(preemption.Stopped) as stopped:
    with preemption.StopRequests(str(tmp_path)) as stop:
      with stop.during("the dataset build"):
        _SignalsWhenCollected()  # collected at once, as a gc callback or __del__ can be mid-build
        time.sleep(0.5)
        pytest.fail("the phase went on after the signal")
  assert stopped.value.phase == "the dataset build" and "Exception ignored" not in capfd.readouterr().err
  time.sleep(0.6)  # the watchdog stood down


def test_a_signal_between_steps_marks_the_step_and_a_later_phase_stops_at_entry(tmp_path):
  with pytest.raises(preemption.Stopped) as stopped:
    with preemption.StopRequests(str(tmp_path)) as stop:
      with stop.between_steps():
        assert not stop.reached(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.reached(2)  # no exception: the loop saves and stops
      with stop.during("the final validation and calibration"):
        pytest.fail("a phase began after the signal")
  assert stopped.value.exit_code == 130 and "during the final validation" in str(stopped.value)
  line = str(stop.stopped(2, "ckpts"))
  assert line == "stopped by SIGINT at step 2: checkpoint saved in ckpts; re-run the same command to resume"


@pytest.mark.slow
def test_a_run_stopped_during_its_final_validation_does_it_on_the_next_call(tmp_path):
  # A finished run whose final validation record is missing (stopped there) gets it, with the same
  # numbers as the first time; one that has it is left alone.
  import json
  from age_jax.train import loop
  from tests.data.fake_datasets import make_utkface_folder
  from tests.tiny import folder_config
  folder = str(tmp_path / "UTKFace")
  make_utkface_folder(folder, n=60, quirks=False, size=16)
  cfg = lambda: folder_config(folder, str(tmp_path / "tfds"), **{"train.num_steps": 2, "train.checkpoint_every": 2})
  workdir = str(tmp_path / "run")
  first = loop.train(cfg(), workdir)
  log = tmp_path / "run" / "metrics.jsonl"
  records = [json.loads(line) for line in log.read_text().splitlines()]
  final = [r for r in records if r["split"] == "validation" and r["step"] == 2]
  assert len(final) == 1 and "val_mae" in first
  log.write_text("".join(json.dumps(r) + "\n" for r in records if r not in final))
  again = loop.train(cfg(), workdir)
  assert again["val_mae"] == first["val_mae"]
  assert [r for r in map(json.loads, log.read_text().splitlines()) if r["split"] == "validation"] == final
  assert loop.train(cfg(), workdir) == {}   # complete: nothing more to do
