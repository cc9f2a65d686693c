"""Epochs -> steps from the training split's size, LAE's linear learning-rate rule and its
MultiStepLR pre-training schedule, and stage 2's mae taken from the previous stage."""
import numpy as np
import pytest

from age_jax import config as config_lib
from age_jax import stages
from age_jax.train import optim
from tests.tiny import tiny_config


def test_epochs_become_steps_of_each_stages_own_batch():
  cfg = tiny_config(**{"train.num_epochs": 2.5, "train.train_size": 1000, "train.batch_size": 64})
  cfg.stages.s1 = {}
  cfg.stages.s2 = {"train": {"num_epochs": 1.0, "batch_size": 100}}
  cfg.stages.s3 = {"train": {"num_epochs": 0.0, "num_steps": 7}}
  plan = stages.plan(cfg)
  assert [s.cfg.train.num_steps for s in plan] == [40, 10, 7]   # ceil(2.5 * 1000 / 64) = 40
  assert [(s.first_step, s.last_step) for s in plan] == [(0, 40), (40, 50), (50, 57)]


def test_learning_rate_scales_linearly_with_the_global_batch():
  cfg = tiny_config(**{"optim.learning_rate": 0.005, "optim.lr_reference_batch": 256,
                       "optim.schedule": "constant"})
  np.testing.assert_allclose(optim.make_schedule(cfg.optim, 10, batch_size=64)(3), 0.005 * 64 / 256)
  cfg.optim.lr_reference_batch = 0
  np.testing.assert_allclose(optim.make_schedule(cfg.optim, 10, batch_size=64)(3), 0.005)


def test_multistep_schedule_at_laes_pretraining_milestones():
  # LAE 3.3: 18 epochs, lr x 0.1 at epochs 7, 14 and 16; here 18 steps, one per epoch.
  cfg = tiny_config(**{"optim.schedule": "multistep", "optim.learning_rate": 0.1,
                       "optim.milestones": (7 / 18, 14 / 18, 16 / 18), "optim.step_factor": 0.1})
  config_lib.validate(cfg)
  schedule = optim.make_schedule(cfg.optim, 18)
  np.testing.assert_allclose([schedule(s) for s in (0, 6, 7, 13, 14, 15, 16, 17)],
                             [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("optim.milestones", (0.5, 0.2), "config.optim.milestones"),
    ("optim.milestones", (1.5,), "config.optim.milestones"),
    ("train.num_epochs", -1.0, "config.train.num_epochs"),
    ("optim.lr_reference_batch", -256, "config.optim.lr_reference_batch"),
])
def test_bad_schedule_fields_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(tiny_config(**{field: value}))


def test_stage2_mae_from_the_previous_stage_needs_one():
  cfg = tiny_config(**{"formulation.name": "lae_stage2"})   # lae_mae = -1 and no stage before it
  with pytest.raises(ValueError, match="previous stage"):
    config_lib.validate(cfg)
  cfg = tiny_config(**{"formulation.name": "dldl_v2"})
  cfg.stages.s1 = {}
  cfg.stages.s2 = {"formulation": {"name": "lae_stage2"}, "train": {"trainable": "head"}}
  config_lib.validate(cfg)
  assert stages.needs_previous_mae(stages.plan(cfg)[1])
  assert stages.with_lae_mae(stages.plan(cfg)[1], 4.2).cfg.formulation.lae_mae == 4.2
