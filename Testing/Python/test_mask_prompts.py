"""Sparse labelmaps as mask prompts: each label an object, refused early when the outputs cannot hold it."""

from __future__ import annotations

import numpy as np
import pytest
from medsegany.errors import PromptError
from medsegany.mask_prompts import load_mask_prompts
from medsegany.volume import read_volume

sitk = pytest.importorskip("SimpleITK")


def test_a_label_value_the_outputs_cannot_hold_is_refused_before_the_run(tmp_path):
    """The writers take values up to 65535: a labelmap with 70000 failed only when writing, after the run."""
    image = sitk.GetImageFromArray(np.zeros((4, 6, 8), dtype=np.int16))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    labels_kji = np.zeros((4, 6, 8), dtype=np.uint32)
    labels_kji[1, 2:4, 2:5] = 70000
    labels_kji[2, 2:4, 2:5] = 3
    labels = sitk.GetImageFromArray(labels_kji)
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    volume = read_volume(tmp_path / "image.nii.gz")
    with pytest.raises(PromptError, match=r"holds the label value 70000, over the outputs' largest, 65535"):
        load_mask_prompts(tmp_path / "labels.nii.gz", volume)
    labels_kji[labels_kji == 70000] = 65535  # the largest the outputs hold is taken
    labels = sitk.GetImageFromArray(labels_kji)
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    objects = load_mask_prompts(tmp_path / "labels.nii.gz", volume)
    assert [obj.label_value for obj in objects] == [3, 65535]


def test_several_labels_keep_every_drawn_voxel_and_a_bad_labelmap_is_named(tmp_path, capsys, monkeypatch):
    """Under independent objects a later label's propagated mask covered an earlier label's drawn slices
    (label 2 drawn on K=1 kept 0 of its 347 voxels): --mask-prompts defaults to --overlap exclusive."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel
    from test_cli import read_labels, run_cli, write_phantom

    phantom = write_phantom(tmp_path / "phantom.nii.gz")
    image = sitk.ReadImage(str(phantom))
    bright_kji = sitk.GetArrayFromImage(image) > 100
    sparse_kji = np.zeros(bright_kji.shape, dtype=np.uint16)
    for k, value in ((1, 2), (2, 300), (3, 1000)):  # one object, three labellers' values
        sparse_kji[k][bright_kji[k]] = value
    labels = sitk.GetImageFromArray(sparse_kji)
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(tmp_path / "sparse.nrrd"))
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())

    argv = ["segment", phantom, "--window=0,255", "-q", "--mask-prompts", tmp_path / "sparse.nrrd"]
    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "dense.nrrd")

    assert code == 0, err
    dense = read_labels(tmp_path / "dense.nrrd")
    drawn = sparse_kji > 0
    np.testing.assert_array_equal(dense[drawn], sparse_kji[drawn])

    four_d = sitk.JoinSeries([labels, labels])
    sitk.WriteImage(four_d, str(tmp_path / "frames.nii.gz"))
    code, _, err = run_cli(capsys, *argv[:-1], tmp_path / "frames.nii.gz", "-o", tmp_path / "x.nrrd")
    assert code == 1 and "the --mask-prompts labelmap: " in err and "give a 3D labelmap" in err
    assert "--frame" not in err  # the image's time point: no fix for a 4D labelmap
