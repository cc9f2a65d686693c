"""A PNG grid showing what the model is fed: per image, the eval view then several train views.

  python -m launch.contact_sheet --folder=DIR_OF_IMAGES --preset=lae --image_size=224 \
      --load_size=256 --out=/tmp/sheet.png [--n=16] [--views=7] [--seed=0]

Images are decoded and squashed to load_size as the pipeline does, then augmented by the
training path itself (augment.batch_transform, jitted, as inside the train step). Write the sheet outside the repository: it is derived from the images.
"""
import os

from absl import app, flags
from PIL import Image

from age_jax.data import augment, pipeline
from age_jax.data.contact_sheet import contact_sheet, pick_files


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
