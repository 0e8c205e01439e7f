"""A volume is its voxels in numpy KJI order plus a 4x4 IJK->RAS matrix (Slicer's convention).

Files are read with SimpleITK (NIfTI, NRRD/NHDR, MHA/MHD, a DICOM series folder); their LPS geometry is
converted to RAS once, here, so nothing downstream thinks about LPS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detached_data import check_detached_data
from .dicom_series import is_dicom_file, read_dicom_series
from .errors import VolumeError
from .geometry import apply_affine, ijk_to_ras_matrix, itk_geometry_from_ijk_to_ras
from .nifti_size import check_nifti_readable

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


def read_volume(path: str | Path, frame: int | None = None, series: str | None = None) -> Volume:
    """Read a 3D volume (NIfTI, NRRD/NHDR, MHA/MHD, DICOM series folder) into RAS geometry.

    ``frame`` picks one time point of a 4D image; a 4D image without it is refused with the frame count.
    ``series`` picks one series of a DICOM folder by its UID (or a part of it that only that one holds);
    without it the largest is read, and ``metadata`` names the others.
    """
    sitk = _sitk()
    path = _existing(path)
    _check_series_choice(path, series)
    metadata: dict = {"source": str(path)}
    with _readable(path):
        if path.is_dir():
            image, extra = read_dicom_series(path, series)
            metadata.update(extra)
        else:
            check_nifti_readable(path)
            check_detached_data(path)
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


def read_volume_header(path: str | Path, frame: int | None = None, series: str | None = None) -> Volume:
    """The volume :func:`read_volume` would give, from the file's header alone: its geometry, shape and
    voxel type, checked the same way, with zeros for voxels that take no memory (a read-only broadcast;
    ``nbytes`` still counts the real size). For ``--estimate``, which needs sizes, not values: a header
    takes milliseconds where a 512 x 512 x 1000 CT takes 2 s to read. A DICOM series folder is read
    whole (its slices are sorted from every file's header anyway)."""
    sitk = _sitk()
    path = _existing(path)
    if path.is_dir():
        return read_volume(path, frame, series)
    _check_series_choice(path, series)
    check_nifti_readable(path)
    check_detached_data(path)  # the reader below never opens it
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


def _check_series_choice(path: Path, series: str | None) -> None:
    if series is not None and not path.is_dir():
        raise VolumeError(
            f"a DICOM series was chosen, but {path} is a file, not a DICOM folder",
            "drop --series (it chooses among the series of a DICOM folder)",
        )


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
        if path.is_file() and is_dicom_file(path):  # one slice of a series, most likely
            raise VolumeError(
                f"{path} is a single DICOM slice {size[:2]}",
                f"give the folder of its series ({path.parent}) instead of one of its files",
            )
        raise VolumeError(
            f"{path} holds a single slice {size[:2]}",
            "give a 3D volume with several slices",
        )
    return (int(size[0]), int(size[1]), int(size[2]))


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
