"""Quickstart: a half-width ResNet-18 with LAE's DLDL-v2 loss on UTKFace, sized for a 2-core CPU
(the main job, training and evaluation, in under 30 minutes).

Faces are decoded once at 72 px and kept in RAM; the network sees random 64 px crops and
mirrors, and every age it reports averages the face and its mirror image (launch/quickstart.sh's
test evaluation adds four shifted crops: `launch.evaluate --views=5`; the config keeps one view, the
one predict and export read). Each choice is an ablation row (BENCHMARK_RECORDS.md, "Quickstart").
"""
from age_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.model.name = "resnet18"
  c.model.resnet_width = 32
  c.formulation.name = "dldl_v2"
  c.data.load_size = 72
  c.data.image_size = 64
  c.data.cache = "memory"
  c.eval.mirror = True
  c.train.batch_size = 64
  c.train.num_steps = 9000
  c.train.log_every = 200
  c.train.checkpoint_every = 1000
  c.train.eval_every = 3000
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200
  return c
