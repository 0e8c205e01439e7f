"""SegmentationSession with a fast fake model: streaming, both directions, stop rule, ranges, clearing."""

from __future__ import annotations

import numpy as np
import pytest
from denormal_testing import flushed_by_openmp_thread, on_new_thread
from fake_models import ThresholdModel
from medsegany import allocator
from medsegany.errors import PromptError
from medsegany.prompts import make_slice_prompts
from medsegany.propagation import PropagationSettings
from medsegany.session import SegmentationSession
from medsegany.volume import Volume


def phantom(shape_kji=(30, 40, 48)) -> Volume:
    """A bright ellipsoid (200) over K 8..20 and, beyond it, a dimmer slab (150) over K 21..27.

    A decoder prompted past the ellipsoid's end segments the slab: the naive scheme runs on into it.
    """
    k, j, i = np.indices(shape_kji)
    voxels = np.zeros(shape_kji, dtype=np.float32)
    ellipsoid = ((k - 14) / 6.5) ** 2 + ((j - 20) / 9) ** 2 + ((i - 24) / 11) ** 2 <= 1
    voxels[ellipsoid] = 200
    slab = (k >= 21) & (k <= 27) & (abs(j - 20) <= 6) & (abs(i - 24) <= 8)
    voxels[slab] = 150
    return Volume(voxels, np.diag([0.8, 0.8, 2.0, 1.0]), name="phantom")


def box_on_k(volume: Volume, k: int):
    mask = volume.voxels_kji[k] >= 200
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return make_slice_prompts(volume, box_ijk=(cols[0], rows[0], k, cols[-1], rows[-1], k))


def run(session: SegmentationSession, **kwargs):
    return list(session.propagate(**kwargs))


def test_propagates_both_ways_and_stops_at_the_object_end():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object("ellipsoid")
    first = session.add_prompts(object_id, box_on_k(volume, 14))
    assert first.source == "prompt" and first.mask_frame.any()
    results = run(session)
    slices = sorted(r.slice_index for r in results)
    assert slices == sorted(set(slices)), "each slice is yielded once"
    truth = volume.voxels_kji >= 200
    mask = session.mask_kji(object_id)
    np.testing.assert_array_equal(mask.any(axis=(1, 2)), truth.any(axis=(1, 2)))
    assert "intensity" in session.objects[object_id].stop_reasons[1]


def test_naive_scheme_runs_into_the_neighbouring_structure():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0),
                                  settings=PropagationSettings.naive())
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    predicted = np.flatnonzero(session.mask_kji(object_id).any(axis=(1, 2)))
    assert predicted.max() >= 25  # the overrun our stop rule prevents


def test_results_stream_outward_alternating_directions():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    order = [r.slice_index for r in session.propagate()][:4]
    assert order == [15, 13, 16, 12]


def test_direction_and_slice_range_limit_propagation():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    results = run(session, direction="forward", slice_range=(10, 17))
    assert {r.slice_index for r in results} == {15, 16, 17}
    assert not session.mask_kji(object_id)[:14].any()


def test_cancel_between_slices_keeps_what_was_yielded():
    volume = phantom()
    model = ThresholdModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    generator = session.propagate()
    taken = [next(generator) for _ in range(3)]
    generator.close()
    filled = set(np.flatnonzero(session.mask_kji(object_id).any(axis=(1, 2))))
    assert filled == {14} | {r.slice_index for r in taken}


def fresh_mask(volume: Volume, prompts_by_slice: dict) -> np.ndarray:
    """What a new session gives for these prompts, propagated over the whole volume."""
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    for prompts in prompts_by_slice.values():
        session.add_prompts(object_id, prompts)
    run(session)
    return session.mask_kji(object_id).copy()


def shrunk_box_on_k(volume: Volume, k: int, by: int):
    rows, cols = np.nonzero(volume.voxels_kji[k] >= 200)
    box_ijk = (cols.min() + by, rows.min() + by, k, cols.max() - by, rows.max() - by, k)
    return make_slice_prompts(volume, box_ijk=box_ijk)


