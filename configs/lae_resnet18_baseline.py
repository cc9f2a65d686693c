"""LAE (Bao et al. 2021) standard baseline and two-stage decoupled training, on ResNet-18.

Stage 1 (representation, 2.4): KL + lambda * L1 on the expectation (eqs. 1-3, DLDL-v2; K = 101,
sigma = 1, lambda = 1), 224 px, LAE augmentation (random resized crop, flip, colour jitter,
RandAugment N=2 M=9), ImageNet normalisation, SGD + OneCycle, base lr 0.005 scaled by batch/256,
weight decay 5e-4, 24 epochs. Stage 2 (classification): only the FC layer learns, on
class-balanced batches, with L_ld + (L_er - mae)^2 (eq. 4) for 8 epochs at base lr 0.001;
mae is stage 1's validation MAE, measured when stage 1 ends (formulation.lae_mae = -1).
Epochs become steps from the training split's size; rates scale with the global batch / 256.
"""
from age_jax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.model.name = "resnet18"
  c.formulation.name = "dldl_v2"
  c.formulation.num_classes = 101
  c.formulation.sigma = 1.0
  c.formulation.dldl_lambda = 1.0
  c.data.load_size = 256
  c.data.image_size = 224
  c.data.augment = "lae"
  c.data.normalize = "imagenet"
  c.train.batch_size = 256
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "onecycle"
  c.optim.learning_rate = 0.005
  c.optim.lr_reference_batch = 256
  c.stages.stage1_representation = {"train": {"num_epochs": 24.0}}
  c.stages.stage2_classifier = {
      "train": {"num_epochs": 8.0, "trainable": "head"},
      "data": {"sampler": "class_balanced", "balance_by": "age"},
      "optim": {"learning_rate": 0.001},
      "formulation": {"name": "lae_stage2", "lae_mae": -1.0},
  }
  return c
