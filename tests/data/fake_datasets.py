"""Small synthetic datasets written in each dataset's published layout (tiny JPEGs, tens of files).

Reusable by other tests: make_utkface_folder(path, n=40, quirks=True, size=16) writes a UTKFace
release folder and returns what it wrote. Images are random noise seeded by an index, so two
files are byte-identical exactly when a generator makes them so (the duplicate quirks).
"""
import csv
import io
import os

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size: int = 16) -> bytes:
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def corrupt_jpeg_bytes(size: int = 16) -> bytes:
  # A real JPEG cut short after its first bytes: PIL cannot decode it.
  return jpeg_bytes(10**6, size)[:60]


def _write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


# ---------------- UTKFace ----------------

# The five malformed names of the release (data README), with their parsed labels.
UTK_MALFORMED = {
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24.0, 0, 1),
    "55_0_0_20170116232725357jpg.chip.jpg": (55.0, 0, 0),
    "39_1_20170116174525125.jpg.chip.jpg": (39.0, 1, -1),
    "61_1_20170109142408075.jpg.chip.jpg": (61.0, 1, -1),
    "61_1_20170109150557335.jpg.chip.jpg": (61.0, 1, -1),
}


def utk_name(age: int, gender: int, race: int, index: int) -> str:
  return f"{age}_{gender}_{race}_{20170101000000000 + index}.jpg.chip.jpg"


def make_utkface_folder(path: str, n: int = 40, quirks: bool = True, size: int = 16,
                        corrupt: bool = False, seed: int = 0) -> dict:
  """Writes n plain UTKFace files (+ the release's quirks when asked) into path.

  Returns {'labels': {file name: (age, gender, race)} of every labelled image written,
  'malformed': [...], 'same_label_duplicates': [[names]], 'conflicting_duplicates': [[names]],
  'unparsable': [...], 'corrupt': name or None, 'expected_kept_default': number of images a
  default build keeps, 'expected_kept_keep_conflicting': with keep_conflicting_duplicates}.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(path, exist_ok=True)
  labels, image_seed = {}, seed * 100_000
  for i in range(n):
    age, gender, race = int(rng.integers(1, 100)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
    name = utk_name(age, gender, race, i)
    _write(os.path.join(path, name), jpeg_bytes(image_seed + i, size))
    labels[name] = (float(age), gender, race)
  out = {"labels": labels, "malformed": [], "same_label_duplicates": [], "conflicting_duplicates": [],
         "unparsable": [], "corrupt": None}
  kept_default = kept_keep = n
  if quirks:
    for j, (name, label) in enumerate(UTK_MALFORMED.items()):
      _write(os.path.join(path, name), jpeg_bytes(image_seed + n + j, size))
      labels[name] = label
      out["malformed"].append(name)
    # Byte-identical copies: one group agreeing on labels, two groups that disagree.
    groups = [("same", [(30, 0, 0), (30, 0, 0)]),
              ("conflict", [(30, 0, 0), (30, 0, 0), (31, 1, 0)]),
              ("conflict", [(20, 0, 2), (45, 1, 2)])]
    for g, (kind, members) in enumerate(groups):
      data, names = jpeg_bytes(image_seed + n + 50 + g, size), []
      for k, (age, gender, race) in enumerate(members):
        name = utk_name(age, gender, race, 10_000 + 10 * g + k)
        _write(os.path.join(path, name), data)
        labels[name] = (float(age), gender, race)
        names.append(name)
      out["same_label_duplicates" if kind == "same" else "conflicting_duplicates"].append(names)
    _write(os.path.join(path, "not_a_face.jpg"), jpeg_bytes(image_seed + n + 90, size))
    _write(os.path.join(path, "README.txt"), b"not an image")
    out["unparsable"].append("not_a_face.jpg")
    kept_default += len(UTK_MALFORMED) + 1          # malformed + one copy of the same-label group
    kept_keep += len(UTK_MALFORMED) + 1 + 2 + 2     # + one copy per distinct label of each conflict
  if corrupt:
    name = utk_name(42, 1, 3, 20_000)
    _write(os.path.join(path, name), corrupt_jpeg_bytes(size))
    out["corrupt"] = name
  out["expected_kept_default"] = kept_default
  out["expected_kept_keep_conflicting"] = kept_keep
  return out


# ---------------- generic labelled folder: images + labels.csv ----------------

def make_labelled_folder(path: str, n: int = 30, subjects: int = 0, size: int = 16, seed: int = 1,
                         columns=("file", "age", "gender", "race", "subject"), image_dir: str = "images",
                         csv_name: str = "labels.csv") -> dict:
  """images/<i>.jpg plus a labels CSV; with subjects > 0 image i belongs to subject i % subjects."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    name = f"{image_dir}/{i:04d}.jpg" if image_dir else f"{i:04d}.jpg"
    _write(os.path.join(path, name), jpeg_bytes(seed * 100_000 + i, size))
    row = {"file": name, "age": str(int(rng.integers(1, 90))), "gender": str(int(rng.integers(0, 2))),
           "race": str(int(rng.integers(0, 5))), "subject": f"p{i % subjects}" if subjects else ""}
    rows.append(row)
  write_csv(os.path.join(path, csv_name), rows, columns)
  return {"rows": rows}


