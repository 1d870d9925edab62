"""Verified, resumable downloads: only file:// URLs and a loopback HTTP server, never the network."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evosparse.data import download
from evosparse.data.download import cache_dir, discard_if_invalid, fetch
from evosparse.errors import DataError

PAYLOAD = bytes(range(256)) * 40 + b"end of payload"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The payload as a local file, reachable through a file:// URL."""
    path = tmp_path / "source" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_cache_dir_prefers_argument_then_environment_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(download.DATA_DIR_ENV, raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "evosparse"
    monkeypatch.setenv(download.DATA_DIR_ENV, str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_fetch_downloads_verifies_and_moves_into_place(tmp_path, source):
    path = fetch(source.as_uri(), "sub/payload.bin", DIGEST, tmp_path / "cache")
    assert path == tmp_path / "cache" / "sub" / "payload.bin"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("payload.bin.part").exists()


def test_fetch_with_wrong_digest_leaves_nothing_behind(tmp_path, source):
    with pytest.raises(DataError, match="SHA-256 mismatch") as caught:
        fetch(source.as_uri(), "payload.bin", "0" * 64, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [download.LOCK_NAME, "source"]
    assert "\n" not in str(caught.value)


def test_fetch_tries_mirrors_in_order(tmp_path, source):
    missing = (tmp_path / "source" / "absent.bin").as_uri()
    path = fetch([missing, source.as_uri()], "payload.bin", DIGEST, tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD


def test_offline_error_names_file_urls_and_where_to_put_it(tmp_path):
    def offline(request, timeout):
        raise urllib.error.URLError("network is unreachable")

    urls = ["https://mirror-a.invalid/payload.bin", "https://mirror-b.invalid/payload.bin"]
    with pytest.raises(DataError) as caught:
        fetch(urls, "set/payload.bin", DIGEST, tmp_path, opener=offline)
    message = str(caught.value)
    assert "\n" not in message
    assert "payload.bin" in message and all(url in message for url in urls)
    assert "network is unreachable" in message
    assert str(tmp_path / "set" / "payload.bin") in message


def test_cached_verified_file_is_used_without_opening_anything(tmp_path):
    (tmp_path / "payload.bin").write_bytes(PAYLOAD)

    def no_network(request, timeout):
        raise AssertionError("fetch must not download a cached, verified file")

    path = fetch("https://example.invalid/p", "payload.bin", DIGEST, tmp_path, opener=no_network)
    assert path.read_bytes() == PAYLOAD


def test_cached_file_is_hashed_once_per_process(monkeypatch, tmp_path):
    (tmp_path / "payload.bin").write_bytes(PAYLOAD)
    calls = []
    real = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        fetch("https://example.invalid/p", "payload.bin", DIGEST, tmp_path)
    assert len(calls) == 1


def test_concurrent_fetches_download_the_file_once(tmp_path, source):
    calls = []

    def slow_opener(request, timeout):
        calls.append(request.full_url)
        time.sleep(0.2)  # widen the window in which a second fetch could start a download
        return urllib.request.urlopen(request, timeout=timeout)

    results: list[Path] = []

    def fetch_once() -> None:
        results.append(fetch(source.as_uri(), "p.bin", DIGEST, tmp_path, opener=slow_opener))

    workers = [threading.Thread(target=fetch_once) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert len(calls) == 1 and len(results) == 3
    assert all(path.read_bytes() == PAYLOAD for path in results)


def test_cached_file_with_wrong_digest_is_replaced(tmp_path, source):
    (tmp_path / "payload.bin").write_bytes(b"tampered")
    assert fetch(source.as_uri(), "payload.bin", DIGEST, tmp_path).read_bytes() == PAYLOAD


def test_cached_file_with_wrong_digest_is_reported_when_offline(tmp_path):
    (tmp_path / "payload.bin").write_bytes(b"tampered")
    missing = (tmp_path / "absent.bin").as_uri()
    with pytest.raises(DataError, match="failed its SHA-256 check and was removed"):
        fetch(missing, "payload.bin", DIGEST, tmp_path)
    assert not (tmp_path / "payload.bin").exists()


def test_discard_if_invalid_removes_the_file_only_on_data_errors(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"x")
    with discard_if_invalid(path):
        pass
    assert path.exists()
    with pytest.raises(DataError, match=r"bad content \(removed .*file\.bin"), discard_if_invalid(path):
        raise DataError("bad content")
    assert not path.exists()


# --- HTTP Range resume against a loopback server -------------------------------------------


@dataclass
class ServerState:
    """What the test server serves and what it saw."""

    payload: bytes
    honour_range: bool = True
    cut_first_response_after: int | None = None
    ranges_seen: list[str | None] = field(default_factory=list)


class PayloadHandler(BaseHTTPRequestHandler):
    """Serves ``state.payload`` at any path, honouring ``Range: bytes=N-`` when told to."""

    timeout = 5

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        state.ranges_seen.append(requested)
        start = 0
        if requested and state.honour_range:
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(state.payload):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(state.payload) - 1}/{len(state.payload)}")
        else:
            self.send_response(200)
        body = state.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_first_response_after is not None:
            body, state.cut_first_response_after = body[: state.cut_first_response_after], None
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[ServerState, str]]:
    """A loopback HTTP server in a thread, shut down after the test."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PayloadHandler)
    httpd.state = ServerState(PAYLOAD)  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_port}/payload.bin"  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    state, url = server
    state.cut_first_response_after = 3000
    with pytest.raises(DataError, match=r"could not download payload\.bin"):
        fetch(url, "payload.bin", DIGEST, tmp_path, timeout=5)
    part = tmp_path / "payload.bin.part"
    assert part.stat().st_size == 3000 and not (tmp_path / "payload.bin").exists()
    assert fetch(url, "payload.bin", DIGEST, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert state.ranges_seen == [None, "bytes=3000-"]
    assert not part.exists()


def test_server_ignoring_range_restarts_the_file(tmp_path, server):
    state, url = server
    state.honour_range = False
    (tmp_path / "payload.bin.part").write_bytes(PAYLOAD[:1000])
    assert fetch(url, "payload.bin", DIGEST, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert state.ranges_seen == ["bytes=1000-"]


def test_stale_partial_file_is_refetched_from_scratch(tmp_path, server):
    state, url = server
    (tmp_path / "payload.bin.part").write_bytes(b"\xff" * 1000)  # not a prefix of the payload
    assert fetch(url, "payload.bin", DIGEST, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert state.ranges_seen == ["bytes=1000-", None]


def test_partial_file_longer_than_the_payload_is_restarted(tmp_path, server):
    state, url = server
    (tmp_path / "payload.bin.part").write_bytes(PAYLOAD + b"extra")
    assert fetch(url, "payload.bin", DIGEST, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert state.ranges_seen == [f"bytes={len(PAYLOAD) + 5}-", None]
