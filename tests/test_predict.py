"""launch.predict's library: every face of each photo with its age, names not codes, and bad
files reported without stopping the rest (a stand-in detector on drawn faces; a tiny model)."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from age_jax.inference import predict
from age_jax.train import loop
from tests import fake_faces
from tests.data.fake_datasets import corrupt_jpeg_bytes, make_utkface_folder
from tests.data.test_real_utkface import UTKFACE
from tests.tiny import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  folder = str(root / "UTKFace")
  make_utkface_folder(folder, n=32, quirks=False, size=24)
  cfg = tiny_config(**{"data.manual_dir": folder, "data.data_dir": str(root / "tfds"), "data.cache": "memory",
                       "train.num_steps": 2, "multitask.kind": "parallel"})
  loop.train(cfg, str(root / "run"))
  return str(root / "run")


def test_photos_in_faces_and_ages_out_with_bad_files_reported(workdir, tmp_path):
  from age_jax.faces import align_to_canonical
  detector = fake_faces.FakeDetector()
  predictor = predict.Predictor(workdir, detector=detector)
  two = [fake_faces.face_points((30, 40), 18, 15), fake_faces.face_points((80, 70), 24, -20)]
  photos = {"a_two.png": detector.photo(120, two), "b_none.png": np.full((120, 120, 3), 90, np.uint8)}
  folder = tmp_path / "photos"
  folder.mkdir()
  for name, image in photos.items():
    Image.fromarray(image).save(folder / name)
  (folder / "c_broken.jpg").write_bytes(corrupt_jpeg_bytes())
  (folder / "d_folder.jpg").mkdir()
  (folder / "notes.txt").write_text("not an image")
  paths = predict.image_paths(str(folder))
  assert [os.path.basename(p) for p in paths] == ["a_two.png", "b_none.png", "c_broken.jpg", "d_folder.jpg"]

  results = predict.predict_files(predictor, paths, draw_dir=str(tmp_path / "drawn"))
  assert [(r["file"], r["status"]) for r in results] == [
      ("a_two.png", "ok"), ("b_none.png", "no_face"), ("c_broken.jpg", "error"), ("d_folder.jpg", "error")]
  assert "cannot read image" in results[2]["error"] and "a directory" in results[3]["error"]
  faces = results[0]["faces"]
  assert len(faces) == 2
  # Each face's age is the model's age of that face aligned onto the canonical crop.
  for face, points in zip(faces, two):
    np.testing.assert_allclose(face.landmarks, points, atol=1e-4)
    crop = align_to_canonical(photos["a_two.png"], points, predictor.crop_size)
    assert face.age == pytest.approx(predictor.crop_ages([crop])[0].age, abs=1e-4)
    assert face.gender in ("male", "female") and face.race in ("White", "Black", "Asian", "Indian", "Others")
  assert sorted(os.listdir(tmp_path / "drawn")) == ["a_two.jpg", "b_none.jpg"]

  out_csv, out_json = str(tmp_path / "ages.csv"), str(tmp_path / "ages.json")
  predict.write_results(results, out_csv, out_json)
  rows = list(csv.DictReader(open(out_csv)))
  assert [(r["file"], r["status"], r["face"]) for r in rows] == [
      ("a_two.png", "ok", "0"), ("a_two.png", "ok", "1"), ("b_none.png", "no_face", ""),
      ("c_broken.jpg", "error", ""), ("d_folder.jpg", "error", "")]
  assert float(rows[1]["age"]) == pytest.approx(faces[1].age, abs=0.01)
  assert float(rows[1]["left_eye_x"]) == pytest.approx(two[1][0][0], abs=0.1)
  listed = json.load(open(out_json))
  assert [len(r["faces"]) for r in listed] == [2, 0, 0, 0] and listed[0]["faces"][0]["gender"] in ("male", "female")

  # crops mode: each readable image is one face, resized as it is.
  crops = predict.predict_files(predictor, paths, faces="crops")
  assert [r["status"] for r in crops] == ["ok", "ok", "error", "error"]
  assert crops[1]["faces"][0].age == pytest.approx(predictor.crop_ages([photos["b_none.png"]])[0].age, abs=1e-4)


def test_evaluate_on_another_dataset_and_a_folder_through_the_canonical_crop(workdir, tmp_path, monkeypatch):
  from age_jax import evaluate
  from age_jax.data.builders import face_crops
  from tests.data import fake_datasets as fd
  fgnet = str(tmp_path / "fg")
  fd.make_fgnet_folder(fgnet, subjects=3, images_per_subject=2)
  result = evaluate.evaluate_workdir(workdir, dataset="fgnet", manual_dir=fgnet, out_dir=str(tmp_path / "r1"))
  assert result["source"] == "fgnet:full" and result["num_examples"] == 6
  assert result["faces"] == {"detected_images": 0, "several_faces": 0, "no_face": 0}  # its own landmarks
  assert json.load(open(tmp_path / "r1" / "report.json"))["faces"]["no_face"] == 0

  detector = fake_faces.FakeDetector()
  monkeypatch.setattr(face_crops, "default_detector", lambda: detector)
  folder = str(tmp_path / "faces")
  fake_faces.faces_folder(folder, detector)
  result = evaluate.evaluate_workdir(workdir, folder=folder, out_dir=str(tmp_path / "r2"))
  assert result["num_examples"] == 2 and result["faces"]["no_face_files"] == ["none.png"]
  assert evaluate.evaluate_workdir(workdir, folder=folder, faces="crops", out_dir=str(tmp_path / "r3"))["num_examples"] == 3


@pytest.mark.skipif(not os.path.isdir(UTKFACE), reason="no ../shared UTKFace copy")
def test_a_real_face_pasted_into_a_photo_is_found_with_the_real_detector(workdir, tmp_path):
  from age_jax.data import paste
  from age_jax.faces import read_rgb
  name = sorted(os.listdir(UTKFACE))[500]
  photo, where = paste.paste(read_rgb(os.path.join(UTKFACE, name)), np.random.default_rng(0), 320, scale=(0.5, 0.5))
  Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
  predictor = predict.Predictor(workdir)
  [result] = predict.predict_files(predictor, [str(tmp_path / "photo.jpg")])
  assert result["status"] == "ok" and len(result["faces"]) == 1
  x0, y0, x1, y1 = result["faces"][0].box
  assert x0 < where["centre"][0] < x1 and y0 < where["centre"][1] < y1
  assert 0.9 < result["faces"][0].score <= 1.0


def test_a_calibration_on_detected_faces_is_kept_apart_and_used_for_photos(workdir, tmp_path):
  # The path users take: photo -> detector -> canonical crop. Its calibration is stored beside the
  # chips' one (same step), detect mode uses it, crops mode keeps the chips' one, and each face
  # says what its interval's coverage was measured on.
  import shutil
  from age_jax import conformal
  from age_jax.inference import photo_calibration
  from age_jax.faces import align_to_canonical
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  detector = fake_faces.FakeDetector()
  rng = np.random.default_rng(0)
  points = [fake_faces.face_points(rng.uniform(40, 80, 2), rng.uniform(16, 26), rng.uniform(-20, 20)) for _ in range(24)]
  photos = [detector.photo(120, [p]) for p in points]
  true = rng.uniform(5, 70, len(photos))
  predictor = predict.Predictor(copy, detector=detector, intervals=False)
  cal, p = photo_calibration.calibrate_on_path(predictor, photos, true, "detected", "fake:photos")
  assert p["found"].all() and cal.faces == "detected" and cal.step == predictor.step and cal.method == "mondrian"
  by_hand = [predictor.crop_ages([align_to_canonical(im, pt, predictor.crop_size)])[0].age for im, pt in zip(photos, points)]
  np.testing.assert_allclose(np.sort(cal.scores), np.sort(np.abs(np.asarray(by_hand) - true)), atol=1e-4)
  assert sorted(os.listdir(os.path.join(copy, conformal.CALIBRATION_DIR))) == [
      f"step_{predictor.step}_plain_chips.json", f"step_{predictor.step}_plain_detected.json"]
  with_intervals = predict.Predictor(copy, detector=detector)
  [face] = with_intervals.photo(photos[0])
  assert face.calibrated_on == "detected:fake:photos" and face.low is not None
  assert with_intervals.crop_ages([photos[0]])[0].calibrated_on.startswith("chips:")
  with pytest.raises(ValueError, match="blur:RADIUS"):
    photo_calibration.parse_shift("sharpen:3")
