"""Writes UTKFace's FAEB database file: folders 0-9 by a hash of each image's bytes
(age_jax/data/builders/faeb_hash_folders.py), so the FAEB protocol runs on UTKFace.

  python -m launch.faeb_utkface_split --utkface=/data/UTKFace --out=splits/faeb/UTKFace.json

Train on it with launch.faeb --img_root=<folder above UTKFace> --train=splits/faeb/UTKFace.json.
"""
import collections

from absl import app, flags

_UTKFACE = flags.DEFINE_string("utkface", None, "The UTKFace release folder (*.jpg.chip.jpg).")
_OUT = flags.DEFINE_string("out", "splits/faeb/UTKFace.json", "Where to write the JSON.")
flags.mark_flag_as_required("utkface")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from age_jax.data.builders import faeb_hash_folders
  entries, unparsed = faeb_hash_folders.utkface_database(_UTKFACE.value)
  if not entries:
    raise app.UsageError(f"--utkface={_UTKFACE.value}: no UTKFace-named images")
  faeb_hash_folders.write_database(_OUT.value, entries)
  counts = collections.Counter(e["folder"] for e in entries)
  print(f"{_OUT.value}: {len(entries)} images, folders {dict(sorted(counts.items()))}; "
        f"{len(unparsed)} names not parsed {unparsed[:5]}", flush=True)


if __name__ == "__main__":
  app.run(main)
