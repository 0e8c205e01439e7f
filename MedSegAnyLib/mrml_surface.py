"""A segment's 3D surface while AI slices stream into it: rebuilt every few seconds, not after every slice.

Why: after each change of a segment's labelmap, Slicer converts every other representation the segment
holds again (``vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment``). With the segmentation
shown in 3D (the Segment Editor's "Show 3D") each segment holds a closed surface, and writing one
512 x 512 slice into a 50-slice segment took 0.42-0.50 s instead of 25-30 ms, 0.82-1.0 s in a 300-slice
volume (``slicer-core``, 2-core development CPU, ``benchmarks/segment_writes.py``). That is more than
LiteMedSAM's whole slice on that CPU and 40x SAM 2's step on a GPU, all on Slicer's main thread.

What :class:`SurfaceDeferral` does instead, around each write (:meth:`SurfaceDeferral.writing`): the
segment's surface is taken off before Slicer changes the labelmap (so there is nothing to convert) and
put back, unchanged, right after, while the segmentation node holds its events (``StartModify``).
Slicer's 3D view answers a changed segment at once by converting the surface of any segment that lacks
one (``vtkMRMLSegmentationsDisplayableManager3D``); when the held events reach it, none lacks one. So
the 3D view and the "Show 3D" button never see a surface missing (no flicker): the written segments
show the surface they had. It is built anew every ``refresh_s`` seconds
(:meth:`SurfaceDeferral.maybe_rebuild`, which the panel calls after each batch of slices), at most
``max_share`` of the run's time, and once more when the run ends: Slicer's own conversion of the final
labelmap.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

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
        self.enabled = bool(enabled)  # False: Slicer's own behaviour, a conversion after every write
        self.refresh_s = float(refresh_s)
        self.max_share = float(max_share)
        self.clock = clock
        self.deferred: set[str] = set()  # segments written whose surface is older than their labelmap
        self.rebuilds = 0
        self._name = closed_surface_name()
        self._next_rebuild_at: float | None = None

    @contextlib.contextmanager
    def writing(self, segment_id: str) -> Iterator[None]:
        """Around one change of ``segment_id``'s labelmap: its surface (if any) is off during the change
        and back, as it was, afterwards; the segment then owes a rebuild."""
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        surface = None if segment is None or not self.enabled else segment.GetRepresentation(self._name)
        if surface is None:
            yield
            return
        # The node's events wait until the surface is back: Slicer's 3D view answers a changed segment by
        # creating the surface of any segment that lacks one (vtkMRMLSegmentationsDisplayableManager3D,
        # at once, inside the event), which would convert it after every slice after all.
        was_modifying = self.segmentation_node.StartModify()
        segment.RemoveRepresentation(self._name)
        try:
            yield
        finally:
            if segment.GetRepresentation(self._name) is None:
                segment.AddRepresentation(self._name, surface)
            self.segmentation_node.EndModify(was_modifying)
            self.deferred.add(segment_id)
            if self._next_rebuild_at is None:
                self._next_rebuild_at = self.clock() + self.refresh_s

    def maybe_rebuild(self) -> None:
        """Rebuild the owed surfaces when it is time (3D progress); the panel calls it after writing the
        slices that arrived, so a rebuild costs one conversion per ``refresh_s``, not one per slice."""
        if self.deferred and self._next_rebuild_at is not None and self.clock() >= self._next_rebuild_at:
            seconds = self.rebuild()
            self._next_rebuild_at = self.clock() + max(self.refresh_s, seconds / self.max_share)

    def rebuild(self) -> float:
        """Build the owed surfaces now from the current labelmaps; the seconds it took."""
        if not self.deferred:
            return 0.0
        start = self.clock()
        segmentation = self.segmentation_node.GetSegmentation()
        segments = [segmentation.GetSegment(segment_id) for segment_id in self.deferred]
        segments = [segment for segment in segments if segment is not None]  # (one may have been deleted)
        for segment in segments:
            segment.RemoveRepresentation(self._name)
        if segments:
            segmentation.CreateRepresentation(self._name)  # converts only the segments that lack it
            self.rebuilds += 1
        self.deferred.clear()
        return self.clock() - start

    def discard(self) -> None:
        """Nothing is owed any more: the segments written were given back as they were, surfaces included
        (``mrml_undo.restore_segment`` rebuilds them), so building them again would only convert twice."""
        self.deferred.clear()
        self._next_rebuild_at = None

    def close(self) -> None:
        """The run ended (done, cancelled or failed): every owed surface is built."""
        self.rebuild()
        self._next_rebuild_at = None
