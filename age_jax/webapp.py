"""A local web page and JSON API for a trained model (FastAPI; the optional `serve` extra).

  GET  /              the page: drop or choose a photo, see every face boxed with its age and interval
  POST /api/predict   multipart field 'file' (+ ?coverage=0.9&faces=detect|crops) -> {'width', 'height',
                      'faces': [{'box': [x0, y0, x1, y1] in pixels, 'score', 'landmarks', 'age', 'low',
                      'high' (+ 'gender', 'race')}], 'coverage', 'mode'}; faces=detect finds every face
                      (age_jax.faces), faces=crops takes the upload as one face crop
  GET  /api/health    {'status': 'ok', 'model', 'formulation', 'interval'}

Uploads stay in memory (at most max_upload_bytes; starlette spools larger multipart bodies to
the system temp dir only) and are never written anywhere else. Bad uploads get a 4xx with the
reason: 400 empty or missing, 413 too large (bytes or pixels), 415 not a decodable image,
422 bad coverage.
"""
import io
import pathlib

import numpy as np
from PIL import Image, ImageOps

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
PAGE = pathlib.Path(__file__).with_name("webapp.html")


class BadUpload(ValueError):
  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


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
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS):
  """predictor: an age_jax.predict.Predictor; faces: the default mode (FACE_MODES)."""
  import fastapi
  from fastapi import responses

  app = fastapi.FastAPI(title="age_jax", docs_url="/api/docs")
  page = PAGE.read_text()
  cfg = predictor.cfg
  calibration = predictor.calibration

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

  @app.post("/api/predict")
  async def predict(request: fastapi.Request, file: fastapi.UploadFile | None = None,
                    coverage: float = coverage, faces: str = faces):
    if not 0 < coverage < 1:
      raise BadUpload(422, f"coverage={coverage}; expected a fraction in (0, 1), e.g. 0.9")
    if faces not in FACE_MODES:
      raise BadUpload(422, f"faces={faces!r}; expected one of {list(FACE_MODES)}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_upload_bytes + 65536:
      raise BadUpload(413, f"the upload is {int(length)} bytes; at most {max_upload_bytes} are accepted")
    if file is None:
      raise BadUpload(400, "no file: send the photo as the multipart form field 'file'")
    data = await file.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
      raise BadUpload(413, f"the upload is over {max_upload_bytes} bytes")
    image = decode_upload(data, max_pixels)
    return {"width": int(image.shape[1]), "height": int(image.shape[0]), "coverage": coverage,
            "mode": faces, "faces": face_ages(predictor, image, faces, coverage)}

  return app
