"""Intensity windows: which voxel values map to black and white in the frames a model sees.

One window is chosen once per volume and applied to a *copy*, so every slice gets identical contrast
(per-slice min-max contrast makes an organ flicker from slice to slice and breaks propagation) and the
user's voxels are never changed.

- CT in Hounsfield units: a named radiology window (width W / level L -> [L - W/2, L + W/2]).
- MR, PET and anything not in HU: the 0.5th and 99.5th percentiles of the *nonzero* voxels of the whole
  volume. Zero is left out because many MR volumes are mostly exact-zero background (skull-stripped or
  masked): on the skull-stripped brain T1 of /work/shared/data (68 % zeros), whole-volume percentiles
  saturate 1.9 % of brain voxels at white, nonzero percentiles 0.6 %; on the other 12 MR/PET volumes
  there (0-9 % zeros) either end moves by < 2.6 % of the window width. It is also how MedSAM and
  LiteMedSAM prepared their MR training data (percentiles of voxels > 0), so frames look like theirs.

>>> import numpy as np
>>> voxels_kji = np.array([[[-1024, 0], [60, 1200]]], dtype=np.int16)
>>> window = resolve_intensity(voxels_kji)
>>> window.name, window.low, window.high
('ct-soft-tissue', -160.0, 240.0)
>>> apply_window(voxels_kji, window)[0].tolist()
[[0, 102], [140, 255]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import MedSegAnyError, VolumeError


@dataclass(frozen=True)
class IntensityWindow:
    """Voxel values ``low`` and below become 0, ``high`` and above 255, linear in between."""

    low: float
    high: float
    name: str  # "ct-soft-tissue", "percentile 0.5-99.5", "window -100,300"

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def level(self) -> float:
        return (self.low + self.high) / 2.0


def _ct_window(width: float, level: float, name: str) -> IntensityWindow:
    return IntensityWindow(level - width / 2.0, level + width / 2.0, name)


#: Radiology CT windows (Hounsfield units). W/L from the usual tables (Radiopaedia "Windowing (CT)").
CT_WINDOWS: dict[str, IntensityWindow] = {
    # W400 L40: abdomen/pelvis soft tissue; also MedSAM's CT default, so the default model sees what it
    # was trained on.
    "ct-soft-tissue": _ct_window(400, 40, "ct-soft-tissue"),
    # W1200 L-400: -1000 (air) is black and +200 keeps vessels and nodules visible inside the lung.
    # (Radiopaedia's W1500 L-600 = [-1350, 150] only differs below air and above soft tissue.)
    "ct-lung": _ct_window(1200, -400, "ct-lung"),
    # W1800 L400 = [-500, 1300]: Radiopaedia's bone window; wide enough that cortical bone (~1000-1300)
    # is not clipped while marrow and cancellous bone (200-500) stay grey.
    "ct-bone": _ct_window(1800, 400, "ct-bone"),
    # W80 L40: grey (~35-45) and white (~20-30) matter differ by ~15 HU, so a narrow window is needed.
    "ct-brain": _ct_window(80, 40, "ct-brain"),
    # W150 L30 = [-45, 105]: narrow, to separate liver lesions from parenchyma (~10-20 HU apart).
    "ct-liver": _ct_window(150, 30, "ct-liver"),
    # W350 L50 = [-125, 225]: mediastinal fat (-100) dark grey, vessels with contrast (~200) near white.
    "ct-mediastinum": _ct_window(350, 50, "ct-mediastinum"),
}

PERCENTILE_PRESET = "percentile"
#: Percentiles (in %) of the nonzero voxels that the "percentile" preset maps to 0 and 255.
PERCENTILES = (0.5, 99.5)
PRESET_NAMES: tuple[str, ...] = ("auto", *CT_WINDOWS, PERCENTILE_PRESET)

#: Volumes up to this many voxels are used whole; larger ones are subsampled to about this many.
#: With >= 2**20 * 2/3 ~ 700 000 samples, the rank error of a 0.5 % or 99.5 % quantile of an independent
#: sample is sqrt(0.005 * 0.995 / 7e5) = 0.0084 percentage points (1 sigma), so the window's ends lie
#: between the true 0.46th and 0.54th (99.46th-99.54th) percentiles with a 5-sigma margin. The test
#: suite checks that bound on a synthetic 2.6 M-voxel volume and the real 10.5 M-voxel MR.
SAMPLE_TARGET = 1 << 20

#: HU detection thresholds (see :func:`looks_like_hounsfield`).
AIR_MAX_HU = -500.0
SOFT_TISSUE_HU = (-200.0, 300.0)
SOFT_TISSUE_MIN_FRACTION = 0.05


def _voxels_of(volume) -> np.ndarray:
    """Accept a :class:`~medsegany.volume.Volume` or a bare KJI array."""
    return np.asarray(getattr(volume, "voxels_kji", volume))


def sample_voxels(voxels_kji: np.ndarray, target: int = SAMPLE_TARGET) -> np.ndarray:
    """A 1D strided sample of about ``target`` finite voxels (all of them for small volumes), as float64.

    The stride over the flattened volume is made odd, so on the usual power-of-two rows (256, 512) it
    walks through every column instead of sampling the same few columns on every row.
    """
    flat = np.asarray(voxels_kji).reshape(-1)  # a view for contiguous arrays, else one copy
    stride = max(1, flat.size // max(1, target))
    if stride > 1 and stride % 2 == 0:
        stride += 1
    sample = np.asarray(flat[::stride], dtype=np.float64)
    return sample[np.isfinite(sample)]


def looks_like_hounsfield(volume) -> bool:
    """Whether the voxels look like CT in Hounsfield units.

    Two facts decide, both true of every CT in /work/shared/data and of no MR/PET there:
    1. air or scanner padding: the minimum is <= -500 HU (air is -1000, padding -1024 to -3024; the MR
       there go no lower than -47 and PET SUV is never negative beyond noise);
    2. a body: >= 5 % of the voxels lie in -200..300 HU (fat, water, muscle, organs); this keeps out
       signed images that merely have a large negative minimum.
    Integer values are not required: CT resampled with linear interpolation is float and still HU.
    An already-windowed 0..255 CT (DeepLesion) has no negative values and so is not HU here.
    """
    voxels = _voxels_of(volume)
    if (
        voxels.size == 0
        or not np.issubdtype(voxels.dtype, np.number)
        or np.issubdtype(voxels.dtype, np.unsignedinteger)
    ):
        return False
    sample = sample_voxels(voxels)
    if sample.size == 0:
        return False
    with np.errstate(invalid="ignore"):
        volume_min = float(np.nanmin(voxels))  # the whole volume: a small air pocket counts too
    if not math.isfinite(volume_min):  # -inf in a float volume: fall back to the finite sample
        volume_min = float(sample.min())
    if not volume_min <= AIR_MAX_HU:
        return False
    low, high = SOFT_TISSUE_HU
    soft_tissue_fraction = float(np.count_nonzero((sample >= low) & (sample <= high))) / sample.size
    return soft_tissue_fraction >= SOFT_TISSUE_MIN_FRACTION


def percentile_window(volume, percentiles: tuple[float, float] = PERCENTILES) -> IntensityWindow:
    """The window between two percentiles of the volume's nonzero finite voxels (all voxels if all are 0).

    Computed once over the whole volume, so every slice gets the same contrast. When the nonzero voxels
    are all one value, the percentiles of all voxels (then their minimum and maximum) are used instead.
    """
    voxels = _voxels_of(volume)
    sample = sample_voxels(voxels)
    if sample.size == 0 and voxels.size:  # the stride met only NaN or infinite voxels: all of them, then
        sample = np.asarray(voxels, dtype=np.float64)[np.isfinite(voxels)]
        if sample.size == 0:  # a window of 0..0 gave the model black frames and empty masks, unexplained
            raise VolumeError(
                f"{getattr(volume, 'name', 'the volume')} has no finite voxel (all NaN or infinite)",
                "check that the right volume was chosen, or fix its values (e.g. NaN to 0) and save it again",
            )
    nonzero = sample[sample != 0]
    values = nonzero if nonzero.size else sample
    name = f"percentile {percentiles[0]:g}-{percentiles[1]:g}"
    if values.size == 0:  # an empty volume: nothing to stretch
        return IntensityWindow(0.0, 0.0, name)
    low, high = np.percentile(values, percentiles)
    if low >= high:
        # The nonzero voxels are (almost) all one value: a phantom or label-like image of 0 and 100.
        # Their window has no width and would turn every frame black; the zeros, then the extremes, give
        # the object its contrast. Only a constant volume keeps a zero-width window.
        low, high = np.percentile(sample, percentiles)
        if low >= high:
            low, high = sample.min(), sample.max()
    return IntensityWindow(float(low), float(high), name)


def explicit_window(low: float, high: float) -> IntensityWindow:
    """A user-given window; ``low`` must be below ``high``."""
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise MedSegAnyError(
            f"window {low!r},{high!r} is not two numbers", "give LO,HI, e.g. -160,240"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise MedSegAnyError(f"window {low:g},{high:g} is not finite", "give two finite numbers LO,HI")
    if low >= high:
        raise MedSegAnyError(
            f"window {low:g},{high:g} has LO >= HI",
            "give the lower value first, e.g. --window -160,240 (soft tissue: level 40, width 400)",
        )
    return IntensityWindow(low, high, f"window {low:g},{high:g}")


def resolve_intensity(
    volume, preset: str | None = "auto", window: tuple[float, float] | None = None
) -> IntensityWindow:
    """The window to apply to ``volume`` (a Volume or a KJI array).

    An explicit ``window`` (LO, HI) wins over any preset. ``preset`` "auto" (or None) picks
    ``ct-soft-tissue`` when :func:`looks_like_hounsfield`, else ``percentile``; other names are in
    :data:`PRESET_NAMES`. An unknown name raises :class:`~medsegany.errors.MedSegAnyError` listing them.
    """
    if window is not None:
        try:
            low, high = window
        except (TypeError, ValueError):
            raise MedSegAnyError(
                f"window {window!r} is not two numbers", "give LO,HI, e.g. -160,240"
            ) from None
        return explicit_window(low, high)
    key = "auto" if preset is None else str(preset).strip().lower()
    if key == "auto":
        key = "ct-soft-tissue" if looks_like_hounsfield(volume) else PERCENTILE_PRESET
    if key in CT_WINDOWS:
        return CT_WINDOWS[key]
    if key == PERCENTILE_PRESET:
        return percentile_window(volume)
    raise MedSegAnyError(
        f"unknown intensity preset {preset!r}",
        f"use one of {', '.join(PRESET_NAMES)}, or give a window LO,HI",
    )


def window_for(volume, intensity: IntensityWindow | str | tuple[float, float] | None) -> IntensityWindow:
    """The window a choice of intensity gives ``volume``: a window as it is, a (LO, HI) pair as an explicit
    window, a preset name (None: "auto") through :func:`resolve_intensity`."""
    if isinstance(intensity, IntensityWindow):
        return intensity
    if isinstance(intensity, tuple):
        return resolve_intensity(volume, window=intensity)
    return resolve_intensity(volume, preset=intensity)


#: Voxels converted per block in :func:`apply_window` (8 slices of 512 x 512), bounding each float32
#: temporary to ~8 MB instead of 4 bytes per voxel of the whole volume, and giving the threads of a large
#: volume enough blocks to share (38 for 512 x 512 x 300).
_BLOCK_VOXELS = 2 * 1024 * 1024
#: At most this many threads window one volume: NumPy's lookup and arithmetic release the GIL, and the
#: work is bound by memory bandwidth beyond a few cores (512 x 512 x 300 uint8 on the 2-core development
#: CPU: 0.165 s on one thread, 0.087 s on two).
_MAX_WINDOW_THREADS = 8


def apply_window(voxels_kji: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """A new uint8 array (same shape) with ``window`` applied; the input is never modified.

    NaN becomes 0. A window with ``high <= low`` (a constant volume's percentiles) has no width to divide
    by: values above ``low`` become 255 and the rest 0, so a constant volume gives zeros.
    """
    voxels = np.asarray(voxels_kji)
    out = np.empty(voxels.shape, dtype=np.uint8)
    if voxels.size == 0:
        return out
    low, high = float(window.low), float(window.high)
    if high <= low:
        with np.errstate(invalid="ignore"):
            out[...] = np.where(voxels > low, 255, 0)
        return out
    scale = 255.0 / (high - low)
    # Blocks along the first axis (K) keep the temporaries small on 512 x 512 x 300 volumes.
    step = max(1, _BLOCK_VOXELS // max(1, voxels[0].size))
    if voxels.dtype.kind in "ui" and voxels.dtype.itemsize <= 2:
        # 8/16-bit integers (CT is int16): the same arithmetic on each of the 65 536 possible values once,
        # then a table lookup: 512 x 512 x 300 voxels in 0.15-0.2 s instead of 0.5-0.65 s (2-core CPU)
        unsigned = voxels.view(np.dtype(f"u{voxels.dtype.itemsize}"))
        table = _window_block(_all_values(voxels.dtype), low, high, scale)

        def window(start: int) -> None:
            np.take(table, unsigned[start : start + step], out=out[start : start + step])
    else:

        def window(start: int) -> None:
            out[start : start + step] = _window_block(voxels[start : start + step], low, high, scale)

    _for_each_block(window, range(0, voxels.shape[0], step))
    return out


def _for_each_block(work: Callable[[int], None], starts: range) -> None:
    """``work(start)`` for every block; on threads when the volume has more than one block (each block
    writes its own part of the output, so the result is the same as in order)."""
    from .cpu_tuning import usable_cpus

    workers = min(usable_cpus(), _MAX_WINDOW_THREADS, len(starts))
    if workers <= 1:
        for start in starts:
            work(start)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="medsegany-window") as pool:
        list(pool.map(work, starts))  # list(): a block's error is raised here


def _all_values(dtype: np.dtype) -> np.ndarray:
    """Every value of an 8/16-bit integer dtype, ordered by its unsigned bit pattern (a lookup index)."""
    unsigned = np.dtype(f"u{dtype.itemsize}")
    return np.arange(np.iinfo(unsigned).max + 1, dtype=unsigned).view(dtype)


def _window_block(values: np.ndarray, low: float, high: float, scale: float) -> np.ndarray:
    """uint8 of ``values`` under the window, in float32 arithmetic; the input is not modified."""
    block = values.astype(np.float32)  # a copy: the input stays untouched
    np.clip(block, low, high, out=block)
    block -= low
    block *= scale
    np.rint(block, out=block)
    np.nan_to_num(block, copy=False, nan=0.0)
    return block.astype(np.uint8)


def parse_window(text: str) -> tuple[float, float]:
    """Parse "LO,HI" (e.g. "-160,240") into numbers, refusing LO >= HI and anything not two numbers."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 2 or not all(parts):
        raise MedSegAnyError(
            f"window {text!r} is not LO,HI",
            "give two numbers separated by a comma, e.g. --window -160,240",
        )
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise MedSegAnyError(
            f"window {text!r} contains something that is not a number",
            "give two numbers separated by a comma, e.g. --window -160,240",
        ) from None
    explicit_window(low, high)  # the same checks as a window given in code
    return (low, high)
