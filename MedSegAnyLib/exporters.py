"""Write results in the input's exact geometry: labelmaps (.nii/.nii.gz/.nrrd/.mha/.mhd) and .seg.nrrd.

Writes are atomic: the file is written under its final name inside a hidden staging folder next to its
destination, then renamed into place, so a failure never leaves a half-written file nor clobbers an
existing one (a rename within one folder is atomic on POSIX and Windows).
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OutputError
from .geometry import LPS_TO_RAS
from .volume import Volume, volume_to_sitk

#: Longest first, so that ``x.seg.nrrd`` is not taken for a plain ``.nrrd`` and ``.nii.gz`` not for ``.gz``.
LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

#: Ten mutually distinguishable colours (RGB 0..1): the first three are 3D Slicer's first segment colours
#: (tissue green, pale yellow, brown), then saturated hues that stand out on grey CT/MR; any two differ by
#: more than 0.2 in some channel (tested).
_PALETTE = (
    (0.50, 0.68, 0.50),
    (0.95, 0.84, 0.57),
    (0.69, 0.48, 0.40),
    (0.30, 0.55, 0.95),
    (0.90, 0.25, 0.25),
    (0.65, 0.35, 0.85),
    (1.00, 0.55, 0.10),
    (0.15, 0.80, 0.80),
    (0.95, 0.45, 0.75),
    (0.55, 0.85, 0.15),
)


#: gzip level of a .seg.nrrd's voxels (pynrrd's default: 9). A labelmap is mostly runs of one value, which
#: level 1 packs nearly as well: three labels in 5.3 % of 512 x 512 x 300 (benchmarks/job_outputs.py, the
#: 2-core development CPU) took 0.53 s to write against 3.55 s before, of which counting the labels was
#: 0.11 against 1.65 s, for 0.94 MB against 0.33 MB (beside a CT of about 77 MB). Any level reads back the
#: same voxels.
SEG_NRRD_GZIP_LEVEL = 1


@dataclass(frozen=True)
class SegmentInfo:
    """A segment of a labelmap: its label value (>= 1), name, colour (RGB, each 0..1) and, optionally, its
    Slicer terminology entry (the serialized string of :func:`medsegany.terminology.terminology_entry_string`)
    written into ``.seg.nrrd`` files."""

    label_value: int
    name: str
    color_rgb: tuple[float, float, float]
    terminology: str | None = None


def _terminology_field(info: SegmentInfo) -> dict:
    """slicerio's ``terminology`` entry of a segment, or nothing when the segment has no terminology."""
    if not info.terminology:
        return {}
    from slicerio.segmentation import terminology_entry_from_string

    return {"terminology": terminology_entry_from_string(info.terminology)}


#: Colour levels of the candidates that extend the palette beyond its 10 (6 levels a channel: 216 colours).
_EXTENSION_LEVELS = (0.15, 0.32, 0.49, 0.66, 0.83, 1.0)
#: How much (in its most different channel) an added colour differs at least from every colour before it.
_MIN_EXTENSION_DISTANCE = 0.15


@functools.cache
def _extended_palette() -> tuple[tuple[float, float, float], ...]:
    """The palette, then the candidates in farthest-first order: each next colour is the one farthest (in
    its most different channel) from every colour before it, while that is at least 0.15. 12 vertebrae or
    24 ribs in one labelmap then get distinct colours (a palette of 10 that cycled gave objects 1 and 11
    the same one)."""
    chosen = [np.array(colour) for colour in _PALETTE]
    grid = np.array(list(itertools.product(_EXTENSION_LEVELS, repeat=3)))
    # no greys (they look like the image) and no dark colours (they vanish on a dark background)
    grid = grid[(grid.max(axis=1) - grid.min(axis=1) >= 0.15) & (grid.max(axis=1) >= 0.66)]
    distance = np.min([np.abs(grid - colour).max(axis=1) for colour in chosen], axis=0)
    # a candidate closer than _MIN_EXTENSION_DISTANCE to a colour before it would repeat that colour
    # (e.g. (0.49, 0.66, 0.49) after the palette's (0.5, 0.68, 0.5)): the palette cycles before it
    while distance.max() >= _MIN_EXTENSION_DISTANCE:
        best = int(np.argmax(distance))
        chosen.append(grid[best])
        distance = np.minimum(distance, np.abs(grid - grid[best]).max(axis=1))
    return tuple(tuple(round(float(v), 2) for v in colour) for colour in chosen)


