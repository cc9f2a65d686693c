"""The server under hostile load, with a stand-in predictor (no model: these are about the server):
the upload cap holds while the body streams in and nothing touches the disk; inference runs off
the event loop, so /api/health answers while a slow photo is processed; beyond capacity -> 503
with Retry-After."""
import asyncio
import io
import tempfile
import threading
import time
import types

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from age_jax.inference import webapp  # noqa: E402

MB = 1 << 20
BOUNDARY = "h27aboundary"


class _Face:
  def as_dict(self):
    return {"age": 30.0, "low": 25.0, "high": 35.0, "score": 1.0}


class SlowPredictor:
  """crop_ages blocks its thread for `seconds` (as a 50 MP photo's detection would) and records when."""

  def __init__(self, seconds=0.0):
    self.seconds, self.started, self.ended = seconds, threading.Event(), []
    self.cfg = types.SimpleNamespace(model=types.SimpleNamespace(name="fake"),
                                     formulation=types.SimpleNamespace(name="fake"))
    self.calibration = None

  def crop_ages(self, images, coverage=None):
    self.started.set()
    time.sleep(self.seconds)
    self.ended.append(time.perf_counter())
    return [_Face() for _ in images]


def _client(app):
  return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, "PNG")
  return buffer.getvalue()


def _multipart_head(name="file"):
  return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x.png\"\r\n"
          f"Content-Type: image/png\r\n\r\n").encode()


@pytest.fixture
def no_temp_files(monkeypatch):
  """Fails any attempt to create a temp file (starlette's spooled uploads roll over through these)."""
  calls = []
  def refuse(name):
    def make(*args, **kwargs):
      calls.append(name)
      raise AssertionError(f"tempfile.{name} called: the upload went to disk")
    return make
  for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
    monkeypatch.setattr(tempfile, name, refuse(name))
  return calls


def test_a_chunked_100mb_upload_is_refused_before_it_is_read_whole(no_temp_files):
  app = webapp.create_app(SlowPredictor(), faces="crops", max_upload_bytes=2 * MB)
  sent = []

  async def body():  # no Content-Length: httpx sends an async generator chunked
    yield _multipart_head()
    for _ in range(100):
      sent.append(MB)
      yield b"\0" * MB

  async def go():
    async with _client(app) as client:
      return await client.post("/api/predict", content=body(),
                               headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
  response = asyncio.run(go())
  assert response.status_code == 413 and "over 2097152 bytes" in response.json()["detail"]
  assert sum(sent) <= 4 * MB  # stopped within a chunk or two of the 2 MB cap, not after 100 MB
  assert no_temp_files == []


def test_an_upload_under_the_cap_stays_in_memory(no_temp_files):
  # 2.3 MB of PNG: over starlette's 1 MB spool threshold, under the 3 MB cap.
  noisy = np.random.default_rng(0).integers(0, 256, (900, 850, 3), np.uint8)
  data = _png(noisy)
  assert 2 * MB < len(data) < 3 * MB
  app = webapp.create_app(SlowPredictor(), faces="crops", max_upload_bytes=3 * MB)

  async def go():
    async with _client(app) as client:
      return await client.post("/api/predict", files={"file": ("n.png", data, "image/png")})
  response = asyncio.run(go())
  assert response.status_code == 200, response.text
  assert response.json()["width"] == 850 and response.json()["faces"][0]["age"] == 30.0
  assert no_temp_files == []


def test_malformed_bodies_get_a_400_with_the_reason():
  app = webapp.create_app(SlowPredictor(), faces="crops")

  async def go():
    async with _client(app) as client:
      plain = await client.post("/api/predict", content=b"raw bytes", headers={"Content-Type": "image/png"})
      broken = await client.post("/api/predict", content=b"--other\r\ngarbage",
                                 headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
      return plain, broken
  plain, broken = asyncio.run(go())
  assert plain.status_code == 400 and "multipart/form-data" in plain.json()["detail"]
  assert broken.status_code == 400


def test_health_answers_in_under_100ms_while_a_slow_inference_runs():
  predictor = SlowPredictor(seconds=1.5)
  app = webapp.create_app(predictor, faces="crops")
  photo = _png(np.zeros((32, 32, 3), np.uint8))

  async def go():
    async with _client(app) as client:
      slow = asyncio.ensure_future(client.post("/api/predict", files={"file": ("f.png", photo)}))
      while not predictor.started.is_set():
        await asyncio.sleep(0.01)
      start = time.perf_counter()
      health = await client.get("/api/health")
      answered = time.perf_counter()
      return health, answered - start, answered, await slow
  health, latency, answered, slow = asyncio.run(go())
  assert health.status_code == 200 and slow.status_code == 200
  assert answered < predictor.ended[0]  # answered while the inference was still running
  assert latency < 0.1


def test_beyond_capacity_requests_get_503_with_retry_after_and_never_queue():
  predictor = SlowPredictor(seconds=1.0)
  app = webapp.create_app(predictor, faces="crops", workers=1, waiting=1, retry_after_s=3)
  photo = _png(np.zeros((32, 32, 3), np.uint8))

  async def go():
    async with _client(app) as client:
      post = lambda: asyncio.ensure_future(client.post("/api/predict", files={"file": ("f.png", photo)}))
      first, second = post(), post()   # one running, one waiting: the capacity
      while not predictor.started.is_set():
        await asyncio.sleep(0.01)
      await asyncio.sleep(0.05)
      start = time.perf_counter()
      third = await client.post("/api/predict", files={"file": ("f.png", photo)})
      refused_in = time.perf_counter() - start
      return [await first, await second], third, refused_in
  served, third, refused_in = asyncio.run(go())
  assert [r.status_code for r in served] == [200, 200]
  assert third.status_code == 503 and third.headers["Retry-After"] == "3" and "busy" in third.json()["detail"]
  assert refused_in < 0.5   # refused at once, not after waiting for a slot
  assert len(predictor.ended) == 2


def test_the_gate_counts_admissions():
  gate = webapp.InferenceGate(workers=2, waiting=1)
  assert [gate.enter() for _ in range(4)] == [True, True, True, False]
  gate.leave()
  assert gate.enter() and not gate.enter()
  with pytest.raises(ValueError, match="workers >= 1"):
    webapp.InferenceGate(workers=0)