def write_csv(path: str, rows: list[dict], columns, header: bool = True) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    if header:
      writer.writerow(columns)
    for row in rows:
      writer.writerow([row.get(c, "") for c in columns])


# ---------------- MORPH II: metadata CSV + Album2/ ----------------

MORPH_COLUMNS = ("id_num", "picture_num", "dob", "doa", "race", "gender", "facial_hair", "age",
                 "age_diff", "glasses", "photo")


def make_morph_folder(path: str, subjects_per_cell: int = 6, images_per_subject: int = 3, others: int = 4,
                      size: int = 8, seed: int = 2) -> dict:
  """Black and White subjects of both genders (plus a few Hispanic/Asian), several images each."""
  rng = np.random.default_rng(seed)
  rows, subject = [], 0
  cells = [(r, g, subjects_per_cell) for r in "BW" for g in "MF"] + [("H", "M", others), ("A", "F", others)]
  for race, gender, count in cells:
    for _ in range(count):
      subject += 1
      base_age = int(rng.integers(16, 70))
      for k in range(images_per_subject):
        age = base_age + k
        photo = f"Album2/{subject:06d}_{k}{gender}{age}.JPG"
        _write(os.path.join(path, photo), jpeg_bytes(seed * 100_000 + len(rows), size))
        rows.append({"id_num": f"{subject:06d}", "picture_num": str(k), "dob": "", "doa": "", "race": race,
                     "gender": gender, "facial_hair": "0", "age": str(age), "age_diff": "0", "glasses": "0",
                     "photo": photo})
  write_csv(os.path.join(path, "morph_2008_nonCommercial.csv"), rows, MORPH_COLUMNS)
  return {"rows": rows}


# ---------------- FG-NET: images/ + points/ ----------------

def pts_text(points: np.ndarray) -> str:
  lines = ["version: 1", f"n_points:  {len(points)}", "{"] + [f"{x:.3f} {y:.3f}" for x, y in points] + ["}"]
  return "\n".join(lines) + "\n"


def fgnet_face_points() -> np.ndarray:
  """A frontal face in FG-NET's 68-point markup (not iBUG's), in a frame with the pupils at
  (-0.5, 0) and (0.5, 0), y down: 0-14 jaw, 15-26 brows, 27-31 image-left eye (contour, pupil 31),
  32-36 image-right eye (pupil 36), 37-47 nose, 48-59 outer and 60-66 inner lips (corners 48
  image-left and 54 image-right), 67 nose tip."""
  pts = np.zeros((68, 2))
  angles = np.linspace(np.pi, 0, 15)
  pts[0:15] = np.stack([np.cos(angles), 0.1 + 1.5 * np.sin(angles)], 1)
  pts[15:21] = np.stack([np.linspace(-0.85, -0.2, 6), np.full(6, -0.35)], 1)
  pts[21:27] = np.stack([np.linspace(0.2, 0.85, 6), np.full(6, -0.35)], 1)
  for first, pupil in ((27, (-0.5, 0.0)), (32, (0.5, 0.0))):
    pts[first:first + 4] = np.asarray(pupil) + [[-0.2, 0], [0, -0.08], [0.2, 0], [0, 0.08]]
    pts[first + 4] = pupil
  pts[37:48] = np.stack([np.linspace(-0.25, 0.25, 11), 0.25 + 0.45 * (1 - np.abs(np.linspace(-1, 1, 11)))], 1)
  outer, inner = np.linspace(np.pi, -np.pi, 12, endpoint=False), np.linspace(np.pi, -np.pi, 7, endpoint=False)
  pts[48:60] = np.stack([0.4 * np.cos(outer), 1.05 - 0.12 * np.sin(outer)], 1)
  pts[60:67] = np.stack([0.25 * np.cos(inner), 1.05 - 0.05 * np.sin(inner)], 1)
  pts[67] = (0.0, 0.7)
  return pts