def default_segment_color(index: int) -> tuple[float, float, float]:
    """The ``index``-th colour (0-based): a fixed palette of 10, then distinct colours (about 150 in all,
    :func:`_extended_palette`), cycling after those.

    >>> default_segment_color(0) == default_segment_color(10)
    False
    """
    palette = _extended_palette()
    return palette[index % len(palette)]


#: Formats whose extension may be written in any case: ITK's NRRD reader and writer and slicerio take
#: ``.NRRD`` as ``.nrrd``. ITK picks its NIfTI and MetaImage writers by a lower-case extension only.
ANY_CASE_SUFFIXES = (".seg.nrrd", ".nrrd")


def output_suffix(path: str | Path) -> str:
    """The labelmap format of ``path`` (one of :data:`LABELMAP_SUFFIXES`), or an OutputError (also for
    ``.NII.GZ``, ``.Mha``... not in lower case, which ITK cannot write)."""
    name = Path(path).name.lower()
    for suffix in LABELMAP_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            written = Path(path).name[-len(suffix) :]
            # refused here, before the run: after it ITK's writer fails ("Bad Nifti file name"), or an .MHA
            # comes out as .mhd + .zraw under other names
            if written != suffix and suffix not in ANY_CASE_SUFFIXES:
                raise OutputError(
                    f"the extension of output {Path(path).name!r} is not in lower case ({written}), and ITK "
                    f"writes these files only under {suffix}",
                    f"end the output name with {suffix}",
                )
            return suffix
    raise OutputError(
        f"cannot tell the format of output {Path(path).name!r}",
        f"end the output name with one of {', '.join(LABELMAP_SUFFIXES)}",
    )


