"""Small VTK/MRML conversions shared by the MRML adapter: matrices, transforms, oriented images.

Everything here imports ``slicer`` and VTK lazily, inside functions, so that importing the library
stays cheap and works without Slicer. ``slicer`` is the running application inside 3D Slicer and the
``slicer-core`` wheel (Qt-free MRML) elsewhere; both expose the same MRML classes on that module.
"""

from __future__ import annotations

import numpy as np

from .errors import MedSegAnyError


def slicer_module():
    """The ``slicer`` module (3D Slicer or the ``slicer-core`` wheel), or a clear error without it."""
    try:
        import slicer  # lazy: pulls in VTK and all MRML libraries (about 1 s)
    except ImportError:
        raise MedSegAnyError(
            "the MRML adapter needs 3D Slicer or the slicer-core package",
            "run inside 3D Slicer or `pip install slicer-core`",
        ) from None
    return slicer


def numpy_support():
    """``vtkmodules.util.numpy_support`` (lazy)."""
    from vtkmodules.util import numpy_support as support

    return support


def matrix_to_numpy(vtk_matrix) -> np.ndarray:
    """A 4x4 float array from a ``vtkMatrix4x4``."""
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_matrix(matrix_4x4: np.ndarray):
    """A new ``vtkMatrix4x4`` holding a 4x4 array."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    vtk_matrix = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(matrix_4x4[r][c]))
    return vtk_matrix


def node_to_world(node, error_type: type[MedSegAnyError], what: str) -> np.ndarray:
    """4x4 matrix from a transformable node's own coordinates to world RAS (its parent transforms).

    Non-linear parent transforms (grid, B-spline, thin-plate) cannot be folded into one matrix, so a
    node under one is refused with ``error_type`` naming ``what`` and the fix (harden or remove it).
    """
    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise error_type(
            f"{what} '{node.GetName()}' is under the non-linear transform '{transform_node.GetName()}'",
            "harden the transform on it (Transforms module) or remove the transform",
        )
    to_world = numpy_to_matrix(np.eye(4))
    transform_node.GetMatrixTransformToWorld(to_world)
    return matrix_to_numpy(to_world)


def oriented_image(values_kji: np.ndarray, extent_ijk: tuple[int, ...], image_to_world: np.ndarray):
    """A ``vtkOrientedImageData`` (unsigned char) holding ``values_kji`` over ``extent_ijk``.

    ``extent_ijk`` is VTK's (i0, i1, j0, j1, k0, k1), inclusive; ``values_kji`` has shape
    (k1-k0+1, j1-j0+1, i1-i0+1). ``image_to_world`` maps the extent's indices to the coordinates of the
    node that will own the image (for a segment: the segmentation node's own coordinates).
    """
    slicer = slicer_module()
    from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR

    i0, i1, j0, j1, k0, k1 = (int(v) for v in extent_ijk)
    expected_kji = (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    if tuple(values_kji.shape) != expected_kji:
        raise ValueError(f"values shape {values_kji.shape} does not fit extent {extent_ijk} ({expected_kji})")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    image.AllocateScalars(VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(numpy_to_matrix(image_to_world))
    scalars = numpy_support().vtk_to_numpy(image.GetPointData().GetScalars())
    # VTK stores I fastest, which is numpy's C order of a KJI array.
    scalars[:] = np.ascontiguousarray(values_kji, dtype=np.uint8).ravel()
    return image


def extent_is_empty(image) -> bool:
    """Whether an image's extent holds no voxel (an empty layer has extent (0, -1, 0, -1, 0, -1))."""
    extent = image.GetExtent()
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def image_values_kji(image) -> np.ndarray | None:
    """A copy of a single-component image's voxels as a KJI array; None when its extent is empty."""
    if extent_is_empty(image):
        return None
    extent = image.GetExtent()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return None
    shape_kji = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    values = numpy_support().vtk_to_numpy(scalars)
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(f"image has {scalars.GetNumberOfComponents()} components, expected 1")
    return values.reshape(shape_kji).copy()


def image_to_world(image) -> np.ndarray:
    """The 4x4 index-to-world matrix of a ``vtkOrientedImageData``."""
    vtk_matrix = numpy_to_matrix(np.eye(4))
    image.GetImageToWorldMatrix(vtk_matrix)
    return matrix_to_numpy(vtk_matrix)
