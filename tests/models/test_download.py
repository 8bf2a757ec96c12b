"""The downloader against a 127.0.0.1 server: once, atomic, checked, one process at a time."""

import hashlib
import multiprocessing
import os
import socket

import pytest
from weights_server import serving

from nonlocalnet.models.download import (
    CACHE_DIR_ENV,
    ChecksumError,
    DownloadError,
    default_cache_dir,
    download_file,
    hash_prefix_of,
    resolve_cache_dir,
)

DATA = bytes(range(256)) * 64  # 16 KiB
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def weights_server(monkeypatch):
    with serving(monkeypatch) as server:
        yield server


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_download_once_then_reuse(weights_server, tmp_path):
    weights_server.files["/a.bin"] = DATA
    path = download_file(weights_server.url("a.bin"), tmp_path / "a.bin", sha256=DIGEST, progress=False)
    assert path.read_bytes() == DATA
    again = download_file(weights_server.url("a.bin"), tmp_path / "a.bin", sha256=DIGEST, progress=False)
    assert again == path and weights_server.gets["/a.bin"] == 1  # the cache answered
    assert _leftovers(tmp_path) == ["a.bin"]


def test_interrupted_download_is_never_used_and_the_next_try_succeeds(weights_server, tmp_path):
    weights_server.files["/a.bin"] = DATA
    weights_server.cut.add("/a.bin")
    with pytest.raises(DownloadError, match=r"a\.bin") as err:
        download_file(weights_server.url("a.bin"), tmp_path / "a.bin", progress=False)
    assert weights_server.url("a.bin") in str(err.value) and str(tmp_path / "a.bin") in str(err.value)
    assert _leftovers(tmp_path) == []  # no file under the final name, no temporary file
    weights_server.cut.clear()
    path = download_file(weights_server.url("a.bin"), tmp_path / "a.bin", progress=False)
    assert path.read_bytes() == DATA and weights_server.gets["/a.bin"] == 2


def test_a_killed_download_leaves_nothing_that_is_used(weights_server, tmp_path):
    """A process killed mid-file leaves only its temporary file: the next download ignores and
    removes it."""
    weights_server.files["/a.bin"] = DATA
    stale = tmp_path / "a.bin.x1y2z3.tmp"
    stale.write_bytes(DATA[:100])
    path = download_file(weights_server.url("a.bin"), tmp_path / "a.bin", sha256=DIGEST, progress=False)
    assert path.read_bytes() == DATA and not stale.exists()


def test_wrong_hash_is_an_error_and_nothing_is_cached(weights_server, tmp_path):
    weights_server.files["/a.bin"] = DATA
    with pytest.raises(ChecksumError, match=f"SHA-256 is {DIGEST}, expected 0000"):
        download_file(weights_server.url("a.bin"), tmp_path / "a.bin", sha256="0" * 64, progress=False)
    with pytest.raises(ChecksumError, match="starting with ffff"):
        download_file(weights_server.url("a.bin"), tmp_path / "a.bin", hash_prefix="ffff", progress=False)
    assert _leftovers(tmp_path) == []
    path = download_file(
        weights_server.url("a.bin"), tmp_path / "a.bin", hash_prefix=DIGEST[:8], progress=False
    )
    assert path.read_bytes() == DATA


def test_404_names_the_url_and_where_to_put_the_file(weights_server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download_file(weights_server.url("missing.pkl"), tmp_path / "missing.pkl", progress=False)
    message = str(err.value)
    assert "HTTP 404" in message and weights_server.url("missing.pkl") in message
    assert f"put it at {tmp_path / 'missing.pkl'}" in message and CACHE_DIR_ENV in message
    assert _leftovers(tmp_path) == []


def test_offline_names_the_url_and_where_to_put_the_file(weights_server, tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/r50.pkl"
    with pytest.raises(DownloadError) as err:
        download_file(url, tmp_path / "r50.pkl", progress=False)
    assert f"cannot download {url}" in str(err.value) and f"put it at {tmp_path / 'r50.pkl'}" in str(
        err.value
    )
    assert _leftovers(tmp_path) == []


def _fetch_in_child(url, path, barrier, results):
    barrier.wait()
    results.put(os.fspath(download_file(url, path, sha256=DIGEST, progress=False)))


def test_two_processes_at_once_download_once(weights_server, tmp_path):
    """Two processes ask together while the server is slow: one downloads, the other waits on the
    lock and finds the file; the server sees one GET."""
    weights_server.files["/a.bin"] = DATA
    weights_server.delay = 0.3
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_fetch_in_child, args=(weights_server.url("a.bin"), tmp_path / "a.bin", barrier, results)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [results.get(timeout=5) for _ in procs] == [os.fspath(tmp_path / "a.bin")] * 2
    assert weights_server.gets["/a.bin"] == 1
    assert (tmp_path / "a.bin").read_bytes() == DATA


_TORCHRUN_FETCH = """
import sys
import torch.distributed as dist
from nonlocalnet.models.download import download_file

dist.init_process_group("gloo")
dist.barrier()  # both ranks ask at once
path = download_file(sys.argv[1], sys.argv[2], sha256=sys.argv[3], progress=False)
print("rank", dist.get_rank(), path, flush=True)
dist.destroy_process_group()
"""


def test_torchrun_ranks_asking_at_once_download_once(weights_server, tmp_path):
    """``torchrun --nproc-per-node 2``: both ranks ask for the file together, one downloads and
    the other waits for it; the server sees one GET and both ranks get the file."""
    import subprocess
    import sys

    weights_server.files["/a.bin"] = DATA
    weights_server.delay = 0.3
    script = tmp_path / "fetch.py"
    script.write_text(_TORCHRUN_FETCH)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), weights_server.url("a.bin"), str(tmp_path / "a.bin"), DIGEST],
        env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("rank "))
    assert ranks == ["0", "1"]
    assert weights_server.gets["/a.bin"] == 1
    assert (tmp_path / "a.bin").read_bytes() == DATA


def test_cache_folder_follows_torch_hub_and_can_be_set(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert default_cache_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_hash_prefix_convention():
    assert hash_prefix_of("resnet50-0676ba61.pth") == "0676ba61"
    assert hash_prefix_of("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth") == "bf2d0c1e"
    assert hash_prefix_of("i3d_nonlocal_32x2_IN_pretrain_400k.pkl") is None
