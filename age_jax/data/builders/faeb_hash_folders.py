"""FAEB folders for a database without subject ids (UTKFace): folder = a hash of the image's bytes.

Rule: folder = int(first 16 hex digits of sha256(file bytes)) mod 10. Byte-identical copies
therefore share a folder (they can never be in training and test at once), and a file's folder
does not depend on which other files exist or on their order. It cannot keep one person's
different photos together: UTKFace names no person.
"""
import hashlib
import json
import os

from age_jax.data.builders import utkface
from age_jax.data.builders.records import is_image

NUM_FOLDERS = 10


def hash_folder(data: bytes, num_folders: int = NUM_FOLDERS) -> int:
  return int(hashlib.sha256(data).hexdigest()[:16], 16) % num_folders


def utkface_database(folder: str, prefix: str = "UTKFace", log_every: int = 5000) -> tuple[list, list]:
  """(FAEB-style entries for every UTKFace-named image in folder, names that did not parse).
  img_path = prefix/name, so the JSON reads with manual_dir = the folder above `folder`."""
  entries, unparsed = [], []
  names = sorted(n for n in os.listdir(folder) if is_image(n) and os.path.isfile(os.path.join(folder, n)))
  for i, name in enumerate(names, start=1):
    parsed = utkface.parse_name(name)
    if parsed is None:
      unparsed.append(name)
      continue
    with open(os.path.join(folder, name), "rb") as f:
      fold = hash_folder(f.read())
    entry = {"img_path": f"{prefix}/{name}", "age": int(parsed["age"]), "gender": "MF"[parsed["gender"]],
             "database": "UTKFace", "folder": fold}
    if parsed["race"] >= 0:
      entry["race"] = parsed["race"]
    entries.append(entry)
    if log_every and i % log_every == 0:
      print(f"[faeb] hashed {i}/{len(names)} images", flush=True)
  return entries, unparsed


def write_database(path: str, entries: list) -> None:
  """One entry per line: a diff of two versions shows the files that moved."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write("[\n" + ",\n".join(json.dumps(e, sort_keys=True) for e in entries) + "\n]\n")
  os.replace(path + ".tmp", path)
