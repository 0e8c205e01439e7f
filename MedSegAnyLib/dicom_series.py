"""A DICOM series folder as a SimpleITK image, checked where ITK's series reader guesses silently.

ITK spreads a series' slices evenly between the first and the last and along the slice normal, whatever
their recorded positions, and takes the first slice's voxel type for all: a missing slice, a gantry tilt,
a localizer filed in the series or per-slice rescaling (PET) then gave a wrong volume without an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import VolumeError


def _sitk():
    import SimpleITK as sitk  # lazy: 60 MB of native code

    return sitk


@contextlib.contextmanager
def _itk_warnings_hidden() -> Iterator[None]:
    """ITK's global warning display off, then back as it was (a caller, e.g. Slicer or a script, may have
    turned it off itself: switching it on afterwards changed a process-wide setting)."""
    process_object = _sitk().ProcessObject
    was_shown = process_object.GetGlobalWarningDisplay()
    process_object.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        process_object.SetGlobalWarningDisplay(was_shown)


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder: its Series Instance UID, files and Series Description."""

    uid: str
    files: tuple[str, ...]
    description: str

    def __str__(self) -> str:
        described = f", {self.description!r}" if self.description else ""
        return f"{self.uid} ({len(self.files)} files{described})"


def list_dicom_series(folder: Path) -> list[DicomSeries]:
    """The DICOM series of ``folder``, the largest first (the one read when none is chosen)."""
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    with _itk_warnings_hidden():  # ITK prints "No Series were found" to stderr
        series_ids = reader.GetGDCMSeriesIDs(str(folder))
    found = [
        DicomSeries(uid, tuple(reader.GetGDCMSeriesFileNames(str(folder), uid)), "") for uid in series_ids
    ]
    if len(found) > 1:  # the descriptions only help to choose: one header read each
        found = [replace(series, description=_description(series.files[0])) for series in found]
    # among series of one size (the phases of a CT), ITK's last first: the one read before --series came,
    # so a folder read again without it gives the series it gave before
    return sorted(reversed(found), key=lambda series: -len(series.files))


def _description(path: str) -> str:
    """A file's Series Description (0008,103E), "" when it has none or cannot be read."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(path)
    try:
        with _itk_warnings_hidden():
            reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""


def choose_dicom_series(folder: Path, all_series: list[DicomSeries], choice: str | None) -> DicomSeries:
    """The series ``choice`` names (its whole UID, or a part of it only one series' UID holds); the
    largest when ``choice`` is None."""
    if not all_series:
        raise VolumeError(
            f"{folder} is a folder without a DICOM series", "give a file or a DICOM series folder"
        )
    if choice is None:
        return all_series[0]
    exact = [series for series in all_series if series.uid == choice.strip()]
    matching = exact or [series for series in all_series if choice.strip() in series.uid]
    if len(matching) == 1:
        return matching[0]
    listed = "; ".join(map(str, all_series))
    if not matching:
        raise VolumeError(
            f"no DICOM series in {folder} has the UID {choice!r}; it holds {listed}",
            "give one of these UIDs (or a part of it that only one of them holds) to --series",
        )
    raise VolumeError(
        f"{choice!r} is part of the UID of {len(matching)} DICOM series in {folder}: "
        + "; ".join(map(str, matching)),
        "give more of the UID to --series",
    )


def read_dicom_series(folder: Path, series_uid: str | None = None):
    """The series ``series_uid`` chooses (see :func:`choose_dicom_series`; the largest by default) as a
    SimpleITK image, and metadata naming it and the folder's other series."""
    sitk = _sitk()
    all_series = list_dicom_series(folder)
    chosen = choose_dicom_series(folder, all_series, series_uid)
    files = list(chosen.files)
    series = {
        "dicom_series_uid": chosen.uid,
        "dicom_series_count": len(all_series),
        "dicom_series_chosen": series_uid is not None,
        "dicom_other_series": [str(other) for other in all_series if other is not chosen],
    }
    reader = sitk.ImageSeriesReader()
    if len(files) == 1:  # a multi-frame (enhanced) file holds its slices itself: the series reader
        return sitk.ReadImage(files[0]), series  # stacked it as a 4D image of 1 frame
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # every slice's tags: its position, checked below
    with _itk_warnings_hidden():  # ITK's "Non uniform sampling" warning: told below
        image = reader.Execute()
        if len({_rescale_of(reader, index) for index in range(len(files))}) > 1:
            # slices rescaled each their own way (PET): the voxel type ITK took from the first slice
            # (int16 for a slope of 1) truncated or wrapped the others' values; float32 holds them all
            reader.SetOutputPixelType(sitk.sitkFloat32)
            image = reader.Execute()
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


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM file does: 128 bytes of preamble, then "DICM"."""
    try:
        with path.open("rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False
