"""Cloud TPU accelerator types -> (JAX devices, hosts), so a config's batch sizes can be checked
against a pod before it is created (launch.preflight --accelerator, tests/test_pod_types.py).

Names as gcloud takes them (--accelerator-type): v2-N, v3-N, v4-N, v5p-N count TensorCores,
v5litepod-N and v6e-N count chips; 'v5e-N' is accepted for v5litepod-N. A JAX device is one
TensorCore on v2/v3 (two per chip) and one chip from v4 on (v4 and v5p fuse a chip's two
TensorCores into one megacore device; v5e and v6e chips have one). Hosts: 8 TensorCores per
host on v2/v3, 4 chips per host on v4/v5p and on v5e/v6e slices above 8 chips; v5e and v6e
slices of 1, 4 or 8 chips are one host (Cloud TPU docs, "TPU versions" / system architecture).
"""
import dataclasses
import re

_NAME = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class PodType:
  name: str          # as gcloud spells it
  num_devices: int   # jax.device_count() on the whole slice
  num_hosts: int     # processes of a launch (one per TPU VM host)


def parse(accelerator: str) -> PodType:
  """The PodType of an accelerator type name; a clear error for one this table does not know."""
  m = _NAME.match(accelerator.strip().lower())
  if not m:
    raise ValueError(f"accelerator type {accelerator!r}: expected a Cloud TPU type such as v4-32, "
                     "v5litepod-16 (or v5e-16), v5p-128, v6e-64, v3-32")
  family, n = m.group(1), int(m.group(2))
  if family == "v5e":
    family = "v5litepod"
  name = f"{family}-{n}"
  if family in ("v2", "v3"):          # n TensorCores, each a device; 8 per host
    if n % 8:
      raise ValueError(f"accelerator type {accelerator!r}: {family} slices come in multiples of 8 cores")
    return PodType(name, n, n // 8)
  if family in ("v4", "v5p"):         # n TensorCores, 2 per chip, one megacore device per chip; 4 chips per host
    if n % 8:
      raise ValueError(f"accelerator type {accelerator!r}: {family} slices come in multiples of 8 cores "
                       "(4 chips, one host)")
    chips = n // 2
    return PodType(name, chips, chips // 4)
  # v5litepod / v6e: n chips, one device each; slices of up to 8 chips are one host
  if n in (1, 4, 8):
    return PodType(name, n, 1)
  if n % 4:
    raise ValueError(f"accelerator type {accelerator!r}: {family} slices above 8 chips come in multiples of "
                     "4 chips (one host each)")
  return PodType(name, n, n // 4)
