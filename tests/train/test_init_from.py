"""Starting from other weights: leaf matching by path and shape, a workdir as the source, and
stages whose heads differ (the backbone carries over, the head starts fresh)."""
import jax
import numpy as np
import pytest

from age_jax import checkpoint, config as config_lib
from age_jax.train import experiment, init_from, loop
from tests.tiny import short_run_config


def test_copy_matching_by_path_and_shape_with_reasons():
  target = {"conv": {"kernel": np.zeros((3, 3)), "bias": np.zeros(3)}, "age_head": {"kernel": np.zeros((4, 1))}}
  source = {"conv": {"kernel": np.ones((3, 3)), "bias": np.ones(3)}, "age_head": {"kernel": np.ones((4, 101))},
            "identity_head": {"kernel": np.ones((4, 7))}}
  tree, loaded, kept, unused = init_from.copy_matching(target, source)
  assert sorted(loaded) == ["conv/bias", "conv/kernel"]
  assert kept == [("age_head/kernel", "shape (4, 101) in the source, (4, 1) here")]
  assert unused == ["identity_head/kernel"]
  np.testing.assert_array_equal(tree["conv"]["kernel"], 1.0)
  np.testing.assert_array_equal(tree["age_head"]["kernel"], 0.0)
  assert target["conv"]["kernel"].sum() == 0   # the target is not modified


@pytest.fixture(scope="module")
def utk_folder(small_utk_folder):
  return small_utk_folder


_cfg = short_run_config


def _restored(workdir):
  cfg = config_lib.load(workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(experiment.build(cfg).abstract_state)
  ckpt.close()
  return jax.device_get(state.params), jax.device_get(state.batch_stats)


def _backbone(params):
  return {k: v for k, v in params.items() if k != "age_head"}


def test_a_run_starts_from_another_workdirs_backbone(utk_folder, tmp_path):
  data_dir = str(tmp_path / "tfds")
  source = str(tmp_path / "dldl")   # a 101-way softmax head
  loop.train(_cfg(utk_folder, data_dir, **{"formulation.name": "dldl_v2"}), source)
  target = str(tmp_path / "mae")    # a 1-output head; only the head trains, so the backbone must stay the source's
  loop.train(_cfg(utk_folder, data_dir, **{"model.init_from": source, "train.trainable": "head"}), target)
  (src_params, src_stats), (dst_params, dst_stats) = _restored(source), _restored(target)
  jax.tree.map(np.testing.assert_array_equal, _backbone(src_params), _backbone(dst_params))
  jax.tree.map(np.testing.assert_array_equal, src_stats, dst_stats)
  assert dst_params["age_head"]["kernel"].shape[-1] == 1


def test_a_stage_with_another_head_keeps_the_previous_stages_backbone(utk_folder, tmp_path):
  cfg = _cfg(utk_folder, str(tmp_path / "tfds"), **{"formulation.name": "dldl_v2"})
  cfg.stages.s1 = {}
  cfg.stages.s2 = {"formulation": {"name": "mae"}, "train": {"trainable": "head"}}
  workdir = str(tmp_path / "staged")
  loop.train(cfg, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  from age_jax import stages
  plan = stages.plan(config_lib.load(workdir))
  first = jax.device_get(ckpt.restore(experiment.build(plan[0].cfg).abstract_state, 2).params)
  second = jax.device_get(ckpt.restore(experiment.build(plan[1].cfg).abstract_state, 4).params)
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, _backbone(first), _backbone(second))
  assert first["age_head"]["kernel"].shape[-1] == 101 and second["age_head"]["kernel"].shape[-1] == 1


def test_init_from_a_missing_path_names_the_field(utk_folder, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.model.init_from"):
    loop.train(_cfg(utk_folder, str(tmp_path / "tfds"), **{"model.init_from": str(tmp_path / "nope.npz")}),
               str(tmp_path / "w"))


def test_a_classifier_stage_from_another_workdir_takes_lae_mae_from_its_weights(utk_folder, tmp_path):
  from age_jax import evaluate
  data_dir = str(tmp_path / "tfds")
  source = str(tmp_path / "stage1")
  base = {"formulation.name": "dldl_v2", "data.val_split": "validation"}
  loop.train(_cfg(utk_folder, data_dir, **base), source)
  target = str(tmp_path / "stage2")
  loop.train(_cfg(utk_folder, data_dir, **{**base, "formulation.name": "lae_stage2", "formulation.lae_mae": -1.0,
                                           "model.init_from": source, "train.trainable": "head"}), target)
  recorded = experiment.load_stage_metrics(target)[experiment.INIT_FROM_METRICS]["val_mae"]
  source_mae = evaluate.evaluate_workdir(source, split="validation")["mae"]
  np.testing.assert_allclose(recorded, source_mae, rtol=1e-5)