def test_a_slice_range_changes_nothing_outside_it_and_a_later_run_finishes_the_rest():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    before = session.mask_kji(object_id).copy()
    assert set(np.flatnonzero(before.any(axis=(1, 2)))) == set(range(8, 21))

    session.add_prompts(object_id, shrunk_box_on_k(volume, 14, 4))  # a tighter box on the same slice
    results = run(session, slice_range=(12, 16))
    assert {r.slice_index for r in results} <= set(range(12, 17))
    after = session.mask_kji(object_id)
    outside = [k for k in range(volume.voxels_kji.shape[0]) if not 12 <= k <= 16]
    np.testing.assert_array_equal(after[outside], before[outside])  # bit-identical outside the range
    assert not np.array_equal(after[12:17], before[12:17])

    # the range cut the prompt's runs: a propagation without a range finishes them, as a fresh run would
    run(session)
    np.testing.assert_array_equal(
        session.mask_kji(object_id), fresh_mask(volume, {14: shrunk_box_on_k(volume, 14, 4)})
    )


def test_a_slice_range_cuts_runs_between_prompts_and_leaves_prompts_outside_it():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 10))
    session.add_prompts(object_id, box_on_k(volume, 18))
    run(session)
    before = session.mask_kji(object_id).copy()
    session.add_prompts(object_id, shrunk_box_on_k(volume, 10, 4))
    session.add_prompts(object_id, shrunk_box_on_k(volume, 18, 4))  # changed too, but outside the range

    results = run(session, slice_range=(0, 12))
    assert {r.slice_index for r in results} <= set(range(13))
    after = session.mask_kji(object_id)
    np.testing.assert_array_equal(after[13:18], before[13:18])  # the gap beyond the range: untouched
    np.testing.assert_array_equal(after[19:], before[19:])  # the run of prompt 18: not re-run

    run(session)  # both prompts changed; the range did part of 10's work and none of 18's
    expected = fresh_mask(volume, {10: shrunk_box_on_k(volume, 10, 4), 18: shrunk_box_on_k(volume, 18, 4)})
    np.testing.assert_array_equal(session.mask_kji(object_id), expected)


def test_a_slice_range_without_a_prompt_of_the_object_is_refused():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object("liver")
    session.add_prompts(object_id, box_on_k(volume, 14))
    before = session.mask_kji(object_id).copy()
    with pytest.raises(PromptError, match=r"slices 20\.\.25 hold no prompt of liver"):
        run(session, slice_range=(20, 25))
    with pytest.raises(PromptError, match="empty"):
        run(session, slice_range=(40, 60))  # beyond the 30 slices
    np.testing.assert_array_equal(session.mask_kji(object_id), before)
    session.undo()  # the refused calls left no undo step: one undo removes the prompt's mask
    assert not session.mask_kji(object_id).any()


def test_two_prompted_slices_share_the_slices_between_them():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 10))
    session.add_prompts(object_id, box_on_k(volume, 18))
    results = run(session)
    indices = [r.slice_index for r in results]
    assert len(indices) == len(set(indices))
    assert set(indices) == set(range(8, 21)) - {10, 18}


def test_with_two_prompts_each_direction_keeps_the_reason_its_outer_run_ended():
    """The runs between two prompts end at the other prompt: they neither give nor clear the reason a
    direction ended (they cleared both, although the outer runs had stopped at 7 and 21)."""
    volume = phantom()

    def stop_reasons(*keys: int) -> dict:
        session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
        object_id = session.add_object()
        for k in keys:
            session.add_prompts(object_id, box_on_k(volume, k))
        run(session)
        return session.objects[object_id].stop_reasons

    one_prompt = stop_reasons(14)
    assert set(one_prompt) == {1, -1}
    assert stop_reasons(10, 18) == one_prompt


def test_embeddings_are_computed_once_per_frame():
    volume = phantom()
    model = ThresholdModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    first = model.encoded
    run(session)
    assert model.encoded == first


class BatchRecordingModel(ThresholdModel):
    preferred_batch_size = 4  # the model's own choice (LiteMedSAM's on a GPU)

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def embed_frames(self, frames):
        self.batches.append(len(frames))
        return super().embed_frames(frames)


