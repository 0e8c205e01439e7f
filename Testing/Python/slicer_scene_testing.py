"""Helpers for the Slicer-module logic tests: a headless MRML scene and a tiny deterministic model.

The volume's IJK->RAS is oblique (rotated about two axes), flipped along I, anisotropic, and the node
sits under a linear parent transform; markups are placed in world RAS under their own transforms. Any
mix-up of IJK/KJI, node/world or frame x/y shows up as a wrong box, point or voxel.

:class:`ThresholdModel` is a real :class:`~medsegany.models.base.SliceModel` (not a mock of the session):
inside the prompt box it segments the bright pixels, removes a disc around each negative point, and
without a box keeps the bright pixels near positive points. It is fast enough for logic tests.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from medsegany.models.base import FramePrediction

SHAPE_KJI = (12, 22, 26)  # K, J, I
SPACING_IJK = np.array([0.9, 1.2, 2.5])
#: HU-like phantom values: background, the object, a second bright object (same grey level).
BACKGROUND, OBJECT = -50.0, 160.0


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    a, b = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def affine(rotation_3x3: np.ndarray, translation) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_3x3
    matrix[:3, 3] = translation
    return matrix


#: Node IJK->RAS: rotated 25 degrees about S and 12 about A, I axis flipped, anisotropic spacing.
NODE_IJK_TO_RAS = affine(
    rotation("z", 25) @ rotation("y", 12) @ np.diag([-1.0, 1, 1]) @ np.diag(SPACING_IJK), [10, -30, 20]
)
#: Parent transform of the volume (node -> world): 15 degrees about R plus a shift.
VOLUME_PARENT = affine(rotation("x", 15), [4, -2, 6])
WORLD_IJK_TO_RAS = VOLUME_PARENT @ NODE_IJK_TO_RAS


def vtk_matrix(matrix: np.ndarray):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    result = vtkMatrix4x4()
    for r, c in itertools.product(range(4), range(4)):
        result.SetElement(r, c, float(matrix[r, c]))
    return result


def phantom_kji(shape_kji=SHAPE_KJI, seed: int = 3) -> np.ndarray:
    """A bright ellipsoid (slices K=3..9) plus a separate bright bar, with mild noise."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    kc, jc, ic = 6.0, shape_kji[1] * 0.45, shape_kji[2] * 0.42
    ellipsoid = ((k - kc) / 3.6) ** 2 + ((j - jc) / 6.5) ** 2 + ((i - ic) / 7.5) ** 2 <= 1.0
    bar = (j >= shape_kji[1] - 4) & (j < shape_kji[1] - 2) & (i > 3) & (i < shape_kji[2] - 3)
    noise = np.random.default_rng(seed).normal(0, 4, shape_kji)
    return np.where(ellipsoid | bar, OBJECT, BACKGROUND) + noise


