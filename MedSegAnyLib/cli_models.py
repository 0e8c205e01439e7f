"""``medsegany models ...``: list, download, import, verify and remove checkpoints.

Mounted into the main CLI with :func:`add_models_parser`; :func:`main_models` runs it on its own
(``main_models(["list", "--json"])``). Handlers return an exit code and print errors as one line.

Exit codes: 0 success, 1 a ModelError (``medsegany: error: ...`` on stderr), 2 usage errors (argparse),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from .errors import MedSegAnyError
from .models import catalog
from .models.catalog import ModelCard
from .models.weight_store import StoredFile, WeightStore

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class ProgressBar:
    """A dependency-free progress bar on a text stream (stderr).

    On a terminal the bar is redrawn in place at most 10 times a second; otherwise (logs, CI) one line
    is written per 10 % (per 50 MB when the size is unknown) so that logs stay short.
    """

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._clock = clock
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = clock()
        self._last_draw = float("-inf")
        self._last_decile = -1
        self._first_bytes: int | None = None
        self.line_open = False  # True while the cursor sits at the end of an in-place bar

    def close(self) -> None:
        """End an in-place bar's line so that the next message starts on a fresh one."""
        if self.line_open:
            self.stream.write("\n")
            self.stream.flush()
            self.line_open = False

    def __call__(self, done_bytes: int, total_bytes: int | None) -> None:
        now = self._clock()
        if self._first_bytes is None:
            self._first_bytes = done_bytes  # resumed bytes do not count towards the speed
        finished = total_bytes is not None and done_bytes >= total_bytes
        if self.interactive:
            if now - self._last_draw < 0.1 and not finished:
                return
            self._last_draw = now
            self.stream.write("\r" + self._line(done_bytes, total_bytes, now))
            self.line_open = True
            if finished:
                self.close()
        else:
            # tenths of the file, or blocks of 50 MB when the size is unknown
            decile = int(10 * done_bytes / total_bytes) if total_bytes else int(done_bytes // 50_000_000)
            if decile <= self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(self._line(done_bytes, total_bytes, now) + "\n")
        self.stream.flush()

    def _line(self, done_bytes: int, total_bytes: int | None, now: float) -> str:
        speed = (done_bytes - (self._first_bytes or 0)) / max(now - self._started, 1e-3)
        tail = f"{done_bytes / 1e6:7.1f} MB  {speed / 1e6:5.1f} MB/s"
        if not total_bytes:
            return f"{self.label} {tail}"
        fraction = min(done_bytes / total_bytes, 1.0)
        filled = round(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.label} [{bar}] {100 * fraction:3.0f}% {tail} of {total_bytes / 1e6:.1f} MB"


def _size_text(card: ModelCard) -> str:
    if card.bytes:
        return f"{card.bytes / 1e6:.0f} MB"
    return f"~{card.approx_bytes / 1e6:.0f} MB" if card.approx_bytes else "?"


def _print_license(card: ModelCard, out: TextIO) -> None:
    out.write(f"{card.name} ({card.id}) licence: {card.license}\n")
    if card.license_note:
        out.write(f"  note: {card.license_note}\n")
    out.write(f"  cite: {card.citation}\n")


def _report_stored(result: StoredFile, verb: str, out: TextIO) -> None:
    if result.already_present:
        out.write(f"{result.card_id} is already present: {result.path}\n")
        return
    out.write(f"{result.card_id} {verb}: {result.path}\n")
    if result.first_use:
        out.write(
            f"note: {result.card_id} has no published SHA-256; recorded {result.sha256} now "
            "(trust on first use) and later files will be checked against it\n"
        )


def _cmd_list(args: argparse.Namespace, store: WeightStore, out: TextIO) -> int:
    entries = store.list_entries()
    if args.json:
        json.dump([entry.to_dict() for entry in entries], out, indent=2)
        out.write("\n")
        return EXIT_OK
    out.write(f"weights folder: {store.root}\n")
    out.write(f"{'id':26} {'family':10} {'status':11} {'state':11} {'size':>9}  licence\n")
    for entry in entries:
        card = entry.card
        out.write(f"{card.id:26} {card.family:10} {card.status:11} {entry.state:11} {_size_text(card):>9}  "
                  f"{card.license}\n")
        if card.status == "unsupported":  # why it is listed but cannot be used (README: "with the reason")
            out.write(f"{'':26} not supported: {card.status_reason}\n")
    return EXIT_OK


def _ask_acceptance(card: ModelCard) -> bool:
    """Ask on an interactive terminal; never block a script (stdin not a terminal means no)."""
    try:
        interactive = bool(sys.stdin) and sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        interactive = False
    if not interactive:
        return False
    answer = input(f"Accept the licence of {card.id}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _cmd_download(args: argparse.Namespace, store: WeightStore, out: TextIO) -> int:
    card = catalog.get_card(args.model_id)
    if card.status == "bundled":
        out.write(f"{card.id} ships with {card.bundled_in}; nothing to download: {store.path_for(card)}\n")
        return EXIT_OK
    if card.status == "supported" and card.urls and store.is_present(card):
        out.write(f"{card.id} is already present: {store.path_for(card)}\n")
        return EXIT_OK
    accepted = args.accept_license
    if card.status == "supported" and card.urls:
        _print_license(card, sys.stderr)  # always shown before a download, accepted or not
        accepted = accepted or _ask_acceptance(card)
    bar = ProgressBar(card.id)
    try:
        result = store.download(card, progress=bar, accept_license=accepted)
    finally:
        bar.close()
    _report_stored(result, "downloaded and verified", out)
    return EXIT_OK


def _cmd_import(args: argparse.Namespace, store: WeightStore, out: TextIO) -> int:
    card = catalog.get_card(args.model_id)
    _print_license(card, sys.stderr)
    result = store.import_file(card, args.file)
    _report_stored(result, "imported and verified", out)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace, store: WeightStore, out: TextIO) -> int:
    card = catalog.get_card(args.model_id)
    result = store.verify(card)
    if result.hash_source == "none":
        out.write(f"{card.id}: no published or recorded SHA-256 to compare with; "
                  f"its SHA-256 is {result.sha256}\n")
    else:
        out.write(f"{card.id}: OK ({result.hash_source} SHA-256 {result.sha256}) {result.path}\n")
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace, store: WeightStore, out: TextIO) -> int:
    card = catalog.get_card(args.model_id)
    removed = store.remove(card)
    if removed:
        out.write(f"{card.id}: removed {', '.join(str(path) for path in removed)}\n")
    else:
        out.write(f"{card.id}: nothing to remove in {store.root}\n")
    return EXIT_OK


