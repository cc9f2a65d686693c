"""Multi-host start-up: connect this process to JAX's distributed runtime before anything
touches a device.

Where the coordinator comes from, first match wins:
  1. explicit arguments (launch flags --coordinator_address, --num_processes, --process_id);
  2. environment AGE_JAX_COORDINATOR, AGE_JAX_NUM_PROCESSES, AGE_JAX_PROCESS_ID;
  3. a cluster JAX knows how to read by itself: a SLURM step with more than one task,
     an Open MPI job with more than one rank, or a Cloud TPU VM (TPU chips on the PCI bus;
     JAX then asks the VM metadata server for the worker list; one worker = a single-host run);
  4. otherwise: a single process, nothing to initialise.
Every process of a run must take the same path. After `initialize` the global mesh spans all
processes' devices and XLA's collectives (NCCL, ICI, gloo on CPU) carry the all-reduces.
"""
import atexit
import glob
import os
import socket
import sys
import time

import jax

ENV_COORDINATOR = "AGE_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "AGE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "AGE_JAX_PROCESS_ID"
MODES = ("auto", "on", "off")

# Cloud TPU chips are PCI devices of Google's vendor id with these device ids (v3 .. TPU7x).
# The vendor id alone is not enough: a GCP GPU VM's gVNIC network card carries it too.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def _env_int(name: str):
  value = os.environ.get(name, "")
  if value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r}; expected an integer") from None


def _has_tpu_chips() -> bool:
  # Our own PCI scan (JAX's list is private API): a TPU generation newer than _TPU_PCI_DEVICES is
  # not detected, and --distributed=on (what the pod script passes) then stops saying so.
  return pci_has_tpu("/sys/bus/pci/devices")


