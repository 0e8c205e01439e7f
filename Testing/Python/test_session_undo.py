"""Session corrections, undo/redo, cancel, masks, several objects (2D path, fast fake model)."""

from __future__ import annotations

import numpy as np
import pytest
from fake_models import ThresholdModel
from medsegany.errors import PromptError
from medsegany.models.base import FramePrediction
from medsegany.prompts import SlicePrompts, make_slice_prompts
from medsegany.session import SegmentationSession
from medsegany.session_runs import Run, plan_runs
from test_session import box_on_k, phantom, run


def new_session(**kwargs) -> tuple[SegmentationSession, int]:
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0), **kwargs)
    object_id = session.add_object("ellipsoid")
    session.add_prompts(object_id, box_on_k(volume, 14))
    return session, object_id


def snapshot(session: SegmentationSession) -> dict:
    return {
        oid: (
            obj.mask_kji.copy(),
            dict(obj.prompts),
            dict(obj.slice_sources),
            dict(obj.stop_reasons),
            dict(obj.confidences),
        )
        for oid, obj in session.objects.items()
    }


def assert_same(session: SegmentationSession, expected: dict) -> None:
    assert set(expected) <= set(session.objects)
    for oid in set(session.objects) - set(expected):  # add_object is not an undo step: it stays, empty
        assert not session.objects[oid].mask_kji.any() and not session.objects[oid].prompts
    for oid, (mask, prompts, sources, reasons, confidences) in expected.items():
        obj = session.objects[oid]
        np.testing.assert_array_equal(obj.mask_kji, mask)
        assert obj.prompts == prompts and obj.slice_sources == sources and obj.stop_reasons == reasons
        assert obj.confidences == confidences


def edge_negative_point(session: SegmentationSession, object_id: int, k: int) -> SlicePrompts:
    """Negative clicks along the left edge of the object's mask on slice k: the fake model removes 7 x 7
    pixels around each, so the mask's box (and the next slice's prompt box) loses 7 columns."""
    mask = session.mask_kji(object_id)[k]
    rows, cols = np.nonzero(mask)
    points = tuple(
        (float(cols.min() + 3), float(row), float(k)) for row in range(rows.min(), rows.max() + 1, 5)
    )
    return SlicePrompts(2, k, None, points, (0,) * len(points))


def test_plan_runs_corrections_keep_the_run_they_correct():
    assert plan_runs({10: 0, 18: 0}, 0, 30) == [
        Run(10, -1, 0, True),
        Run(18, +1, 30, True),
        Run(10, +1, 14, False),
        Run(18, -1, 15, False),
    ]
    # 16 corrects a forward run from 10: 10 keeps 11..15, 16 owns what is beyond it
    assert Run(10, +1, 15, False) in plan_runs({10: 0, 16: +1}, 0, 30)
    assert Run(16, +1, 30, True) in plan_runs({10: 0, 16: +1}, 0, 30)
    assert Run(8, -1, 4, False) in plan_runs({3: 0, 8: -1, 10: 0}, 0, 30, family="sam2")
    assert Run(3, +1, 9, False) in plan_runs({3: 0, 10: 0}, 0, 30, family="sam2")
    assert all(run.step < 0 for run in plan_runs({10: 0}, 0, 30, direction="backward"))


def test_correction_changes_its_slice_and_beyond_only():
    session, object_id = new_session()
    list(session.propagate())
    before = session.mask_kji(object_id).copy()
    correction = session.add_prompts(object_id, edge_negative_point(session, object_id, 16))
    assert correction.source == "prompt"
    rerun = list(session.propagate())
    after = session.mask_kji(object_id)
    assert not np.array_equal(after[16], before[16])
    assert not np.array_equal(after[17], before[17])
    np.testing.assert_array_equal(after[:16], before[:16])  # the other side of the correction is untouched
    assert min(r.slice_index for r in rerun) > 16  # nothing before the correction was recomputed
    # nothing changed since: propagate() has nothing to do; another range re-runs everything the same way
    assert list(session.propagate()) == []
    assert list(session.propagate(slice_range=(0, 28)))
    np.testing.assert_array_equal(session.mask_kji(object_id), after)