_COMMANDS = {
    "list": _cmd_list,
    "download": _cmd_download,
    "import": _cmd_import,
    "verify": _cmd_verify,
    "remove": _cmd_remove,
}


def add_models_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``models`` command to a root parser's subparsers; its handler is ``args.func(args)``.

    The root CLI calls ``return args.func(args)`` (an int exit code) after parsing.
    """
    parser = subparsers.add_parser(
        "models", help="list, download, import, verify or remove model checkpoints",
        description="Manage model checkpoints in the weights folder ($MEDSEGANY_HOME/weights or the platform "
                    "cache folder).")
    commands = parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="list the models and whether they are present")
    listing.add_argument("--json", action="store_true", help="print the model cards as JSON")
    fetch = commands.add_parser("download", help="download a checkpoint (shows its licence first)")
    fetch.add_argument("model_id", metavar="ID")
    fetch.add_argument("--accept-license", action="store_true",
                       help="accept the model's licence (shown before downloading)")
    importing = commands.add_parser("import", help="install a checkpoint file obtained elsewhere (offline)")
    importing.add_argument("model_id", metavar="ID")
    importing.add_argument("file", metavar="FILE")
    checking = commands.add_parser("verify", help="re-check a checkpoint's SHA-256")
    checking.add_argument("model_id", metavar="ID")
    removing = commands.add_parser("remove", help="delete a checkpoint and any partial download")
    removing.add_argument("model_id", metavar="ID")
    parser.set_defaults(func=run_models)
    return parser


def run_models(args: argparse.Namespace, out: TextIO | None = None, store: WeightStore | None = None) -> int:
    """Run a parsed ``models`` command; errors become one line on stderr and exit code 1."""
    out = out or sys.stdout
    try:
        return _COMMANDS[args.models_command](args, store or WeightStore(), out)
    except MedSegAnyError as error:
        sys.stderr.write(f"medsegany: error: {error}\n")  # the same one-line form as segment and batch
        return EXIT_ERROR
    except BrokenPipeError:  # `medsegany models list | head`: the reader left, which is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stops the interpreter's flush from failing)
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; run the same command again to resume a download\n")
        return EXIT_INTERRUPTED


def main_models(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``main_models(["download", "sam2.1_hiera_tiny", "--accept-license"])``."""
    root = argparse.ArgumentParser(prog="medsegany")
    add_models_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["models", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main_models())
