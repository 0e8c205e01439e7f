"""Shared fixtures: the real-data folder (or a clean skip) and tiny synthetic volumes with awkward geometry.

Geometry here is ITK's: spacing per IJK axis, origin in LPS, direction a 3x3 LPS matrix whose columns are
the I, J, K axes. The volumes are small (a few thousand voxels) so that every test stays fast on 2 cores.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# LiteMedSAM compiles its encoder on a CPU by default (20-50 s once per process): tests that do not measure
# that path run the model eagerly (subprocesses of the CLI tests inherit this); test_compute.py and
# test_litemedsam.py ask for compile="on" explicitly.
os.environ.setdefault("MEDSEGANY_COMPILE", "off")


@pytest.fixture(autouse=True)
def _ieee_denormals_after_each_test():
    """A model load flushes denormals to zero in its thread (``medsegany.cpu_tuning``: faster on a CPU),
    and hypothesis then refuses to draw subnormal floats. Every test starts from IEEE arithmetic, so a
    test's outcome does not depend on which tests ran before it in the process."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)
    # and as if no model had been loaded: a session's model calls flush their thread once a model was
    # loaded in the process (the flag is per thread), which would otherwise depend on earlier tests
    cpu_tuning = sys.modules.get("medsegany.cpu_tuning")
    if cpu_tuning is not None:
        cpu_tuning._PROCESS_TUNING = None


@pytest.fixture
def tuned_process(monkeypatch):
    """This process as after a model was loaded on a CPU, on another thread than the one tested (the
    tested thread is made while this one keeps IEEE arithmetic: a thread copies its maker's flag)."""
    import torch
    from medsegany import cpu_tuning

    tuning = cpu_tuning.tune_cpu(threads=torch.get_num_threads(), probe=False)
    torch.set_flush_denormal(False)
    monkeypatch.setattr(cpu_tuning, "_PROCESS_TUNING", tuning)
    return tuning


def _shared_data_candidates() -> list[Path]:
    # $MEDSEGANY_SHARED_DATA, when set, is the only place looked at (pointing it elsewhere disables the data).
    if os.environ.get("MEDSEGANY_SHARED_DATA"):
        return [Path(os.environ["MEDSEGANY_SHARED_DATA"])]
    # CI and the team checkout keep the data beside the repository: <repo>/../shared/data
    return [Path(__file__).resolve().parents[2].parent / "shared" / "data"]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real labelled data folder (../shared/data or $MEDSEGANY_SHARED_DATA); skips when absent."""
    for candidate in _shared_data_candidates():
        if (candidate / "cases.json").is_file():
            return candidate
    pytest.skip("real data folder ../shared/data is absent (set MEDSEGANY_SHARED_DATA to use another)")


@dataclass(frozen=True)
class ItkGeometry:
    """ITK's description of a grid: spacing (IJK), origin (LPS), direction (3x3, columns = I, J, K in LPS)."""

    spacing_ijk: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction_lps: np.ndarray

    @property
    def ijk_to_lps(self) -> np.ndarray:
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_lps @ np.diag(self.spacing_ijk)
        matrix[:3, 3] = self.origin_lps
        return matrix

    def apply_to(self, image) -> None:
        image.SetSpacing(tuple(float(s) for s in self.spacing_ijk))
        image.SetOrigin(tuple(float(o) for o in self.origin_lps))
        image.SetDirection(tuple(float(d) for d in self.direction_lps.ravel()))


def rotation_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation about ``axis`` (any length)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * cross + (1 - np.cos(angle_rad)) * cross @ cross


#: Oblique (25 degrees about a skewed axis) and flipped (I reversed: determinant -1), anisotropic grid.
OBLIQUE_FLIPPED = ItkGeometry(
    spacing_ijk=(0.8, 1.25, 3.0),
    origin_lps=(-41.5, 17.25, -102.0),
    direction_lps=rotation_matrix(np.array([1.0, 2.0, 0.5]), np.deg2rad(25.0)) @ np.diag([-1.0, 1.0, 1.0]),
)

#: Oblique but right-handed (determinant +1): what a DICOM series can hold (its slice axis is row x column).
OBLIQUE_RIGHT_HANDED = ItkGeometry(
    spacing_ijk=(0.9, 0.7, 2.5),
    origin_lps=(120.0, -35.5, 48.0),
    direction_lps=rotation_matrix(np.array([0.3, -1.0, 0.7]), np.deg2rad(20.0)),
)


