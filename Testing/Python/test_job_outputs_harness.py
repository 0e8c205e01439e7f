"""benchmarks/job_outputs.py on a tiny volume: every way writes the same voxels and keeps the same
components, its "before" way is the old write (gzip level 9, every voxel counted), and the JSON holds the
times and ratios."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("slicerio")
pytest.importorskip("SimpleITK")

from benchmark_testing import ROOT, run_benchmark


def test_a_tiny_volume_every_way(tmp_path):
    report = run_benchmark(
        "job_outputs.py", tmp_path / "outputs.json", "--slices", "6", "--size", "64", "--repeats", "2"
    )
    writes, components = report["writes"], report["components"]
    assert report["labels"] == [0, 1, 2, 3] and 0 < report["labelled_fraction"] < 0.5
    assert report["label_values"]["values_equal"] is True
    assert report["preview"]["pixels_equal"] is True and report["preview"]["image_size"][1] > 0
    assert writes["voxels_equal"] == {"seg_nrrd": True, "seg_nrrd_before": True, "nii_gz": True}
    assert len(writes["seconds"]["seg_nrrd_before"]) == 2
    assert writes["seg_nrrd_before_over_now"] == pytest.approx(
        writes["median_s"]["seg_nrrd_before"] / writes["median_s"]["seg_nrrd"]
    )
    assert components["kept_equal"] is True and components["calls"] == 5
    assert components["before_over_now"] == pytest.approx(
        components["median_s_per_slice"]["before"] / components["median_s_per_slice"]["mask_box"]
    )


def test_the_before_way_writes_as_medsegany_wrote_before_and_restores_the_writer(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("job_outputs", None)
    import job_outputs
    from medsegany import exporters
    from medsegany.volume import Volume

    labels_kji = np.zeros((3, 4, 5), np.uint8)
    labels_kji[1, 1:3, 2:4] = 4
    reference = Volume(np.zeros((3, 4, 5), np.int16), np.eye(4), name="tiny")
    with job_outputs.seg_nrrd_as_before():
        written = exporters.write_labelmap(labels_kji, reference, tmp_path / "before.seg.nrrd")
        assert exporters.label_values_present(labels_kji) == [4]
    data = written.read_bytes().split(b"\n\n", 1)[1]
    assert data[8] == 2  # gzip's XFL byte: 2 = the slowest level (9)
    assert exporters.SEG_NRRD_GZIP_LEVEL == 1
    assert exporters.label_values_present.__module__ == "medsegany.exporters"
