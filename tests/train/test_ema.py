"""The weights' moving average (config.train.ema_decay): the recurrence by hand, and evaluation,
prediction and init_from reading the average instead of the raw weights."""
import jax
import numpy as np

from age_jax import checkpoint, config as config_lib, evaluate
from age_jax.train import experiment, init_from, loop, sharding
from tests.tiny import random_batches, short_run_config, tiny_config


def test_the_average_follows_its_recurrence_with_the_warm_up():
  decay = 0.5
  cfg = tiny_config(**{"train.ema_decay": decay})
  exp = experiment.build(cfg, devices=jax.devices()[:1])
  state = exp.init_state(jax.random.key(0))
  expected = jax.device_get(state.params)
  np.testing.assert_array_equal(jax.device_get(state.ema["params"])["age_head"]["kernel"],
                                expected["age_head"]["kernel"])
  train_step = exp.jit_train_step()
  for t, batch in enumerate(random_batches(3, cfg.train.batch_size, cfg.data.image_size)):
    state, _ = train_step(state, sharding.to_global(batch, exp.mesh), jax.random.key(1))
    d = min(decay, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25: a young average follows the weights closely
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected, jax.device_get(state.params))
  jax.tree.map(lambda e, got: np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-6),
               expected, jax.device_get(state.ema["params"]))


def test_evaluation_and_init_from_read_the_average(small_utk_folder, tmp_path):
  workdir = str(tmp_path / "run")
  cfg = short_run_config(small_utk_folder, str(tmp_path / "tfds"), **{"train.ema_decay": 0.9})
  loop.train(cfg, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  saved = jax.device_get(ckpt.restore(experiment.build(config_lib.load(workdir)).abstract_state))
  ckpt.close()
  kernel = lambda tree: np.asarray(tree["age_head"]["kernel"])
  assert not np.allclose(kernel(saved.params), kernel(saved.ema["params"]))  # two different sets
  _, _, state, _ = evaluate.restore(workdir)
  np.testing.assert_array_equal(kernel(jax.device_get(state.params)), kernel(saved.ema["params"]))
  variables, _ = init_from.load_variables(workdir, {"params": saved.params, "batch_stats": saved.batch_stats},
                                          cfg.model.name)
  np.testing.assert_array_equal(kernel(variables["params"]), kernel(saved.ema["params"]))
