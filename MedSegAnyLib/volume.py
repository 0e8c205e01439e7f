"""A volume is its voxels in numpy KJI order plus a 4x4 IJK->RAS matrix (Slicer's convention).

Files are read with SimpleITK (NIfTI, NRRD/NHDR, MHA/MHD, a DICOM series folder); their LPS geometry is
converted to RAS once, here, so nothing downstream thinks about LPS.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import VolumeError
from .geometry import apply_affine, ijk_to_ras_matrix, itk_geometry_from_ijk_to_ras

#: Extensions SimpleITK reads that we advertise; anything else is tried too, then refused clearly.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Volume:
    """Voxels (K, J, I) and their IJK->RAS geometry. Arrays are not copied; treat them as read-only."""

    voxels_kji: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = "volume"
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.voxels_kji.ndim != 3:
            raise VolumeError(
                f"{self.name} has {self.voxels_kji.ndim} dimensions, a volume needs 3",
                "give a 3D image (a single slice or a 2D picture cannot be propagated)",
            )
        matrix = np.asarray(self.ijk_to_ras, dtype=float)
        if (
            matrix.shape != (4, 4)
            or not np.isfinite(matrix).all()
            or abs(np.linalg.det(matrix[:3, :3])) < 1e-12
        ):
            raise VolumeError(f"{self.name} has an invalid IJK->RAS matrix", "check the file's geometry")
        object.__setattr__(self, "ijk_to_ras", matrix)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.voxels_kji.shape
        return (i, j, k)

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def spacing_ijk(self) -> tuple[float, float, float]:
        return tuple(np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0).tolist())

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3]))) / 1000.0

    def ijk_to_ras_points(self, points_ijk: np.ndarray) -> np.ndarray:
        return apply_affine(self.ijk_to_ras, points_ijk)

    def ras_to_ijk_points(self, points_ras: np.ndarray) -> np.ndarray:
        return apply_affine(self.ras_to_ijk, points_ras)

    def with_voxels(self, voxels_kji: np.ndarray, name: str | None = None) -> Volume:
        """A volume with the same geometry and other voxels (a labelmap, a windowed copy)."""
        if voxels_kji.shape != self.voxels_kji.shape:
            raise ValueError(f"shape {voxels_kji.shape} differs from the volume's {self.voxels_kji.shape}")
        return Volume(voxels_kji, self.ijk_to_ras, name or self.name, dict(self.metadata))


def _sitk():
    import SimpleITK as sitk  # lazy: 60 MB of native code

    return sitk


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found" to stderr
    try:
        series_ids = reader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)
    if not series_ids:
        raise VolumeError(
            f"{folder} is a folder without a DICOM series", "give a file or a DICOM series folder"
        )
    if len(series_ids) > 1:
        # The largest series is the most likely the user means; say which one we took.
        series_ids = sorted(series_ids, key=lambda s: len(reader.GetGDCMSeriesFileNames(str(folder), s)))
    files = reader.GetGDCMSeriesFileNames(str(folder), series_ids[-1])
    series = {"dicom_series_uid": series_ids[-1], "dicom_series_count": len(series_ids)}
    if len(files) == 1:  # a multi-frame (enhanced) file holds its slices itself: the series reader
        return sitk.ReadImage(files[0]), series  # stacked it as a 4D image of 1 frame
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # every slice's tags: its position, checked below
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "Non uniform sampling" warning: told below
    try:
        image = reader.Execute()
        if len({_rescale_of(reader, index) for index in range(len(files))}) > 1:
            # slices rescaled each their own way (PET): the voxel type ITK took from the first slice
            # (int16 for a slope of 1) truncated or wrapped the others' values; float32 holds them all
            reader.SetOutputPixelType(sitk.sitkFloat32)
            image = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)
    _check_one_orientation(folder, reader, len(files))
    positions_lps = _slice_positions_lps(reader, len(files))
    if positions_lps is not None:
        _check_even_slices(folder, positions_lps)
        _shear_for_tilt(image, positions_lps)
    return image, series


#: Rescale Slope and Intercept: a slice's value is slope * stored + intercept.
RESCALE_TAGS = ("0028|1053", "0028|1052")


def _rescale_of(reader, index: int) -> tuple[float | str | None, ...]:
    """Slice ``index``'s (slope, intercept), as numbers where they are ("1" and "1.0 " are one)."""
    values: list[float | str | None] = []
    for tag in RESCALE_TAGS:
        text = reader.GetMetaData(index, tag).strip() if reader.HasMetaDataKey(index, tag) else None
        try:
            values.append(None if text is None else float(text))
        except ValueError:
            values.append(text)
    return tuple(values)


