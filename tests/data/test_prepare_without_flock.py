"""datasets.prepare on a shared filesystem without flock (Lustre without -o flock, NFS without a
lock daemon): the build goes on unlocked after one warning line instead of an uncaught OSError."""
import errno
import fcntl

import pytest

from age_jax import locks
from age_jax.data import datasets
from tests.data import fake_datasets as fd


def _flock_raising(err):
  def flock(fd, operation):
    if operation & fcntl.LOCK_EX:
      raise OSError(err, f"[fake] {errno.errorcode[err]}")
    return fcntl.flock(fd, operation)
  return flock


def test_prepare_builds_without_locks_after_one_warning(tmp_path, monkeypatch, capsys):
  folder = str(tmp_path / "UTKFace")
  fd.make_utkface_folder(folder, n=24, quirks=False)
  monkeypatch.setattr(locks.fcntl, "flock", _flock_raising(errno.ENOSYS))  # Lustre's answer
  monkeypatch.setattr(locks, "_warned", set())
  report = datasets.prepare("utkface", folder, str(tmp_path / "tfds"))
  again = datasets.prepare("utkface", folder, str(tmp_path / "tfds"))   # the same lock path: no second line
  assert report["reused"] is False and again["reused"] is True
  assert len(datasets.load_split("utkface", str(tmp_path / "tfds"), "train")) > 0
  warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1
  assert warnings[0].endswith("this filesystem has no file locks ([Errno 38] [fake] ENOSYS); two runs preparing "
                              "this source at once would collide")


@pytest.mark.parametrize("err", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_lock_the_filesystem_refuses_runs_the_block_unlocked(tmp_path, monkeypatch, err):
  monkeypatch.setattr(locks.fcntl, "flock", _flock_raising(err))
  monkeypatch.setattr(locks, "_warned", set())
  ran = []
  with locks.held_where_supported(str(tmp_path / "x.lock"), "nothing"):
    ran.append(True)
  assert ran == [True]


def test_other_lock_errors_are_not_swallowed(tmp_path, monkeypatch):
  monkeypatch.setattr(locks.fcntl, "flock", _flock_raising(errno.EIO))
  with pytest.raises(OSError, match="EIO"):
    with locks.held_where_supported(str(tmp_path / "x.lock"), "nothing"):
      pass
