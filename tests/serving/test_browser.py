"""The page in a real headless Chromium (Debian's chromium-headless-shell or chromium; skipped
where neither is installed): load it from a real uvicorn on 127.0.0.1, upload a UTKFace face
through the file input (the page's default: detect every face), and read the age back from the page.

Chromium is driven over the DevTools protocol (a websocket): no chromedriver needed. Set
AGE_JAX_SCREENSHOT=path.png to keep a screenshot of the page with its prediction.
"""
import base64
import json
import os
import re
import signal
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")

from age_jax.inference import webapp  # noqa: E402
from age_jax.inference.predict import Predictor  # noqa: E402
from tests.serving.conftest import face_records  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium-headless-shell", "chromium", "chromium-browser")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium-headless-shell")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_workdir):
  port = _free_port()
  app = webapp.create_app(Predictor(trained_workdir[0]))
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.time() + 30
  while not server.started and time.time() < deadline:
    time.sleep(0.05)
  yield f"http://127.0.0.1:{port}"
  server.should_exit = True
  thread.join(10)


class DevTools:
  """The DevTools protocol on one page target: send a command, wait for its reply."""

  def __init__(self, ws):
    self.ws, self.next_id = ws, 0

  def __call__(self, method, **params):
    self.next_id += 1
    self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
    while True:
      message = json.loads(self.ws.recv(timeout=60))
      if message.get("id") == self.next_id:
        if "error" in message:
          raise RuntimeError(f"{method}: {message['error']}")
        return message["result"]

  def evaluate(self, expression):
    return self("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@pytest.fixture
def browser(server, tmp_path):
  # Debian's launcher is a shell script whose child is the browser: stop the whole process group.
  process = subprocess.Popen(
      [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
       f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900", server],
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    endpoint = None
    for line in process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
      match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
      if match:
        endpoint = f"http://127.0.0.1:{match.group(1)}"
        break
    assert endpoint, "Chromium did not start its DevTools endpoint"
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    deadline = time.time() + 30
    while True:
      pages = [t for t in json.load(urllib.request.urlopen(f"{endpoint}/json/list"))
               if t["type"] == "page" and t["url"].startswith(server)]
      if pages or time.time() > deadline:
        break
      time.sleep(0.1)
    with ws_client.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
      yield DevTools(ws)
  finally:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(10)


def _wait(tools, expression, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = tools.evaluate(expression)
    if value:
      return value
    time.sleep(0.1)
  raise TimeoutError(expression)


def test_upload_a_face_and_read_its_age_from_the_page(browser, server, trained_workdir, tmp_path):
  _, folder, _ = trained_workdir
  record = face_records(folder, 1)[0]
  face = tmp_path / record["file_name"]
  face.write_bytes(record["image"])
  expected = urllib.request.urlopen(urllib.request.Request(
      f"{server}/api/predict", data=_multipart(record["image"]), method="POST",
      headers={"Content-Type": "multipart/form-data; boundary=XyZ"}))
  expected = json.load(expected)["faces"][0]

  _wait(browser, "document.readyState === 'complete' && !!document.getElementById('file')")
  root = browser("DOM.getDocument")["root"]["nodeId"]
  node = browser("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
  browser("DOM.setFileInputFiles", nodeId=node, files=[str(face)])
  _wait(browser, "document.getElementById('status').dataset.done === '1'")
  status = browser.evaluate("document.getElementById('status').textContent")
  assert "1 face" in status, status
  age = float(browser.evaluate("document.querySelector('#results .face').dataset.age"))
  text = browser.evaluate("document.querySelector('#results .face').textContent")
  assert age == pytest.approx(expected["age"], abs=1e-6)
  interval, on = f"{expected['age']:.1f} y [{expected['low']:.0f}-{expected['high']:.0f}] 90%", expected["calibrated_on"]
  assert text == f"{interval} coverage measured on {on.replace(':', ' faces of ', 1)}", text
  box = expected["box"]  # the detector's box of the chip's one face
  assert box[2] - box[0] > 100 and expected["score"] > 0.9
  _wait(browser, "document.getElementById('canvas').width > 0")  # the image is drawn, boxed
  shot = os.environ.get("AGE_JAX_SCREENSHOT")
  if shot:
    with open(shot, "wb") as f:
      f.write(base64.b64decode(browser("Page.captureScreenshot", format="png")["data"]))


def _multipart(data: bytes) -> bytes:
  return (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jpg\"\r\n"
          b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