def companion_files(path: str | Path) -> list[Path]:
    """The data files a labelmap writer puts beside ``path``: a compressed .mhd header's .zraw (the
    writer replaces it without asking, so a check for existing outputs has to look at it too)."""
    path = Path(path)
    return [path.with_suffix(".zraw")] if output_suffix(path) == ".mhd" else []


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(staged_path)`` then move the result (and companion files, e.g. .mhd's .zraw) to ``path``.

    ``staged_path`` has ``path``'s file name inside a fresh hidden folder in the destination folder, so
    writers that pick the format or a companion file's name from the file name behave as for ``path``.
    """
    path = Path(path).expanduser()
    folder = path.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise OutputError(f"output folder {folder} {what}", "create the folder or choose another output path")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder", "give a file name inside it")
    try:
        staging = Path(tempfile.mkdtemp(prefix=".medsegany-", dir=folder))
    except OSError as error:
        raise OutputError(
            f"cannot write in {folder} ({error.strerror or error})", "choose a folder you can write to"
        ) from None
    try:
        staged = staging / path.name
        write(staged)
        if not staged.is_file():
            raise OutputError(f"writing {path.name} produced no file", "report this as a bug")
        # Companion data files first, so the header never names a file that is not there yet.
        for produced in sorted(staging.iterdir()):
            if produced != staged:
                os.replace(produced, folder / produced.name)
        os.replace(staged, path)
    except OutputError:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise OutputError(
            f"writing {path} failed ({lines[-1].strip()[:160]})", "check free disk space and permissions"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _checked_labels(labelmap_kji: np.ndarray, reference: Volume) -> np.ndarray:
    labelmap_kji = np.asarray(labelmap_kji)
    if labelmap_kji.shape != reference.voxels_kji.shape:
        raise OutputError(
            f"labelmap shape {labelmap_kji.shape} differs from the volume's {reference.voxels_kji.shape}",
            "write results on the grid of the volume they were computed on",
        )
    if labelmap_kji.dtype == bool:
        return labelmap_kji.astype(np.uint8)
    integer = np.issubdtype(labelmap_kji.dtype, np.integer)
    if not integer and not np.array_equal(labelmap_kji, np.round(labelmap_kji)):
        raise OutputError("the labelmap holds non-integer values", "give integer label values")
    low, high = (labelmap_kji.min(), labelmap_kji.max()) if labelmap_kji.size else (0, 0)
    if low < 0 or high > 65535:
        raise OutputError(
            f"the labelmap holds label values {low}..{high}", "use label values 0..65535 (0 is background)"
        )
    # uint8 when it fits: a quarter of the disk of int32 and what Slicer creates for < 256 segments.
    return labelmap_kji.astype(np.uint8 if high < 256 else np.uint16, copy=False)


def label_values_present(labels_kji: np.ndarray) -> list[int]:
    """The non-zero values of a labelmap of non-negative integers, ascending.

    Counted over the non-zero voxels alone: ``np.unique`` hashes or sorts every voxel. Three labels in
    5.3 % of 512 x 512 x 300 on the 2-core development CPU: 0.11 s against 1.65 s
    (benchmarks/job_outputs.py)."""
    nonzero = labels_kji[labels_kji != 0]
    return [int(value) for value in np.flatnonzero(np.bincount(nonzero))] if nonzero.size else []


def _checked_segments(labels_kji: np.ndarray, segments: Sequence[SegmentInfo] | None) -> list[SegmentInfo]:
    """The given segments, plus a default one for each label value present but not described."""
    segments = list(segments or [])
    seen: set[int] = set()
    for info in segments:
        if int(info.label_value) < 1 or int(info.label_value) > 65535:
            raise OutputError(f"segment {info.name!r} has label value {info.label_value}", "use 1..65535")
        if info.label_value in seen:
            raise OutputError(f"two segments have label value {info.label_value}", "give each its own value")
        if len(info.color_rgb) != 3 or not all(0.0 <= float(c) <= 1.0 for c in info.color_rgb):
            raise OutputError(f"segment {info.name!r} has colour {info.color_rgb}", "give RGB values in 0..1")
        seen.add(int(info.label_value))
    # A label value without a segment would be silently dropped by Slicer: describe it instead.
    for value in label_values_present(labels_kji):
        if value not in seen:
            segments.append(SegmentInfo(value, f"Segment_{value}", default_segment_color(value - 1)))
    return sorted(segments, key=lambda info: info.label_value)


#: NIfTI formats; they hold perpendicular voxel axes only (see :func:`check_output_geometry`).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: How far (in voxels of the smallest spacing) NIfTI's perpendicular axes may move a voxel of a sheared
#: grid: below it the shift is rounding, above it the labelmap would not lie on the image's voxels.
NIFTI_SHEAR_TOLERANCE_VOXELS = 0.01


def nifti_shift_mm(reference: Volume) -> float:
    """How far (mm) the farthest voxel of ``reference``'s grid moves when its voxel axes are made
    perpendicular, as ITK's NIfTI writer does (the nearest rotation to the axes, origin kept); 0 for the
    usual grids, whose axes are perpendicular (flipped, permuted or oblique alike)."""
    columns = np.asarray(reference.ijk_to_ras, dtype=float)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    left, _, right = np.linalg.svd(columns / spacing)
    perpendicular = (left @ right) * spacing
    corners_ijk = np.array(np.meshgrid(*[[0, n - 1] for n in reference.shape_ijk])).reshape(3, -1)
    return float(np.linalg.norm((columns - perpendicular) @ corners_ijk, axis=0).max())


#: The most voxels along an axis a NIfTI-1 file holds (``dim`` is int16); ITK failed after the whole run
#: with "greater than maximum possible dimension", which the writer's message told as a disk problem.
NIFTI1_MAX_DIMENSION = 32767


def check_output_geometry(path: str | Path, reference: Volume) -> None:
    """OutputError when ``path``'s format cannot hold ``reference``'s geometry.

    NIfTI stores perpendicular voxel axes only; ITK's writer makes a sheared grid's axes (a gantry-tilted
    CT's, an affinely transformed volume's, kept exactly in NRRD or MHA) perpendicular with a warning, and
    the labelmap then lies off the image's voxels, by millimetres at its far end.
    """
    if output_suffix(path) not in NIFTI_SUFFIXES:
        return
    if max(reference.shape_ijk) > NIFTI1_MAX_DIMENSION:  # its header's dimensions are 16-bit integers
        raise OutputError(
            f"{reference.name} has {max(reference.shape_ijk)} voxels along an axis and NIfTI-1 holds at most "
            f"{NIFTI1_MAX_DIMENSION}: {Path(path).name} cannot be written",
            "write .nrrd, .seg.nrrd or .mha instead",
        )
    shift_mm = nifti_shift_mm(reference)
    if shift_mm > NIFTI_SHEAR_TOLERANCE_VOXELS * min(reference.spacing_ijk):
        raise OutputError(
            f"{reference.name}'s voxel axes are not perpendicular (a sheared grid, e.g. a gantry-tilted CT) "
            f"and NIfTI cannot store that: {Path(path).name} would lie up to {shift_mm:.2g} mm off the image",
            "write .nrrd, .seg.nrrd or .mha instead (they keep the geometry exactly)",
        )


def write_labelmap(
    labelmap_kji: np.ndarray, reference: Volume, path: str | Path, segments: list[SegmentInfo] | None = None
) -> Path:
    """Write a labelmap on ``reference``'s grid (its exact IJK->RAS geometry); returns the path written.

    The format follows the extension: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd`` (SimpleITK,
    compressed, uint8 when every label is < 256 else uint16) or ``.seg.nrrd`` (3D Slicer's segmentation
    file, written with slicerio; ``segments`` give names, colours and label values, and labels present
    without a segment get a default one). The plain formats cannot store names or colours.

    Raises OutputError for an unknown extension, a missing or unwritable folder, a labelmap of another
    shape than the reference, labels that are not 0..65535, or a NIfTI name for a sheared grid
    (:func:`check_output_geometry`); an existing file is then left untouched.
    """
    path = Path(path).expanduser()
    suffix = output_suffix(path)
    check_output_geometry(path, reference)
    labels_kji = _checked_labels(labelmap_kji, reference)
    if suffix == ".seg.nrrd":
        infos = _checked_segments(labels_kji, segments)
        return atomic_write(path, lambda target: _write_seg_nrrd(labels_kji, reference, target, infos))

    def write(target: Path) -> None:
        import SimpleITK as sitk  # lazy: 60 MB of native code

        image = volume_to_sitk(reference.with_voxels(labels_kji))
        sitk.WriteImage(image, str(target), useCompression=True)
        if suffix in NIFTI_SUFFIXES:
            check_nifti_complete(target, labels_kji.nbytes)

    return atomic_write(path, write)


#: NIfTI-1 and NIfTI-2 headers: their size (the first 4 bytes), and the place and type of vox_offset.
_NIFTI_VOX_OFFSET = ((348, 108, "f"), (540, 168, "q"))


def check_nifti_complete(path: Path, data_bytes: int) -> None:
    """OSError unless the NIfTI file ``path`` holds its header and all ``data_bytes`` of voxels.

    ITK's NIfTI writer (nifti's znzlib) ignores failed writes: on a full disk, or past a file size limit,
    it returns as if done and leaves a short .nii or a cut .nii.gz, which would then replace a good file.
    A .nii must be as long as its header's voxel offset plus the voxels; a .nii.gz's gzip trailer (its
    last 4 bytes) holds the length it decompresses to, and a cut stream ends in other bytes.
    """
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as file:
            header = file.read(544)
    except (OSError, EOFError):  # an empty or cut gzip stream
        header = b""
    offset = None
    for order, (size, field, kind) in itertools.product("<>", _NIFTI_VOX_OFFSET):
        if len(header) >= size and struct.unpack(f"{order}i", header[:4])[0] == size:
            offset = int(struct.unpack(f"{order}{kind}", header[field : field + struct.calcsize(kind)])[0])
            break
    expected = None if offset is None else offset + data_bytes
    if expected is not None and compressed:
        with open(path, "rb") as file:
            file.seek(-4, os.SEEK_END)
            complete = int.from_bytes(file.read(4), "little") == expected % 2**32
    else:
        complete = expected is not None and path.stat().st_size == expected
    if not complete:
        raise OSError(f"{path.name} came out incomplete (a full disk, or a file size limit)")


def _write_seg_nrrd(
    labels_kji: np.ndarray, reference: Volume, target: Path, infos: list[SegmentInfo]
) -> None:
    import slicerio  # lazy; writes through pynrrd

    # One line per header field: a newline in a name would end the NRRD field early. Slicer (teem) reads a
    # backslash and "n" in a field as a newline and two backslashes as one: escape backslashes as it does.
    names = [
        (" ".join(str(info.name).split()) or f"Segment_{info.label_value}").replace("\\", "\\\\")
        for info in infos
    ]
    # pynrrd encodes its header as ASCII, but Slicer writes and reads segment names as UTF-8 bytes: a
    # non-ASCII name goes through pynrrd as an ASCII placeholder, then its line gets the UTF-8 name.
    utf8_names = {n: name for n, name in enumerate(names) if not name.isascii()}
    shape_ijk = labels_kji.shape[::-1]
    full_extent = [0, shape_ijk[0] - 1, 0, shape_ijk[1] - 1, 0, shape_ijk[2] - 1]
    segmentation = {
        # slicerio writes voxels in Fortran order: axis 0 is I, the fastest in the file.
        "voxels": labels_kji.transpose(2, 1, 0),
        "ijkToLPS": LPS_TO_RAS @ reference.ijk_to_ras,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": [
            {
                "id": f"Segment_{info.label_value}",
                "name": f"Segment_{info.label_value}" if n in utf8_names else names[n],
                "color": [float(c) for c in info.color_rgb],
                "nameAutoGenerated": False,
                "colorAutoGenerated": False,
                "labelValue": int(info.label_value),
                "layer": 0,
                # The full extent, not the segment's own: some Slicer versions cropped every segment of
                # a layer to the first segment's extent (slicerio's extract_segments notes the same).
                "extent": full_extent,
                **_terminology_field(info),
            }
            for n, info in enumerate(infos)
        ],
    }
    if not utf8_names:
        slicerio.write_segmentation(str(target), segmentation, compression_level=SEG_NRRD_GZIP_LEVEL)
        return
    buffer = io.BytesIO()
    slicerio.write_segmentation(buffer, segmentation, compression_level=SEG_NRRD_GZIP_LEVEL)
    data = buffer.getvalue()
    header_end = data.index(b"\n\n") + 2  # an attached-data NRRD: the header ends at the first blank line
    header = data[:header_end]
    for n, name in utf8_names.items():
        placeholder = f"\nSegment{n}_Name:=Segment_{infos[n].label_value}\n".encode("ascii")
        header = header.replace(placeholder, f"\nSegment{n}_Name:={name}\n".encode(), 1)  # UTF-8
    target.write_bytes(header + data[header_end:])