def labelled_phantom_kji(
    shape_kji: tuple[int, int, int] = (6, 9, 11), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(image_kji int16, labels_kji uint8): random intensities, a box labelled 1, a corner voxel labelled 2.

    Nothing is symmetric, so a flipped or permuted axis anywhere changes the comparison.
    """
    rng = np.random.default_rng(seed)
    image_kji = rng.integers(-1000, 1500, size=shape_kji, dtype=np.int16)
    labels_kji = np.zeros(shape_kji, dtype=np.uint8)
    k, j, i = shape_kji
    labels_kji[1 : k - 2, 2 : j - 3, 1 : i // 2] = 1
    labels_kji[0, 0, i - 1] = 2
    return image_kji, labels_kji


@pytest.fixture
def oblique_flipped_nrrd(tmp_path) -> tuple[Path, np.ndarray, np.ndarray, ItkGeometry]:
    """An LPS-stored NRRD on the OBLIQUE_FLIPPED grid: (path, image_kji, labels_kji, geometry)."""
    import SimpleITK as sitk

    image_kji, labels_kji = labelled_phantom_kji()
    image = sitk.GetImageFromArray(image_kji)
    OBLIQUE_FLIPPED.apply_to(image)
    path = tmp_path / "oblique_flipped.nrrd"
    sitk.WriteImage(image, str(path))
    return path, image_kji, labels_kji, OBLIQUE_FLIPPED


def write_dicom_series(
    folder: Path,
    image_kji: np.ndarray,
    geometry: ItkGeometry,
    shuffle: bool = True,
    series_uid: str | None = None,
    description: str = "MedSegAny test series",
    file_prefix: str = "IM",
) -> Path:
    """Write ``image_kji`` as a CT DICOM series, one file per K slice, with explicit geometry tags.

    Follows SimpleITK's "Dicom Series From Array" pattern: each slice carries Image Position (the LPS
    centre of its first voxel), Image Orientation (the I and J direction columns), Pixel Spacing
    (row spacing = J, column spacing = I), Slice Thickness, Instance Number and one Series UID. Files are
    written in a shuffled order under unrelated names, so a reader must sort them by position.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(image_kji.astype(np.int16))
    geometry.apply_to(volume)
    direction = geometry.direction_lps
    stamp = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    series_uid = series_uid or f"1.2.826.0.1.3680043.2.1125.{stamp[0]}.{stamp[1]}.{os.getpid()}"
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    series_tags = {
        "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0021": stamp[0],
        "0008|0031": stamp[1],
        "0008|103e": description,
        "0020|000d": series_uid + ".0",
        "0020|000e": series_uid,
        "0020|0037": orientation,
        "0028|0030": f"{geometry.spacing_ijk[1]:.6f}\\{geometry.spacing_ijk[0]:.6f}",
        "0018|0050": f"{geometry.spacing_ijk[2]:.6f}",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our series UID instead of a fresh one per file
    order = np.random.default_rng(7).permutation(image_kji.shape[0]) if shuffle else range(image_kji.shape[0])
    for file_number, k in enumerate(order):
        slice_image = volume[:, :, int(k)]
        for tag, value in series_tags.items():
            slice_image.SetMetaData(tag, value)
        position = volume.TransformIndexToPhysicalPoint((0, 0, int(k)))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(int(k) + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{int(k) + 1}")
        writer.SetFileName(str(folder / f"{file_prefix}{file_number:04d}.dcm"))
        writer.Execute(slice_image)
    return folder


@pytest.fixture
def oblique_flipped_geometry() -> ItkGeometry:
    """OBLIQUE_FLIPPED: oblique, anisotropic, determinant -1."""
    return OBLIQUE_FLIPPED


@pytest.fixture
def oblique_right_handed_geometry() -> ItkGeometry:
    """OBLIQUE_RIGHT_HANDED: oblique, anisotropic, determinant +1 (a DICOM series can hold it)."""
    return OBLIQUE_RIGHT_HANDED


@pytest.fixture
def make_labelled_phantom():
    """The :func:`labelled_phantom_kji` factory: (shape_kji, seed) -> (image_kji, labels_kji)."""
    return labelled_phantom_kji


@pytest.fixture
def make_dicom_series():
    """The :func:`write_dicom_series` factory: (folder, image_kji, geometry, shuffle) -> folder."""
    return write_dicom_series


@pytest.fixture
def dicom_series(tmp_path) -> tuple[Path, np.ndarray, np.ndarray, ItkGeometry]:
    """A DICOM series folder on the OBLIQUE_RIGHT_HANDED grid: (folder, image_kji, labels_kji, geometry)."""
    image_kji, labels_kji = labelled_phantom_kji(shape_kji=(5, 8, 10), seed=1)
    folder = write_dicom_series(tmp_path / "dicom", image_kji, OBLIQUE_RIGHT_HANDED)
    return folder, image_kji, labels_kji, OBLIQUE_RIGHT_HANDED
