"""Official pretrained weights by name: config.model.pretrained = 'torchvision:resnet50'.

fetch(name) downloads the published file once into the cache (AGE_JAX_WEIGHTS_DIR, default
~/.cache/age_jax/weights), checks its sha256 against the published one (torchvision puts the
first 8 hex digits in the file name: resnet50-0676ba61.pth), converts it once to .safetensors
beside it (torch_files.py reads the .pth without torch) and returns that path, which
models/pretrained.py loads. A file whose hash differs is deleted and refused. Offline, the error
names the URL and where to put the file by hand (it is then checked the same way).
`mirror` (or AGE_JAX_WEIGHTS_MIRROR) replaces the URL's scheme and host, keeping its path.
"""
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from age_jax.models import torch_files

_TV = "https://download.pytorch.org/models/"
# name -> (our model name, URL). torchvision's own weights (IMAGENET1K_V1 unless named), and timm's
# ResNets, whose names equal torchvision's; timm publishes no hash, so only torchvision's are listed.
WEIGHTS = {
    "torchvision:resnet18": ("resnet18", _TV + "resnet18-f37072fd.pth"),
    "torchvision:resnet34": ("resnet34", _TV + "resnet34-b627a593.pth"),
    "torchvision:resnet50": ("resnet50", _TV + "resnet50-0676ba61.pth"),        # FAEB's ImageNet start
    "torchvision:resnet50.v2": ("resnet50", _TV + "resnet50-11ad3fa6.pth"),     # IMAGENET1K_V2
    "torchvision:vgg16": ("vgg16", _TV + "vgg16-397923af.pth"),
    "torchvision:efficientnet_v2_s": ("efficientnetv2_s", _TV + "efficientnet_v2_s-dd5fe13b.pth"),
    "torchvision:efficientnet_v2_m": ("efficientnetv2_m", _TV + "efficientnet_v2_m-dc08266a.pth"),
    "torchvision:efficientnet_v2_l": ("efficientnetv2_l", _TV + "efficientnet_v2_l-59c71312.pth"),
}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")


class WeightsUnavailable(RuntimeError):
  """The file could not be downloaded (offline, or the server refused)."""


def cache_dir() -> str:
  return os.environ.get("AGE_JAX_WEIGHTS_DIR") or os.path.expanduser("~/.cache/age_jax/weights")


def model_name(name: str) -> str:
  """Our model (config.model.name) that the weights `name` fit."""
  return _entry(name)[0]


def _entry(name: str):
  if name not in WEIGHTS:
    raise ValueError(f"config.model.pretrained={name!r} is not a known weights name; known: {sorted(WEIGHTS)} "
                     "(or give a .safetensors / .npz / .pth file as config.model.init_from)")
  return WEIGHTS[name]


def expected_hash(url: str) -> str:
  match = _HASH_IN_NAME.search(os.path.basename(urllib.parse.urlparse(url).path))
  if not match:
    raise ValueError(f"{url}: no published sha256 prefix in the file name")
  return match[1]


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _with_mirror(url: str, mirror: str) -> str:
  if not mirror:
    return url
  base, path = urllib.parse.urlparse(mirror), urllib.parse.urlparse(url).path
  return urllib.parse.urlunparse((base.scheme, base.netloc, base.path.rstrip("/") + path, "", "", ""))


def _download(url: str, target: str, timeout_s: float) -> None:
  tmp = f"{target}.part{os.getpid()}"
  try:
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
      while chunk := response.read(1 << 20):
        out.write(chunk)
    os.replace(tmp, target)
  except (urllib.error.URLError, OSError) as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise WeightsUnavailable(str(getattr(e, "reason", e))) from e


def fetch(name: str, *, directory: str = "", mirror: str | None = None, timeout_s: float = 60.0) -> str:
  """The .safetensors path of the weights `name`, downloaded, checked and converted once."""
  _, url = _entry(name)
  directory = directory or cache_dir()
  os.makedirs(directory, exist_ok=True)
  file_name = os.path.basename(urllib.parse.urlparse(url).path)
  published = expected_hash(url)
  source = os.path.join(directory, file_name)
  converted = os.path.splitext(source)[0] + ".safetensors"
  if os.path.isfile(converted):
    return converted
  if not os.path.isfile(source):
    where = _with_mirror(url, os.environ.get("AGE_JAX_WEIGHTS_MIRROR", "") if mirror is None else mirror)
    print(f"[age_jax] downloading {where} -> {source}", flush=True)
    try:
      _download(where, source, timeout_s)
    except WeightsUnavailable as e:
      raise WeightsUnavailable(
          f"config.model.pretrained={name!r}: cannot download {where} ({e}). Offline? Download "
          f"{url} elsewhere and put it by hand at {source} (its sha256 starts with {published}); "
          "it is checked and converted on the next run") from None
  digest = _sha256(source)
  if not digest.startswith(published):
    os.remove(source)
    raise ValueError(f"config.model.pretrained={name!r}: {source} has sha256 {digest[:16]}..., but the "
                     f"published one starts with {published}; the file was deleted (a broken download or "
                     "not the official file)")
  state = torch_files.read_state_dict(source)
  from safetensors.numpy import save_file
  tmp = f"{converted}.tmp{os.getpid()}"
  save_file({k: v for k, v in state.items()}, tmp, metadata={"source": url, "sha256": digest})
  os.replace(tmp, converted)
  return converted