def _slice_positions_lps(reader, count: int) -> np.ndarray | None:
    """Each slice's Image Position (Patient) in the reader's slice order, (N, 3) LPS mm; None when a
    slice has none (a secondary capture: no geometry to check)."""
    positions = []
    for index in range(count):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return None
        try:
            positions.append([float(value) for value in reader.GetMetaData(index, "0020|0032").split("\\")])
        except ValueError:
            return None
    return np.asarray(positions) if all(len(position) == 3 for position in positions) else None


def _check_one_orientation(folder: Path, reader, count: int) -> None:
    """VolumeError when the series' slices do not share one Image Orientation: a localizer (scout) filed
    in the series, whose slice ITK stacked among the others (they were then refused as unevenly spaced,
    "a missing slice?", which sent the user looking for the wrong thing)."""
    orientations: list[np.ndarray] = []
    for index in range(count):
        if reader.HasMetaDataKey(index, "0020|0037"):
            try:
                cosines = np.array([float(v) for v in reader.GetMetaData(index, "0020|0037").split("\\")])
            except ValueError:
                continue
            if cosines.shape != (6,):
                continue
            # written rounded: cosines within 1e-3 are one plane
            if not any(np.allclose(cosines, seen, rtol=0, atol=1e-3) for seen in orientations):
                orientations.append(cosines)
    if len(orientations) > 1:
        raise VolumeError(
            f"the DICOM series in {folder} mixes slices of {len(orientations)} orientations (a localizer "
            "or scout image among them?)",
            "move the images of the other orientations out of the folder",
        )


#: How far (in slice spacings) a DICOM slice may lie from its place on an evenly spaced grid: positions are
#: written rounded (a few micrometres), a missing slice moves its neighbours by half a spacing or more.
SLICE_POSITION_TOLERANCE = 0.1


def _check_even_slices(folder: Path, positions_lps: np.ndarray) -> None:
    """VolumeError unless the slices lie evenly spaced on one line. ITK's reader spreads them evenly
    between the first and the last whatever their positions (a warning on stderr aside), so a missing
    slice stretched the whole volume and moved every slice after the gap."""
    count = len(positions_lps)
    if count < 2:
        return
    step_lps = (positions_lps[-1] - positions_lps[0]) / (count - 1)
    gaps_mm = np.linalg.norm(np.diff(positions_lps, axis=0), axis=1)
    if np.linalg.norm(step_lps) < 1e-6 or gaps_mm.min() < 1e-6:
        raise VolumeError(
            f"the DICOM series in {folder} has several slices at one position (a time series, several "
            "echoes or phases in one series?)",
            "export one time point (echo, phase) as a series of its own, or as a NIfTI/NRRD file",
        )
    expected_lps = positions_lps[0] + np.arange(count)[:, None] * step_lps
    off_mm = np.linalg.norm(positions_lps - expected_lps, axis=1)
    if off_mm.max() > SLICE_POSITION_TOLERANCE * np.linalg.norm(step_lps):
        raise VolumeError(
            f"the DICOM series in {folder} has unevenly spaced slices (gaps from {gaps_mm.min():.3g} to "
            f"{gaps_mm.max():.3g} mm: a missing slice?), which a volume's regular grid cannot hold",
            "give the complete series, or resample it to even spacing (in 3D Slicer) and save it as NRRD",
        )


def _shear_for_tilt(image, positions_lps: np.ndarray) -> None:
    """Give ``image`` the slices' real step when it leaves the slice normal (a gantry-tilted CT). ITK
    puts the slices on the normal through the first one, |step| apart: each slice of a 20-degree tilt
    was then misplaced sideways and along the normal, by centimetres at the far end. The step as the
    K axis makes a sheared grid, which NRRD and MHA outputs keep exactly (NIfTI ones are refused)."""
    count = len(positions_lps)
    if count < 2:
        return
    step_lps = (positions_lps[-1] - positions_lps[0]) / (count - 1)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    normal = direction[:, 2]
    sideways_mm = np.linalg.norm(step_lps - (step_lps @ normal) * normal) * (count - 1)
    if sideways_mm <= 0.1 * min(image.GetSpacing()[:2]):  # rounded positions: keep ITK's exact grid
        return
    spacing_k = float(np.linalg.norm(step_lps))
    direction[:, 2] = step_lps / spacing_k
    image.SetSpacing((*image.GetSpacing()[:2], spacing_k))
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(tuple(positions_lps[0]))