def require_mrml():
    """The ``slicer`` module of slicer-core, or a skip of the whole test module when it is absent."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)
    return slicer


def make_scene():
    import slicer

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)  # registers the segment editor node and converters
    return scene, logic


@contextmanager
def mrml_scene() -> Iterator:
    """A scene with the segmentations logic attached, cleared afterwards (the body of a ``scene`` fixture)."""
    scene, logic = make_scene()
    try:
        yield scene
    finally:
        logic.SetMRMLScene(None)
        scene.Clear(1)


def linear_transform_node(scene, matrix: np.ndarray, name: str = "transform"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix(matrix))
    return node


def add_volume_node(
    scene, voxels_kji: np.ndarray, ijk_to_ras=NODE_IJK_TO_RAS, parent=VOLUME_PARENT, name="CT"
):
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    image = vtkImageData()
    image.SetDimensions(voxels_kji.shape[2], voxels_kji.shape[1], voxels_kji.shape[0])
    values = np.ascontiguousarray(voxels_kji, dtype=np.int16).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    if parent is not None:
        node.SetAndObserveTransformNodeID(linear_transform_node(scene, parent, "volume parent").GetID())
    return node


def add_segmentation(scene, volume_node, names=("target", "other")):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = [node.GetSegmentation().AddEmptySegment(name, name) for name in names]
    return node, ids


def fill_segment(
    segmentation_node, segment_id: str, mask_kji: np.ndarray, ijk_to_segmentation=WORLD_IJK_TO_RAS
) -> None:
    """Set a segment's voxels with Slicer's API directly (not through the adapter) on the given lattice."""
    import slicer
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask_kji.shape[2], mask_kji.shape[1], mask_kji.shape[0])
    image.AllocateScalars(VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask_kji.astype(np.uint8).ravel()
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_segmentation))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE)


def world_ras(points_ijk, world_ijk_to_ras=WORLD_IJK_TO_RAS) -> np.ndarray:
    points = np.atleast_2d(np.asarray(points_ijk, dtype=float))
    return points @ world_ijk_to_ras[:3, :3].T + world_ijk_to_ras[:3, 3]


def add_roi_on_slice(
    scene, low_ijk, high_ijk, parent: np.ndarray, name: str = "box", world_ijk_to_ras=WORLD_IJK_TO_RAS
):
    """An ROI whose world box covers IJK ``low``..``high`` (flat where equal), under transform ``parent``.

    ``world_ijk_to_ras``: the volume's IJK -> world RAS (its voxel axes and spacing place the box).
    """
    low_ijk, high_ijk = np.asarray(low_ijk, float), np.asarray(high_ijk, float)
    spacing_ijk = np.linalg.norm(world_ijk_to_ras[:3, :3], axis=0)
    axes_ras = world_ijk_to_ras[:3, :3] / spacing_ijk  # unit voxel axes in world RAS
    axes_ras[:, 0] *= np.sign(np.linalg.det(axes_ras))  # an ROI's frame is right-handed
    object_to_world = affine(axes_ras, world_ras((low_ijk + high_ijk) / 2, world_ijk_to_ras)[0])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetAndObserveTransformNodeID(linear_transform_node(scene, parent, f"{name} parent").GetID())
    roi.GetObjectToNodeMatrix().DeepCopy(vtk_matrix(np.linalg.inv(parent) @ object_to_world))
    roi.SetSize(*((high_ijk - low_ijk) * spacing_ijk))
    return roi


def add_points(scene, points_ijk, parent: np.ndarray, name: str, world_ijk_to_ras=WORLD_IJK_TO_RAS):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.SetAndObserveTransformNodeID(linear_transform_node(scene, parent, f"{name} parent").GetID())
    for point_ras in world_ras(points_ijk, world_ijk_to_ras):
        node.AddControlPoint(*(np.linalg.inv(parent) @ np.append(point_ras, 1.0))[:3])
    return node


class ThresholdModel:
    """A deterministic 2D promptable model: bright pixels in the box, minus discs at negative points.

    ``gate``: when set, ``predict`` blocks before call number ``gate_after`` until the event is set
    (lets a test cancel a run at a known slice). ``threads`` records which threads called it.
    """

    model_id = "threshold-test-model"

    def __init__(self, threshold: int = 128, negative_radius_px: float = 3.0, point_radius_px: float = 8.0):
        self.threshold = threshold
        self.negative_radius_px = negative_radius_px
        self.point_radius_px = point_radius_px
        self.predict_calls = 0
        self.threads: set[str] = set()
        self.gate: threading.Event | None = None
        self.gate_after = 0
        self.reached_gate = threading.Event()

    def embed_frames(self, frames):
        self.threads.add(threading.current_thread().name)
        return [np.array(frame, copy=True) for frame in frames]

    def predict(self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None):
        self.threads.add(threading.current_thread().name)
        self.predict_calls += 1
        if self.gate is not None and self.predict_calls > self.gate_after:
            self.reached_gate.set()
            self.gate.wait(30)
        frame = np.asarray(embedding)
        rows, cols = np.indices(frame.shape)
        mask = frame >= self.threshold
        points = np.zeros((0, 2)) if points_frame_xy is None else np.asarray(points_frame_xy, float)
        labels = np.zeros(0, int) if point_labels is None else np.asarray(point_labels, int)
        if box_frame_xyxy is not None:
            x0, y0, x1, y1 = np.asarray(box_frame_xyxy, float)
            mask &= (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
        else:
            near = np.zeros_like(mask)
            for (x, y), label in zip(points, labels, strict=True):
                if label == 1:
                    near |= (cols - x) ** 2 + (rows - y) ** 2 <= self.point_radius_px**2
            mask &= near
        for (x, y), label in zip(points, labels, strict=True):
            if label == 0:
                mask &= (cols - x) ** 2 + (rows - y) ** 2 > self.negative_radius_px**2
        logits = np.where(mask, 6.0, -6.0).astype(np.float32)
        return FramePrediction(logits, 0.9)


class ThreeDView:
    """Slicer's 3D view as far as segment writes are concerned (vtkMRMLSegmentationsDisplayableManager3D):
    at a segment's ``RepresentationModified`` or ``SegmentModified`` event it creates, at once, inside the
    event, the closed surface of any segment that lacks one. ``events`` counts the events it heard,
    ``conversions`` those at which ``target`` lacked its surface (so the view converted it)."""

    def __init__(self, segmentation, target: str) -> None:
        import slicer
        from medsegany.mrml_surface import closed_surface_name

        self.segmentation, self.target, self.name = segmentation, target, closed_surface_name()
        self.events = 0
        self.conversions = 0
        for event in (slicer.vtkSegmentation.RepresentationModified, slicer.vtkSegmentation.SegmentModified):
            segmentation.AddObserver(event, self.on_event)

    def on_event(self, caller, event) -> None:
        self.events += 1
        segment = self.segmentation.GetSegmentation().GetSegment(self.target)
        if segment is not None and segment.GetRepresentation(self.name) is None:
            self.conversions += 1
        self.segmentation.GetSegmentation().CreateRepresentation(self.name)
