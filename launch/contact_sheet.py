"""A PNG grid showing what the model is fed: per image, the eval view then several train views.

  python -m launch.contact_sheet --folder=DIR_OF_IMAGES --preset=lae --image_size=224 \
      --load_size=256 --out=/tmp/sheet.png [--n=16] [--views=7] [--seed=0]

Images are decoded and squashed to load_size as the pipeline does, then the preset's
transforms are applied. Write the sheet outside the repository: it is derived from the images.
"""
import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from age_jax.data import augment, pipeline

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
GAP = 4  # pixels of white between tiles

_FOLDER = flags.DEFINE_string("folder", None, "Folder of face images (UTKFace *.jpg files, ...).")
_PRESET = flags.DEFINE_enum("preset", "xing", list(augment.PRESETS), "Augmentation preset to show.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 227, "Network input size (config.data.image_size).")
_LOAD_SIZE = flags.DEFINE_integer("load_size", 256, "Decoded image size (config.data.load_size).")
_OUT = flags.DEFINE_string("out", None, "PNG file to write (keep it outside the repository).")
_N = flags.DEFINE_integer("n", 16, "Number of images (rows).")
_VIEWS = flags.DEFINE_integer("views", 7, "Random training views per image (columns after the eval view).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for picking the images and for the augmentations.")
_NUM_OPS = flags.DEFINE_integer("randaugment_num_ops", 2, "RandAugment N ('lae' preset).")
_MAGNITUDE = flags.DEFINE_float("randaugment_magnitude", 9, "RandAugment M on 0..10 ('lae' preset).")
_OP_PROB = flags.DEFINE_float("randaugment_op_prob", 0.5, "Probability of applying each RandAugment op ('lae').")
flags.mark_flags_as_required(["folder", "out"])


def pick_files(folder: str, n: int, seed: int) -> list[str]:
  """n image files of the folder, drawn without replacement by seed, in name order."""
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
  chosen = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
  return [os.path.join(folder, names[i]) for i in sorted(chosen)]


def contact_sheet(images: list[np.ndarray], preset: str, image_size: int, views: int, seed: int,
                  captions: list[str] | None = None, **train_options) -> np.ndarray:
  """uint8 grid: one row per image, the eval view first, then `views` training views."""
  train = augment.train_transform(preset, image_size, **train_options)
  evaluate = augment.eval_transform(image_size, preset)
  step = image_size + GAP
  sheet = np.full((len(images) * step - GAP, (1 + views) * step - GAP, 3), 255, np.uint8)
  for row, image in enumerate(images):
    rng = np.random.default_rng([seed, row])
    tiles = [evaluate(image)] + [train(image, rng) for _ in range(views)]
    for col, tile in enumerate(tiles):
      sheet[row * step:row * step + image_size, col * step:col * step + image_size] = (
          np.clip(np.rint(tile), 0, 255).astype(np.uint8))
  if captions:
    draw_captions(sheet, captions, step)
  return sheet


def draw_captions(sheet: np.ndarray, captions: list[str], step: int) -> None:
  image = Image.fromarray(sheet)
  draw = ImageDraw.Draw(image)
  for row, caption in enumerate(captions):
    draw.text((3, row * step + 2), caption, fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))
  sheet[...] = np.asarray(image)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  files = pick_files(_FOLDER.value, _N.value, _SEED.value)
  images = []
  for path in files:
    with open(path, "rb") as f:
      images.append(pipeline.decode_image(f.read(), _LOAD_SIZE.value, path))
  # UTKFace names start with the age; show that first field as a caption.
  captions = [os.path.basename(path).split("_")[0] for path in files]
  sheet = contact_sheet(images, _PRESET.value, _IMAGE_SIZE.value, _VIEWS.value, _SEED.value, captions,
                        randaugment_num_ops=_NUM_OPS.value, randaugment_magnitude=_MAGNITUDE.value,
                        randaugment_op_prob=_OP_PROB.value)
  Image.fromarray(sheet).save(_OUT.value)
  print(f"wrote {_OUT.value}: {len(files)} images x (1 eval + {_VIEWS.value} train views), "
        f"preset={_PRESET.value}, {sheet.shape[1]}x{sheet.shape[0]} px")


if __name__ == "__main__":
  app.run(main)
