"""The 3D surface of a segment while slices stream in (medsegany.mrml_surface), headless with slicer-core:
kept (unchanged) through every slice, rebuilt on time and at the end, equal to Slicer's own conversion."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)

from medsegany.mrml_segment import SegmentWriter  # noqa: E402
from medsegany.mrml_surface import SurfaceDeferral, closed_surface_name  # noqa: E402
from medsegany.slicer_logic import SlicerSegmentationLogic  # noqa: E402
from slicer_scene_testing import (  # noqa: E402
    SHAPE_KJI,
    ThreeDView,
    ThresholdModel,
    add_roi_on_slice,
    add_segmentation,
    add_volume_node,
    fill_segment,
    mrml_scene,
    phantom_kji,
)
from test_slicer_logic import BOX_IJK  # noqa: E402


@pytest.fixture()
def scene():
    with mrml_scene() as new_scene:
        yield new_scene


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _shown_in_3d(scene):
    """A segmentation with the target holding slices 2..5 and the other segment slices 7..9, in 3D."""
    volume_node = add_volume_node(scene, phantom_kji())
    segmentation, (target, other) = add_segmentation(scene, volume_node)
    target_kji = np.zeros(SHAPE_KJI, bool)
    target_kji[2:6, 5:15, 6:18] = True
    other_kji = np.zeros(SHAPE_KJI, bool)
    other_kji[7:10, 4:12, 3:9] = True
    fill_segment(segmentation, target, target_kji)
    fill_segment(segmentation, other, other_kji)
    assert segmentation.CreateClosedSurfaceRepresentation()
    return volume_node, segmentation, target, other


def _surface(segmentation, segment_id):
    return segmentation.GetSegmentation().GetSegment(segment_id).GetRepresentation(closed_surface_name())


def _fresh_surface_points(segmentation, segment_id) -> int:
    """Slicer's own conversion of the segment's current labelmap (the oracle)."""
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    segment.RemoveRepresentation(closed_surface_name())
    segmentation.GetSegmentation().CreateRepresentation(closed_surface_name())
    return _surface(segmentation, segment_id).GetNumberOfPoints()


def _address(surface) -> str:
    return surface.GetAddressAsString("vtkPolyData")


def test_slices_written_keep_the_surface_until_the_run_ends(scene):
    volume_node, segmentation, target, other = _shown_in_3d(scene)
    target_before, other_before = (_address(_surface(segmentation, sid)) for sid in (target, other))
    points_before = _surface(segmentation, target).GetNumberOfPoints()
    writer = SegmentWriter(segmentation, target, volume_node)
    mask = np.zeros(SHAPE_KJI[1:], bool)
    mask[3:18, 4:20] = True

    for k in range(4, 9):
        writer.write_slice(2, k, mask)

    # the surface it had, never missing and not converted after each slice; the other one untouched
    assert _address(_surface(segmentation, target)) == target_before
    assert _address(_surface(segmentation, other)) == other_before
    writer.close()
    built = _surface(segmentation, target)
    assert writer.surface.rebuilds == 1
    assert built.GetNumberOfPoints() != points_before  # the segment grew: the surface follows
    assert built.GetNumberOfPoints() == _fresh_surface_points(segmentation, target)
    assert _address(_surface(segmentation, other)) == other_before


@pytest.mark.parametrize("defer", [True, False], ids=["medsegany", "slicer"])
def test_slicers_3d_view_finds_no_surface_to_convert_while_slices_are_written(scene, defer):
    volume_node, segmentation, target, _ = _shown_in_3d(scene)
    view = ThreeDView(segmentation, target)
    writer = SegmentWriter(segmentation, target, volume_node, defer_surface=defer)
    mask = np.zeros(SHAPE_KJI[1:], bool)
    mask[3:18, 4:20] = True
    before = _address(_surface(segmentation, target))

    for k in range(4, 9):
        writer.write_slice(2, k, mask)

    assert view.events > 0  # the view heard of every write...
    if defer:  # ...and found the (unchanged) surface each time: nothing converted until the end
        assert view.conversions == 0
        assert _address(_surface(segmentation, target)) == before
    writer.close()
    assert _surface(segmentation, target).GetNumberOfPoints() == _fresh_surface_points(segmentation, target)


def test_the_surface_is_rebuilt_every_few_seconds_and_at_most_a_share_of_the_time(scene):
    _, segmentation, target, _ = _shown_in_3d(scene)
    clock = Clock()
    deferral = SurfaceDeferral(segmentation, refresh_s=5.0, max_share=0.1, clock=clock)

    with deferral.writing(target):
        pass
    clock.now += 4.9
    deferral.maybe_rebuild()
    assert deferral.rebuilds == 0 and _surface(segmentation, target) is not None
    clock.now += 0.2
    deferral.maybe_rebuild()  # 5.1 s after the first write
    assert deferral.rebuilds == 1 and _surface(segmentation, target) is not None

    with deferral.writing(target):
        pass
    clock.now += 5.1
    deferral.maybe_rebuild()
    assert deferral.rebuilds == 2

    slow = SurfaceDeferral(segmentation, refresh_s=5.0, max_share=0.1, clock=clock)
    rebuild = slow.rebuild

    def rebuild_taking_2_s() -> float:
        rebuild()
        clock.now += 2.0
        return 2.0

    slow.rebuild = rebuild_taking_2_s
    with slow.writing(target):
        pass
    clock.now += 5.0
    slow.maybe_rebuild()  # took 2 s: the next one waits 2 / 0.1 = 20 s
    with slow.writing(target):
        pass
    clock.now += 19.0
    slow.maybe_rebuild()
    assert slow.deferred
    clock.now += 1.0
    slow.maybe_rebuild()
    assert not slow.deferred


def test_without_3d_nothing_is_removed_or_built(scene):
    volume_node = add_volume_node(scene, phantom_kji())
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    writer = SegmentWriter(segmentation, target, volume_node)
    writer.write_slice(2, 3, np.ones(SHAPE_KJI[1:], bool))
    writer.refresh_surface()
    writer.close()
    assert writer.surface.rebuilds == 0 and _surface(segmentation, target) is None


def test_an_action_through_the_logic_leaves_the_surface_built(scene):
    volume_node, segmentation, target, other = _shown_in_3d(scene)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)

    step = logic.segment(add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4)))

    assert step is not None and step.slices_written > 0
    built = _surface(segmentation, target)
    assert built is not None and built.GetNumberOfPoints() == _fresh_surface_points(segmentation, target)
    logic.undo()  # the restored segments get their surface back too (mrml_undo)
    restored = _surface(segmentation, target)
    assert restored is not None
    assert restored.GetNumberOfPoints() == _fresh_surface_points(segmentation, target)
    assert _surface(segmentation, other) is not None


def test_a_failed_action_gives_the_surface_back_converted_once(scene):
    """The run fails after some slices: the segments are restored with their surfaces (mrml_undo), and the
    writer does not build them a second time."""
    volume_node, segmentation, target, _ = _shown_in_3d(scene)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    before = _fresh_surface_points(segmentation, target)
    action, results = logic.plan_prompt_action(add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4)))

    def fails_after_two():
        for count, result in enumerate(results):
            if count == 2:
                raise RuntimeError("the model failed")
            yield result

    with pytest.raises(RuntimeError, match="failed"):
        logic.run_action(action, fails_after_two())
    assert action.step.slices_written == 2 and action.writer.surface.rebuilds == 0
    restored = _surface(segmentation, target)
    assert restored is not None and restored.GetNumberOfPoints() == before
    assert not logic.can_undo
