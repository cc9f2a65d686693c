"""Prediction: ages (and gender/race where the model has them) for a folder of images."""
import csv
import os

import jax

from age_jax.evaluate import Evaluator, restore

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_records(folder: str) -> list[dict]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder {folder!r} does not exist")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder!r}")
  records = []
  for name in names:
    with open(os.path.join(folder, name), "rb") as f:
      records.append({"image": f.read(), "file_name": name})
  return records


def predict_folder(workdir: str, folder: str, out_csv: str, step: int | None = None) -> list[dict]:
  exp, cfg, state, normalizer = restore(workdir, step)
  records = image_records(folder)
  predictions = Evaluator(exp, cfg, normalizer, records=records).predict(state)
  rows = []
  for i, record in enumerate(records):
    row = {"file": record["file_name"], "age": round(float(predictions["pred_age"][i]), 2)}
    for task in ("gender", "race"):
      if f"pred_{task}" in predictions:
        row[task] = int(predictions[f"pred_{task}"][i])
    rows.append(row)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    with open(out_csv, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  return rows