def test_repropagate_from_reruns_one_prompt():
    session, object_id = new_session()
    list(session.propagate())
    results = list(session.repropagate_from(object_id, 14, direction="backward"))
    assert results and all(r.slice_index < 14 for r in results)
    with pytest.raises(PromptError, match="no prompt"):
        list(session.repropagate_from(object_id, 3))
    history = session.history
    # a misspelt direction re-ran both sides, a range without the slice silently ran nothing
    with pytest.raises(PromptError, match="direction 'backwards' is not one of"):
        list(session.repropagate_from(object_id, 14, direction="backwards"))
    with pytest.raises(PromptError, match=r"slice 14 lies outside the slice range \(16, 20\)"):
        list(session.repropagate_from(object_id, 14, slice_range=(16, 20)))
    with pytest.raises(PromptError, match=r"slice range \(20, 10\) is empty"):  # reversed: not "outside"
        list(session.repropagate_from(object_id, 14, slice_range=(20, 10)))
    assert session.history == history


def test_undo_redo_restore_every_step_exactly():
    session, object_id = new_session()
    states = [snapshot(session)]
    list(session.propagate())
    states.append(snapshot(session))
    session.add_prompts(object_id, edge_negative_point(session, object_id, 16))
    states.append(snapshot(session))
    list(session.propagate())
    states.append(snapshot(session))
    second = session.add_object("slab")
    session.add_prompts(second, make_slice_prompts(session.volume, box_ijk=(16, 14, 24, 32, 26, 24)))
    states.append(snapshot(session))
    session.remove_object(object_id)
    states.append(snapshot(session))
    assert session.history == [
        "add_prompts",
        "propagate",
        "add_prompts",
        "propagate",
        "add_prompts",
        "remove object",
    ]
    for state in reversed(states[:-1]):
        assert session.can_undo
        changed = session.undo()
        assert changed and all(r.source == "undo" for r in changed)
        assert_same(session, state)
    assert session.can_redo
    for state in states[1:]:
        session.redo()
        assert_same(session, state)
    assert not session.can_redo
    assert session.redo() == []


def test_undo_of_a_correction_then_a_new_propagation_is_consistent():
    session, object_id = new_session()
    list(session.propagate())
    propagated = session.mask_kji(object_id).copy()
    session.add_prompts(object_id, edge_negative_point(session, object_id, 16))
    list(session.propagate())
    session.undo()
    session.undo()
    np.testing.assert_array_equal(session.mask_kji(object_id), propagated)
    assert list(session.objects[object_id].prompts) == [14]
    list(session.propagate())
    np.testing.assert_array_equal(session.mask_kji(object_id), propagated)


def test_a_cancelled_run_is_one_undo_step():
    session, object_id = new_session()
    before = snapshot(session)
    generator = session.propagate()
    taken = [next(generator) for _ in range(3)]
    generator.close()
    assert session.history[-1] == "propagate"
    assert set(np.flatnonzero(session.mask_kji(object_id).any(axis=(1, 2)))) == {14} | {
        r.slice_index for r in taken
    }
    session.undo()
    assert_same(session, before)
    # the interrupted prompt is still to be propagated: the next run does all of it
    assert {r.slice_index for r in session.propagate()} >= {r.slice_index for r in taken}


class UnsureModel(ThresholdModel):
    """A decoder unsure of the object everywhere: mean logit 1.6 inside its masks (the 2D stop rule then
    scales its limit by the prompted slice's confidence)."""

    def predict(self, *args, **kwargs):
        prediction = super().predict(*args, **kwargs)
        prediction.logits_frame[prediction.logits_frame > 0] = 1.6
        return prediction


def test_undo_gives_back_the_prompted_slices_confidence_that_the_stop_rule_scales_by():
    def propagated(draw_then_undo: bool) -> list[int]:
        volume = phantom()
        session = SegmentationSession(volume, UnsureModel(), intensity=(0.0, 255.0))
        object_id = session.add_object("unsure")
        session.add_prompts(object_id, box_on_k(volume, 14))
        if draw_then_undo:  # a drawn mask has no logits, hence no confidence, until it is undone
            session.add_mask(object_id, 2, 14, session.mask_kji(object_id)[14].copy())
            session.undo()
        return sorted(r.slice_index for r in session.propagate() if r.mask_frame.any())

    expected = propagated(False)
    assert len(expected) > 4  # the object is followed, although the model is unsure everywhere
    assert propagated(True) == expected


