"""HTTP download of one file into a ``.part`` file, resuming what is already there.

This module only moves bytes; :mod:`weight_store` decides what to keep and verifies hashes.
Policy for the ``.part`` file (applied by the weight store):

- network failure before any byte arrived: nothing is created (an older ``.part`` stays for resuming);
- network interruption mid-file (:class:`DownloadInterruptedError`): the ``.part`` is kept and the next
  download resumes it with an HTTP ``Range`` request;
- disk full (:class:`DiskFullError`) or a wrong hash: the ``.part`` is deleted.

Only the standard library is used (``urllib``), so downloads work without extra packages.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelError

# 10 s to connect or to receive the next block: long enough for a slow mirror, short enough that an
# offline machine fails quickly (a refused connection or an unknown host fails in milliseconds).
CONNECT_TIMEOUT_S = 10.0
# 1 MiB blocks: a few hundred progress updates for a 156 MB checkpoint, little memory.
CHUNK_BYTES = 1 << 20
USER_AGENT = "medsegany-weight-store/1"

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``progress(bytes_done, bytes_total_or_None)`` after every block (resumed bytes included)."""


class NetworkError(ModelError):
    """The server could not be reached or refused the request; no byte of this attempt was written."""


class DownloadInterruptedError(NetworkError):
    """The transfer stopped mid-file; the ``.part`` file holds what arrived and can be resumed."""


class DiskFullError(ModelError):
    """The disk filled up while writing; the caller deletes the ``.part`` file."""


def _host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _uses_proxy(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    return parts.scheme in proxies and not urllib.request.proxy_bypass(parts.hostname or "")


def _resolve_within(url: str, timeout_s: float) -> None:
    """Fail fast when the host name cannot be resolved: ``urlopen``'s timeout does not cover DNS.

    Without a reachable DNS server ``getaddrinfo`` can block for 5 s per server and attempt (resolv.conf
    defaults), so the lookup runs in a daemon thread that we stop waiting for after ``timeout_s``.
    """
    if _uses_proxy(url):
        return  # the proxy resolves the name, not us
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        raise NetworkError(f"'{url}' has no host name", "fix the model URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=lookup, name="medsegany-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise NetworkError(
            f"cannot resolve {host} within {timeout_s:.0f} s (no network?)", _offline_fix())
    if outcome[0] is not None:
        raise NetworkError(f"cannot resolve {host} (no network or DNS?)", _offline_fix())


def _offline_fix() -> str:
    return ("check the network connection, or download the file on another machine and run "
            "`medsegany models import ID FILE`")


def _describe_connection_error(url: str, error: BaseException) -> NetworkError:
    host = _host_of(url)
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, socket.gaierror):
        return NetworkError(f"cannot resolve {host} (no network or DNS?)", _offline_fix())
    if isinstance(reason, ConnectionRefusedError):
        return NetworkError(f"connection to {host} refused", _offline_fix())
    if isinstance(reason, TimeoutError | socket.timeout):
        return NetworkError(f"no answer from {host} within {CONNECT_TIMEOUT_S:.0f} s", _offline_fix())
    return NetworkError(f"cannot reach {host}: {reason}", _offline_fix())


def _content_range_start(header: str | None) -> int | None:
    """First byte offset of ``Content-Range: bytes START-END/TOTAL``, or None when absent or odd."""
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", header or "")
    return int(match.group(1)) if match else None


def _write_chunk(file, data: bytes) -> None:
    """Write one block to an unbuffered file; separate so that tests can simulate a full disk."""
    view = memoryview(data)
    while view:  # a raw (unbuffered) write may take only part of the block
        written = file.write(view)
        view = view[written:]


def _is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def fetch_url(
    url: str,
    part_path: Path,
    *,
    progress: ProgressCallback | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
    expected_bytes: int | None = None,
) -> int:
    """Download ``url`` into ``part_path``, resuming from the bytes already there; return the final size.

    Raises NetworkError when nothing could be fetched (``part_path`` untouched), DownloadInterruptedError when
    the transfer stopped mid-file (``part_path`` holds the bytes so far) and DiskFullError on ENOSPC.
    The content is not verified here.
    """
    start_bytes = part_path.stat().st_size if part_path.exists() else 0
    if expected_bytes is not None and start_bytes > expected_bytes:
        part_path.unlink()  # longer than the real file: it cannot be a prefix of it
        start_bytes = 0
    _resolve_within(url, timeout_s)
    headers = {"User-Agent": USER_AGENT}
    if start_bytes:
        headers["Range"] = f"bytes={start_bytes}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and start_bytes:
            # Range not satisfiable: the .part already holds the whole file when the size agrees.
            if expected_bytes in (None, start_bytes):
                return start_bytes
            part_path.unlink()
            return fetch_url(url, part_path, progress=progress, timeout_s=timeout_s,
                             expected_bytes=expected_bytes)
        raise NetworkError(
            f"download failed: HTTP {error.code} {error.reason} from {_host_of(url)}",
            "try again later, or download the file by hand and run `medsegany models import ID FILE`",
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _describe_connection_error(url, error) from None

    with response:
        resumed = start_bytes > 0 and response.status == 206 and (
            _content_range_start(response.headers.get("Content-Range")) == start_bytes)
        if response.status == 206 and not resumed:
            raise NetworkError(f"{_host_of(url)} answered with a different byte range than asked for",
                               f"delete {part_path} and try again")
        done_bytes = start_bytes if resumed else 0  # a 200 answer to a Range request restarts the file
        length = response.headers.get("Content-Length")
        total_bytes = done_bytes + int(length) if length and length.isdigit() else expected_bytes
        try:
            # Unbuffered, so that ENOSPC is raised by the write it belongs to and never lost at close.
            file = open(part_path, "ab" if resumed else "wb", buffering=0)  # noqa: SIM115 (closed below)
        except OSError as error:
            if _is_disk_full(error):
                raise DiskFullError(f"disk full creating {part_path}", _disk_fix(part_path)) from None
            raise ModelError(f"cannot write {part_path}: {error.strerror}", _disk_fix(part_path)) from None
        try:
            if progress is not None:
                progress(done_bytes, total_bytes)
            while True:
                try:
                    data = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadInterruptedError(
                        f"download from {_host_of(url)} interrupted after {done_bytes / 1e6:.1f} MB "
                        f"({error})",
                        "run the same command again to resume",
                    ) from None
                if not data:
                    break
                try:
                    _write_chunk(file, data)
                except OSError as error:
                    if _is_disk_full(error):
                        raise DiskFullError(f"disk full writing {part_path}", _disk_fix(part_path)) from None
                    raise ModelError(f"cannot write {part_path}: {error.strerror}",
                                     _disk_fix(part_path)) from None
                done_bytes += len(data)
                if progress is not None:
                    progress(done_bytes, total_bytes)
        finally:
            file.close()
    if total_bytes is not None and done_bytes < total_bytes:
        # http.client returns b"" instead of raising when the server closes early (IncompleteRead).
        raise DownloadInterruptedError(
            f"download from {_host_of(url)} stopped at {done_bytes / 1e6:.1f} of {total_bytes / 1e6:.1f} MB",
            "run the same command again to resume",
        )
    return done_bytes


def _disk_fix(path: Path) -> str:
    return f"free some space in {path.parent} or set MEDSEGANY_HOME to a folder on a larger disk"
