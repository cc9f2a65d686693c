"""The grain input pipeline: records -> uint8 local batches; augmentation runs on the devices.

Order of work for one training example at global position i:
  sampler[i] -> record index -> the image decoded once at load_size (decoded.py: an array
  file beside the prepared dataset, memory-mapped or read into RAM) -> uint8 batch
  -> on the devices, inside the train step: augmentation preset (keyed by (seed, i)) and
  normalisation (`train_view`).
Local batch b holds positions [b*L, (b+1)*L); process p of P reads local batches p, p+P,
p+2P, ... so global batch s = positions [s*G, (s+1)*G) with G = L*P whatever the number of
processes, and resuming at step s is slicing at s (no iterator state beyond the step).
Evaluation views are deterministic and cheap, and stay on the host.
"""
import io
from typing import Iterator, Sequence

import grain
import numpy as np
from PIL import Image

from age_jax import inference_rules
from age_jax.data import augment, datasets, decoded, samplers
from age_jax.faces import align_to_canonical

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
LABEL_FIELDS = ("age", "gender", "race")
OPTIONAL_LABEL_FIELDS = ("identity",)   # batches carry it where the split has it (identity datasets)


def decode_image(image_bytes: bytes, load_size: int, name: str = "", landmarks=None) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 load_size x load_size x 3 (RGB, squashed to a square as Xing 4.1).

  With landmarks (five: eyes, nose tip, mouth corners, in the template's order) the face is
  aligned onto the canonical crop instead (LAE 3.3; age_jax/faces/canonical.py).
  """
  try:
    image = Image.open(io.BytesIO(image_bytes))
    image = image.convert("RGB")
  except Exception as e:  # PIL raises several types for broken files
    raise ValueError(f"cannot decode image {name or '(unnamed)'}: {e}") from e
  if landmarks is not None:
    return align_to_canonical(np.asarray(image, np.uint8), np.asarray(landmarks, np.float64), load_size)
  if image.size != (load_size, load_size):
    image = image.resize((load_size, load_size), Image.BILINEAR)
  return np.asarray(image, np.uint8)


class LoadedSource:
  """Random access to decoded, resized images and labels of a record source.

  cache: 'disk' reads the images from the decoded array file (decoded.py; made by the first
  run, memory-mapped), 'memory' reads that file into RAM, 'none' decodes on every read.
  """

  def __init__(self, records: Sequence[dict], load_size: int, cache: str = "disk", num_threads: int = 2,
               align_faces: bool = False):
    self.records = records
    self.load_size = load_size
    self.align_faces = align_faces
    self.labels = {k: v for k, v in datasets.split_labels(records).items()
                   if k in LABEL_FIELDS + OPTIONAL_LABEL_FIELDS}
    self.images = None  # None: decode on every read
    if cache != "none":
      self.images = decoded.images(records, self._decode, (load_size, load_size, 3), num_threads,
                                   in_memory=cache == "memory",
                                   tag=f"{load_size}px{'_aligned_aa' if align_faces else ''}")  # _aa: antialiased warp (issue 27)

  def _decode(self, record):
    landmarks = record.get("landmarks") if self.align_faces else None
    if self.align_faces and landmarks is None:
      raise ValueError(f"config.data.align=True but record {_name(record)!r} has no landmarks")
    return decode_image(record["image"], self.load_size, _name(record), landmarks)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    out = {"image": self.images[i] if self.images is not None else self._decode(self.records[i])}
    for field, values in self.labels.items():
      out[field] = values[i]
    return out

  def read_batch(self, indices: np.ndarray) -> dict:
    """{'image': uint8 (n, L, L, 3), labels (n,)} of these records, one copy per image."""
    indices = np.asarray(indices, np.int64)
    if self.images is not None:
      images = self.images[indices]
    else:
      images = np.stack([self._decode(self.records[int(i)]) for i in indices])
    return {"image": images, **{field: values[indices] for field, values in self.labels.items()}}


def _name(record):
  name = record.get("file_name", "")
  return name.decode() if isinstance(name, bytes) else name


class Normalizer:
  """Pixels in [0, 255] (numpy or JAX) -> network input. Xing 3.1.1 subtracts the mean training image."""

  def __init__(self, kind: str, mean_image: np.ndarray | None = None, pixel_scale: float = 1 / 255):
    if kind == "mean_image":
      if mean_image is None:
        raise ValueError("normalize='mean_image' needs the mean training image")
      self.mean, self.scale = mean_image.astype(np.float32), np.float32(pixel_scale)
    elif kind == "imagenet":
      self.mean, self.scale = IMAGENET_MEAN, (1.0 / IMAGENET_STD).astype(np.float32)
    else:
      raise ValueError(f"config.data.normalize={kind!r}; expected 'mean_image' or 'imagenet'")

  def __call__(self, image):
    return inference_rules.normalize(image, self.mean, self.scale)


def eval_transform(data_cfg, single_view: bool = False):
  """The evaluation view(s) of config.data; single_view: the centre view alone (eval_views ignored)."""
  options = augment.options_from_config(data_cfg, augment.EVAL_OPTIONS)
  if single_view:
    options["eval_views"] = 1
  return augment.eval_transform(data_cfg.image_size, data_cfg.augment, **options)


def mean_image(source: LoadedSource, data_cfg, max_images: int = 0) -> np.ndarray:
  """Mean of the centre-cropped training images at the network input size (Xing 3.1.1).

  Taken at input size rather than load size: a random crop then shifts the mean by at most
  a few pixels, and the same mean serves evaluation. max_images > 0 uses an even subsample.
  """
  n = len(source)
  indices = np.arange(n) if not max_images or max_images >= n else np.linspace(0, n - 1, max_images).astype(int)
  to_input = eval_transform(data_cfg, single_view=True)
  size = data_cfg.image_size
  total = np.zeros((size, size, 3), np.float64)
  for i in indices:
    total += to_input(source[int(i)]["image"])
  return (total / len(indices)).astype(np.float32)


def _labels_to_arrays(example):
  for field in LABEL_FIELDS + OPTIONAL_LABEL_FIELDS:
    if field in example:
      example[field] = np.asarray(example[field], np.float32 if field == "age" else np.int32)
  return example


def train_batches(source: LoadedSource, labels: dict, data_cfg, *, local_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Endless iterator of this process's local training batches, from global step start_step:
  {'image': uint8 (L, load, load, 3), 'position': uint32 (L,) global example positions, labels}."""
  def read(batch_index, indices):
    batch = _labels_to_arrays(source.read_batch(indices))
    first = batch_index * local_batch_size
    batch["position"] = (np.arange(first, first + local_batch_size) % 2**32).astype(np.uint32)
    return batch

  ds = (samplers.index_sampler(data_cfg.sampler, labels, len(source), seed, balance_by=data_cfg.balance_by)
        .batch(local_batch_size, drop_remainder=True)
        .map_with_index(read))
  ds = ds[process_index::process_count][start_step:]
  return iter(_to_iter(ds, data_cfg))


def train_view(data_cfg, normalizer: Normalizer, seed: int):
  """batch -> batch with the augmented, normalised float32 'image': the device half of the
  training input, traced into the train step (see train_batches for the host half)."""
  transform = augment.batch_transform(data_cfg.augment, data_cfg.image_size, seed + 1,
                                      **augment.options_from_config(data_cfg, augment.TRAIN_OPTIONS))

  def view(batch):
    batch = dict(batch)
    batch["image"] = normalizer(transform(batch["image"], batch.pop("position")))
    return batch
  return view


def _to_iter(ds: grain.MapDataset, data_cfg) -> grain.IterDataset:
  """Threads read (and decode, without a decoded file) in this process; num_workers > 0 moves the
  work to grain worker processes (each runs the threaded dataset on its share of the batches, in order)."""
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.num_threads,
                                            prefetch_buffer_size=max(2, 2 * data_cfg.num_threads)))
  if data_cfg.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
  return ds


def eval_batches(source: LoadedSource, data_cfg, *, global_batch_size: int, normalizer: Normalizer,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """This process's slices of the padded evaluation batches; 'mask' marks real examples.

  The N records are padded up to a multiple of the global batch, so every process runs the
  same number of steps and every record is counted exactly once across processes.
  """
  n = len(source)
  if n == 0:
    raise ValueError("the evaluation split is empty")
  if global_batch_size % process_count:
    raise ValueError(f"eval batch size {global_batch_size} is not divisible by {process_count} processes")
  local = global_batch_size // process_count
  padded = -(-n // global_batch_size) * global_batch_size
  to_input = eval_transform(data_cfg)

  def load(position):
    example = dict(source[min(position, n - 1)])
    example["image"] = normalizer(to_input(example["image"]))
    example = _labels_to_arrays(example)
    example["mask"] = np.float32(position < n)
    example["index"] = np.int32(position)
    return example

  ds = grain.MapDataset.range(padded).map(load).batch(local)[process_index::process_count]
  return iter(_to_iter(ds, data_cfg))

