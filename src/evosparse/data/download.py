"""Verified, resumable downloads into the dataset cache.

A file reaches its final name only after its SHA-256 matched, so whatever sits in the cache under a
dataset's file name is either verified or was put there by hand (and is verified on first use).
Bytes in flight live in ``<name>.part``; an interrupted download resumes from there with an HTTP
``Range`` request when the server allows it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path
from typing import Any

from evosparse.errors import DataError

#: Environment variable that moves the cache (the ``data_dir`` argument still wins over it).
DATA_DIR_ENV = "EVOSPARSE_DATA_DIR"

#: File in the cache root that serialises downloads between processes sharing the cache.
LOCK_NAME = ".download.lock"

#: Opens a request like :func:`urllib.request.urlopen` (tests inject their own).
#: Opens a URL like :func:`urllib.request.urlopen`: returns a readable HTTP response with ``headers``.
Opener = Callable[..., Any]

_CHUNK = 1 << 20
_log = logging.getLogger(__name__)

#: Cached files whose digest was already checked in this process: (path, size, mtime_ns, sha256).
_verified: set[tuple[str, int, int, str]] = set()


def cache_dir(data_dir: Path | None = None) -> Path:
    """The dataset cache folder: ``data_dir`` if given, else ``$EVOSPARSE_DATA_DIR``, else
    ``~/.cache/evosparse``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "evosparse"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large archives need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    urls: str | Sequence[str],
    filename: str,
    sha256: str | None,
    data_dir: Path | None = None,
    *,
    opener: Opener | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return the cached, verified ``filename`` (a path relative to the cache), downloading it if needed.

    Mirrors in ``urls`` are tried in order with ``opener`` (default :func:`urllib.request.urlopen`).
    ``sha256=None`` means no trusted digest is known: the file is accepted as downloaded and its
    loader must check its structure. Raises :class:`DataError` when no mirror delivers a verified
    file, naming where to put it by hand.
    """
    mirrors = [urls] if isinstance(urls, str) else list(urls)
    opener = opener or urllib.request.urlopen
    root = cache_dir(data_dir)
    target = root / filename
    if target.exists() and _cached_file_ok(target, sha256):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the data folder {target.parent}: {err.strerror or err}") from None
    with _exclusive(root / LOCK_NAME):
        stale = target.exists()
        if stale:
            if _cached_file_ok(target, sha256):  # another process finished it while we waited
                return target
            _log.warning("%s fails its SHA-256 check; removing it and downloading again", target)
            target.unlink()
        failures = []
        for url in mirrors:
            try:
                _download_verified(url, target, sha256, opener, timeout)
            except (OSError, HTTPException, ValueError, DataError) as err:  # URLError, timeouts: OSError
                failures.append(f"{url}: {_reason(err)}")
                continue
            _remember_verified(target, sha256)
            return target
    removed = "the cached copy failed its SHA-256 check and was removed; " if stale else ""
    raise DataError(
        f"could not download {Path(filename).name} ({'; '.join(failures)}); "
        f"{removed}download it by hand and save it as {target}"
    )


@contextmanager
def discard_if_invalid(path: Path) -> Iterator[None]:
    """Delete a cached ``path`` whose parsing raised :class:`DataError`, so the next run fetches it
    afresh instead of failing on the same bad file forever."""
    try:
        yield
    except DataError as err:
        path.unlink(missing_ok=True)
        _forget(path)
        raise DataError(f"{err} (removed {path}; it will be downloaded again)") from None


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` so that processes sharing a cache (say, the ranks of
    a distributed run) download each file once instead of writing the same ``.part`` together."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, downloads are unguarded
        yield
        return
    try:
        handle = open(lock_path, "a")
    except OSError as err:
        raise DataError(
            f"cannot write in the data folder {lock_path.parent}: {err.strerror or err}; "
            "pass --data-dir a folder you can write"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_file_ok(path: Path, sha256: str | None) -> bool:
    if sha256 is None:
        return True
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, sha256)
    if key in _verified:
        return True
    if sha256_of(path) != sha256:
        return False
    _verified.add(key)
    return True


def _remember_verified(path: Path, sha256: str | None) -> None:
    if sha256 is not None:
        stat = path.stat()
        _verified.add((str(path), stat.st_size, stat.st_mtime_ns, sha256))


def _forget(path: Path) -> None:
    _verified.difference_update({key for key in _verified if key[0] == str(path)})


def _download_verified(url: str, target: Path, sha256: str | None, opener: Opener, timeout: float) -> None:
    """Download ``url`` into ``target.part`` (resuming it if present), verify, then move into place.

    A resumed file that fails verification may have started from a stale prefix, so it is fetched
    once more from scratch before the mirror counts as failed.
    """
    part = target.with_name(target.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    _log.info("downloading %s to %s", url, target)
    _stream_to(url, part, opener, timeout)
    if sha256 is not None and sha256_of(part) != sha256:
        part.unlink()
        if not resumed:
            raise DataError("SHA-256 mismatch (corrupt or changed file)")
        _stream_to(url, part, opener, timeout)
        if sha256_of(part) != sha256:
            part.unlink()
            raise DataError("SHA-256 mismatch (corrupt or changed file)")
    os.replace(part, target)


def _stream_to(url: str, part: Path, opener: Opener, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``; start over when the server ignores the Range request.

    A body shorter than its announced length raises :class:`ConnectionError`, keeping ``part`` for
    the next attempt to resume.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "evosparse"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        part.unlink()  # the partial file is not a prefix the server recognises
        _stream_to(url, part, opener, timeout)
        return
    with response:
        if offset and not _is_partial_from(response, offset):
            offset = 0
        announced = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if offset else "wb") as sink:
            for block in iter(lambda: response.read(_CHUNK), b""):
                sink.write(block)
                received += len(block)
    if announced is not None and announced.isdigit() and received != int(announced):
        raise ConnectionError(f"connection closed after {received} of {announced} bytes")


def _is_partial_from(response: Any, offset: int) -> bool:
    """Whether ``response`` is a 206 answer whose body starts at byte ``offset``."""
    if getattr(response, "status", None) != 206:
        return False
    content_range = response.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return " ".join(str(err).split()) or type(err).__name__
