"""LAE's face-identity pre-training (Bao et al. 2021, 2.2 and 3.3) on ResNet-18.

An identity dataset (config.data.name='identity_folder': ROOT/<identity>/*.jpg, or a labels.csv
with a subject column; MS-Celeb-1M in the paper), the backbone's penultimate features against one
cosine weight per identity with AM-softmax (CosFace eq. 4; s = 64, m = 0.35 are CosFace's, LAE
gives no values), SGD with momentum 0.9 and weight decay 5e-4 (LAE 3.3, global), MultiStepLR over
18 epochs with milestones at epochs 7, 14 and 16 (x 0.1 each; LAE 3.3).
Not given by LAE, our choices: base lr 0.1 scaled by batch / 256 (as LAE's other stages scale
theirs), batch 256 (LAE's default), 224 px random crops of 256 px images with mirroring (CosFace
trains with mirroring alone) and ImageNet normalisation, as the age stages of
configs/lae_resnet18_baseline.py normalise, so the backbone carries over to them.
Validation reports identity top-1 accuracy on the held-out images of the training identities.

    python -m launch.train --config=configs/lae_faceid_pretrain.py --workdir=W_ID \\
        --config.data.manual_dir=/path/to/identities
    python -m launch.train --config=configs/lae_resnet18_baseline.py --workdir=W_AGE \\
        --config.data.manual_dir=/path/to/UTKFace --config.model.init_from=W_ID
"""
from age_jax import config as config_lib

EPOCHS = 18
MILESTONES = (7, 14, 16)   # epochs (LAE 3.3)


def get_config():
  c = config_lib.default_config()
  c.data.name = "identity_folder"
  c.data.builder_options.min_images = 2     # identities with fewer images are dropped (build_report.json)
  c.data.val_split = "validation"
  c.data.eval_split = "validation"
  c.data.load_size = 256
  c.data.image_size = 224
  c.data.augment = "xing"                   # random crop + mirror
  c.data.normalize = "imagenet"
  c.model.name = "resnet18"
  c.formulation.name = "am_softmax"
  c.formulation.am_scale = 64.0
  c.formulation.am_margin = 0.35
  c.train.batch_size = 256
  c.train.num_epochs = float(EPOCHS)
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.learning_rate = 0.1
  c.optim.lr_reference_batch = 256
  c.optim.schedule = "multistep"
  c.optim.milestones = tuple(m / EPOCHS for m in MILESTONES)
  c.optim.step_factor = 0.1
  return c