def test_add_mask_is_a_prompt_that_propagates():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    drawn = volume.voxels_kji[14] >= 200
    result = session.add_mask(object_id, 2, 14, drawn)
    np.testing.assert_array_equal(result.mask_frame, drawn)
    list(session.propagate())
    truth = volume.voxels_kji >= 200
    np.testing.assert_array_equal(session.mask_kji(object_id).any(axis=(1, 2)), truth.any(axis=(1, 2)))
    with pytest.raises(PromptError, match="shape"):
        session.add_mask(object_id, 2, 14, drawn[:5])
    for axis in (-1, 3):  # -1 was taken for K, 3 failed with an IndexError
        with pytest.raises(PromptError, match=f"axis {axis} is not 0, 1 or 2"):
            session.add_mask(object_id, axis, 14, drawn)
    session.undo()
    session.undo()
    assert not session.mask_kji(object_id).any()


def test_exclusive_objects_never_overlap_and_independent_ones_may():
    for overlap in ("independent", "exclusive"):
        volume = phantom()
        session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0), overlap=overlap)
        first, second = session.add_object("a"), session.add_object("b")
        session.add_prompts(first, box_on_k(volume, 14))
        wide = make_slice_prompts(volume, box_ijk=(10, 8, 14, 38, 32, 14))
        session.add_prompts(second, wide)
        list(session.propagate())
        both = session.mask_kji(first) & session.mask_kji(second)
        union = session.mask_kji(first) | session.mask_kji(second)
        if overlap == "exclusive":
            assert not both.any() and union.any()
            labelmap = session.labelmap_kji()
            np.testing.assert_array_equal(labelmap > 0, union)
            session.undo()  # the propagation of both objects
            assert not (session.mask_kji(first) & session.mask_kji(second)).any()
        else:
            assert both.any()
    with pytest.raises(PromptError, match="one view"):
        session.add_prompts(
            session.add_object("c"), make_slice_prompts(volume, box_ijk=(24, 15, 10, 24, 25, 18))
        )


def test_after_an_undo_a_propagation_skips_what_is_complete():
    """Undo gives each object back its last complete run with its prompts and masks: undoing one
    object's correction, or a removal, leaves nothing to propagate (every object was re-run whole, and a
    SAM 2 object, whose memory an undo rebuilds, came out with other masks)."""
    volume = phantom()
    model = ThresholdModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    first, second = session.add_object("a"), session.add_object("b")
    session.add_prompts(first, box_on_k(volume, 14))
    session.add_prompts(second, make_slice_prompts(volume, box_ijk=(16, 14, 24, 32, 26, 24)))
    list(session.propagate())
    complete = snapshot(session)

    session.add_prompts(first, edge_negative_point(session, first, 16))
    session.undo()  # the correction, never propagated
    assert list(session.propagate()) == []
    session.add_prompts(first, edge_negative_point(session, first, 16))
    list(session.propagate())
    session.undo()
    session.undo()  # the correction and its propagation
    assert list(session.propagate()) == []
    session.remove_object(second)
    session.undo()
    calls = model.predict_calls
    assert list(session.propagate()) == [] and model.predict_calls == calls
    assert_same(session, complete)
    assert session.history == ["add_prompts", "add_prompts", "propagate"]
    session.undo()  # an undone propagation is still to do: the next one runs it again
    assert {r.object_id for r in session.propagate()} == {first, second}
    np.testing.assert_array_equal(session.mask_kji(first), complete[first][0])


def test_an_exclusive_undo_step_keeps_only_the_logits_it_needs_and_restores_them_exactly():
    """In "exclusive" mode each slice's raw logits are -inf outside the object's raw mask: an undo step
    keeps the others, not whole frames (a propagation's step was 9 times the size it has in independent
    mode); undo and redo give every logit back."""
    import pickle

    def propagated(overlap: str) -> tuple[SegmentationSession, int, int]:
        volume = phantom((30, 80, 96))
        session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0), overlap=overlap)
        first, second = session.add_object("a"), session.add_object("b")
        session.add_prompts(first, box_on_k(volume, 14))
        session.add_prompts(second, make_slice_prompts(volume, box_ijk=(16, 14, 24, 32, 26, 24)))
        list(session.propagate())
        return session, first, second

    independent, _, _ = propagated("independent")
    session, first, second = propagated("exclusive")
    step_bytes = {
        overlap: len(pickle.dumps(s._history.undo_stack[-1]))
        for overlap, s in (("independent", independent), ("exclusive", session))
    }
    assert step_bytes["exclusive"] < 2 * step_bytes["independent"], step_bytes

    logits = {oid: dict(session.objects[oid].logits_frames) for oid in (first, second)}
    session.add_prompts(first, edge_negative_point(session, first, 16))
    list(session.propagate())
    after = {oid: dict(session.objects[oid].logits_frames) for oid in (first, second)}
    for expected, step in ((logits, session.undo), (after, session.redo)):
        for _ in range(2):  # the correction's propagation and the correction
            step()
        for oid in (first, second):
            restored = session.objects[oid].logits_frames
            assert sorted(restored) == sorted(expected[oid])
            for k, frame in expected[oid].items():
                assert restored[k].dtype == frame.dtype
                np.testing.assert_array_equal(restored[k], frame)


