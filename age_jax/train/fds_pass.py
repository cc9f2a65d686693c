"""FDS statistics for a head-only stage (config.formulation.fds; age_jax/fds.py): one pass of the
frozen backbone over every training image, at the start of the stage.

The head-only reading of DIR's FDS. DIR updates per-bin running statistics once per epoch
(momentum 0.9, from epoch start_update = 0) and calibrates from epoch start_smooth = 1, because
its backbone learns and its features drift. Here the backbone is frozen and runs as at inference
(BatchNorm on its running statistics, no dropout), so every epoch's statistics estimate the same
quantities: they are computed once, over each training image exactly once (the evaluation crop,
one view, no mirror), and calibration runs from the first step. They are written to the workdir
(FILE), and a resumed stage reads them back, so it calibrates with exactly the same values.
"""
import dataclasses
import io

import jax
import ml_collections
import numpy as np

from age_jax import fds as fds_lib
from age_jax import losses, storage
from age_jax.data import pipeline
from age_jax.train import sharding

FILE = "fds_statistics_step{step}.npz"   # per stage: the global step it starts from


def _features_step(exp):
  def features(params, batch_stats, batch):
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    outputs = exp.model.apply(variables, batch["image"], train=False)
    return {"features": outputs["features"].astype(np.float32), "age": batch["age"], "mask": batch["mask"],
            "index": batch["index"]}
  return jax.jit(features, in_shardings=(exp.state_sharding.params, exp.state_sharding.batch_stats,
                                         exp.batch_sharding),
                 out_shardings=exp.replicated, compiler_options=exp.compiler_options)


def training_features(exp, state, source, normalizer) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, D), ages (N,)) of every training image, in record order, from the state's
  (raw, not averaged) weights at inference."""
  cfg = exp.cfg
  data_cfg = ml_collections.ConfigDict(cfg.data.to_dict())
  data_cfg.eval_views = 1
  sharding.check_batch_size(cfg.eval.batch_size, exp.mesh, "config.eval.batch_size")
  batches = pipeline.eval_batches(source, data_cfg, global_batch_size=cfg.eval.batch_size, normalizer=normalizer,
                                  process_index=jax.process_index(), process_count=jax.process_count())
  step = _features_step(exp)
  collected = [jax.device_get(step(state.params, state.batch_stats, sharding.to_global(b, exp.mesh)))
               for b in batches]
  out = {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}
  keep = out["mask"] > 0
  order = np.argsort(out["index"][keep], kind="stable")
  return out["features"][keep][order], out["age"][keep][order]


def statistics(exp, state, source, normalizer, workdir: str, first_step: int) -> fds_lib.Statistics:
  """The stage's FDS statistics: read from the workdir when a run already computed them, else
  computed (training_features) and written there."""
  f = exp.cfg.formulation
  path = storage.path(workdir) / FILE.format(step=first_step)
  if path.exists():
    with np.load(io.BytesIO(path.read_bytes())) as saved:
      return fds_lib.Statistics(**{k: saved[k] for k in saved.files})
  features, ages = training_features(exp, state, source, normalizer)
  bins = np.asarray(losses.age_to_class(ages, f.num_classes, f.min_age))
  stats = fds_lib.statistics(features, bins, f.num_classes, f.fds_kernel, f.fds_ks, f.fds_sigma)
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, **stats.arrays())
    storage.write_bytes(path, buffer.getvalue())
  return stats


def with_statistics(exp, state, source, normalizer, workdir: str, first_step: int):
  """exp whose objective calibrates the age head's input (config.formulation.fds), else exp."""
  if not exp.objective.fds:
    return exp
  f = exp.cfg.formulation
  stats = statistics(exp, state, source, normalizer, workdir, first_step)
  return dataclasses.replace(exp, objective=exp.objective.with_fds(stats, f.num_classes, f.min_age))
