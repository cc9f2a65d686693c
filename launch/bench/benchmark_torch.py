"""PyTorch twins of our models, for `launch.bench.benchmark --torch` speed comparisons only.

Same layers, widths, strides, paddings, pooling arithmetic and head size as the flax
models (age_jax/models/), so both frameworks do the same FLOPs; weights are not shared
(speed does not depend on their values). torch is an optional dependency
(`pip install -e '.[torch]'`): import this module only when a comparison is asked for.
"""
import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class XingBaseline(nn.Module):
  """Xing 2017 3.1.1, as age_jax/models/baseline.py: floor pooling, Caffe LRN, dropout on FCs."""

  def __init__(self, num_outputs=1, conv_features=(96, 256, 384), fc_features=(512, 512),
               dropout_rate=0.5, image_size=227):
    super().__init__()
    c1, c2, c3 = conv_features
    pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731  floor mode, as flax 'VALID'
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731  alpha/n as Caffe
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, 7, 4), nn.ReLU(), pool(), lrn(),
        nn.Conv2d(c1, c2, 5, 1, 2), nn.ReLU(), pool(), lrn(),
        nn.Conv2d(c2, c3, 3, 1, 1), nn.ReLU(), pool())
    side = image_size
    for k, s in ((7, 4), (3, 2), (3, 2), (3, 2)):  # conv1, then the three pools
      side = (side - k) // s + 1
    layers, width = [], c3 * side * side
    for f in fc_features:
      layers += [nn.Linear(width, f), nn.ReLU(), nn.Dropout(dropout_rate)]
      width = f
    self.top = nn.Sequential(*layers)
    self.age_head = nn.Linear(width, num_outputs)

  def forward(self, x):
    return self.age_head(self.top(torch.flatten(self.features(x), 1)))


class _BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride):
    super().__init__()
    out = width * 4
    self.body = nn.Sequential(
        nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
    self.downsample = None
    if stride != 1 or cin != out:
      self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

  def forward(self, x):
    return torch.relu(self.body(x) + (x if self.downsample is None else self.downsample(x)))


_RESNETS = {"resnet18": ((2, 2, 2, 2), _BasicBlock), "resnet34": ((3, 4, 6, 3), _BasicBlock),
            "resnet50": ((3, 4, 6, 3), _Bottleneck)}


class ResNet(nn.Module):
  """torchvision layout (v1.5), as age_jax/models/resnet.py."""

  def __init__(self, name="resnet18", num_outputs=1):
    super().__init__()
    stage_sizes, block = _RESNETS[name]
    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                   nn.MaxPool2d(3, 2, 1)], 64
    for s, n in enumerate(stage_sizes):
      for j in range(n):
        layers.append(block(cin, 64 * 2 ** s, 2 if s > 0 and j == 0 else 1))
        cin = 64 * 2 ** s * block.expansion
    self.body = nn.Sequential(*layers)
    self.age_head = nn.Linear(cin, num_outputs)

  def forward(self, x):
    return self.age_head(self.body(x).mean(dim=(2, 3)))


class VGG16(nn.Module):
  """Configuration D with adaptive 7x7 average pooling, as age_jax/models/vgg.py."""

  def __init__(self, num_outputs=1, dropout_rate=0.5):
    super().__init__()
    layers, cin = [], 3
    for widths in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
      for w in widths:
        layers += [nn.Conv2d(cin, w, 3, 1, 1), nn.ReLU()]
        cin = w
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7))
    self.top = nn.Sequential(nn.Linear(7 * 7 * 512, 4096), nn.ReLU(), nn.Dropout(dropout_rate),
                             nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout_rate))
    self.age_head = nn.Linear(4096, num_outputs)

  def forward(self, x):
    return self.age_head(self.top(torch.flatten(self.features(x), 1)))


def get_torch_model(model_cfg, num_outputs: int, image_size: int) -> nn.Module:
  """The twin of `age_jax.models.get_model(model_cfg, num_outputs)`; raises for models without one."""
  name = model_cfg.name
  if name == "xing_baseline":
    return XingBaseline(num_outputs, tuple(model_cfg.conv_features), tuple(model_cfg.fc_features),
                        model_cfg.dropout_rate, image_size)
  if name in _RESNETS:
    return ResNet(name, num_outputs)
  if name == "vgg16":
    return VGG16(num_outputs, model_cfg.dropout_rate)
  raise ValueError(f"benchmark_torch: no PyTorch twin for config.model.name={name!r}; "
                   f"have: {['xing_baseline', 'vgg16', *_RESNETS]}")


def torch_dtype(name: str):
  return _DTYPES[name]