class RunsOutOfMemory(ThresholdModel):
    """Runs out of memory at every decode once ``full`` is set."""

    full = False

    def predict(self, *args, **kwargs):
        if self.full:
            raise MemoryError()
        return super().predict(*args, **kwargs)


def test_a_prompt_the_model_runs_out_of_memory_on_changes_nothing_and_says_so():
    """The out-of-memory message of a propagation ("what was segmented before is kept; undo removes it")
    told the user to undo after a prompt that had written nothing, which took back the action before;
    and a new object's first prompt left an undo step that did nothing."""
    from medsegany.errors import ModelError

    volume = phantom()
    model = RunsOutOfMemory()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object("ellipsoid")
    session.add_prompts(object_id, box_on_k(volume, 14))
    list(session.propagate())
    before, history = snapshot(session), session.history
    fresh = session.add_object("new")
    model.full = True
    for target in (object_id, fresh):
        with pytest.raises(ModelError, match=r"\(the prompt was not applied: nothing changed\)"):
            session.add_prompts(target, box_on_k(volume, 17))
    assert session.history == history and session.objects[fresh].axis is None
    assert_same(session, before)
    model.full = False
    assert session.add_prompts(fresh, box_on_k(volume, 17)).mask_frame.any()  # the next try works


class FlipsAPixelOnReRuns(ThresholdModel):
    """Once ``flip`` is set, answers with the first pixel of each mask flipped off, as non-deterministic GPU
    kernels may answer a re-run: the masks change, the object's runs and stop reasons do not."""

    flip = False

    def predict(self, *args, **kwargs):
        prediction = super().predict(*args, **kwargs)
        logits = prediction.logits_frame.copy()
        if self.flip and (logits > 0).any():
            row, column = np.argwhere(logits > 0)[0]
            logits[row, column] = -8.0
        return FramePrediction(logits, prediction.iou_score)


def test_undoing_a_rerun_that_changed_only_masks_leaves_it_to_do():
    """A propagation in another direction re-runs the object whole; when its masks differ and nothing else
    of the object does, its undo step held no object record, so undo kept the undone run as the object's
    last complete run and the same propagation asked again was skipped, leaving the undone masks."""
    volume = phantom()
    model = FlipsAPixelOnReRuns()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object("ellipsoid")
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    before = snapshot(session)
    model.flip = True
    forward = run(session, direction="forward")
    assert forward and session.history[-1] == "propagate"
    after = snapshot(session)
    assert not np.array_equal(after[object_id][0], before[object_id][0])
    session.undo()
    assert_same(session, before)
    assert run(session, direction="forward")  # the undone propagation runs again
    assert_same(session, after)


def test_a_new_object_never_takes_the_id_of_a_removed_one():
    """Removed the liver (id 1), added the spleen: it got id 1 again, and undoing the removal brought the
    liver back into it: the spleen was gone and the caller's spleen id named the liver (its prompts went
    to the liver)."""
    session, liver = new_session()
    list(session.propagate())
    liver_mask = session.mask_kji(liver).copy()
    session.remove_object(liver)
    spleen = session.add_object("spleen")
    assert spleen != liver
    session.undo()  # the removal
    assert {liver: "ellipsoid", spleen: "spleen"} == {i: o.name for i, o in session.objects.items()}
    np.testing.assert_array_equal(session.mask_kji(liver), liver_mask)
    assert not session.mask_kji(spleen).any()
    session.forget_object(spleen)  # the Slicer panel's way (no undo step): its id is not given again either
    assert session.add_object("kidney") not in (liver, spleen)
