"""Fake `gcloud`, `srun` and a fake TPU VM host, for running launch/tpu_pod.sh and
launch/slurm.sbatch without a cluster.

Every fake appends one JSON line per call to $FAKE_LOG: the program, its argv, its working
directory and the environment it saw. `gcloud compute tpus tpu-vm ssh --command=C` really runs C
with bash on each fake host (a home folder per worker, whose PATH holds the image's tools:
python3 3.10 without the venv module, as on the Ubuntu 22.04 TPU images), so `~`, quoting, pid
files and signals behave as on a host. `tpu-vm scp` follows scp's rules for a target folder:
into it when it exists, *as* it when it does not, an error for a missing `dir/`.
What this cannot show: gcloud's own parsing and authentication, the real images' package state,
the network.
"""
import json
import os
import subprocess
import sys
import time

_LOGGER = f"""#!{sys.executable}
import json, os, sys
def log(prog, **extra):
  with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"prog": prog, "argv": sys.argv[1:], "cwd": os.getcwd(),
                         "env": dict(os.environ), **extra}}) + "\\n")
"""

GCLOUD = _LOGGER + r"""
import shutil, subprocess
args = sys.argv[1:]
log("gcloud")
def flag(name, default=None):
  return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), default)
def hosts():
  worker = flag("--worker", "0")
  n = int(os.environ.get("FAKE_WORKERS", "2"))
  homes = [os.path.join(os.environ["FAKE_HOSTS"], f"w{i}") for i in (range(n) if worker == "all" else [int(worker)])]
  for home in homes:
    os.makedirs(home, exist_ok=True)
  return homes
def remote(home, path):
  path = path.split(":", 1)[1]
  path = path[2:] if path.startswith("~/") else path
  return os.path.join(home, path)
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
  rc = 0
  for home in hosts():
    env = {"HOME": home, "PATH": os.environ["FAKE_HOST_PATH"],
           **{k: v for k, v in os.environ.items() if k.startswith("FAKE_")}}
    rc |= subprocess.run(["bash", "-c", flag("--command")], cwd=home, env=env).returncode
  sys.exit(rc)
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  paths = [a for a in args[4:] if not a.startswith("--")]
  *sources, target = paths
  if all(":" in src for src in sources):  # from the (one) host to here
    (home,) = hosts()
    for src in sources:
      origin = remote(home, src)
      if not os.path.exists(origin):
        sys.exit(f"scp: {src.split(':', 1)[1]}: No such file or directory")
      to = os.path.join(target, os.path.basename(origin)) if os.path.isdir(target) else target
      (shutil.copytree if os.path.isdir(origin) else shutil.copy)(origin, to)
    sys.exit(0)
  for home in hosts():
    dest = remote(home, target)
    for src in sources:
      if os.path.isdir(dest):
        to = os.path.join(dest, os.path.basename(src.rstrip("/")))
      elif dest.endswith("/"):
        sys.exit(f"scp: {target}: No such file or directory")
      else:
        to = dest
      (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, to)
  sys.exit(0)
if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
  print(os.environ.get("FAKE_QR_STATE", "ACTIVE"))
"""

# The TPU image's python3: 3.10, pip works, the venv module's ensurepip is missing.
HOST_PYTHON3 = _LOGGER + r"""
args = sys.argv[1:]
log("python3")
if args == ["--version"]:
  print("Python 3.10.12"); sys.exit(0)
if args[:2] == ["-m", "venv"]:
  sys.exit("The virtual environment was not created successfully because ensurepip is not available.")
if args[:3] == ["-m", "pip", "install"] and "uv" in args:
  bin_dir = os.path.expanduser("~/.local/bin")
  os.makedirs(bin_dir, exist_ok=True)
  with open(os.path.join(bin_dir, "uv"), "w") as f:
    f.write(open(os.environ["FAKE_UV_TEMPLATE"]).read())
  os.chmod(os.path.join(bin_dir, "uv"), 0o755)
  sys.exit(0)
sys.exit(f"fake python3 3.10: {args} not supported")
"""

# uv as installed by pip: `venv --python V DIR` makes DIR/bin/python (version V); `pip install` records.
UV = _LOGGER + r"""
args = sys.argv[1:]
log("uv")
if args[0] == "venv":
  version = args[args.index("--python") + 1] if "--python" in args else "3.10"
  target = [a for a in args[1:] if not a.startswith("-") and a != version][0]
  os.makedirs(os.path.join(target, "bin"), exist_ok=True)
  python = os.path.join(target, "bin", "python")
  with open(python, "w") as f:
    f.write(open(os.environ["FAKE_VENV_PYTHON_TEMPLATE"]).read().replace("@VERSION@", version))
  os.chmod(python, 0o755)
"""

