"""A run's data, from its config: where builds live, the build and split it trains on, the decoded
images and the normaliser; in a multi-process run process 0 builds or decodes while the others
wait, then they read what it made."""
import jax
from jax.experimental import multihost_utils

from age_jax import ages, storage
from age_jax.data import datasets, pipeline

MEAN_IMAGE_FILE = "mean_image.npy"


def data_dir(cfg) -> str:
  return cfg.data.data_dir or datasets.default_data_dir()


def prepare_dataset(cfg) -> dict:
  """Builds the dataset once (process 0 first, then the others find it prepared); the build of
  config.data.fingerprint when set (see datasets.prepare)."""
  options = dict(cfg.data.builder_options, fingerprint=cfg.data.fingerprint)
  report = None
  if jax.process_index() == 0:
    report = datasets.prepare(cfg.data.name, cfg.data.manual_dir, data_dir(cfg), **options)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset prepared")
    if report is None:
      report = datasets.prepare(cfg.data.name, cfg.data.manual_dir, data_dir(cfg), **options)
  return report


def load_split(cfg, split: str):
  return datasets.load_split(cfg.data.name, data_dir(cfg), split, fingerprint=cfg.data.fingerprint,
                             **dict(cfg.data.builder_options))


def training_age_counts(cfg):
  """Training images per whole-year age of the run's training split (ages.per_year_counts)."""
  return ages.per_year_counts(load_split(cfg, cfg.data.train_split).labels()["age"])


def loaded_source(cfg, records) -> pipeline.LoadedSource:
  """The split's decoded images; a missing decoded file is made by process 0 while the others wait."""
  def load():
    return pipeline.LoadedSource(records, cfg.data.load_size, cache=cfg.data.cache,
                                 num_threads=cfg.data.num_threads, align_faces=cfg.data.align)
  if jax.process_count() == 1:
    return load()
  source = load() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("decoded images ready")
  return source or load()


def normalizer(cfg, workdir: str, train_source: pipeline.LoadedSource | None = None) -> pipeline.Normalizer:
  """The run's normaliser; the mean training image is computed once and kept in the workdir."""
  if cfg.data.normalize != "mean_image":
    return pipeline.Normalizer(cfg.data.normalize)
  path = storage.path(workdir) / MEAN_IMAGE_FILE
  if path.exists():
    mean = storage.load_npy(path)
  else:
    if train_source is None:
      raise FileNotFoundError(f"{path} is missing: the mean training image is written by training")
    mean = pipeline.mean_image(train_source, cfg.data)
    if jax.process_index() == 0:
      storage.save_npy(path, mean)
  return pipeline.Normalizer("mean_image", mean, cfg.data.pixel_scale)