def read_volume(path: str | Path, frame: int | None = None) -> Volume:
    """Read a 3D volume (NIfTI, NRRD/NHDR, MHA/MHD, DICOM series folder) into RAS geometry.

    ``frame`` picks one time point of a 4D image; a 4D image without it is refused with the frame count.
    """
    sitk = _sitk()
    path = _existing(path)
    metadata: dict = {"source": str(path)}
    with _readable(path):
        if path.is_dir():
            image, extra = _read_dicom_series(path)
            metadata.update(extra)
        else:
            _check_nifti_complete(path)
            image = sitk.ReadImage(str(path))
    size = _checked_size(
        path, image.GetDimension(), tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel(), frame
    )
    if image.GetDimension() == 4:
        extract = [*size, 0]
        image = sitk.Extract(image, extract, [0, 0, 0, frame])
        metadata["frame"] = frame
    voxels_kji = _voxels_of(image)
    if np.iscomplexobj(voxels_kji):  # the header's check counts its 2 components: the same answer
        _refuse_components(path, 2)
    ijk_to_ras = ijk_to_ras_matrix(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return Volume(voxels_kji, ijk_to_ras, name=_volume_name(path), metadata=metadata)


def read_volume_header(path: str | Path, frame: int | None = None) -> Volume:
    """The volume :func:`read_volume` would give, from the file's header alone: its geometry, shape and
    voxel type, checked the same way, with zeros for voxels that take no memory (a read-only broadcast;
    ``nbytes`` still counts the real size). For ``--estimate``, which needs sizes, not values: a header
    takes milliseconds where a 512 x 512 x 1000 CT takes 2 s to read. A DICOM series folder is read
    whole (its slices are sorted from every file's header anyway)."""
    sitk = _sitk()
    path = _existing(path)
    if path.is_dir():
        return read_volume(path, frame)
    _check_nifti_complete(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _readable(path):
        reader.ReadImageInformation()
    dimension = reader.GetDimension()
    size = _checked_size(path, dimension, tuple(reader.GetSize()), reader.GetNumberOfComponents(), frame)
    # a 4D header's geometry holds the time axis last: its 3D part is what Extract keeps
    spacing, origin = reader.GetSpacing()[:3], reader.GetOrigin()[:3]
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dimension, dimension)[:3, :3]
    dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).dtype
    voxels_kji = np.broadcast_to(np.zeros((), dtype=dtype), size[::-1])
    metadata: dict = {"source": str(path), "header_only": True}
    if dimension == 4:
        metadata["frame"] = frame
    ijk_to_ras = ijk_to_ras_matrix(spacing, origin, direction.ravel())
    return Volume(voxels_kji, ijk_to_ras, name=_volume_name(path), metadata=metadata)


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"{path} does not exist", "check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise VolumeError(f"{path} is empty (0 bytes)", "give a complete image file")
    return path