def draw_face(points5: np.ndarray, size: int, image: np.ndarray | None = None) -> np.ndarray:
  """A grey size x size picture (or `image`, drawn on) with dark discs at the two eyes, a mid-grey
  one at the nose tip and dark ones at the mouth corners (points5 in the alignment template's order)."""
  image = np.full((size, size, 3), 200, np.uint8) if image is None else image.copy()
  yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
  eye = np.linalg.norm(points5[1] - points5[0])
  for (x, y), value in zip(points5, (20, 20, 110, 60, 60)):
    image[(xx - x) ** 2 + (yy - y) ** 2 <= (0.12 * eye) ** 2] = value
  return image


FGNET_FIVE = [31, 36, 67, 48, 54]  # the points `draw_face` draws, in FG-NET's markup


def make_fgnet_folder(path: str, subjects: int = 5, images_per_subject: int = 3, size: int = 48,
                      seed: int = 3) -> dict:
  """Faces drawn from known points: each image's .pts file is fgnet_face_points() under a random
  similarity (inter-ocular 0.3-0.4 of the image, rotation within 3 degrees); the drawn discs sit
  at its five alignment points, returned as 'landmarks' (5, 2) per file."""
  rng = np.random.default_rng(seed)
  written = {}
  for s in range(1, subjects + 1):
    for k in range(images_per_subject):
      age = 2 + 7 * k + s
      suffix = "a" if k == images_per_subject - 1 and s == 1 else ""
      name = f"{s:03d}A{age:02d}{suffix}.JPG"
      scale, angle = size * rng.uniform(0.3, 0.4), np.deg2rad(rng.uniform(-3, 3))
      rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
      centre = size * np.array([0.5, 0.35]) + rng.uniform(-2, 2, 2)
      points = (fgnet_face_points() @ rotation.T + centre).round(3).astype(np.float32)
      buf = io.BytesIO()
      Image.fromarray(draw_face(points[FGNET_FIVE], size)).save(buf, "JPEG", quality=95)
      _write(os.path.join(path, "images", name), buf.getvalue())
      _write(os.path.join(path, "points", name[:-4].lower() + ".pts"), pts_text(points).encode())
      written[f"images/{name}"] = {"age": float(age), "subject": f"{s:03d}", "landmarks": points[FGNET_FIVE],
                                   "points68": points}
  return written


# ---------------- All-Age-Faces ----------------

def make_aaf_folder(path: str, ids=(0, 1, 2, 7380, 7381, 7382, 9000, 13321), size: int = 8, seed: int = 4,
                    unlisted=(9000,)) -> dict:
  written, lists = {}, {"train.txt": [], "val.txt": []}
  for k, image_id in enumerate(ids):
    name = f"{image_id:05d}A{(k * 9) % 78 + 2:02d}.jpg"
    _write(os.path.join(path, "aglined faces", name), jpeg_bytes(seed * 100_000 + k, size))
    split = "val.txt" if k % 3 == 2 else "train.txt"
    if image_id not in unlisted:
      lists[split].append(f"{name} {1 if image_id > 7380 else 0}")
    written[name] = {"split": None if image_id in unlisted else ("validation" if split == "val.txt" else "train"),
                     "gender": 1 if image_id <= 7380 else 0, "age": float((k * 9) % 78 + 2)}
  for list_name, lines in lists.items():
    _write(os.path.join(path, "image sets", list_name), ("\n".join(lines) + "\n").encode())
  return written