# A virtual environment's python: reports its version, records every other call (launch.*) and
# says what it ran; on the host whose home ends with $FAKE_FAIL_HOME it fails (status 3).
VENV_PYTHON = _LOGGER + r"""
if sys.argv[1:] == ["--version"]:
  print("Python @VERSION@"); sys.exit(0)
log("venv-python", version="@VERSION@")
print("ran", *sys.argv[1:3], "on", os.path.basename(os.environ["HOME"]), flush=True)
if os.environ.get("FAKE_FAIL_HOME") and os.environ["HOME"].endswith(os.environ["FAKE_FAIL_HOME"]):
  print("fake failure", flush=True); sys.exit(3)
"""

# srun: records what each task would see (argv and environment). $FAKE_SRUN=wait: then runs like
# a training step until SIGTERM, which it answers as launch.train does after saving (status 143);
# $FAKE_SRUN=exit:N: ends with status N.
SRUN = _LOGGER + r"""
import signal, time
log("srun")
mode = os.environ.get("FAKE_SRUN", "")
if mode == "wait":
  def stop(signum, frame):
    log("srun-signal", signal=signal.Signals(signum).name)
    sys.exit(143)
  signal.signal(signal.SIGTERM, stop)
  while True:
    time.sleep(0.05)
if mode.startswith("exit:"):
  sys.exit(int(mode[5:]))
"""

# scontrol: records the call (scontrol requeue JOB).
SCONTROL = _LOGGER + r"""
log("scontrol")
"""


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, 0o755)


class FakeCloud:
  """A local bin/ with the fakes, the fake hosts' homes under hosts/, and the call log."""

  def __init__(self, root):
    self.root = str(root)
    self.log = os.path.join(self.root, "calls.jsonl")
    self.hosts = os.path.join(self.root, "hosts")
    self.bin = os.path.join(self.root, "bin")
    self.host_bin = os.path.join(self.root, "host_bin")
    for d in (self.bin, self.host_bin, self.hosts):
      os.makedirs(d, exist_ok=True)
    _write(os.path.join(self.bin, "gcloud"), GCLOUD)
    _write(os.path.join(self.bin, "srun"), SRUN)
    _write(os.path.join(self.bin, "scontrol"), SCONTROL)
    _write(os.path.join(self.host_bin, "python3"), HOST_PYTHON3)
    _write(os.path.join(self.root, "uv.template"), UV)
    _write(os.path.join(self.root, "venv_python.template"), VENV_PYTHON)

  def home(self, worker: int) -> str:
    return os.path.join(self.hosts, f"w{worker}")

  def make_venv(self, worker: int, version: str):
    """~/age_jax/.venv on a fake host, as `setup` leaves it."""
    venv = os.path.join(self.home(worker), "age_jax", ".venv")
    subprocess.run([os.path.join(self.root, "uv.template"), "venv", "--python", version, venv],
                   env=self.env(), check=True)

  def env(self, **extra) -> dict:
    host_path = f"{self.host_bin}:/usr/local/bin:/usr/bin:/bin"
    return {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": os.path.join(self.root, "local_home"),
            "FAKE_LOG": self.log, "FAKE_HOSTS": self.hosts, "FAKE_HOST_PATH": host_path,
            "FAKE_UV_TEMPLATE": os.path.join(self.root, "uv.template"),
            "FAKE_VENV_PYTHON_TEMPLATE": os.path.join(self.root, "venv_python.template"), **extra}

  def run(self, script, *args, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], env=self.env(**env), cwd=cwd, capture_output=True,
                          text=True, timeout=60)

  def calls(self, prog=None, wait_for: int = 0, timeout_s: float = 10.0) -> list[dict]:
    """The recorded calls (of one program); waits until at least wait_for of them are there
    (background processes on the fake hosts log late)."""
    deadline = time.monotonic() + timeout_s
    while True:
      calls = []
      if os.path.exists(self.log):
        with open(self.log) as f:
          calls = [json.loads(line) for line in f if line.strip()]
      calls = [c for c in calls if prog is None or c["prog"] == prog]
      if len(calls) >= wait_for or time.monotonic() > deadline:
        return calls
      time.sleep(0.05)


