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
