"""The grain pipeline: shapes, dtypes, normalisation, masking, determinism, process sharding,
the decoded-image file, and the device half of the training input."""
import io
import os
import pickle

import jax
import numpy as np
import pytest
from PIL import Image

from age_jax import config as config_lib
from age_jax.data import datasets, decoded, pipeline
from tests.data.fake_datasets import make_utkface_folder


def _jpeg(seed, size=20):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def records():
  return [{"image": _jpeg(i), "age": float(i + 1), "gender": i % 2, "race": i % 5, "file_name": f"{i}.jpg"}
          for i in range(11)]


def _data_cfg(**kw):
  data = config_lib.default_config().data
  data.update(dict(load_size=24, image_size=16, augment="xing", sampler="shuffle", num_threads=1, **kw))
  return data


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_decode_resizes_to_a_uint8_square_and_names_a_corrupt_file():
  image = pipeline.decode_image(_jpeg(0, size=20), 24)
  assert image.shape == (24, 24, 3) and image.dtype == np.uint8
  with pytest.raises(ValueError, match="cannot decode image broken.jpg"):
    pipeline.decode_image(b"not a jpeg", 24, "broken.jpg")


def test_cached_and_uncached_sources_agree(records):
  cached = pipeline.LoadedSource(records, 24, cache="memory")
  plain = pipeline.LoadedSource(records, 24, cache="none")
  for i in (0, 5, 10):
    np.testing.assert_array_equal(cached[i]["image"], plain[i]["image"])
    assert cached[i]["age"] == records[i]["age"]
  np.testing.assert_array_equal(cached.read_batch([10, 0])["image"], plain.read_batch([10, 0])["image"])


