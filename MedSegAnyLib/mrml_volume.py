"""A Slicer volume node as a :class:`~medsegany.volume.Volume` (voxels KJI + world IJK->RAS)."""

from __future__ import annotations

import numpy as np

from .errors import VolumeError
from .mrml_vtk import matrix_to_numpy, node_to_world, numpy_support, numpy_to_matrix
from .volume import Volume


def node_ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own IJK->RAS (without parent transforms), as a 4x4 array."""
    vtk_matrix = numpy_to_matrix(np.eye(4))
    volume_node.GetIJKToRASMatrix(vtk_matrix)
    return matrix_to_numpy(vtk_matrix)


def world_ijk_to_ras(volume_node) -> np.ndarray:
    """IJK -> world RAS of a volume node: its parent transforms to world @ its own IJK->RAS.

    This is the matrix "Harden transform" would give the node; the node itself is not modified.
    A non-linear parent transform raises :class:`~medsegany.errors.VolumeError`.
    """
    return node_to_world(volume_node, VolumeError, "volume") @ node_ijk_to_ras(volume_node)


def volume_from_node(volume_node, copy: bool = True) -> Volume:
    """The voxels (KJI) and world IJK->RAS of a scalar volume node (scalar or labelmap).

    ``copy=False`` shares the node's memory; only do that when nothing modifies the node while the
    array is in use (inference runs in a worker thread, so the default is a private copy).
    """
    if volume_node is None:
        raise VolumeError("no volume was selected", "choose an input volume")
    name = volume_node.GetName() or "volume"
    image = volume_node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise VolumeError(f"volume '{name}' has no image data", "load or compute the volume first")
    if scalars.GetNumberOfComponents() != 1:
        raise VolumeError(
            f"volume '{name}' has {scalars.GetNumberOfComponents()} components per voxel (colour or vector)",
            "choose a scalar (grey-level) volume, e.g. convert it with the Vector to Scalar Volume module",
        )
    dimensions_ijk = image.GetDimensions()
    voxels_kji = numpy_support().vtk_to_numpy(scalars).reshape(dimensions_ijk[::-1])
    if copy:
        voxels_kji = voxels_kji.copy()
    metadata = {"mrml_node_id": volume_node.GetID(), "source": "mrml"}
    return Volume(voxels_kji, world_ijk_to_ras(volume_node), name=name, metadata=metadata)
