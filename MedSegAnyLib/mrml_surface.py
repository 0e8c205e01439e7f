"""A segment's 3D surface while AI slices stream into it: rebuilt every few seconds, not after every slice.

Why: after each change of a segment's labelmap, Slicer converts again every other representation the
segment holds (``vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment``). With the segmentation
shown in 3D (the Segment Editor's "Show 3D"), each segment holds a closed surface, and one 512 x 512
slice written into a 50-slice segment took 575 ms instead of 40 ms (``slicer-core``, 2-core development
CPU). That is more than LiteMedSAM needs for a whole slice on that CPU, and 50x what SAM 2 needs on a
GPU. Slicer's display then draws every slice of a run in 2D at once, and the 3D view lags.

What :class:`SurfaceDeferral` does instead: before a slice is written into a segment, the segment's
closed surface is removed (only that segment's: the others keep theirs, and nothing is converted per
slice). It is built again while the run goes on (:meth:`SurfaceDeferral.maybe_rebuild`, called by the
panel after each batch of slices it writes), but only every ``refresh_s`` seconds and never more than
``max_share`` of the run's time (a rebuild of a large segment costs about as much as one of those
per-slice conversions), and once more when the run ends. Since ``vtkSegmentation.CreateRepresentation``
converts only the segments that lack a representation, each rebuild converts just the segments written.
The surface is the same as without the deferral: Slicer computes it from the same labelmap.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .mrml_vtk import slicer_module

#: Seconds between rebuilds of the 3D surface during a run (the 2D views update with every slice).
REFRESH_S = 5.0
#: Rebuilding may take at most this share of a run's time (a rebuild of 0.6 s waits at least 6 s).
MAX_SHARE = 0.1


def closed_surface_name() -> str:
    return str(slicer_module().vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())


class SurfaceDeferral:
    """Keeps the closed surface of the segments written by one run from being rebuilt after each slice."""

    def __init__(
        self,
        segmentation_node,
        refresh_s: float = REFRESH_S,
        max_share: float = MAX_SHARE,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.segmentation_node = segmentation_node
        self.enabled = bool(enabled)  # False: nothing removed (Slicer converts after every write)
        self.refresh_s = float(refresh_s)
        self.max_share = float(max_share)
        self.clock = clock
        self.deferred: set[str] = set()  # segments whose surface was removed and is owed
        self.rebuilds = 0
        self._name = closed_surface_name()
        self._next_rebuild_at: float | None = None

    def before_write(self, segment_id: str) -> None:
        """Call before changing ``segment_id``'s labelmap: removes its surface if it has one."""
        if not self.enabled:
            return
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None or segment.GetRepresentation(self._name) is None:
            return
        segment.RemoveRepresentation(self._name)
        self.deferred.add(segment_id)
        if self._next_rebuild_at is None:
            self._next_rebuild_at = self.clock() + self.refresh_s

    def maybe_rebuild(self) -> None:
        """Rebuild the owed surfaces when it is time (3D progress). Call when the slices that arrived are
        written, before control returns to Slicer's event loop, so the views draw the rebuilt surface
        before the next slice removes it again."""
        if self.deferred and self._next_rebuild_at is not None and self.clock() >= self._next_rebuild_at:
            seconds = self.rebuild()
            self._next_rebuild_at = self.clock() + max(self.refresh_s, seconds / self.max_share)

    def rebuild(self) -> float:
        """Build the owed surfaces now (the segments written keep theirs until the next write); seconds."""
        if not self.deferred:
            return 0.0
        start = self.clock()
        segmentation = self.segmentation_node.GetSegmentation()
        if any(segmentation.GetSegment(segment_id) is not None for segment_id in self.deferred):
            segmentation.CreateRepresentation(self._name)  # converts only the segments that lack it
            self.rebuilds += 1
        self.deferred.clear()
        return self.clock() - start

    def close(self) -> None:
        """The run ended (done, cancelled or failed): every owed surface is built."""
        self.rebuild()
        self._next_rebuild_at = None
