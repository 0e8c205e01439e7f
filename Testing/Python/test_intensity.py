"""Tests for medsegany.intensity: presets, HU detection, percentiles, windowing, parsing."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from medsegany import intensity
from medsegany.errors import MedSegAnyError
from medsegany.intensity import (
    CT_WINDOWS,
    PRESET_NAMES,
    IntensityWindow,
    apply_window,
    looks_like_hounsfield,
    parse_window,
    percentile_window,
    resolve_intensity,
    window_for,
)
from medsegany.volume import Volume


def shared_data() -> Path:
    return Path(
        os.environ.get(
            "MEDSEGANY_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"
        )
    )


def ct_phantom(shape_kji=(6, 40, 40), dtype=np.int16) -> np.ndarray:
    """Air around a water-like body (40 HU) with a bone (1000 HU) core, like an axial CT."""
    _, j, i = np.indices(shape_kji)
    radius = np.hypot(j - shape_kji[1] / 2, i - shape_kji[2] / 2)
    voxels = np.full(shape_kji, -1000.0)
    voxels[radius < shape_kji[1] * 0.4] = 40.0
    voxels[radius < shape_kji[1] * 0.1] = 1000.0
    return voxels.astype(dtype)


def mr_phantom(shape_kji=(6, 40, 40), background_fraction=0.7, seed=0) -> np.ndarray:
    """Exact-zero background around positive tissue intensities (a skull-stripped or masked MR)."""
    rng = np.random.default_rng(seed)
    voxels = rng.gamma(4.0, 100.0, size=shape_kji)
    voxels[rng.random(shape_kji) < background_fraction] = 0.0
    return voxels.astype(np.float32)


def assert_percentile_ranks(voxels: np.ndarray, window: IntensityWindow, tolerance: float = 0.05) -> None:
    """The window's ends are the 0.5th / 99.5th percentiles of the nonzero voxels, within ``tolerance``
    percentage points of rank; with ties (integer voxels) a value covers ranks from the share below it
    to the share at or below it.
    """
    nonzero = voxels[voxels != 0]
    for value, percent in ((window.low, 0.5), (window.high, 99.5)):
        below = np.count_nonzero(nonzero < value) / nonzero.size * 100
        at_or_below = np.count_nonzero(nonzero <= value) / nonzero.size * 100
        assert below <= percent + tolerance and at_or_below >= percent - tolerance, (
            value,
            below,
            at_or_below,
        )


# ---- presets --------------------------------------------------------------------------------------


def test_ct_presets_are_documented_width_level_windows():
    # (width, level) from the radiology tables quoted in intensity.py; low/high = L -/+ W/2.
    width_level = {
        "ct-soft-tissue": (400, 40),
        "ct-lung": (1200, -400),
        "ct-bone": (1800, 400),
        "ct-brain": (80, 40),
        "ct-liver": (150, 30),
        "ct-mediastinum": (350, 50),
    }
    assert set(CT_WINDOWS) == set(width_level)
    for name, (width, level) in width_level.items():
        window = CT_WINDOWS[name]
        assert window.name == name
        assert (window.low, window.high) == (level - width / 2, level + width / 2)
        assert (window.width, window.level) == (width, level)
    assert (CT_WINDOWS["ct-soft-tissue"].low, CT_WINDOWS["ct-soft-tissue"].high) == (-160, 240)
    assert (CT_WINDOWS["ct-lung"].low, CT_WINDOWS["ct-lung"].high) == (-1000, 200)
    assert (CT_WINDOWS["ct-brain"].low, CT_WINDOWS["ct-brain"].high) == (0, 80)


def test_every_preset_name_resolves():
    voxels = ct_phantom()
    for name in PRESET_NAMES:
        window = resolve_intensity(voxels, name)
        assert isinstance(window, IntensityWindow)
        assert window.low < window.high
    assert resolve_intensity(voxels, " CT-Lung ") == CT_WINDOWS["ct-lung"]


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(MedSegAnyError) as caught:
        resolve_intensity(ct_phantom(), "ct-softtissue")
    message = str(caught.value)
    assert "ct-softtissue" in caught.value.problem
    assert all(name in caught.value.fix for name in PRESET_NAMES)
    assert "\n" not in message


def test_explicit_window_wins_over_any_preset():
    for preset in ("auto", "ct-lung", "percentile", None, "no-such-preset"):
        window = resolve_intensity(ct_phantom(), preset, window=(-100, 300))
        assert (window.low, window.high, window.name) == (-100.0, 300.0, "window -100,300")


@pytest.mark.parametrize("bad", [(300, -100), (5, 5), (0, float("nan")), (1, 2, 3), "ab"])
def test_explicit_window_must_be_increasing_finite_pair(bad):
    with pytest.raises(MedSegAnyError):
        resolve_intensity(ct_phantom(), window=bad)


# ---- auto: HU detection ---------------------------------------------------------------------------


def test_auto_picks_soft_tissue_window_for_hounsfield_units():
    for voxels in (ct_phantom(), ct_phantom(dtype=np.int32), ct_phantom(dtype=np.float32)):
        assert looks_like_hounsfield(voxels)
        assert resolve_intensity(voxels).name == "ct-soft-tissue"
    # A Volume works like its array, and None means auto.
    volume = Volume(ct_phantom(), np.eye(4))
    assert resolve_intensity(volume, None) == CT_WINDOWS["ct-soft-tissue"]


def test_auto_accepts_resampled_ct_with_fractional_values():
    voxels = ct_phantom().astype(np.float32) + np.float32(0.37)  # linear interpolation leaves fractions
    assert resolve_intensity(voxels).name == "ct-soft-tissue"


def test_auto_accepts_ct_padded_outside_the_field_of_view():
    voxels = ct_phantom()
    voxels[:, :, :5] = -3024  # scanner padding outside the reconstruction circle
    assert resolve_intensity(voxels).name == "ct-soft-tissue"


def test_auto_picks_percentiles_when_not_hounsfield():
    mr = mr_phantom()
    assert not looks_like_hounsfield(mr)
    assert resolve_intensity(mr).name == "percentile 0.5-99.5"
    # Already windowed 8-bit CT: no negative values, so not HU.
    windowed = np.clip((ct_phantom().astype(float) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    assert resolve_intensity(windowed).name == "percentile 0.5-99.5"
    # Large negative minimum but no body in -200..300: a signed non-CT image.
    signed = np.where(np.arange(6 * 40 * 40).reshape(6, 40, 40) % 2 == 0, -3000, 2500).astype(np.int16)
    assert not looks_like_hounsfield(signed)
    # MR with small negative noise values.
    assert not looks_like_hounsfield(mr - 40)


# ---- percentiles ----------------------------------------------------------------------------------


def test_percentile_window_ignores_zero_background():
    voxels = mr_phantom(background_fraction=0.7)
    nonzero = voxels[voxels != 0].astype(np.float64)
    window = percentile_window(voxels)
    low, high = np.percentile(nonzero, [0.5, 99.5])  # small volume: exact, no subsampling
    assert window.low == pytest.approx(low)
    assert window.high == pytest.approx(high)
    # Whole-volume percentiles would put the low end on the background and clip more tissue.
    assert window.high > np.percentile(voxels, 99.5)


def test_percentile_window_is_one_window_for_the_whole_volume():
    # Slice 0 is dim and slice 1 bright: per-slice stretching would make both span 0..255.
    voxels = mr_phantom(shape_kji=(2, 30, 30), background_fraction=0.0)
    voxels[0] *= 0.2
    window = resolve_intensity(voxels, "percentile")
    frames = apply_window(voxels, window)
    for k in range(2):
        assert np.array_equal(frames[k], apply_window(voxels[k : k + 1], window)[0])
    assert frames[0].max() < 128 < frames[1].max()


def test_subsampled_percentiles_stay_within_the_stated_rank_error():
    # 40 x 256 x 256 = 2.6 M voxels > 2 * SAMPLE_TARGET, so the stride sample is used.
    k, j, i = np.indices((40, 256, 256), dtype=np.float32)
    rng = np.random.default_rng(1)
    voxels = (np.sin(i / 9.0) * 300 + j * 3 + k * 10 + rng.normal(0, 20, i.shape)).astype(np.float32)
    voxels[(i - 128) ** 2 + (j - 128) ** 2 > 110**2] = 0  # background, as in MR
    assert voxels.size > 2 * intensity.SAMPLE_TARGET
    assert_percentile_ranks(voxels, percentile_window(voxels))


def test_percentiles_skip_nan_and_all_zero_volumes():
    voxels = mr_phantom()
    voxels[0, 0, :5] = np.nan
    window = percentile_window(voxels)
    assert np.isfinite(window.low) and np.isfinite(window.high)
    zeros = np.zeros((3, 4, 5), dtype=np.int16)
    assert (percentile_window(zeros).low, percentile_window(zeros).high) == (0.0, 0.0)


def test_a_volume_without_a_finite_voxel_is_refused_and_a_few_finite_ones_are_found():
    from medsegany.errors import VolumeError
    from medsegany.volume import Volume

    voxels = np.full((40, 256, 256), np.nan, dtype=np.float32)  # 2.6 M voxels: sampled with a stride
    with pytest.raises(VolumeError, match="scan has no finite voxel"):
        percentile_window(Volume(voxels, np.eye(4), name="scan"))  # it was 0..0: black frames, no masks
    voxels[7, 3, 6], voxels[20, 40, 34] = 10.0, 30.0  # even flat indices: the odd stride meets neither
    assert intensity.sample_voxels(voxels).size == 0
    window = percentile_window(voxels)
    assert 10.0 <= window.low < window.high <= 30.0


def test_percentile_window_of_a_two_valued_volume_keeps_the_object_visible():
    # A phantom or label-like image: background 0, object 100. The nonzero voxels are all 100, so their
    # percentiles give a zero-width window that made every frame black.
    voxels = np.zeros((4, 30, 40), dtype=np.float32)
    voxels[:, 10:20, 10:25] = 100
    small = np.zeros((4, 30, 40), dtype=np.uint8)
    small[1, 5, 5] = 1  # under 0.5 % of the voxels: all-voxel percentiles are 0 and 0 too
    for volume, top in ((voxels, 100.0), (small, 1.0)):
        window = resolve_intensity(volume)
        assert (window.low, window.high) == (0.0, top)
        frames = apply_window(volume, window)
        np.testing.assert_array_equal(frames, np.where(volume > 0, 255, 0))


# ---- apply_window ---------------------------------------------------------------------------------


def test_apply_window_maps_linearly_and_clips():
    voxels = np.array([[[-500, -160, 0, 40, 140, 240, 3000]]], dtype=np.int16)
    frames = apply_window(voxels, CT_WINDOWS["ct-soft-tissue"])
    # (v + 160) / 400 * 255: 0 -> 102, 40 -> 127.5 is avoided, 140 -> 191.25
    assert frames.dtype == np.uint8
    assert frames.tolist() == [[[0, 0, 102, 128, 191, 255, 255]]]


def test_apply_window_never_modifies_its_input():
    voxels = ct_phantom().astype(np.float32)
    before = voxels.copy()
    voxels.flags.writeable = False  # any in-place write would raise
    frames = apply_window(voxels, CT_WINDOWS["ct-bone"])
    assert np.array_equal(voxels, before)
    assert not np.shares_memory(frames, voxels)


def test_apply_window_on_constant_volume_gives_zeros_without_warnings():
    voxels = np.full((3, 4, 5), 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        window = resolve_intensity(voxels, "percentile")
        frames = apply_window(voxels, window)
    assert window.low == window.high == 7.0
    assert frames.dtype == np.uint8 and not frames.any()


def test_apply_window_turns_nan_into_zero():
    voxels = np.array([[[np.nan, 0.0, 10.0]]])
    assert apply_window(voxels, IntensityWindow(0.0, 10.0, "t")).tolist() == [[[0, 0, 255]]]


def test_apply_window_blocks_agree_with_one_pass(monkeypatch):
    voxels = mr_phantom(shape_kji=(7, 9, 11))
    window = percentile_window(voxels)
    whole = apply_window(voxels, window)
    monkeypatch.setattr(intensity, "_BLOCK_VOXELS", 1)  # one slice per block
    assert np.array_equal(apply_window(voxels, window), whole)


@settings(max_examples=60, deadline=None)
@given(
    voxels=arrays(np.float64, (2, 3, 4), elements=st.floats(-5000, 5000)),
    low=st.floats(-3000, 3000),
    width=st.floats(1, 4000),
)
def test_apply_window_matches_float64_reference(voxels, low, width):
    window = IntensityWindow(low, low + width, "t")
    reference = np.clip((voxels - low) / width, 0.0, 1.0) * 255.0
    frames = apply_window(voxels, window).astype(float)
    assert np.all(np.abs(frames - reference) <= 0.5 + 1e-3 * 255)  # float32 rounding near .5
    assert np.all(frames[voxels <= low] == 0) and np.all(frames[voxels >= low + width] == 255)


# ---- parse_window ---------------------------------------------------------------------------------


def test_parse_window_reads_two_numbers():
    assert parse_window("-160,240") == (-160.0, 240.0)
    assert parse_window(" -1000 , 200.5 ") == (-1000.0, 200.5)
    assert parse_window("1e2,3e2") == (100.0, 300.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("240,-160", "LO >= HI"),
        ("5,5", "LO >= HI"),
        ("a,b", "not a number"),
        ("1,2,3", "not LO,HI"),
        ("100", "not LO,HI"),
        ("", "not LO,HI"),
        ("1,", "not LO,HI"),
        ("nan,1", "not finite"),
    ],
)
def test_parse_window_errors_are_one_clear_line(text, words):
    with pytest.raises(MedSegAnyError) as caught:
        parse_window(text)
    assert words in caught.value.problem
    assert caught.value.fix and "\n" not in str(caught.value)


# ---- real data ------------------------------------------------------------------------------------


def _cases() -> list[dict]:
    cases_file = shared_data() / "cases.json"
    if not cases_file.is_file():
        pytest.skip(f"shared data not found at {cases_file}")
    return json.loads(cases_file.read_text(encoding="utf-8"))["cases"]


@pytest.mark.realdata
def test_auto_matches_the_intensity_hint_of_every_real_case():
    from medsegany.volume import read_volume

    seen: set[str] = set()
    for case in _cases():
        if case["image"] in seen:
            continue
        seen.add(case["image"])
        volume = read_volume(shared_data() / case["image"])
        hint = case["intensity"]
        window = resolve_intensity(volume)
        # Raw-HU CT hints the soft-tissue window; MR, PET and the 0..255 DeepLesion images percentiles
        # (their hint window [0, 255] is their whole range, which is not HU).
        if "window" in hint and hint["window"] != [0, 255]:
            assert window.name == "ct-soft-tissue", case["id"]
            assert [window.low, window.high] == hint["window"], case["id"]
        else:
            assert window.name == "percentile 0.5-99.5", case["id"]
            frames = apply_window(volume.voxels_kji, window)
            assert frames.max() == 255 and frames.min() == 0, case["id"]


@pytest.mark.realdata
def test_named_raw_hu_cases_are_detected_as_ct():
    from medsegany.volume import read_volume

    root = shared_data()
    for relative in (
        "mirp_sts_sarcoma/STS_001/CT_image.nii.gz",
        "medsam2_recist_ct_lesion/raw_000015_01_01_103-115.nii.gz",
    ):
        if not (root / relative).is_file():
            pytest.skip(f"{relative} not in shared data")
        assert resolve_intensity(read_volume(root / relative)).name == "ct-soft-tissue"


@pytest.mark.realdata
def test_subsampled_percentiles_on_the_largest_real_mr():
    from medsegany.volume import read_volume

    path = shared_data() / "mirp_sts_sarcoma/STS_001_raw_native/MR_T1/image.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not in shared data")
    voxels = read_volume(path).voxels_kji  # 40 x 512 x 512 = 10.5 M voxels, subsampled
    assert_percentile_ranks(voxels, percentile_window(voxels))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, ">i2"])
@pytest.mark.parametrize("window", [(0, 255), (-160, 240), (-1000.5, 3000.25), (10, 11)])
def test_integer_volumes_use_a_table_with_the_same_numbers(dtype, window):
    from medsegany.intensity import _window_block

    info = np.iinfo(dtype)
    voxels = np.random.default_rng(0).integers(info.min, info.max, (3, 40, 50), endpoint=True).astype(dtype)
    voxels[0, 0, :2] = (info.min, info.max)
    win = intensity.explicit_window(*window)
    expected = _window_block(voxels, win.low, win.high, 255.0 / (win.high - win.low))
    np.testing.assert_array_equal(apply_window(voxels, win), expected)
    # the table is indexed by each voxel's raw bytes: big-endian and strided arrays are read alike
    np.testing.assert_array_equal(apply_window(voxels.transpose(0, 2, 1), win), expected.transpose(0, 2, 1))


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32"])
def test_windowing_on_threads_gives_the_same_bytes_as_in_order(dtype, monkeypatch):
    import medsegany.cpu_tuning as cpu_tuning
    import medsegany.intensity as intensity

    voxels = np.random.default_rng(3).integers(-1000, 2000, (70, 256, 256)).astype(dtype)  # 3 blocks
    voxels_before = voxels.copy()
    window = intensity.IntensityWindow(-160.0, 240.0, "ct")
    monkeypatch.setattr(cpu_tuning, "usable_cpus", lambda: 4)
    threaded = intensity.apply_window(voxels, window)
    monkeypatch.setattr(intensity, "_MAX_WINDOW_THREADS", 1)
    in_order = intensity.apply_window(voxels, window)
    np.testing.assert_array_equal(threaded, in_order)
    np.testing.assert_array_equal(voxels, voxels_before)
    assert len(np.unique(in_order)) > 100  # a real spread of values, not a constant


def test_window_for_takes_a_window_a_pair_or_a_preset():
    voxels = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    window = IntensityWindow(1.0, 2.0, "given")
    assert window_for(voxels, window) is window
    assert window_for(voxels, (-160.0, 240.0)) == resolve_intensity(voxels, window=(-160.0, 240.0))
    assert window_for(voxels, "ct-lung") == CT_WINDOWS["ct-lung"]
    assert window_for(voxels, None) == resolve_intensity(voxels) == percentile_window(voxels)
