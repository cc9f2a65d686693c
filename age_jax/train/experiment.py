"""What a config builds, shared by training, evaluation and prediction: mesh, model, objective,
optimizer, state shapes and shardings; and a run's stage metrics (stage_metrics.json). The run's
data: data/run_data.py; its config.json: config.save / config.load."""
import dataclasses
import json

import jax
import ml_collections

from age_jax import config as config_lib
from age_jax import formulations, models, objective as objective_lib, storage
from age_jax.train import optim, sharding, state as state_lib, step as step_lib

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
    train_step = step_lib.make_train_step(self.model, self.tx, self.objective, prepare,
                                          self.cfg.train.ema_decay)
    return step_lib.jit_train_step(train_step, self.state_sharding, self.batch_sharding, self.replicated,
                                   self.compiler_options)

  def jit_predict_step(self, mirror: bool | None = None, view_log_probs: bool = False):
    """The jitted, sharded (params, batch_stats, batch) -> predictions; mirror (default
    config.eval.mirror) averages each image's prediction with its mirror image's;
    view_log_probs: see objective.predictions."""
    mirror = self.cfg.eval.mirror if mirror is None else mirror
    predict_step = step_lib.make_predict_step(self.model, self.objective, mirror, view_log_probs)
    return step_lib.jit_predict_step(predict_step, self.state_sharding.params, self.state_sharding.batch_stats,
                                     self.batch_sharding, self.replicated, self.compiler_options)

  def init_state(self, rng) -> state_lib.TrainState:
    create = jax.jit(lambda r: state_lib.create(self.model, self.tx, r, self.cfg.data.image_size,
                                                ema=self.cfg.train.ema_decay > 0),
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
    shapes = jax.eval_shape(lambda r: state_lib.create(model, tx, r, image_size, ema=cfg.train.ema_decay > 0),
                            jax.random.key(0))
  shardings = sharding.state_sharding(mesh, shapes, cfg.mesh.fsdp_min_size)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return Experiment(cfg, mesh, model, objective, tx, abstract, shardings)


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
