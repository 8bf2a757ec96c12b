"""A weights server on 127.0.0.1 for the download tests: it serves the files a test gives it,
counts the GETs, and can stall, cut a file short or refuse; nothing reaches the internet."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager

import pytest


class WeightsServer:
    """``files``: URL path (``/name``) -> bytes. ``cut``: paths sent with their full
    ``Content-Length`` but closed after half the bytes; ``delay``: seconds before a body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.delay = 0.0
        self.gets: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets[self.path] += 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                time.sleep(server.delay)
                self.wfile.write(data[: len(data) // 2] if self.path in server.cut else data)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def serving(monkeypatch: pytest.MonkeyPatch):
    """A running :class:`WeightsServer`; while it runs, a request to any other host fails the test."""
    real = urllib.request.urlopen

    def local_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert url.startswith("http://127.0.0.1:"), f"a test tried to reach {url}"
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    server = WeightsServer()
    try:
        yield server
    finally:
        server.close()


RELEASED = "c2d_baseline_8x8_IN_pretrain_400k"
"""The released file the tests make and serve: the smallest network of the authors' zoo."""


def released_pickle(model_name: str, *, norm: str = "batchnorm", seed: int = 0) -> tuple[bytes, dict]:
    """A Kinetics file in the authors' layout: the exporter's blobs (``export_caffe2_blobs``) of
    ``model_name`` (released variant) with seeded weights and BN statistics, plus the solver
    blobs the released files carry, pickled as ``{'blobs': ...}``. Protocol 4, not the released
    files' 2: the same unpickler reads both, and protocol 2 takes seconds for an R50. Returns the
    bytes and the model's state dict."""
    import pickle

    import numpy as np
    import torch

    from nonlocalnet.models import build_model, export_caffe2_blobs

    model = build_model(model_name, variant="released", backbone_norm=norm)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=gen) * 0.2 + 0.9)
    blobs = export_caffe2_blobs(model)
    blobs["lr"] = np.array([0.0001], dtype=np.float32)
    blobs["model_iter"] = np.array([400000], dtype=np.int64)
    return pickle.dumps({"blobs": blobs}, protocol=4), model.state_dict()
