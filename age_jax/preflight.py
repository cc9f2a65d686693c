"""Checks a user runs before a long job (launch.preflight), each naming what to fix:

- the workdir: the exact calls orbax and age_jax/storage.py make there (list, write, read,
  rename = copy + delete on an object store, and on gs:// the bucket metadata orbax reads in
  latest_step), each failure named with the missing permission and a role that grants it;
- batch sizes against the devices (and processes) of the run or of a pod type;
- the JAX version against the tested range (age_jax/versions.py).
Every function returns a list of problem lines (empty: fine) instead of raising, so one run
names every problem at once.
"""
import os
import re
import secrets
import socket

from age_jax import storage, versions

# Each probe: (what it does, the permission a gs:// bucket needs for it, who makes the call).
PROBES = {
    "bucket metadata": ("storage.buckets.get", "orbax's latest_step() looks the bucket up (hierarchical "
                        "namespace?) before listing checkpoints"),
    "list": ("storage.objects.list", "orbax lists checkpoint steps; a resume and evaluation read the list"),
    "write": ("storage.objects.create", "checkpoint shards, config.json, metrics.jsonl, reports"),
    "read": ("storage.objects.get", "restore, config.json on a resume"),
    "rename": ("storage.objects.delete", "orbax finalises and rotates checkpoints (a rename on GCS is a copy "
               "and a delete)"),
}
# The narrowest predefined role that grants each permission (Cloud Storage IAM roles).
ROLES = {
    "storage.buckets.get": "Storage Legacy Bucket Reader (roles/storage.legacyBucketReader) or Storage Bucket "
                           "Viewer (roles/storage.bucketViewer); Storage Object Admin does NOT grant it",
    "storage.objects.list": "Storage Object Viewer (roles/storage.objectViewer)",
    "storage.objects.get": "Storage Object Viewer (roles/storage.objectViewer)",
    "storage.objects.create": "Storage Object Creator (roles/storage.objectCreator)",
    "storage.objects.delete": "Storage Object User (roles/storage.objectUser)",
}
ALL_ROLES = ("Storage Object User (roles/storage.objectUser) plus Storage Legacy Bucket Reader "
             "(roles/storage.legacyBucketReader) on the bucket, or Storage Admin (roles/storage.admin)")
_PERMISSION = re.compile(r"storage\.(?:buckets|objects)\.[A-Za-z]+")


def is_permission_denied(error: BaseException) -> bool:
  """A 403 from GCS as gcsfs (OSError 'Forbidden'), google-cloud-storage (Forbidden, code 403)
  or a filesystem (PermissionError, EACCES) reports it."""
  if isinstance(error, PermissionError) or getattr(error, "code", None) == 403:
    return True
  text = str(error)
  return "Forbidden" in text or " 403 " in f" {text} " or "does not have storage." in text


def _bucket_metadata(workdir) -> None:
  from orbax.checkpoint._src.path import gcs_utils  # the call orbax's step listing makes
  gcs_utils.is_hierarchical_namespace_enabled(storage.path(workdir))


def workdir_problems(workdir: str, who: str = "") -> list[str]:
  """Runs the calls a training run makes on workdir with a probe object of its own; returns one
  line per failing call, naming the permission and role (gs://) or the error."""
  root = storage.path(workdir)
  probe_dir = root / ".age_jax_preflight"
  tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
  probe, renamed = probe_dir / f"{tag}.txt", probe_dir / f"{tag}.renamed"
  steps = []
  if storage.is_uri(workdir) and str(workdir).startswith(("gs://", "gcs://")):
    steps.append(("bucket metadata", lambda: _bucket_metadata(workdir)))
  steps += [
      ("write", lambda: storage.write_text(probe, tag)),
      ("list", lambda: [p.name for p in probe_dir.iterdir()]),
      ("read", lambda: _expect(probe.read_text(), tag, probe)),
      ("rename", lambda: (probe.rename(renamed), renamed.unlink())),
  ]
  problems, failed = [], set()
  for name, call in steps:
    if name in ("read", "rename", "list") and "write" in failed:
      continue  # nothing of ours to read: the write line says why
    try:
      call()
    except Exception as e:  # every failure is a finding; the next calls still run
      failed.add(name)
      problems.append(_describe(name, e, workdir, who))
  for leftover in (probe, renamed):
    try:
      if leftover.exists():
        leftover.unlink()
    except Exception:  # already reported above
      pass
  return problems


def _expect(got, want, where):
  if got != want:
    raise OSError(f"read back {got!r} from {where}, wrote {want!r}: the workdir does not keep what is written")


def _describe(name, error, workdir, who) -> str:
  permission, why = PROBES[name]
  prefix = f"{who}: " if who else ""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  first = next((line for line in lines if "does not have" in line), lines[0]).strip()  # GCS's own sentence
  first = first if len(first) <= 240 else first[:237] + "..."
  if is_permission_denied(error) and not storage.is_uri(workdir):
    return f"{prefix}{name} on {workdir} denied: {first} (this user needs write access there: {why})"
  if is_permission_denied(error):
    named = _PERMISSION.findall(str(error))
    permission = named[0] if named else permission
    role = ROLES.get(permission, ALL_ROLES)
    return (f"{prefix}{name} on {workdir} denied: missing permission {permission} ({why}); grant the hosts' "
            f"service account {role}. [{first}]")
  return f"{prefix}{name} on {workdir} failed: {type(error).__name__}: {first} ({why})"


def batch_problems(cfg, num_devices: int, num_processes: int = 1, where: str = "") -> list[str]:
  """Every train and eval batch size of every stage against the devices (and the processes, which
  each read an equal share of an evaluation batch); also config.mesh against the devices."""
  from age_jax import stages as stages_lib
  from age_jax.train import sharding
  where = f" on {where}" if where else ""
  problems = []
  try:
    sharding.mesh_shape(cfg.mesh, num_devices)
  except ValueError as e:
    problems.append(f"{e}{where}")
  seen = set()
  for stage in stages_lib.plan(cfg):
    prefix = "" if len(cfg.stages) == 0 else f"stages.{stage.name}."
    checks = [(f"config.{prefix}train.batch_size", stage.cfg.train.batch_size, num_devices, "devices")]
    if stage.cfg.data.val_split:
      checks.append((f"config.{prefix}eval.batch_size", stage.cfg.eval.batch_size, num_devices, "devices"))
    checks.append((f"config.{prefix}eval.batch_size", stage.cfg.eval.batch_size, num_processes, "processes"))
    for field, size, n, what in checks:
      if size % n and (field, what) not in seen:
        seen.add((field, what))
        fits = [k * n for k in range(max(1, size // n), size // n + 2)]
        problems.append(f"{field}={size} is not divisible by the {n} {what}{where}; use a multiple of {n} "
                        f"(e.g. {' or '.join(map(str, fits))}) or fewer {what}")
  return problems


def jax_problems() -> list[str]:
  problem = versions.jax_version_problem()
  return [problem] if problem else []
