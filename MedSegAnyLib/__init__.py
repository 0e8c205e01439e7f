"""MedSegAny: promptable 3D segmentation of medical volumes with SAM-family models.

Importing this package is cheap: torch, SimpleITK and the models load only when used.

Coordinate conventions used in every name:
- ``*_kji``: numpy array order of a volume (slice K, row J, column I).
- ``*_ijk``: voxel indices in ITK/Slicer order (I fastest).
- ``*_ras``: millimetres in Slicer's patient frame (Right, Anterior, Superior).
"""

__version__ = "0.1.0"
