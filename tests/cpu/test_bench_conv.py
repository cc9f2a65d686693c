"""launch/bench/bench_conv reads a model's convolutions off the model itself: check them against
torchvision's ResNet-18 (He et al. 2016, Table 1) and the Xing baseline (Fig. 2)."""
from launch.bench import bench_conv
from launch.bench.bench_conv import ConvShape


def test_resnet18_convolutions_at_224_px_are_the_reference_architecture():
  p1 = ((1, 1), (1, 1))
  assert bench_conv.model_convolutions("resnet18", 224) == {
      ConvShape(224, 3, 64, 7, 2, ((3, 3), (3, 3))): 1,
      ConvShape(56, 64, 64, 3, 1, p1): 4,
      ConvShape(56, 64, 128, 3, 2, p1): 1, ConvShape(28, 128, 128, 3, 1, p1): 3,
      ConvShape(28, 128, 256, 3, 2, p1): 1, ConvShape(14, 256, 256, 3, 1, p1): 3,
      ConvShape(14, 256, 512, 3, 2, p1): 1, ConvShape(7, 512, 512, 3, 1, p1): 3,
  }
  macs = sum(n * bench_conv._out(s) ** 2 * s.kernel ** 2 * s.cin * s.cout
             for s, n in bench_conv.model_convolutions("resnet18", 224).items())
  assert macs == 1_794_293_760  # ResNet-18's 1.82 GMAC less its 1x1 downsamples and FC


def test_xing_baseline_convolutions_at_227_px():
  assert bench_conv.model_convolutions("xing_baseline", 227) == {
      ConvShape(227, 3, 96, 7, 4, ((0, 0), (0, 0))): 1,     # -> 56, pool -> 27
      ConvShape(27, 96, 256, 5, 1, ((2, 2), (2, 2))): 1,    # -> 27, pool -> 13
      ConvShape(13, 256, 384, 3, 1, ((1, 1), (1, 1))): 1,   # -> 13, pool -> 6
  }
