"""Shared fixtures: one detector (its compiled nets reused by every test) and a few real UTKFace chips."""
import os

import numpy as np
import pytest
from PIL import Image

UTKFACE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "..", "shared", "data", "utkface", "UTKFace")
# Spread over ages 1-100, both genders, four of the five race codes.
CHIPS = ("100_0_0_20170112213500903.jpg.chip.jpg", "23_1_0_20170103180414191.jpg.chip.jpg",
         "26_1_3_20170119192325721.jpg.chip.jpg", "40_0_1_20170113155337187.jpg.chip.jpg",
         "55_1_0_20170117155022829.jpg.chip.jpg", "8_1_2_20161219190656899.jpg.chip.jpg")


@pytest.fixture(scope="session")
def face_detector():
  from age_jax.faces import FaceDetector
  return FaceDetector()


@pytest.fixture(scope="session")
def utk_chips():
  if not os.path.isdir(UTKFACE):
    pytest.skip("no ../shared UTKFace copy")
  return [np.asarray(Image.open(os.path.join(UTKFACE, n)).convert("RGB")) for n in CHIPS]


@pytest.fixture(scope="session")
def chip_faces(face_detector, utk_chips):
  return face_detector.detect_many(utk_chips)
