"""Multi-task age + gender + race networks of Xing 2017, section 3.3 and Fig. 4.

Each works on any trunk with the three-part interface of XingBaseline and VGG16:
`stem(x, train) -> (conv1 tap, conv2 tap)`, `top(conv2 tap, train) -> features`,
`head(features) -> age outputs`. Trunks are built by `make_trunk(name=...)`, so their
parameters keep the single-task names under one subtree (pretrained weights load per
subtree, see pretrained.py).

  Parallel (3.3.1, Fig. 4a)  gender and race heads beside the age head on FC2.
  Deep     (3.3.2, Fig. 4b)  race branch on conv1, gender branch on conv2, each a 1x1
                             reduction and two non-linear layers; age at the top.
  Hybrid   (3.3.3, Fig. 4c)  shared conv1-2; a race x gender group classifier; one age
                             estimator (conv3..head) per group; eq. 13 fusion.

Hybrid outputs and how they meet a formulation's `decode`:
  'group'      (B, G) logits;
  'group_age'  (B, G, num_outputs) each group estimator's raw head outputs; the eq. 13 fusion
               depends on the formulation (a mixture of distributions for softmax and
               ordinal heads), so it is done by objective.age_outputs, not here;
  'gender', 'race'  log-marginals of the group distribution (valid logits: their argmax is
               the most probable gender / race), so gender/race accuracy comes for free.
"""
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from age_jax.ages import NUM_GENDERS
from age_jax.models import layers
from age_jax.models.vgg import adaptive_avg_pool

KINDS = ("none", "parallel", "deep", "hybrid")
GROUPINGS = ("gender_race", "gender", "race")


def num_groups(groups: str, num_races: int) -> int:
  if groups not in GROUPINGS:
    raise ValueError(f"config.multitask.groups={groups!r}; expected one of {list(GROUPINGS)}")
  return {"gender_race": NUM_GENDERS * num_races, "gender": NUM_GENDERS, "race": num_races}[groups]


def group_ids(gender, race, groups: str, num_races: int):
  """Group of each example, -1 where a needed label is unknown (-1).

  'gender_race' is race-major, group = race * 2 + gender: with Morph II's races (B, W) and
  genders (F, M) the order is BF, BM, WF, WM as in Xing Fig. 4(c).
  """
  xp = jnp if isinstance(gender, jax.Array) or isinstance(race, jax.Array) else np
  gender, race = xp.asarray(gender, xp.int32), xp.asarray(race, xp.int32)
  num_groups(groups, num_races)
  if groups == "gender":
    return xp.where(gender >= 0, gender, -1)
  if groups == "race":
    return xp.where(race >= 0, race, -1)
  return xp.where((gender >= 0) & (race >= 0), race * NUM_GENDERS + gender, -1)


class Branch(nn.Module):
  """Deep-supervision classifier on an intermediate map (Xing 3.3.2): 1x1 reduction, ReLU,
  adaptive average pool to pool x pool (keeps FC sizes independent of the input size and
  trunk), then two FC + ReLU + dropout layers and the classifier."""
  num_classes: int
  reduce: int = 64
  pool: int = 6
  fc_features: Sequence[int] = (512, 512)
  dropout_rate: float = 0.5
  conv: Any = layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.conv(self.reduce, 1, padding="VALID", dtype=self.dtype, name="reduce")(x)
    x = adaptive_avg_pool(nn.relu(x), self.pool)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.fc_features):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class Parallel(nn.Module):
  make_trunk: Callable[..., nn.Module]
  num_races: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    trunk = self.make_trunk(name="trunk")
    _, x = trunk.stem(images.astype(self.dtype), train)
    features = trunk.top(x, train)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)(features).astype(jnp.float32)
    return {"features": features, "age": trunk.head(features),
            "gender": dense(NUM_GENDERS, "gender_head"), "race": dense(self.num_races, "race_head")}


class DeeplySupervised(nn.Module):
  make_trunk: Callable[..., nn.Module]
  make_branch: Callable[..., nn.Module]
  num_races: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    trunk = self.make_trunk(name="trunk")
    conv1, conv2 = trunk.stem(images.astype(self.dtype), train)
    features = trunk.top(conv2, train)
    # Race from low-level features, gender a layer later (Xing 3.3.2).
    return {"features": features, "age": trunk.head(features),
            "race": self.make_branch(self.num_races, name="race_branch")(conv1, train),
            "gender": self.make_branch(NUM_GENDERS, name="gender_branch")(conv2, train)}