def test_image_features_of_all_axes_stay_within_the_budget_the_other_axes_giving_way_first():
    """The memory plan counts ``max_cached_frames`` slices of features: objects prompted in two views
    share them (before, each axis cached that many), and the plan's encoder batch is the one used."""
    volume = phantom()
    model = BatchRecordingModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0), max_cached_frames=8, encoder_batch=2)
    axial, sagittal = session.add_object("axial"), session.add_object("sagittal")
    session.add_prompts(axial, box_on_k(volume, 14))
    run(session, object_ids=[axial])
    assert len(session.embeddings(2)) == 8
    session.add_prompts(sagittal, make_slice_prompts(volume, box_ijk=(24, 12, 9, 24, 28, 19)))
    for _ in session.propagate([sagittal]):
        assert session.cached_frames() <= 8 + 1  # at most the slice just encoded beyond, until written
    assert session.cached_frames() <= 8 and len(session.embeddings(0)) == 8  # the axis in use kept its own
    assert set(model.batches) <= {1, 2}

    reference = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    reference_id = reference.add_object("sagittal")
    reference.add_prompts(reference_id, make_slice_prompts(volume, box_ijk=(24, 12, 9, 24, 28, 19)))
    run(reference)
    assert session.mask_kji(sagittal).any()
    np.testing.assert_array_equal(session.mask_kji(sagittal), reference.mask_kji(reference_id))


def test_the_runs_of_a_new_prompt_include_a_stopped_sam2_run_that_now_carries_on_to_it():
    """What the Slicer panel re-propagates for a new prompt (``runs_of_prompt``) is what ``propagate()``
    will run: for a SAM 2 model also the run that stopped short of it, which now goes on up to it."""
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    origins = session.objects[object_id].origins
    assert max(k for k, origin in origins.items() if origin == (14, 1)) < 24  # it stopped before 25

    assert {(r.key, r.step) for r in session.runs_of_prompt(object_id, 25)} == {(25, 1), (25, -1)}
    session.is_sam2 = True  # the run plan and bookkeeping of a SAM 2 model (no model call follows)
    runs = session.runs_of_prompt(object_id, 25)
    assert {(r.key, r.step, r.last) for r in runs} == {(14, 1, 24), (25, 1, 29)}


def test_a_direction_never_asked_for_runs_with_the_next_propagation_that_plans_it():
    """Propagated up only, then corrected, then propagated both ways: the first prompt's run down, which
    never ran, runs too (only the correction's run did, and the slices below the prompt stayed empty)."""

    def segment(first_direction: str):
        volume = phantom()
        session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
        object_id = session.add_object()
        session.add_prompts(object_id, box_on_k(volume, 14))
        run(session, direction=first_direction)
        session.add_prompts(object_id, box_on_k(volume, 17))  # a correction on a propagated slice
        run(session)
        assert run(session) == []  # and then nothing is left to do
        session.undo()  # the last propagation: its runs are to do again, and give the same masks
        assert 18 in {r.slice_index for r in session.propagate()}
        return session.mask_kji(object_id).copy()

    both = segment("both")
    assert both[8:14].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(segment("forward"), both)


def test_a_running_session_tightens_its_memory_for_an_action_and_not_past_its_own():
    volume = phantom()
    session = SegmentationSession(volume, BatchRecordingModel(), intensity=(0.0, 255.0), max_cached_frames=20)
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    assert len(session.embeddings(2)) > 6 and session.embeddings(2).batch_size == 4
    session.embeddings(0).get(20)  # a sagittal slice, the one the next action starts from
    session.limit_memory(max_cached_frames=6, offload_features=True, encoder_batch=1, axis=0)
    assert session.cached_frames() == 6 and session.offload_features and 20 in session.embeddings(0)
    assert session.embeddings(2).batch_size == 1 and session.embeddings(2).offload
    # the next action's plan: its own limits, never past the session's (20 slices, the model's batch);
    # the features in host memory stay there
    session.limit_memory(max_cached_frames=50, encoder_batch=8)
    assert (session.max_cached_frames, session.encoder_batch, session.offload_features) == (20, 8, True)
    assert session.embeddings(2).batch_size == 4 and session.embeddings(2).max_frames == 20
    session.limit_memory(max_cached_frames=10)
    assert (session.max_cached_frames, session.encoder_batch) == (10, None)


