"""What a config builds, shared by training, evaluation and prediction: mesh, model,
formulation, optimizer, state shapes and shardings, and the data of a run."""
import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from age_jax import config as config_lib
from age_jax import formulations, models, objective
from age_jax.data import datasets, pipeline
from age_jax.models import layers
from age_jax.train import optim, sharding, state as state_lib, step as step_lib

CONFIG_FILE = "config.json"
MEAN_IMAGE_FILE = "mean_image.npy"


@dataclasses.dataclass
class Experiment:
  cfg: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: object
  formulation: formulations.Formulation
  tx: object
  abstract_state: state_lib.TrainState      # ShapeDtypeStructs carrying their shardings
  state_sharding: state_lib.TrainState

  @property
  def batch_sharding(self):
    return sharding.batch_sharding(self.mesh)

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  @property
  def compiler_options(self):
    """XLA options for every jit that runs the model (see models/layers.py)."""
    return layers.compiler_options(self.cfg.model.conv_lowering)

  def jit_train_step(self):
    """The jitted, sharded train step (state, batch, rng) -> (state, metrics)."""
    train_step = step_lib.make_train_step(self.model, self.tx, self.formulation, self.cfg)
    return step_lib.jit_train_step(train_step, self.state_sharding, self.batch_sharding, self.replicated,
                                   self.compiler_options)

  def jit_predict_step(self):
    """The jitted, sharded (params, batch_stats, batch) -> predictions."""
    predict_step = step_lib.make_predict_step(self.model, self.formulation)
    return step_lib.jit_predict_step(predict_step, self.state_sharding.params, self.state_sharding.batch_stats,
                                     self.batch_sharding, self.replicated, self.compiler_options)

  def init_state(self, rng) -> state_lib.TrainState:
    create = jax.jit(lambda r: state_lib.create(self.model, self.tx, r, self.cfg.data.image_size),
                     out_shardings=self.state_sharding)
    return create(rng)


def build(cfg: ml_collections.ConfigDict, devices=None) -> Experiment:
  """Builds one stage's experiment (cfg: a stage config, see train/stages.py)."""
  config_lib.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  formulation = formulations.get_formulation(cfg.formulation)
  bias = formulations.coral_bias_init(cfg.formulation) if formulation.head == "coral" else None
  model = models.get_model(cfg.model, formulation.num_outputs, cfg.multitask, head=formulation.head,
                           head_bias_init=bias)
  image_size = cfg.data.image_size
  params = jax.eval_shape(lambda r: state_lib.init_variables(model, r, image_size)[0], jax.random.key(0))
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps, trainable_mask(cfg, params))
  shapes = jax.eval_shape(lambda r: state_lib.create(model, tx, r, image_size), jax.random.key(0))
  shardings = sharding.state_sharding(mesh, shapes, cfg.mesh.fsdp_min_size)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return Experiment(cfg, mesh, model, formulation, tx, abstract, shardings)


def _is_head(path) -> bool:
  return any(getattr(k, "key", None) in ("age_head", "coral_bias") for k in path)


def trainable_mask(cfg, params):
  """Pytree of bools (True = trained) or None when everything trains.

  train.trainable='head' trains the age head only (LAE 2.4 classification stage); a hybrid
  multi-task step trains its own parts (Xing 3.3.3, objective.trainable_mask).
  """
  masks = []
  if cfg.train.trainable == "head":
    masks.append(jax.tree_util.tree_map_with_path(lambda path, _: _is_head(path), params))
  if cfg.multitask.kind == "hybrid" and cfg.multitask.stage != "all":
    masks.append(objective.trainable_mask(params, cfg.multitask.stage))
  if not masks:
    return None
  return jax.tree.map(lambda *m: all(m), *masks)


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


def loaded_source(cfg, records) -> pipeline.LoadedSource:
  return pipeline.LoadedSource(records, cfg.data.load_size, cache=cfg.data.cache == "memory",
                               num_threads=cfg.data.num_threads, align_faces=cfg.data.align)


def normalizer(cfg, workdir: str, train_source: pipeline.LoadedSource | None = None) -> pipeline.Normalizer:
  """The run's normaliser; the mean training image is computed once and kept in the workdir."""
  if cfg.data.normalize != "mean_image":
    return pipeline.Normalizer(cfg.data.normalize)
  path = os.path.join(workdir, MEAN_IMAGE_FILE)
  if os.path.exists(path):
    mean = np.load(path)
  else:
    if train_source is None:
      raise FileNotFoundError(f"{path} is missing: the mean training image is written by training")
    mean = pipeline.mean_image(train_source, cfg.data)
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      _atomic_save(path, mean)
  return pipeline.Normalizer("mean_image", mean, cfg.data.pixel_scale)


def _atomic_save(path, array):
  tmp = path + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def save_config(cfg, workdir: str):
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
      f.write(cfg.to_json(indent=2))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by launch.train")
  with open(path) as f:
    loaded = json.load(f)
  cfg = config_lib.default_config()
  stages = loaded.pop("stages", {})
  cfg.update_from_flattened_dict(_flatten(loaded))
  cfg.stages = ml_collections.ConfigDict(stages)
  return cfg


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out
