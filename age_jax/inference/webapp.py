"""A local web page and JSON API for a trained model (FastAPI; the optional `serve` extra).

  GET  /              the page: drop or choose a photo, see every face boxed with its age and interval
  POST /api/predict   multipart field 'file' (+ ?coverage=0.9&faces=detect|crops) -> {'width', 'height',
                      'faces': [{'box': [x0, y0, x1, y1] in pixels, 'score', 'landmarks', 'age', 'low',
                      'high' (+ 'gender', 'race')}], 'coverage', 'mode'}; faces=detect finds every face
                      (age_jax.faces), faces=crops takes the upload as one face crop
  GET  /api/health    {'status': 'ok', 'model', 'formulation', 'interval'}

Uploads stay in memory and are never written anywhere: the body is counted as it streams in
(chunked uploads included) and refused past max_upload_bytes (uploads.py). Bad uploads get a 4xx
with the reason: 400 empty, missing or not multipart, 413 too large (bytes or pixels), 415 not a
decodable image, 422 bad coverage.

Decoding and inference run on a worker thread pool, off the event loop, so /api/health and the
page answer while a large photo is processed. At most `workers` photos are processed at once and
`waiting` more wait; a request beyond that gets 503 with Retry-After at once (InferenceGate), so
memory stays bounded whatever the load.
"""
import asyncio
import concurrent.futures
import io
import pathlib
import threading

import numpy as np
from PIL import Image, ImageOps

from age_jax.inference import uploads

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
PAGE = pathlib.Path(__file__).with_name("webapp.html")


BadUpload = uploads.UploadError


class InferenceGate:
  """Bounded concurrency: at most `workers` jobs run on a thread pool and `waiting` more queue for
  it; `enter` refuses beyond that (the caller answers 503), so the queue never grows unbounded."""

  def __init__(self, workers: int = 1, waiting: int = 4):
    if workers < 1 or waiting < 0:
      raise ValueError(f"need workers >= 1 and waiting >= 0, got {workers} and {waiting}")
    self.capacity = workers + waiting
    self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="age_jax-inference")
    self._admitted = 0
    self._lock = threading.Lock()

  def enter(self) -> bool:
    with self._lock:
      if self._admitted >= self.capacity:
        return False
      self._admitted += 1
      return True

  def leave(self):
    with self._lock:
      self._admitted -= 1

  async def run(self, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Upload bytes -> uint8 RGB HxWx3, upright (EXIF orientation applied); BadUpload otherwise."""
  if not data:
    raise BadUpload(400, "the upload is empty")
  try:
    with Image.open(io.BytesIO(data)) as image:
      w, h = image.size
      if w * h > max_pixels:
        raise BadUpload(413, f"the image is {w}x{h} pixels; at most {max_pixels} pixels are accepted")
      return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.uint8)
  except BadUpload:
    raise
  except Image.DecompressionBombError as e:
    raise BadUpload(413, f"the image is too large: {e}") from e
  except Exception as e:  # PIL raises several types for files that are not images
    raise BadUpload(415, f"not a readable image (JPEG, PNG, WebP, BMP, ...): {e}") from e


FACE_MODES = ("detect", "crops")


def face_ages(predictor, image: np.ndarray, mode: str, coverage: float) -> list[dict]:
  """Every face of the image ('detect') or the image as one crop ('crops'), as JSON dicts."""
  if mode == "crops":
    h, w = image.shape[:2]
    return [{"box": [0, 0, w, h], **face.as_dict()} for face in predictor.crop_ages([image], coverage)]
  return [face.as_dict() for face in predictor.photo(image, coverage)]


def create_app(predictor, faces: str = "detect", coverage: float = 0.9,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               workers: int = 1, waiting: int = 4, retry_after_s: int = 2):
  """predictor: an age_jax.inference.predict.Predictor; faces: the default mode (FACE_MODES); workers:
  photos processed at once, waiting: more admitted to wait, retry_after_s: the 503's Retry-After."""
  import fastapi
  from fastapi import responses

  app = fastapi.FastAPI(title="age_jax", docs_url="/api/docs")
  page = PAGE.read_text()
  cfg = predictor.cfg
  calibration = predictor.calibration
  gate = InferenceGate(workers, waiting)

  @app.exception_handler(BadUpload)
  def bad_upload(request, error: BadUpload):
    return responses.JSONResponse({"detail": str(error)}, status_code=error.status)

  @app.get("/", response_class=responses.HTMLResponse)
  def index():
    return page

  @app.get("/api/health")
  def health():
    return {"status": "ok", "model": cfg.model.name, "formulation": cfg.formulation.name,
            "faces": faces,
            "interval": None if calibration is None else {"method": calibration.method,
                                                          "default_coverage": coverage,
                                                          "calibration_step": calibration.step,
                                                          "calibrated_on": f"{calibration.faces}:{calibration.source}"}}

  def process(data: bytes, mode: str, coverage: float) -> dict:  # on a worker thread
    image = decode_upload(data, max_pixels)
    return {"width": int(image.shape[1]), "height": int(image.shape[0]), "coverage": coverage,
            "mode": mode, "faces": face_ages(predictor, image, mode, coverage)}

  upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
      "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}

  @app.post("/api/predict", openapi_extra=upload_schema)
  async def predict(request: fastapi.Request, coverage: float = coverage, faces: str = faces):
    if not 0 < coverage < 1:
      raise BadUpload(422, f"coverage={coverage}; expected a fraction in (0, 1), e.g. 0.9")
    if faces not in FACE_MODES:
      raise BadUpload(422, f"faces={faces!r}; expected one of {list(FACE_MODES)}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_upload_bytes + uploads.MULTIPART_OVERHEAD:
      raise BadUpload(413, f"the upload is {int(length)} bytes; at most {max_upload_bytes} are accepted")
    if not gate.enter():  # full: refuse before reading the body, so load never queues up memory
      return responses.JSONResponse(
          {"detail": f"the server is busy ({gate.capacity} photos in progress); retry in {retry_after_s} s"},
          status_code=503, headers={"Retry-After": str(retry_after_s)})
    try:
      form = await uploads.read_form(request.stream(), request.headers.get("content-type", ""), max_upload_bytes)
      if "file" not in form:
        raise BadUpload(400, "no file: send the photo as the multipart form field 'file'")
      if len(form["file"]) > max_upload_bytes:
        raise BadUpload(413, f"the upload is over {max_upload_bytes} bytes")
      return await gate.run(process, form["file"], faces, coverage)
    finally:
      gate.leave()

  return app