def test_train_batches_shapes_dtypes_and_determinism(records):
  source = pipeline.LoadedSource(records, 24, cache="memory")
  make = lambda **kw: pipeline.train_batches(source, {}, _data_cfg(), local_batch_size=4, seed=3, **kw)
  first, again = _take(make(), 5), _take(make(), 5)
  batch = first[0]
  assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.uint8  # augmented on device
  assert batch["age"].dtype == np.float32 and batch["gender"].dtype == np.int32
  np.testing.assert_array_equal(np.concatenate([b["position"] for b in first]), np.arange(20))
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # 5 batches of 4 = 20 draws: every record is seen in the first epoch of 11.
  ages = np.concatenate([b["age"] for b in first])
  assert set(ages[:11]) == {float(i + 1) for i in range(11)}
  # A resumed pipeline continues exactly where the uninterrupted one was.
  resumed = _take(make(start_step=3), 2)
  for a, b in zip(first[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_processes_split_each_global_batch_without_overlap(records):
  source = pipeline.LoadedSource(records, 24, cache="memory")
  whole = _take(pipeline.train_batches(source, {}, _data_cfg(), local_batch_size=4, seed=1), 4)
  halves = [_take(pipeline.train_batches(source, {}, _data_cfg(), local_batch_size=2, seed=1,
                                         process_index=p, process_count=2), 4)
            for p in range(2)]
  for step in range(4):
    for key in ("image", "position"):
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(whole[step][key], joined)


def test_train_view_augments_and_normalises_on_the_device(records):
  source = pipeline.LoadedSource(records, 24, cache="memory")
  batch = next(pipeline.train_batches(source, {}, _data_cfg(), local_batch_size=4, seed=3))
  mean = np.full((16, 16, 3), 100, np.float32)
  view = jax.jit(pipeline.train_view(_data_cfg(), pipeline.Normalizer("mean_image", mean, 0.5), seed=3))
  out = view(batch)
  assert out["image"].shape == (4, 16, 16, 3) and out["image"].dtype == np.float32 and "position" not in out
  np.testing.assert_array_equal(out["age"], batch["age"])
  # Every view is a crop of its loaded image, normalised: (pixels - mean) * scale.
  crops = np.asarray(out["image"]) / 0.5 + 100
  for crop, image in zip(crops, batch["image"]):
    assert any(np.array_equal(crop, view_[t:t + 16, l:l + 16]) for view_ in (image, image[:, ::-1])
               for t in range(9) for l in range(9))


def test_eval_batches_pad_mask_and_cover_every_record_once(records):
  source = pipeline.LoadedSource(records, 24)
  normalizer = pipeline.Normalizer("imagenet")
  seen = []
  for p in range(2):
    batches = list(pipeline.eval_batches(source, _data_cfg(), global_batch_size=4, normalizer=normalizer,
                                         process_index=p, process_count=2))
    assert len(batches) == 3   # ceil(11 / 4) global batches, each process holding its half
    for batch in batches:
      assert batch["image"].shape == (2, 16, 16, 3)
      seen.extend(batch["index"][batch["mask"] > 0].tolist())
      assert np.all(batch["mask"][batch["index"] >= 11] == 0)
  assert sorted(seen) == list(range(11))


def test_mean_image_normalisation_centres_the_training_images(records):
  source = pipeline.LoadedSource(records, 24, cache="memory")
  mean = pipeline.mean_image(source, _data_cfg())
  assert mean.shape == (16, 16, 3)
  normalizer = pipeline.Normalizer("mean_image", mean, 1 / 255)
  centred = np.stack([normalizer(pipeline.augment.center_crop(source[i]["image"], 16).astype(np.float32))
                      for i in range(len(source))])
  np.testing.assert_allclose(centred.mean(axis=0), 0, atol=1e-5)
  with pytest.raises(ValueError, match="config.data.normalize='bogus'"):
    pipeline.Normalizer("bogus")


def test_alignment_uses_the_records_landmarks():
  from age_jax.faces import canonical_template
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "PNG")
  # Landmarks already on the 40 px canonical template: alignment to a 40 px output is the identity.
  record = {"image": buf.getvalue(), "age": 3.0, "landmarks": canonical_template(40), "file_name": "a.png"}
  aligned = pipeline.LoadedSource([record], 40, align_faces=True)[0]["image"]
  np.testing.assert_allclose(aligned.astype(int), image.astype(int), atol=1)
  with pytest.raises(ValueError, match="'b.png' has no landmarks"):
    pipeline.LoadedSource([{"image": buf.getvalue(), "file_name": "b.png"}], 40, align_faces=True)[0]


def test_worker_processes_deliver_the_same_batches_as_threads(records):
  source = pipeline.LoadedSource(records, 24, cache="memory")
  make = lambda workers: pipeline.train_batches(source, {}, _data_cfg(num_workers=workers), local_batch_size=4,
                                                seed=3)
  threaded, multiprocess = _take(make(0), 3), _take(make(2), 3)
  for a, b in zip(threaded, multiprocess):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_decoded_file_is_made_once_beside_the_build_and_never_left_half_written(tmp_path, monkeypatch):
  folder, data_dir = str(tmp_path / "UTKFace"), str(tmp_path / "tfds")
  make_utkface_folder(folder, n=24, quirks=False, size=20)
  datasets.prepare("utkface", folder, data_dir)
  train = datasets.load_split("utkface", data_dir, "train")
  path = decoded.path_for(train, "24px")
  real_decode, calls = pipeline.decode_image, []

  def crashing(*args):
    calls.append(1)
    if len(calls) == 5:
      raise KeyboardInterrupt("simulated stop")
    return real_decode(*args)
  monkeypatch.setattr(pipeline, "decode_image", crashing)
  with pytest.raises(KeyboardInterrupt):
    pipeline.LoadedSource(train, 24, num_threads=1)
  assert os.listdir(os.path.dirname(path)) == []  # neither a final nor a temporary file is left

  monkeypatch.setattr(pipeline, "decode_image", real_decode)
  source = pipeline.LoadedSource(train, 24)
  assert os.path.dirname(os.path.dirname(path)) == os.path.dirname(train.labels_dir)  # inside the build
  assert isinstance(source.images, decoded.RowFile) and source.images.shape == (len(train), 24, 24, 3)
  every = np.arange(len(train))
  decoded_every = pipeline.LoadedSource(train, 24, cache="none").read_batch(every)["image"]
  np.testing.assert_array_equal(source.read_batch(every)["image"], decoded_every)
  np.testing.assert_array_equal(source.read_batch(every[::-3])["image"], decoded_every[::-3])
  np.testing.assert_array_equal(source[3]["image"], decoded_every[3])
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(source.images))[[-1, 0]], decoded_every[[-1, 0]])
  direct = decoded.RowFile(source.images.path, direct=True)   # O_DIRECT: aligned blocks around each row
  np.testing.assert_array_equal(direct[every[::-1]], decoded_every[::-1])   # the last row ends mid-block
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(direct))[2], decoded_every[2])
  try:
    os.close(os.open(direct.path, os.O_RDONLY | os.O_DIRECT))
    assert direct.direct   # read without the page cache where the filesystem allows it
  except OSError:
    assert not direct.direct
  with pytest.raises(IndexError, match=rf"row {len(train)} of .*24px"):
    source.images[[0, len(train)]]

  monkeypatch.setattr(pipeline, "decode_image", lambda *a: pytest.fail("decoded again"))
  in_ram = pipeline.LoadedSource(train, 24, cache="memory")  # the same file, read into RAM
  assert isinstance(in_ram.images, np.ndarray)
  np.testing.assert_array_equal(in_ram.images, decoded_every)
  fold = datasets.RecordSource(train.source, train.split, train.labels_dir, indices=[5, 2])  # a virtual split
  np.testing.assert_array_equal(pipeline.LoadedSource(fold, 24).read_batch([1, 0])["image"],
                                source.read_batch([2, 5])["image"])
  assert decoded.path_for(train, "32px") != path  # another load size, another file
