"""The web page's JSON API through FastAPI's TestClient: ages equal evaluation's, bad uploads get
a 4xx with the reason, and nothing is written outside the temp dir."""
import io
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from age_jax.inference import webapp  # noqa: E402
from age_jax.train.evaluator import Evaluator  # noqa: E402
from age_jax.inference.predict import Predictor  # noqa: E402
from tests.serving.conftest import face_records  # noqa: E402


@pytest.fixture(scope="module")
def predictor(trained_workdir):
  return Predictor(trained_workdir[0])


@pytest.fixture(scope="module")
def client(predictor):
  return TestClient(webapp.create_app(predictor, faces="crops", max_upload_bytes=200_000, max_pixels=4_000_000))


def _png(size, mode="RGB"):
  buffer = io.BytesIO()
  Image.new(mode, size).save(buffer, "PNG")
  return buffer.getvalue()


def test_page_and_health(client):
  page = client.get("/")
  assert page.status_code == 200 and 'id="file"' in page.text and "/api/predict" in page.text
  health = client.get("/api/health").json()
  assert health["formulation"] == "dldl_v2" and health["interval"]["method"] == "normalized"
  assert health["faces"] == "crops"


def test_a_real_face_gets_evaluations_age_and_an_interval(client, predictor, trained_workdir):
  _, folder, _ = trained_workdir
  records = face_records(folder, 3)
  expected = Evaluator(predictor.exp, predictor.cfg, predictor.normalizer, records=records).predict(predictor.state)
  for record, age in zip(records, expected["pred_age"]):
    response = client.post("/api/predict", files={"file": (record["file_name"], record["image"], "image/jpeg")})
    assert response.status_code == 200, response.text
    result = response.json()
    (face,) = result["faces"]
    assert face["box"] == [0, 0, result["width"], result["height"]]
    assert abs(face["age"] - age) < 0.006  # rounded to 0.01 years
    assert face["low"] <= face["age"] <= face["high"]
  wide = client.post("/api/predict?coverage=0.95", files={"file": ("f.jpg", records[0]["image"])}).json()
  narrow = client.post("/api/predict?coverage=0.8", files={"file": ("f.jpg", records[0]["image"])}).json()
  width = lambda r: r["faces"][0]["high"] - r["faces"][0]["low"]
  assert width(wide) > width(narrow)


@pytest.mark.parametrize("files, params, status, reason", [
    ({"file": ("empty.jpg", b"", "image/jpeg")}, {}, 400, "empty"),
    ({"file": ("notes.jpg", b"these are not pixels" * 10, "image/jpeg")}, {}, 415, "not a readable image"),
    ({"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}, {}, 413, "bytes"),
    ({"file": ("wide.png", _png((2500, 2000), "1"), "image/png")}, {}, 413, "pixels"),
    ({"other": ("face.png", _png((8, 8)), "image/png")}, {}, 400, "'file'"),
    ({"file": ("face.png", _png((8, 8)), "image/png")}, {"coverage": "90"}, 422, "coverage"),
    ({"file": ("face.png", _png((8, 8)), "image/png")}, {"faces": "all"}, 422, "faces"),
])
def test_bad_uploads_get_a_4xx_with_the_reason(client, files, params, status, reason):
  response = client.post("/api/predict", files=files, params=params)
  assert response.status_code == status and reason in response.json()["detail"]
  assert client.get("/api/health").status_code == 200  # still serving


def test_uploads_are_not_written_outside_the_temp_dir(client, trained_workdir, tmp_path, monkeypatch):
  workdir = trained_workdir[0]
  monkeypatch.chdir(tmp_path)
  before = sorted(os.walk(workdir))
  noisy = np.random.default_rng(0).integers(0, 255, (200, 250, 3), np.uint8)  # ~150 kB as PNG
  buffer = io.BytesIO()
  Image.fromarray(noisy).save(buffer, "PNG")
  assert client.post("/api/predict", files={"file": ("n.png", buffer.getvalue())}).status_code == 200
  assert os.listdir(tmp_path) == [] and sorted(os.walk(workdir)) == before