# --- An in-memory gs:// bucket whose IAM can deny permissions ---------------------------------
# gs:// paths take the same etils.epath -> fsspec route as with gcsfs on a real bucket; orbax's
# bucket lookup (gcs_utils.get_bucket, google-cloud-storage's storage.buckets.get) is replaced by
# one that answers from the same bucket. A denied permission fails each call that needs it with
# GCS's own 403 text, as gcsfs (OSError "Forbidden") and google-cloud-storage (Forbidden, code 403)
# raise it. Not shown: real IAM evaluation, latency, consistency, tensorstore's own GCS driver.
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

SERVICE_ACCOUNT = "123-compute@developer.gserviceaccount.com"


def gcs_denial_text(permission: str, resource: str) -> str:
  kind = "bucket" if permission.startswith("storage.buckets.") else "object"
  return (f"{SERVICE_ACCOUNT} does not have {permission} access to the Google Cloud Storage {kind}. "
          f"Permission '{permission}' denied on resource (or it may not exist). [{resource}]")


class Forbidden(Exception):
  """google.api_core.exceptions.Forbidden as google-cloud-storage raises it."""
  code = 403


class FakeBucket(MemoryFileSystem):
  """gs://bucket/key as the key /bucket/key of a private in-memory store; `denied` holds the IAM
  permissions the caller lacks (e.g. {'storage.buckets.get'})."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]
  denied = set()

  def __init__(self, *args, finalize_on_close=True, **kwargs):  # gcsfs's argument, as epath passes it
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return "/" + path.strip("/")

  def unstrip_protocol(self, name):
    return "gs://" + name.lstrip("/")

  @classmethod
  def check(cls, permission, path):
    if permission in cls.denied:
      raise OSError(f"Forbidden: {path}\n{gcs_denial_text(permission, path)}")  # gcsfs's wording

  def ls(self, path, detail=True, **kwargs):
    self.check("storage.objects.list", path)
    return super().ls(path, detail=detail, **kwargs)

  def _open(self, path, mode="rb", *args, **kwargs):
    self.check("storage.objects.get" if "r" in mode else "storage.objects.create", path)
    return super()._open(path, mode, *args, **kwargs)

  def pipe_file(self, path, value, *args, **kwargs):
    self.check("storage.objects.create", path)
    return super().pipe_file(path, value, *args, **kwargs)

  def cat_file(self, path, *args, **kwargs):
    self.check("storage.objects.get", path)
    return super().cat_file(path, *args, **kwargs)

  def cp_file(self, path1, path2, **kwargs):  # a GCS rewrite: read one object, create another
    self.check("storage.objects.get", path1)
    self.check("storage.objects.create", path2)
    return super().cp_file(path1, path2, **kwargs)

  def _rm(self, path):
    self.check("storage.objects.delete", path)
    return super()._rm(path)


class _FakeBucketMetadata:
  hierarchical_namespace_enabled = False


def fake_get_bucket(bucket_name: str):
  """orbax's gcs_utils.get_bucket (Client().get_bucket: storage.buckets.get) on the fake bucket."""
  if "storage.buckets.get" in FakeBucket.denied:
    raise Forbidden(f"403 GET https://storage.googleapis.com/storage/v1/b/{bucket_name}?projection=noAcl"
                    f"&prettyPrint=false: {gcs_denial_text('storage.buckets.get', bucket_name)}")
  return _FakeBucketMetadata()


def install_fake_bucket(denied=(), monkeypatch=None):
  """Routes gs:// to a fresh FakeBucket (and orbax's bucket lookup to fake_get_bucket); returns
  the class, whose .store holds the objects. With pytest's monkeypatch, undone after the test."""
  from etils.epath import backend as epath_backend
  from fsspec.registry import _registry
  from orbax.checkpoint._src.path import gcs_utils
  FakeBucket.store.clear()
  FakeBucket.pseudo_dirs[:] = [""]
  FakeBucket.denied = set(denied)
  for protocol in ("gs", "gcs"):
    if monkeypatch is not None:
      monkeypatch.setitem(_registry, protocol, FakeBucket)
    else:
      _registry[protocol] = FakeBucket
  (monkeypatch.setattr if monkeypatch is not None else setattr)(gcs_utils, "get_bucket", fake_get_bucket)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  return FakeBucket


if __name__ == "__main__":
  # python -m tests.distributed.fake_cloud MODULE ARGS...: runs `python -m MODULE ARGS` with gs://
  # on the fake bucket, denying the permissions in $FAKE_GCS_DENIED (comma-separated).
  import runpy
  install_fake_bucket([p for p in os.environ.get("FAKE_GCS_DENIED", "").split(",") if p])
  module, sys.argv = sys.argv[1], sys.argv[1:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
