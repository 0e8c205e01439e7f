"""Prompts from a sparsely labelled volume: every slice a label covers is that object's mask prompt.

A labelling team draws each object on a few slices (any tool: Slicer's Segment Editor, ITK-SNAP), saves
the labelmap on the image's grid, and MedSegAny fills the slices between and beyond them
(``medsegany segment CT.nii.gz --mask-prompts sparse_labels.nii.gz -o dense_labels.nii.gz``). Each label
value is one object and keeps its value in the outputs; each slice (along the chosen axis) where it has
voxels becomes a :class:`~medsegany.prompts.MaskPrompt`, so the label is kept there as drawn (a 2D model)
or given as SAM 2's mask input.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .errors import MedSegAnyError, PromptError
from .geometry import kji_axis
from .prompt_file import ObjectPrompts
from .prompts import MaskPrompt
from .slices import frame_of
from .volume import Volume, read_volume

#: How far (mm) the labelmap's voxel centres may lie from the image's: files written by one tool from
#: the other keep the geometry to about 1e-4 mm (6 printed digits); a resampled grid is millimetres off.
GRID_TOLERANCE_MM = 1e-3
#: The largest label value the writers take (a .seg.nrrd, NIfTI or NRRD labelmap: uint16).
MAX_LABEL_VALUE = 65535


def load_mask_prompts(
    path: str | Path, volume: Volume, axis: int = 2, name: str | None = None
) -> list[ObjectPrompts]:
    """One object a label value of the labelmap ``path`` (on ``volume``'s grid), its mask prompts on
    every slice of ``axis`` the label covers, in the order of the values. ``name``: the object's name
    when there is one label (default ``label_<value>``)."""
    try:
        labels = read_volume(path)
    except MedSegAnyError as error:  # said of the labelmap, not of the image (whose --frame is no fix)
        fix = "give a 3D labelmap" if "--frame" in error.fix else error.fix
        raise PromptError(f"the --mask-prompts labelmap: {error.problem}", fix) from None
    _check_same_grid(Path(path), labels, volume)
    labels_kji = np.asarray(labels.voxels_kji)
    if not np.issubdtype(labels_kji.dtype, np.integer):
        if not np.all(np.isfinite(labels_kji)) or np.any(labels_kji != np.round(labels_kji)):
            raise PromptError(
                f"{path} holds values that are not whole numbers",
                "give a labelmap (one integer label a voxel)",
            )
        labels_kji = labels_kji.astype(np.int64)
    values = [int(value) for value in np.unique(labels_kji) if value > 0]
    if not values:
        raise PromptError(f"{path} labels no voxel (all 0)", "label the objects on a few slices first")
    if values[-1] > MAX_LABEL_VALUE:  # the outputs' limit: refused now, not when writing after the run
        raise PromptError(
            f"{path} holds the label value {values[-1]}, over the outputs' largest, {MAX_LABEL_VALUE}",
            f"renumber the labels 1..{MAX_LABEL_VALUE}",
        )
    if name is not None and len(values) > 1:
        raise PromptError(
            f"--name was given, but {path} holds {len(values)} labels ({', '.join(map(str, values))})",
            "drop --name (each label is named label_<value>) or give a labelmap of one label",
        )
    objects = []
    for value in values:
        mask_kji = labels_kji == value
        prompts = []
        for index in np.flatnonzero(mask_kji.any(axis=tuple(a for a in range(3) if a != kji_axis(axis)))):
            prompts.append(MaskPrompt(axis, int(index), np.array(frame_of(mask_kji, axis, int(index)))))
        objects.append(ObjectPrompts(name or f"label_{value}", tuple(prompts), label_value=value))
    return objects


def _check_same_grid(path: Path, labels: Volume, volume: Volume) -> None:
    """PromptError unless the labelmap's voxels are the image's voxels (shape and IJK->RAS)."""
    if labels.shape_ijk != volume.shape_ijk:
        raise PromptError(
            f"{path} is {labels.shape_ijk} voxels and the image {volume.shape_ijk}",
            "give the labelmap on the image's grid (in Slicer: export the segmentation with the image as "
            "reference geometry)",
        )
    # the 8 corners: two opposite ones miss an in-plane swap of the axes of a square image
    corners_ijk = np.array(list(itertools.product(*[(0, n - 1) for n in volume.shape_ijk])), dtype=float)
    off_mm = np.abs(labels.ijk_to_ras_points(corners_ijk) - volume.ijk_to_ras_points(corners_ijk)).max()
    if off_mm > GRID_TOLERANCE_MM:
        raise PromptError(
            f"{path} has the image's size but lies {off_mm:.3g} mm from it (another origin, spacing or "
            "direction)",
            "give the labelmap on the image's grid (in Slicer: export the segmentation with the image as "
            "reference geometry)",
        )