class Hybrid(nn.Module):
  make_trunk: Callable[..., nn.Module]
  make_branch: Callable[..., nn.Module]
  num_races: int
  groups: str = "gender_race"
  group_classifier: str = "top"   # 'top': a copy of the trunk's top; 'branch': a Branch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    g = num_groups(self.groups, self.num_races)
    _, shared = self.make_trunk(name="shared").stem(images.astype(self.dtype), train)
    if self.group_classifier == "top":
      group_features = self.make_trunk(name="group_classifier").top(shared, train)
      group = nn.Dense(g, dtype=self.dtype, name="group_head")(group_features).astype(jnp.float32)
    elif self.group_classifier == "branch":
      group = self.make_branch(g, name="group_classifier")(shared, train)
    else:
      raise ValueError(f"config.multitask.group_classifier={self.group_classifier!r}; "
                       "expected 'top' or 'branch'")
    estimators = [self.make_trunk(name=f"group_{k}") for k in range(g)]
    group_age = jnp.stack([e.head(e.top(shared, train)) for e in estimators], axis=1)
    outputs = {"group": group, "group_age": group_age}
    log_probs = jax.nn.log_softmax(group, axis=-1)
    if self.groups == "gender_race":
      by_race = log_probs.reshape(-1, self.num_races, NUM_GENDERS)
      outputs["gender"] = jax.nn.logsumexp(by_race, axis=1)
      outputs["race"] = jax.nn.logsumexp(by_race, axis=2)
    else:
      outputs[self.groups] = log_probs
    return outputs


def default_config():
  """The `config.multitask` section (config.py adds it as c.multitask = multitask.default_config())."""
  import ml_collections
  return ml_collections.ConfigDict({
      "kind": "none",             # 'none' | 'parallel' | 'deep' | 'hybrid' (Xing 3.3.1-3.3.3)
      "alpha": 1.0,               # eq. 12 weight of the gender loss (not given in the paper)
      "beta": 1.0,                # eq. 12 weight of the race loss (not given in the paper)
      "num_races": 5,             # UTKFace: 5; Morph II black/white: 2
      "groups": "gender_race",    # hybrid groups: 'gender_race' (G = 2 * num_races) | 'gender' | 'race'
      "group_classifier": "top",  # hybrid: 'top' (copy of the trunk's conv3..FC2) | 'branch' (light)
      "group_weight": 1.0,        # hybrid end-to-end stage: weight of the group cross-entropy
      "stage": "all",             # loss terms and trainable parts: 'all', or hybrid steps
                                  # 'group' -> 'group_age' -> 'end_to_end' (Xing 3.3.3)
      "branch_reduce": 64,        # deep branches (and 'branch' group classifier): 1x1 width,
      "branch_pool": 6,           #   pooled grid side,
      "branch_features": (512, 512),  # and the two non-linear layers' widths
  })


STAGES = ("all", "group", "group_age", "end_to_end")


def validate(mt) -> None:
  """Raises ValueError naming the config.multitask field."""
  if mt.kind not in KINDS:
    raise ValueError(f"config.multitask.kind={mt.kind!r}; expected one of {list(KINDS)}")
  num_groups(mt.groups, mt.num_races)
  if mt.num_races < 1:
    raise ValueError(f"config.multitask.num_races={mt.num_races}; expected >= 1")
  if mt.group_classifier not in ("top", "branch"):
    raise ValueError(f"config.multitask.group_classifier={mt.group_classifier!r}; expected 'top' or 'branch'")
  if mt.stage not in STAGES:
    raise ValueError(f"config.multitask.stage={mt.stage!r}; expected one of {list(STAGES)}")
  if mt.stage not in ("all",) and mt.kind != "hybrid":
    raise ValueError(f"config.multitask.stage={mt.stage!r} is a hybrid training step; "
                     f"config.multitask.kind={mt.kind!r} trains with stage 'all'")
  for field in ("alpha", "beta", "group_weight"):
    if mt[field] < 0:
      raise ValueError(f"config.multitask.{field}={mt[field]}; expected >= 0")
