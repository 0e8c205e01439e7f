"""Whether the data files a detached header names (``.nhdr``, ``.mhd``) are beside it.

A header copied without its data file is the usual way such an image breaks. SimpleITK only reads the data
file when it reads the voxels, so ``--estimate`` (header only) sized such a volume without a word, and
reading it said "not an image SimpleITK can read (Reason: No such file or directory)", with "give a NIfTI,
NRRD, MHA/MHD file" as the fix, to a user who had given one.
"""

from __future__ import annotations

from pathlib import Path

from .errors import VolumeError

#: The most header text read: real headers are under 2 KB; an attached .nrrd's binary data follows it.
_HEADER_BYTES = 65536
_METAIMAGE_SUFFIXES = (".mhd", ".mha")
_NRRD_SUFFIXES = (".nhdr", ".nrrd")


def check_detached_data(path: Path) -> None:
    """VolumeError naming the first data file that ``path``'s header names and that does not exist."""
    for data_path in detached_data_files(path):
        if not data_path.is_file():
            key = "ElementDataFile" if path.name.lower().endswith(_METAIMAGE_SUFFIXES) else "data file"
            raise VolumeError(
                f"{path}'s voxels are in a separate data file, {data_path}, which does not exist",
                f"copy the data file beside the header, or correct the header's `{key}` line",
            )


def detached_data_files(path: Path) -> list[Path]:
    """The data files ``path``'s header names, relative names resolved beside it; [] for an image whose
    voxels follow its header (``.nii``, ``.nrrd``, ``.mha``) and for a header this cannot read (SimpleITK
    then names what is wrong)."""
    name = path.name.lower()
    if not name.endswith(_METAIMAGE_SUFFIXES + _NRRD_SUFFIXES):
        return []
    try:
        with path.open("rb") as stream:
            text = stream.read(_HEADER_BYTES).decode("latin-1")
    except OSError:
        return []
    if name.endswith(_METAIMAGE_SUFFIXES):
        value, rest = _metaimage_data_file(text)
    else:
        value, rest = _nrrd_data_file(text)
    if value is None:
        return []
    names = _expanded(value, rest)
    return [name if name.is_absolute() else path.parent / name for name in map(Path, names)]


def _metaimage_data_file(text: str) -> tuple[str | None, list[str]]:
    """``ElementDataFile``'s value (the header's last field) and the lines after it; LOCAL is inline."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        key, equals, value = line.partition("=")
        if equals and key.strip() == "ElementDataFile":
            value = value.strip()
            return (None if value.upper() == "LOCAL" else value), lines[index + 1 :]
    return None, []


def _nrrd_data_file(text: str) -> tuple[str | None, list[str]]:
    """``data file``'s value and the lines after it (a LIST's names run to the end of the header)."""
    if not text.startswith("NRRD"):
        return None, []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.strip():  # a blank line ends the header: the voxels of an attached .nrrd follow
            break
        key, colon, value = line.partition(":")
        if colon and key.strip() in ("data file", "datafile") and not value.startswith("="):
            return value.strip(), lines[index + 1 :]
    return None, []


def _expanded(value: str, rest: list[str]) -> list[str]:
    """The file names of a data file value: one name, ``LIST`` (the following lines), or a pattern
    ``name%03d.raw first last step`` (both formats count ``last`` in)."""
    words = value.split()
    if not words:
        return []
    if words[0] == "LIST":
        return [line.strip() for line in rest if line.strip()]
    if "%" in words[0] and len(words) >= 4:
        try:
            first, last, step = int(words[1]), int(words[2]), int(words[3])
            if step == 0:
                return []
            stop = last + (1 if step > 0 else -1)
            return [words[0] % number for number in range(first, stop, step)]
        except (ValueError, TypeError):
            return []
    return [value]
