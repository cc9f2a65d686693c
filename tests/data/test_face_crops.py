"""Canonical-crop builds: one face per image by the stated rule, no-face images dropped and
counted, the build key, datasets that ship landmarks, and a labelled folder for evaluation."""
import io

import numpy as np
import pytest
from PIL import Image

from age_jax.data import datasets
from age_jax.data.builders import face_crops
from age_jax.faces import choose_face, read_rgb
from tests import fake_faces
from tests.data import fake_datasets as fd


class _Face:
  def __init__(self, box):
    self.box = np.asarray(box, np.float64)


def test_choose_face_prefers_the_largest_most_central():
  # 100x100 image, centre (50, 50). A: 40x40 centred -> 1600. B: 50x50 centred at (25, 25) ->
  # 2500 - 2 * (25^2 + 25^2) = 0. C: 20x20 centred -> 400.
  faces = [_Face([30, 30, 70, 70]), _Face([0, 0, 50, 50]), _Face([40, 40, 60, 60])]
  assert choose_face(faces, 100, 100) == 0
  assert choose_face(faces[1:], 100, 100) == 1   # C 400 beats B 0
  assert choose_face([faces[1]], 100, 100) == 0
  assert choose_face([], 100, 100) is None


@pytest.fixture
def detector(monkeypatch):
  fake = fake_faces.FakeDetector()
  monkeypatch.setattr(face_crops, "default_detector", lambda: fake)
  return fake


def test_canonical_build_aligns_the_chosen_face_and_counts_the_rest(tmp_path, detector, capsys):
  from age_jax.faces import align_to_canonical
  path, data_dir = str(tmp_path / "f"), str(tmp_path / "d")
  photos, chosen = fake_faces.faces_folder(path, detector)
  report = datasets.prepare("labelled_folder", path, data_dir, canonical_crop=True, crop_size=64)
  assert report["config"] == "canonical_crop-true_crop_size-64"
  assert report["kept"] == 2 and report["dropped"] == {"no_face": 1} and report["files"]["no_face"] == ["none.png"]
  assert report["several_faces"] == 1 and report["files"]["several_faces"] == ["two.png"]
  assert report["detected_images"] == 3 and "faces detected in 3/3 images" in capsys.readouterr().err
  records = [r for s, n in report["splits"].items() if n for r in datasets.load_split("labelled_folder", data_dir, s,
                                                                      canonical_crop=True, crop_size=64)]
  assert sorted(r["file_name"] for r in records) == ["one.png", "two.png"]
  for r in records:
    np.testing.assert_allclose(r["landmarks"], chosen[r["file_name"]], atol=1e-4)
    expected = fake_faces.face_at(chosen[r["file_name"]])
    np.testing.assert_allclose(r["face_box"], expected.box, atol=1e-4)
    assert r["face_score"] == pytest.approx(0.9 if r["file_name"] == "two.png" else 0.99)
    crop = np.asarray(Image.open(io.BytesIO(r["image"])))
    want = align_to_canonical(photos[r["file_name"]], chosen[r["file_name"]], 64)
    assert crop.shape == (64, 64, 3) and np.abs(crop.astype(int) - want).mean() < 2  # JPEG q95
  # The option is part of the build key: a plain build of the same folder is another one, undetected.
  seen = detector.images_seen
  plain = datasets.prepare("labelled_folder", path, data_dir)
  assert plain["config"] == "default" and plain["kept"] == 3 and detector.images_seen == seen


def test_crop_size_needs_canonical_crop(tmp_path):
  with pytest.raises(ValueError, match="crop_size=128 .* needs canonical_crop=True"):
    datasets.builder("labelled_folder", str(tmp_path), crop_size=128)
  with pytest.raises(ValueError, match="crop_size=8 .* at least 16"):
    datasets.builder("labelled_folder", str(tmp_path), canonical_crop=True, crop_size=8)


def test_fgnet_canonical_crop_uses_its_own_landmarks(tmp_path, monkeypatch):
  def no_detector():
    raise AssertionError("a dataset that ships landmarks must not be run through the detector")
  monkeypatch.setattr(face_crops, "default_detector", no_detector)
  path = str(tmp_path / "fg")
  written = fd.make_fgnet_folder(path, subjects=2, images_per_subject=1)
  report = datasets.prepare("fgnet", path, str(tmp_path / "d"), canonical_crop=True, crop_size=32)
  assert report["kept"] == 2 and report["detected_images"] == 0
  for r in datasets.load_split("fgnet", str(tmp_path / "d"), "full", canonical_crop=True, crop_size=32):
    np.testing.assert_allclose(r["landmarks"], written[r["file_name"]]["landmarks"], atol=1e-3)
    assert r["face_score"] == -1 and list(r["face_box"]) == [-1] * 4
    assert np.asarray(Image.open(io.BytesIO(r["image"]))).shape == (32, 32, 3)


def test_folder_source_detects_and_leaves_out_images_without_a_face(tmp_path, detector):
  path = str(tmp_path / "f")
  fake_faces.faces_folder(path, detector)
  source = datasets.folder_source(path, crop_size=48)
  assert [e.file_name for e in source.examples] == ["one.png", "two.png"]
  assert source.face_counts == {"detected_images": 3, "several_faces": 1, "no_face": 1,
                                "no_face_files": ["none.png"]}
  assert np.asarray(Image.open(io.BytesIO(source[0]["image"]))).shape == (48, 48, 3)
  assert len(datasets.folder_source(path)) == 3   # as they are


def test_read_rgb_turns_photos_upright_by_their_exif_orientation(tmp_path):
  image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
  exif = image.getexif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
  image.save(tmp_path / "p.jpg", exif=exif)
  assert read_rgb(str(tmp_path / "p.jpg")).shape == (40, 20, 3)
  assert read_rgb((tmp_path / "p.jpg").read_bytes()).shape == (40, 20, 3)
