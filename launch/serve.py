"""A local web page and JSON API for a trained model:
  python -m launch.serve --workdir=DIR [--port=8000] [--coverage=0.9]
then open http://127.0.0.1:8000 (needs the `serve` extra: pip install -e '.[serve]').
"""
from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (127.0.0.1: this machine only).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_COVERAGE = flags.DEFINE_float("coverage", 0.9, "Default coverage of the age intervals.")
_FACES = flags.DEFINE_enum("faces", "detect", ["detect", "crops"],
                           "Default for uploads: detect every face, or take the upload as one face crop.")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "When the checkpoint's weights have no calibration (none, or "
                                "only other steps'), calibrate them on the validation split first; without "
                                "it a calibration of other weights is refused.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Photos processed at once (each on a worker thread, off the event loop).")
_WAITING = flags.DEFINE_integer("waiting", 4, "Photos admitted to wait for a worker; beyond that: 503 with Retry-After.")
_MAX_UPLOAD_MB = flags.DEFINE_float("max_upload_mb", 20.0, "Largest upload accepted (MiB), enforced as it streams in.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    import uvicorn
  except ImportError as e:
    raise SystemExit(f"launch.serve needs the 'serve' extra (pip install -e '.[serve]'): {e}")
  common.setup_jax()
  from age_jax.inference import predict, webapp
  predictor = predict.Predictor(_WORKDIR.value, _STEP.value, coverage=_COVERAGE.value, calibrate=_CALIBRATE.value)
  print(f"serving {_WORKDIR.value} on http://{_HOST.value}:{_PORT.value}", flush=True)
  application = webapp.create_app(predictor, faces=_FACES.value, coverage=_COVERAGE.value,
                                  max_upload_bytes=int(_MAX_UPLOAD_MB.value * (1 << 20)),
                                  workers=_WORKERS.value, waiting=_WAITING.value)
  uvicorn.run(application, host=_HOST.value, port=_PORT.value, log_level="warning")


if __name__ == "__main__":
  app.run(main)
