"""Prompts from Slicer markups: an ROI drawn flat on a slice is a box, point lists are ± clicks.

All positions are taken in world RAS (through the markups' own parent transforms) and converted to
continuous IJK indices with the volume's world IJK->RAS (see :func:`~medsegany.mrml_volume.volume_from_node`),
so rotated, flipped and transformed volumes give the box and points the user sees.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import PromptError
from .mrml_vtk import matrix_to_numpy, node_to_world
from .prompts import SlicePrompts, box_ijk_from_corners_ras, make_slice_prompts
from .volume import Volume

Box6 = tuple[float, float, float, float, float, float]
Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class MarkupsPrompts:
    """Plain prompt values read from markups, in continuous IJK voxel indices of one volume.

    ``box_ijk`` is (i0, j0, k0, i1, j1, k1), min then max corner, both on slice ``axis`` (snapped to the
    nearest index); ``axis`` is None when there is no box (points alone do not say which view they
    were placed in). ``point_labels``: 1 positive, 0 negative.
    """

    box_ijk: Box6 | None
    points_ijk: tuple[Point3, ...]
    point_labels: tuple[int, ...]
    axis: int | None

    def to_slice_prompts(
        self, volume: Volume, axis: int | None = None, corrects_a_mask: bool = False
    ) -> SlicePrompts:
        """Checked prompts for one slice (see :func:`~medsegany.prompts.make_slice_prompts`).

        ``axis`` is the slice axis of the view the points were placed in; needed only without a box.
        ``corrects_a_mask``: negative points alone are a prompt (a correction of the slice's mask).
        """
        return make_slice_prompts(
            volume,
            box_ijk=self.box_ijk,
            points_ijk=self.points_ijk,
            point_labels=self.point_labels,
            axis=self.axis if self.axis is not None else axis,
            corrects_a_mask=corrects_a_mask,
        )


def roi_corners_ras(roi_node) -> np.ndarray:
    """The 8 corners (8, 3) of a ``vtkMRMLMarkupsROINode`` in world RAS.

    The ROI's size is in its object frame; object -> node is its rotation and centre, node -> world its
    parent transforms (linear only).
    """
    half_size = np.asarray(roi_node.GetSize(), dtype=float) / 2.0
    object_to_world = node_to_world(roi_node, PromptError, "ROI") @ matrix_to_numpy(
        roi_node.GetObjectToNodeMatrix()
    )
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    corners_object = signs * half_size
    return corners_object @ object_to_world[:3, :3].T + object_to_world[:3, 3]


def roi_is_placed(roi_node) -> bool:
    """Whether an ROI is a box yet. Slicer places one with two clicks: the first corner is a control point
    of its own (size 0, 2 points required), the second makes the box, and the ROI keeps one centre point
    (vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints). Between the clicks, or after a placement
    abandoned there, the ROI has 1 of 2 required points and no box."""
    defined = roi_node.GetNumberOfDefinedControlPoints()
    return defined > 0 and defined >= roi_node.GetRequiredNumberOfControlPoints()


def clear_markups(node) -> None:
    """Remove a prompt node's control points, so that the next prompt is placed in it afresh.

    An ROI whose points are removed keeps the state of its last box: 1 control point required, at most 1
    (vtkMRMLMarkupsROINode::UpdateControlPointsFromBoxROI; UpdateBoxROIFromControlPoints returns early
    without points, before resetting them). Slicer's placement then ended at the first click of the next
    box, a zero-size ROI. Setting its type anew (SetROIType) asks for the two corners again."""
    node.RemoveAllControlPoints()
    if node.IsA("vtkMRMLMarkupsROINode") and node.GetROIType() == node.ROITypeBox:
        node.SetROIType(node.ROITypeBoundingBox)  # SetROIType does nothing for the type the ROI has
        node.SetROIType(node.ROITypeBox)


def box_ijk_from_roi(volume: Volume, roi_node) -> tuple[Box6, int]:
    """(box_ijk, slice axis) of an ROI that is flat along one IJK axis of ``volume``
    (:func:`~medsegany.prompts.box_ijk_from_corners_ras` of its 8 corners)."""
    if not roi_is_placed(roi_node):
        raise PromptError(f"ROI '{roi_node.GetName()}' has not been placed", "draw the box on a slice first")
    box_ijk = box_ijk_from_corners_ras(volume, roi_corners_ras(roi_node), f"ROI '{roi_node.GetName()}'")
    return box_ijk, next(a for a in range(3) if box_ijk[a] == box_ijk[a + 3])


def points_ijk_from_fiducials(volume: Volume, fiducial_node) -> list[Point3]:
    """Continuous IJK indices of the placed control points of a point list (world positions)."""
    if fiducial_node is None:
        return []
    slicer_markups = type(fiducial_node)
    defined = getattr(slicer_markups, "PositionDefined", 2)  # vtkMRMLMarkupsNode::PositionDefined == 2
    to_world = node_to_world(fiducial_node, PromptError, "point list")
    points_node = [
        fiducial_node.GetNthControlPointPosition(n)
        for n in range(fiducial_node.GetNumberOfControlPoints())
        # A point still following the mouse (preview) or skipped is not a click the user made.
        if fiducial_node.GetNthControlPointPositionStatus(n) == defined
    ]
    if not points_node:
        return []
    points_ras = np.asarray(points_node, dtype=float) @ to_world[:3, :3].T + to_world[:3, 3]
    return [tuple(float(v) for v in p) for p in volume.ras_to_ijk_points(points_ras)]


def prompts_from_markups(
    volume: Volume, roi_node=None, positive_points_node=None, negative_points_node=None
) -> MarkupsPrompts:
    """Box and ± points for ``volume`` from an ROI node and two point-list nodes (any may be None).

    Checks only what markups alone can get wrong (a 3D ROI); slice agreement and bounds are checked
    by :meth:`MarkupsPrompts.to_slice_prompts`.
    """
    box_ijk, axis = (None, None) if roi_node is None else box_ijk_from_roi(volume, roi_node)
    positive = points_ijk_from_fiducials(volume, positive_points_node)
    negative = points_ijk_from_fiducials(volume, negative_points_node)
    return MarkupsPrompts(
        box_ijk=box_ijk,
        points_ijk=tuple(positive + negative),
        point_labels=(1,) * len(positive) + (0,) * len(negative),
        axis=axis,
    )
