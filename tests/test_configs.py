"""Every experiment config builds and validates; the paper's settings are where they should be."""
import glob
import importlib.util
import os

import pytest

from age_jax import config as config_lib, formulations
from age_jax import stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.endswith("__init__.py")],
                         ids=lambda p: os.path.basename(p))
def test_config_validates(path):
  module = _load(path)
  for make in [getattr(module, n) for n in ("get_config", "get_staged_config") if hasattr(module, n)]:
    config_lib.validate(make())


def test_xing_configs_follow_section_4_1():
  for name in ("oh", "ldl", "mse", "mae", "or"):
    c = _load(os.path.join(ROOT, "configs", f"xing_baseline_{name}.py")).get_config()
    assert c.formulation.name == name
    assert (c.optim.name, c.optim.momentum, c.optim.weight_decay, c.optim.learning_rate) == ("sgd", 0.9, 5e-4, 1e-3)
    assert (c.train.batch_size, c.train.num_steps, c.optim.step_every) == (128, 50_000, 10_000)
    assert (c.data.load_size, c.data.image_size, c.model.dropout_rate) == (256, 227, 0.5)


def test_lae_config_has_two_stages_with_a_frozen_backbone_in_the_second():
  c = _load(os.path.join(ROOT, "configs", "lae_resnet18_baseline.py")).get_config()
  plan = stages.plan(c)
  assert [s.name for s in plan] == ["stage1_representation", "stage2_classifier"]
  first, second = plan[0].cfg, plan[1].cfg
  assert first.formulation.name == "dldl_v2" and first.train.trainable == "all"
  assert second.formulation.name == "lae_stage2" and second.train.trainable == "head"
  assert second.data.sampler == "class_balanced" and second.optim.learning_rate == 0.001
  assert first.optim.lr_reference_batch == second.optim.lr_reference_batch == 256
  assert (first.train.num_epochs, second.train.num_epochs) == (24, 8) and stages.needs_previous_mae(plan[1])
  c.train.train_size = 16_034   # UTKFace's training split: 62.6 steps per epoch at batch 256
  assert [s.cfg.train.num_steps for s in stages.plan(c)] == [1504, 502]   # ceil(24 * 62.63), ceil(8 * 62.63)
  assert formulations.get_formulation(stages.with_lae_mae(plan[1], 5.0).cfg.formulation).num_outputs == 101


def test_bad_values_name_the_field():
  c = config_lib.default_config()
  c.data.augment = "fancy"
  with pytest.raises(ValueError, match=r"config.data.augment='fancy'; expected one of \['xing', 'lae', 'face', 'none'\]"):
    config_lib.validate(c)
  c = config_lib.default_config()
  c.train.batch_size = 0
  with pytest.raises(ValueError, match="config.train.batch_size=0; expected a positive number"):
    config_lib.validate(c)
  c = config_lib.default_config()
  c.stages.s1 = {"train": {"num_stepz": 3}}
  with pytest.raises(ValueError, match="config.stages.s1.train.num_stepz is not a config field"):
    config_lib.validate(c)
  c = config_lib.default_config()
  c.data.align, c.data.builder_options.canonical_crop = True, True
  with pytest.raises(ValueError, match="config.data.align=True would align again .*canonical_crop=True"):
    config_lib.validate(c)
