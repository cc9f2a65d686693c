"""A bounded load check of the web server from loopback (issue 27):
  python -m launch.bench.load_check --workdir=DIR [--clients=8] [--photos=50] [--port=8765]
starts `launch.serve` on the workdir, then `clients` threads each send `photos` uploads mixing
small faces (UTKFace chips, or synthetic faces without the ../shared copy), 12 MP photos (a chip
pasted at ~8x into a 4000x3000 JPEG) and malformed files (random bytes, truncated JPEGs). A 503
is retried after its Retry-After (a refused photo is sent again, so each photo gets one answer).
A probe polls /api/health meanwhile. Prints p50/p95 latency per kind, photos/s, 503s, the
health probe's worst latency and the server's peak RSS (VmHWM), then stops the server.
"""
import concurrent.futures
import io
import logging
import os
import subprocess
import sys
import threading
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch.train.")
_CLIENTS = flags.DEFINE_integer("clients", 8, "Concurrent clients.")
_PHOTOS = flags.DEFINE_integer("photos", 50, "Photos per client.")
_LARGE_EVERY = flags.DEFINE_integer("large_every", 5, "Every n-th photo of a client is a 12 MP one (0: none).")
_MALFORMED_EVERY = flags.DEFINE_integer("malformed_every", 5, "Every n-th photo (offset by 1) is malformed.")
_PORT = flags.DEFINE_integer("port", 8765, "Port for the server (127.0.0.1).")
_WORKERS = flags.DEFINE_integer("workers", 1, "The server's --workers.")
_WAITING = flags.DEFINE_integer("waiting", 4, "The server's --waiting.")
_FACES_DIR = flags.DEFINE_string("faces_dir", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                                           "..", "shared", "data", "utkface", "UTKFace"),
                                 "Small faces come from here (synthetic without it).")
flags.mark_flag_as_required("workdir")


def _jpeg(array, quality=90) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def _photos(n_small=16, n_large=2):
  """{'small': [bytes], 'large': [bytes], 'malformed': [bytes]}."""
  import numpy as np
  from PIL import Image
  from age_jax.data import paste
  rng = np.random.default_rng(0)
  if os.path.isdir(_FACES_DIR.value):
    names = sorted(os.listdir(_FACES_DIR.value))[::997][:n_small]
    small = [open(os.path.join(_FACES_DIR.value, n), "rb").read() for n in names]
  else:
    small = [_jpeg(paste.background(rng, 200)) for _ in range(n_small)]
  large = []
  for k in range(n_large):
    chip = np.asarray(Image.open(io.BytesIO(small[k])).convert("RGB"))
    face = np.asarray(Image.fromarray(chip).resize((1600, 1600), Image.BICUBIC))
    photo = np.asarray(Image.fromarray(paste.background(rng, 1000)).resize((4000, 3000), Image.BILINEAR)).copy()
    photo[700:2300, 1200:2800] = face
    large.append(_jpeg(paste.sensor_noise(photo, rng, 4.0)))
  malformed = [bytes(rng.integers(0, 256, 5000, np.uint8)), small[0][: len(small[0]) // 2], b""]
  return {"small": small, "large": large, "malformed": malformed}


def _kind(i):
  if _LARGE_EVERY.value and i % _LARGE_EVERY.value == 0:
    return "large"
  if _MALFORMED_EVERY.value and i % _MALFORMED_EVERY.value == 1:
    return "malformed"
  return "small"


def _peak_rss_mb(pid):
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import httpx
  import numpy as np
  logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
  photos = _photos()
  print(f"[load] photos: {len(photos['small'])} small (~{np.mean([len(p) for p in photos['small']]) / 1e3:.0f} kB), "
        f"{len(photos['large'])} of 12 MP (~{np.mean([len(p) for p in photos['large']]) / 1e6:.1f} MB), "
        f"{len(photos['malformed'])} malformed", flush=True)
  url = f"http://127.0.0.1:{_PORT.value}"
  server = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--workdir={_WORKDIR.value}", f"--port={_PORT.value}",
                             f"--workers={_WORKERS.value}", f"--waiting={_WAITING.value}"])
  try:
    deadline = time.time() + 600
    while True:
      try:
        if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
          break
      except httpx.TransportError:
        pass
      if server.poll() is not None or time.time() > deadline:
        raise SystemExit(f"the server did not start (exit code {server.poll()})")
      time.sleep(0.5)
    # One warm-up of each kind: compilation is not load.
    for kind in ("small", "large"):
      httpx.post(f"{url}/api/predict", files={"file": ("w.jpg", photos[kind][0])}, timeout=600)
    print(f"[load] server up and warm; {_CLIENTS.value} clients x {_PHOTOS.value} photos", flush=True)
    results, stop, health = [], threading.Event(), []

    def probe():
      with httpx.Client(timeout=30) as client:
        while not stop.is_set():
          start = time.perf_counter()
          client.get(f"{url}/api/health")
          health.append(time.perf_counter() - start)
          time.sleep(0.2)

    def run_client(c):
      out = []
      with httpx.Client(timeout=600) as client:
        for i in range(_PHOTOS.value):
          kind = _kind(i)
          data = photos[kind][(c + i) % len(photos[kind])]
          start, refused = time.perf_counter(), 0
          while True:
            response = client.post(f"{url}/api/predict", files={"file": (f"{c}_{i}.jpg", data, "image/jpeg")})
            if response.status_code != 503:
              break
            refused += 1
            time.sleep(float(response.headers.get("Retry-After", "1")))
          out.append((kind, response.status_code, time.perf_counter() - start, refused))
      return out

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(_CLIENTS.value) as pool:
      for part in pool.map(run_client, range(_CLIENTS.value)):
        results.extend(part)
    wall = time.perf_counter() - start
    stop.set()
    prober.join()
    rss = _peak_rss_mb(server.pid)
  finally:
    server.terminate()
    server.wait(timeout=60)
  latency = np.array([r[2] for r in results])
  print(f"[load] {len(results)} photos in {wall:.1f} s: {len(results) / wall:.2f} photos/s; latency (incl. 503 "
        f"retries) p50 {np.percentile(latency, 50):.2f} s, p95 {np.percentile(latency, 95):.2f} s")
  for kind in ("small", "large", "malformed"):
    rows = [r for r in results if r[0] == kind]
    if rows:
      lat = np.array([r[2] for r in rows])
      statuses = {s: sum(r[1] == s for r in rows) for s in sorted({r[1] for r in rows})}
      print(f"[load]   {kind:9s} n={len(rows):3d} p50 {np.percentile(lat, 50):.2f} s p95 {np.percentile(lat, 95):.2f} s "
            f"statuses {statuses}")
  print(f"[load] 503 answers (then retried): {sum(r[3] for r in results)}; /api/health during the load: "
        f"n={len(health)}, p50 {1e3 * np.median(health):.0f} ms, max {1e3 * max(health):.0f} ms; "
        f"server peak RSS {rss:.0f} MB")


if __name__ == "__main__":
  app.run(main)