# ---------------- MIVIA (Guess The Age 2021) ----------------

def make_mivia_folder(path: str, identities: int = 10, per_identity: int = 4, size: int = 8,
                      seed: int = 5) -> dict:
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(identities):
    for k in range(per_identity):
      name = f"n{i:06d}/{k:04d}_01.jpg"
      _write(os.path.join(path, "training_caip_contest", name), jpeg_bytes(seed * 100_000 + len(rows), size))
      rows.append({"file": name, "age": f"{rng.uniform(1, 80):.1f}"})
  write_csv(os.path.join(path, "training_caip_contest.csv"), rows, ("file", "age"), header=False)
  return {"rows": rows}


# ---------------- face identities: ROOT/<identity>/*.jpg ----------------

IDENTITY_COLOURS = ((200, 60, 60), (60, 170, 60), (60, 80, 200), (210, 190, 50), (160, 60, 180), (50, 180, 190))


def make_identity_folder(path: str, identities: int = 4, per_identity: int = 6, size: int = 32,
                         seed: int = 6, singletons: int = 1) -> dict:
  """ROOT/id<k>/<i>.jpg: identity k is a drawn face (fake_faces' discs) on its own background
  colour, with its own eye distance, moved and noised per image, so the identities are easy to
  tell apart and no two files are identical. `singletons` identities have one image each (a
  build with min_images=2 drops them). Returns {file name: identity folder}."""
  rng = np.random.default_rng(seed)
  written = {}
  counts = [per_identity] * identities + [1] * singletons
  for k, count in enumerate(counts):
    colour = np.asarray(IDENTITY_COLOURS[k % len(IDENTITY_COLOURS)], np.int16)
    for i in range(count):
      centre = size * np.array([0.5, 0.45]) + rng.uniform(-1.5, 1.5, 2)
      eye = size * (0.3 + 0.05 * (k % 3))
      points = np.array([[-0.5, 0], [0.5, 0], [0, 0.55], [-0.42, 1.15], [0.42, 1.15]]) * eye + centre - [0, 0.5 * eye]
      image = draw_face(points, size, np.full((size, size, 3), colour, np.uint8))
      noisy = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(noisy).save(buf, "JPEG", quality=90)
      name = f"id{k:02d}/{i:03d}.jpg"
      _write(os.path.join(path, name), buf.getvalue())
      written[name] = f"id{k:02d}"
  return written


# ---------------- FAEB (Facial Age Estimation Benchmark) ----------------

def write_faeb_images(root: str, entries: list, size: int = 8, upper_names: bool = False,
                      skip: tuple = (), seed: int = 0) -> int:
  """Writes a distinct image at every entry's img_path under root (its file name upper-cased
  with upper_names, as the FG-NET release names '009A16b.jpg' '009A16B.JPG'), except the indices
  in skip. Returns how many names differ in case from the entry's."""
  differ = 0
  for i, entry in enumerate(entries):
    if i in skip:
      continue
    folder, name = os.path.split(entry["img_path"])
    disk = name.upper() if upper_names else name
    differ += disk != name
    _write(os.path.join(root, folder, disk), jpeg_bytes(seed * 100_000 + i, size))
  return differ


def faeb_entries(n_per_folder: int = 3, folders=range(10), db: str = "TinyDB", seed: int = 0,
                 aligned: bool = False) -> list:
  """A FAEB-style database: AgeDB's fields (name = subject, number = image, gender M/F); one
  subject per folder so folders stay subject-exclusive."""
  rng = np.random.default_rng(seed)
  entries = []
  for folder in folders:
    for j in range(n_per_folder):
      number = f"{folder}{j:03d}"
      age = int(rng.integers(1, 90))
      entry = {"img_path": f"{db}/{db}/{number}_Person{folder}_{age}.jpg", "name": f"Person{folder}",
               "age": age, "gender": "MF"[j % 2], "number": number, "database": db, "folder": folder}
      if aligned:
        entry["aligned_bbox"] = [1, 1, 8, 1, 8, 8, 1, 8]
      entries.append(entry)
  return entries