def _check_nifti_complete(path: Path) -> None:
    """VolumeError when a .nii/.nii.gz file holds fewer voxel bytes than its header declares (a copy or
    a download cut short): ITK's NIfTI reader fills the missing voxels with zeros without a word."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    compressed = name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as stream:
            expected = _nifti_file_bytes(stream.read(540))
        if expected is None:
            return  # not a header we know: SimpleITK tells what is wrong
        if compressed:
            with path.open("rb") as raw:  # a whole gzip member ends with its size (mod 2**32): no need
                raw.seek(-4, os.SEEK_END)  # to inflate it all, except when that disagrees
                if int.from_bytes(raw.read(4), "little") == expected % 2**32:
                    return
            held = _inflated_bytes(path)
        else:
            held = path.stat().st_size
    except (OSError, EOFError, zlib.error):
        return  # an unreadable header: SimpleITK's error names it
    if held < expected:
        raise VolumeError(
            f"{path} is truncated: it holds {held} of the {expected} bytes its header declares",
            "copy or download the file again (the transfer was cut short)",
        )


def _nifti_file_bytes(header: bytes) -> int | None:
    """The bytes of a .nii file (its voxels' offset plus their size) from its NIfTI-1 or -2 header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(size < 1 for size in dims[1 : dims[0] + 1]):
        return None
    return offset + math.prod(dims[1 : dims[0] + 1]) * bitpix // 8


def _inflated_bytes(path: Path) -> int:
    """How many bytes a gzip file (of one member or several) inflates to before it ends or breaks off;
    16 MiB at a time (``gzip`` drops the last block read before a cut)."""
    count = 0
    with path.open("rb") as raw:
        inflater = zlib.decompressobj(wbits=31)
        data = raw.read(1 << 20)
        while data:
            try:
                count += len(inflater.decompress(data, 1 << 24))
            except zlib.error:
                break  # corrupt: what came before is what ITK read
            if inflater.unconsumed_tail:
                data = inflater.unconsumed_tail
            elif inflater.eof:  # the next member, if any
                data = inflater.unused_data or raw.read(1 << 20)
                inflater = zlib.decompressobj(wbits=31)
            else:
                data = raw.read(1 << 20)
    return count


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """SimpleITK's RuntimeError for an unreadable file as a one-line VolumeError."""
    try:
        yield
    except RuntimeError as error:
        text = str(error).strip()
        if "Failed to allocate memory" in text:  # not a format problem: "give a NIfTI..." misled
            raise VolumeError(
                f"{path} is too large to read into the memory free (or its header is damaged)",
                "free memory, or crop or downsample the volume",
            ) from None
        first_line = text.splitlines()[-1].removeprefix("sitk::ERROR: ")[:200] if text else "unknown format"
        raise VolumeError(
            f"{path} is not an image SimpleITK can read ({first_line})",
            "give a NIfTI, NRRD, MHA/MHD file or a DICOM series folder",
        ) from None


def _checked_size(
    path: Path, dimension: int, size: tuple[int, ...], components: int, frame: int | None
) -> tuple[int, int, int]:
    """The (I, J, K) size of the 3D volume to segment, or a VolumeError naming what the file is instead
    (colour, 2D, a single slice, 4D without a valid ``frame``)."""
    if components > 1:
        _refuse_components(path, components)
    if dimension == 4:
        frames = size[3]
        if frame is None:
            raise VolumeError(
                f"{path} is 4D with {frames} frames",
                f"choose one with --frame N (0..{frames - 1})",
            )
        if not 0 <= frame < frames:
            raise VolumeError(f"frame {frame} is outside 0..{frames - 1} of {path}", "choose a valid frame")
        size = size[:3]
    elif frame not in (None, 0):
        raise VolumeError(f"--frame {frame} was given but {path} is {dimension}D", "drop --frame")
    if dimension == 2:
        raise VolumeError(
            f"{path} is a 2D image {size}",
            "give a 3D volume (MedSegAny propagates through slices)",
        )
    if len(size) != 3:
        raise VolumeError(f"{path} has {dimension} dimensions", "give a 3D volume")
    if size[2] == 1:
        if path.is_file() and _is_dicom_file(path):  # one slice of a series, most likely
            raise VolumeError(
                f"{path} is a single DICOM slice {size[:2]}",
                f"give the folder of its series ({path.parent}) instead of one of its files",
            )
        raise VolumeError(
            f"{path} holds a single slice {size[:2]}",
            "give a 3D volume with several slices",
        )
    return (int(size[0]), int(size[1]), int(size[2]))


def _is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM file does: 128 bytes of preamble, then "DICM"."""
    try:
        with path.open("rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", *VOLUME_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name or "volume"


class _ImageVoxels:
    """A SimpleITK image's voxel buffer as a numpy array's base: the array views the image's memory (no
    copy) and keeps the image alive, which ``sitk.GetArrayViewFromImage`` alone does not do."""

    def __init__(self, image) -> None:
        self.image = image
        self.__array_interface__ = dict(_sitk().GetArrayViewFromImage(image).__array_interface__)


def _refuse_components(path: Path, components: int) -> None:
    raise VolumeError(
        f"{path} has {components} components per voxel (colour, vector or complex image)",
        "give a scalar (grey-level) volume (of a complex image: its magnitude)",
    )


def _voxels_of(image) -> np.ndarray:
    """The image's voxels (K, J, I), read-only, in the image's own memory. ``GetArrayFromImage`` copies
    them: a 512 x 512 x 1000 int16 CT read in 1.93 s instead of 2.28 (.nii.gz; benchmarks/read_volume.py).
    The peak while reading is the same either way: SimpleITK's reader holds a copy of its own then."""
    return np.asarray(_ImageVoxels(image))


def volume_to_sitk(volume: Volume):
    """A SimpleITK image with the volume's voxels and geometry (LPS, as ITK wants)."""
    sitk = _sitk()
    voxels = volume.voxels_kji.astype(np.uint8) if volume.voxels_kji.dtype == bool else volume.voxels_kji
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    spacing, origin, direction = itk_geometry_from_ijk_to_ras(volume.ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image