def test_prompts_on_another_axis_for_the_same_object_are_refused():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    other = make_slice_prompts(volume, box_ijk=(24, 15, 10, 24, 25, 18))
    with pytest.raises(PromptError, match="same view"):
        session.add_prompts(object_id, other)


def test_propagating_an_object_without_prompts_is_a_clear_error():
    session = SegmentationSession(phantom(), ThresholdModel(), intensity=(0.0, 255.0))
    session.add_object("empty")
    with pytest.raises(PromptError, match="no prompt"):
        run(session)


def test_the_users_voxels_are_never_modified():
    volume = phantom()
    before = volume.voxels_kji.copy()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(50.0, 150.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    np.testing.assert_array_equal(volume.voxels_kji, before)


def test_labelmap_gives_object_n_label_n():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    first, second = session.add_object("a"), session.add_object("b")
    session.add_prompts(first, box_on_k(volume, 14))
    slab_prompt = make_slice_prompts(volume, box_ijk=(16, 14, 24, 32, 26, 24))
    session.add_prompts(second, slab_prompt)
    run(session)
    labelmap = session.labelmap_kji()
    assert set(np.unique(labelmap)) == {0, 1, 2}
    assert [s.name for s in session.segments()] == ["a", "b"]


def test_with_several_objects_a_range_goes_to_those_prompted_in_it():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    near, far = session.add_object("near"), session.add_object("far")
    session.add_prompts(near, box_on_k(volume, 14))
    session.add_prompts(far, box_on_k(volume, 19))
    results = run(session, slice_range=(12, 16))
    assert {r.object_id for r in results} == {near}
    assert set(np.flatnonzero(session.mask_kji(far).any(axis=(1, 2)))) == {19}  # its prompt only


class ProbingModel(ThresholdModel):
    """Records ``probe()`` at every decode: what the session set up around its model calls."""

    def __init__(self, device: str, probe) -> None:
        super().__init__()
        self.device, self.probe = device, probe
        self.probed: list = []

    def predict(self, *args, **kwargs):
        self.probed.append(self.probe())
        return super().predict(*args, **kwargs)


@pytest.mark.parametrize("device, expected", [("cpu", 1), ("cuda", 0)])
def test_model_calls_on_a_cpu_keep_freed_memory_until_they_end(device, expected):
    volume = phantom()
    model = ProbingModel(device, allocator.retention_depth)  # retained-memory blocks open
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    assert model.probed == [expected] and allocator.retention_depth() == 0
    stream = session.propagate()
    next(stream)
    assert allocator.retention_depth() == expected, "held between slices of one propagation"
    stream.close()  # a cancelled propagation gives the memory back too
    assert allocator.retention_depth() == 0
    run(session)
    assert set(model.probed) == {expected} and allocator.retention_depth() == 0


def test_model_calls_on_a_cpu_flush_denormals_in_the_thread_that_runs_them(tuned_process):
    """A library caller may load the model on one thread and run sessions on another."""
    if not tuned_process.flush_denormal:
        pytest.skip("this CPU cannot flush denormals")
    volume = phantom()
    model = ProbingModel("cpu", flushed_by_openmp_thread)  # the thread and its OpenMP threads flush

    def segment():
        session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
        session.add_prompts(session.add_object(), box_on_k(volume, 14))
        return len(run(session))

    assert on_new_thread(segment) > 1
    assert len(model.probed) > 2 and all(all(flushed) for flushed in model.probed)


def test_a_positive_click_outside_the_mask_box_of_a_correction_adds_the_missed_part():
    """A correction without a box keeps the slice's mask box; a positive click on a part the mask missed
    lies outside that box and was ignored (the model segments inside its box). The box now takes it in."""
    voxels = np.zeros((6, 30, 60), dtype=np.float32)
    voxels[:, 10:20, 5:55] = 200  # a long bar
    volume = Volume(voxels, np.eye(4))
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    missed = np.zeros((30, 60), dtype=bool)
    missed[10:20, 5:20] = True  # the left end only
    session.add_mask(object_id, 2, 3, missed)
    result = session.add_prompts(object_id, make_slice_prompts(volume, points_ijk=[(45, 15, 3)], axis=2))
    assert result.mask_frame[10:20, 5:46].all()  # the left end through the click
    # a negative click still only removes a part of the mask, inside its box
    result = session.add_prompts(
        object_id,
        make_slice_prompts(volume, points_ijk=[(45, 15, 3), (30, 15, 3)], point_labels=[1, 0], axis=2),
    )
    assert result.mask_frame[15, 45] and not result.mask_frame[15, 30] and result.mask_frame[15, 10]


def test_negative_clicks_alone_correct_a_slice_with_a_mask_and_are_refused_elsewhere():
    volume = phantom()
    with pytest.raises(PromptError, match="only negative points and no box"):  # not for the command line
        make_slice_prompts(volume, points_ijk=[(24, 20, 17)], point_labels=[0], axis=2)
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object("ellipsoid")
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    before = session.mask_kji(object_id).copy()
    def negative_click(k: int):
        point = [(24, 20, k)]
        return make_slice_prompts(volume, points_ijk=point, point_labels=[0], axis=2, corrects_a_mask=True)

    click = negative_click(17)
    result = session.add_prompts(object_id, click)  # K = 17 was propagated: the click removes a part
    assert before[17, 20, 24] and not result.mask_frame[20, 24] and result.mask_frame.any()
    history = session.history
    with pytest.raises(PromptError, match=r"only negative points on slice K=2, where 'ellipsoid' has no"):
        session.add_prompts(object_id, negative_click(2))
    assert 2 not in session.objects[object_id].prompts and session.history == history  # no undo step
    fresh = session.add_object("new")
    with pytest.raises(PromptError, match="has no mask"):
        session.add_prompts(fresh, click)


def test_propagate_takes_one_object_id_as_well_as_a_list():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    first, second = session.add_object("a"), session.add_object("b")
    session.add_prompts(first, box_on_k(volume, 14))
    session.add_prompts(second, box_on_k(volume, 12))
    assert {r.object_id for r in session.propagate(object_ids=np.int64(second))} == {second}  # list(5) failed
    assert {r.object_id for r in session.propagate(object_ids=(first,))} == {first}
    with pytest.raises(PromptError, match="not an object id or a list"):
        run(session, object_ids=2.0)
    # a string is no list of ids: "1" was read as the id "1", "there is no object 1. use one of [1, 2]"
    with pytest.raises(PromptError, match="'1' is not an object id or a list"):
        run(session, object_ids="1")


class SquarePixelThresholdModel(ThresholdModel):
    """The threshold fake declaring a resize that keeps the aspect (as LiteMedSAM's): the session gives
    it frames with non-square pixels resampled to square ones."""

    aspect_preserving_resize = True


def test_features_of_frames_resampled_to_square_pixels_never_serve_the_frames_as_given():
    from medsegany.frame_aspect import SquarePixelEmbedding

    volume = phantom()  # 0.8 mm pixels, 2 mm slices: a J frame is 30 x 48 pixels of 2 x 0.8 mm
    model = SquarePixelThresholdModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object("ellipsoid")
    truth = volume.voxels_kji[:, 20, :] >= 200
    rows, cols = np.flatnonzero(truth.any(1)), np.flatnonzero(truth.any(0))
    prompts = make_slice_prompts(volume, box_ijk=(cols[0], 20, rows[0], cols[-1], 20, rows[-1]), axis=1)
    square = session.add_prompts(object_id, prompts).mask_frame
    cache = session.embeddings(1)
    assert isinstance(cache.get(20), SquarePixelEmbedding) and model.encoded == 1
    # the ellipsoid back on the frame's 30 x 48 pixels (and the slab below it, inside the box grown by 2 px)
    assert (square & truth).sum() == truth.sum() and square.sum() < 1.1 * truth.sum()

    session.square_pixels = False
    as_given = session.embeddings(1)
    assert as_given is not cache and len(as_given) == 0 and as_given.model is model
    as_given_mask = session.add_prompts(object_id, prompts).mask_frame
    assert (as_given_mask & truth).sum() == truth.sum() and not np.array_equal(as_given_mask, square)
    assert not isinstance(as_given.get(20), SquarePixelEmbedding) and model.encoded == 2
    assert session.embeddings(2).model is model  # axial frames: square pixels either way
