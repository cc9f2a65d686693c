"""What a config builds, shared by training, evaluation and prediction: mesh, model,
formulation, optimizer, state shapes and shardings, and the data of a run."""
import dataclasses
import json

import jax
import ml_collections
from jax.experimental import multihost_utils

from age_jax import config as config_lib
from age_jax import formulations, models, objective as objective_lib, storage
from age_jax.data import datasets, pipeline
from age_jax.train import optim, sharding, state as state_lib, step as step_lib

CONFIG_FILE = "config.json"
MEAN_IMAGE_FILE = "mean_image.npy"
STAGE_METRICS_FILE = "stage_metrics.json"   # {stage name: {metric: value}}, written when the stage ends
INIT_FROM_METRICS = "model.init_from"       # its entry for the weights a run started from


@dataclasses.dataclass
class Experiment:
  cfg: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: object
  objective: objective_lib.Objective
  tx: object                                # None when built for inference
  abstract_state: state_lib.TrainState      # ShapeDtypeStructs carrying their shardings (no opt_state for inference)
  state_sharding: state_lib.TrainState

  @property
  def formulation(self) -> formulations.Formulation:
    return self.objective.formulation

  @property
  def batch_sharding(self):
    return sharding.batch_sharding(self.mesh)

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  @property
  def compiler_options(self):
    """XLA options for every jit that runs the model: its conv lowering's (models.get_lowering)."""
    return models.get_lowering(self.cfg.model.conv_lowering).compiler_options

  def jit_train_step(self, prepare=None):
    """The jitted, sharded train step (state, batch, rng) -> (state, metrics); prepare(batch)
    runs first, inside it (the input's device half: pipeline.train_view)."""
    train_step = step_lib.make_train_step(self.model, self.tx, self.objective, prepare)
    return step_lib.jit_train_step(train_step, self.state_sharding, self.batch_sharding, self.replicated,
                                   self.compiler_options)

  def jit_predict_step(self, mirror: bool | None = None):
    """The jitted, sharded (params, batch_stats, batch) -> predictions; mirror (default
    config.eval.mirror) averages each image's prediction with its mirror image's."""
    mirror = self.cfg.eval.mirror if mirror is None else mirror
    predict_step = step_lib.make_predict_step(self.model, self.objective, mirror)
    return step_lib.jit_predict_step(predict_step, self.state_sharding.params, self.state_sharding.batch_stats,
                                     self.batch_sharding, self.replicated, self.compiler_options)

  def init_state(self, rng) -> state_lib.TrainState:
    create = jax.jit(lambda r: state_lib.create(self.model, self.tx, r, self.cfg.data.image_size),
                     out_shardings=self.state_sharding)
    return create(rng)


def build(cfg: ml_collections.ConfigDict, devices=None, inference: bool = False) -> Experiment:
  """Builds one stage's experiment (cfg: a stage config, see age_jax/stages.py); inference: no
  optimizer, and a state of step, params and batch_stats alone (what prediction restores)."""
  config_lib.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  objective = objective_lib.build(cfg)
  formulation = objective.formulation
  bias = formulations.coral_bias_init(cfg.formulation) if formulation.head == "coral" else None
  model = models.get_model(cfg.model, formulation.num_outputs, cfg.multitask, head=formulation.head,
                           head_bias_init=bias)
  image_size = cfg.data.image_size
  if inference:
    tx = None
    shapes = jax.eval_shape(lambda r: state_lib.create_for_inference(model, r, image_size), jax.random.key(0))
  else:
    params = jax.eval_shape(lambda r: state_lib.init_variables(model, r, image_size)[0], jax.random.key(0))
    tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps, objective.trainable_mask(params), cfg.train.batch_size)
    shapes = jax.eval_shape(lambda r: state_lib.create(model, tx, r, image_size), jax.random.key(0))
  shardings = sharding.state_sharding(mesh, shapes, cfg.mesh.fsdp_min_size)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return Experiment(cfg, mesh, model, objective, tx, abstract, shardings)


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


def save_config(cfg, workdir: str):
  """Process 0 writes config.json; then every process checks that it sees the same workdir."""
  if jax.process_index() == 0:
    storage.write_text(storage.path(workdir) / CONFIG_FILE, cfg.to_json(indent=2))
  storage.check_shared(workdir)


def load_stage_metrics(workdir: str) -> dict:
  path = storage.path(workdir) / STAGE_METRICS_FILE
  if not path.exists():
    return {}
  return json.loads(path.read_text())


def record_stage_metrics(workdir: str, stage_name: str, values: dict):
  """Adds a finished stage's metrics (process 0; atomic), e.g. the validation MAE that LAE's
  stage 2 uses: a resume reads it back instead of measuring again."""
  if jax.process_index() != 0:
    return
  recorded = load_stage_metrics(workdir)
  recorded[stage_name] = {**recorded.get(stage_name, {}), **values}
  storage.write_text(storage.path(workdir) / STAGE_METRICS_FILE, json.dumps(recorded, indent=2))


def resolve_stage(plan: list, index: int, workdir: str):
  """plan[index] with what it takes from earlier stages filled in (LAE stage 2's mae, from the
  validation MAE recorded when the stage before it ended, or for a first stage, of the weights
  of model.init_from)."""
  from age_jax import stages as stages_lib
  stage = plan[index]
  if not stages_lib.needs_previous_mae(stage):
    return stage
  before = plan[index - 1].name if index > 0 else INIT_FROM_METRICS
  recorded = load_stage_metrics(workdir).get(before, {})
  if "val_mae" not in recorded:
    raise FileNotFoundError(f"{storage.path(workdir) / STAGE_METRICS_FILE} has no validation MAE of stage "
                            f"{before!r}, which stage {stage.name!r} needs (formulation.lae_mae < 0)")
  return stages_lib.with_lae_mae(stage, recorded["val_mae"])


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = storage.path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by launch.train")
  loaded = json.loads(path.read_text())
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