def pci_has_tpu(pci_devices_dir: str) -> bool:
  """Whether a sysfs PCI device listing holds a Cloud TPU chip."""
  for vendor in glob.glob(os.path.join(pci_devices_dir, "*", "vendor")):
    try:
      with open(vendor) as f, open(os.path.join(os.path.dirname(vendor), "device")) as g:
        if f.read().strip() == _GOOGLE_PCI_VENDOR and g.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def detect_cluster(environ=None) -> str | None:
  """The managed cluster this process runs in ('slurm', 'ompi', 'cloud_tpu'), or None.

  Reads the same signals as JAX's own cluster detection, without touching the network.
  A one-task SLURM step or one-rank MPI job counts as no cluster (nothing to connect).
  """
  env = os.environ if environ is None else environ
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(k in env for k in slurm) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  if environ is None and _has_tpu_chips():
    return "cloud_tpu"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, mode: str = "auto", timeout_s: int = 300,
               local_device_ids=None) -> bool:
  """Joins the distributed runtime when the arguments, the environment or the cluster ask for
  it; returns whether it did. mode: 'auto' (as above), 'on' (fail if no coordinator is found),
  'off' (single process whatever the environment). An unreachable coordinator raises after
  timeout_s seconds instead of hanging."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}; expected one of {list(MODES)}")
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  explicit = coordinator_address is not None
  if mode == "off":
    if explicit:
      raise ValueError(f"--distributed=off but a coordinator address {coordinator_address!r} was given "
                       f"(--coordinator_address or ${ENV_COORDINATOR})")
    return False
  if explicit:
    _check_explicit(coordinator_address, num_processes, process_id)
    if num_processes == 1:
      return False  # a cluster of one: nothing to connect to
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id, cluster_detection_method="deactivate")
  elif num_processes is not None or process_id is not None:
    raise ValueError(f"--num_processes/--process_id (or ${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID}) need "
                     f"--coordinator_address (or ${ENV_COORDINATOR}) as well")
  else:
    cluster = detect_cluster()
    if cluster is None:
      if mode == "on":
        raise RuntimeError("--distributed=on but no coordinator was given (--coordinator_address, "
                           f"${ENV_COORDINATOR}) and no SLURM, Open MPI or Cloud TPU cluster was detected")
      return False
    kwargs = {}  # JAX reads the cluster's own description
    coordinator_address = f"the {cluster} cluster's coordinator"
  if local_device_ids is not None:
    kwargs["local_device_ids"] = local_device_ids
  _connect(coordinator_address, process_id, num_processes, timeout_s, kwargs)
  if not explicit:  # a cluster's launch: it says which accelerator this process was given
    check_backend(jax.default_backend(), expected_accelerator())
  return True


# What a scheduler sets when it hands a process GPUs (SLURM's GRES, or any CUDA launcher).
_GPU_ENV = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")


def expected_accelerator(environ=None) -> tuple[str, str] | None:
  """('gpu' or 'tpu', the evidence) when this process was given accelerators, else None."""
  env = os.environ if environ is None else environ
  for key in _GPU_ENV:
    if env.get(key, "") not in ("", "0", "-1", "NoDevFiles"):
      return "gpu", f"{key}={env[key]}"
  if environ is None and _has_tpu_chips():
    return "tpu", "TPU chips on this host's PCI bus"
  return None


def check_backend(backend: str, expected: tuple[str, str] | None) -> None:
  """Refuses a run whose JAX backend is not the accelerator it was given: a GPU job on a CPU-only
  jax would otherwise train on CPUs and 'succeed' many times slower."""
  if expected is None or backend == expected[0]:
    return
  install = {"gpu": "the CUDA jax: pip install -e '.[cuda]' (NVIDIA driver >= 525; '.[cuda13]' for >= 580)",
             "tpu": "jax for TPU: pip install 'jax[tpu]' (launch/tpu_pod.sh setup does this)"}[expected[0]]
  raise RuntimeError(f"this process was given {expected[0].upper()}s ({expected[1]}) but JAX's backend is "
                     f"{backend!r}: the installed jax cannot use them. Install {install}; check with "
                     "python -c 'import jax; print(jax.devices())'.")


def _check_explicit(address, num_processes, process_id):
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"coordinator address {address!r} (--coordinator_address or ${ENV_COORDINATOR}); "
                     "expected HOST:PORT, the address of process 0")
  if num_processes is None or process_id is None:
    raise ValueError(f"coordinator {address} given without --num_processes and --process_id "
                     f"(or ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID})")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} with --num_processes={num_processes}; expected "
                     "0 <= process_id < num_processes")


_TOO_LATE = ("age_jax.distributed.initialize() must run before anything touches JAX devices "
             "(jax.devices(), computations, device_put); call it first in the launcher")


def _connect(address, process_id, num_processes, timeout_s, kwargs):
  deadline = time.monotonic() + timeout_s
  if kwargs.get("coordinator_address") and process_id != 0:
    _wait_for_coordinator(address, process_id, num_processes, timeout_s)
  # JAX's runtime ends the process with a C++ abort (DEADLINE_EXCEEDED), not an exception, when
  # the others do not all join in time: say beforehand what that abort would mean.
  who = f"process {process_id} of {num_processes}" if process_id is not None else "this process"
  print(f"age_jax.distributed: {who} joining {address}; waiting at most {timeout_s}s for every process "
        "(a DEADLINE_EXCEEDED abort means some process did not start or cannot reach process 0)",
        file=sys.stderr, flush=True)
  remaining = max(1, int(deadline - time.monotonic()))
  try:
    jax.distributed.initialize(initialization_timeout=remaining, **kwargs)
  except Exception as e:  # argument and set-up errors surface as exceptions
    if "must be called before" in str(e):  # JAX's own check that no backend is up yet
      raise RuntimeError(f"{_TOO_LATE} ({e})") from e
    raise RuntimeError(f"{who} could not join the JAX distributed runtime at {address}: {e}") from e
  atexit.register(_shutdown_at_exit)


def _shutdown_at_exit():
  # A clean exit waits for every process, so process 0's coordinator outlives the others' last
  # writes. After an unhandled exception (sys.last_value is set) leave at once instead: the
  # runtime's heartbeat check then stops the processes still waiting in collectives.
  if getattr(sys, "last_value", None) is None:
    shutdown()


def _wait_for_coordinator(address, process_id, num_processes, timeout_s):
  """Waits until process 0's coordinator accepts TCP connections; a clear error after timeout_s."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=min(2.0, timeout_s)):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise TimeoutError(
            f"process {process_id} of {num_processes}: the coordinator at {address} did not answer within "
            f"{timeout_s}s ({e}). Check that process 0 is running, that every process got the same "
            f"--coordinator_address (or ${ENV_COORDINATOR}) and that the port is reachable from this host "
            "(firewall); raise the limit with --distributed_timeout.") from None
      time.sleep(0.2)


def shutdown() -> None:
  """Leaves the runtime cleanly (waits for the other processes); safe when never initialised."""
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def describe() -> str:
  """One line for the logs: which process this is and what it sees."""
  return (f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} {jax.default_backend()} devices")
