"""SAM 2-family models in the session: random weights in Meta's file format, installed in a weight store
(MEDSEGANY_HOME in tmp, imported with a hash override of the catalog card) and loaded by catalog id, then
propagated, corrected, undone through SegmentationSession."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from medsegany.prompts import SlicePrompts, make_slice_prompts  # noqa: E402
from medsegany.session import SegmentationSession  # noqa: E402
from medsegany.session_sam2 import Sam2StopRule  # noqa: E402
from medsegany.volume import Volume  # noqa: E402
from sam2_testing import blob_frames, disc_box_xyxy  # noqa: E402

# Keep every slice: the random weights' object scores say nothing about the phantom.
KEEP_ALL = Sam2StopRule(absent_slices=10**6, area_collapse_fraction=0.0)


def install_random_model(model_id: str, config: str, directory, seed: int = 0):
    """Save random weights as Meta does, import them into a store under ``model_id`` and load them by id."""
    from medsegany.models import catalog
    from medsegany.models.registry import load_model
    from medsegany.models.sam2_build import save_random_checkpoint
    from medsegany.models.weight_store import WeightStore

    path = save_random_checkpoint(config, directory / "download" / "random.pt", seed=seed)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cards = dict(catalog.load_catalog())
    cards[model_id] = dataclasses.replace(cards[model_id], sha256=digest, bytes=path.stat().st_size)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSEGANY_HOME", str(directory / "home"))
        patch.setattr(catalog, "load_catalog", lambda: cards)
        store = WeightStore()
        store.import_file(cards[model_id], path)
        return load_model(model_id, device="cpu", store=store)


def disc_volume(num_frames: int = 4) -> Volume:
    frames = blob_frames(num_frames=num_frames, height=48, width=56, seed=1)
    return Volume((frames * 255).astype(np.float32), np.eye(4), name="discs")


def box_prompt(volume: Volume, k: int) -> SlicePrompts:
    x0, y0, x1, y1 = disc_box_xyxy(volume.voxels_kji / 255.0, k)
    return make_slice_prompts(volume, box_ijk=(x0, y0, k, x1, y1, k))


@pytest.fixture(scope="module")
def medsam2(tmp_path_factory):
    return install_random_model("medsam2_latest", "sam2.1_hiera_t512", tmp_path_factory.mktemp("m2"), seed=3)


@pytest.fixture(params=[False, True], ids=["cpu_path", "gpu_path"])
def gpu_path(request, monkeypatch, medsam2):
    """gpu_path: the session's trackers as on CUDA (steps split as for CUDA graphs, one launched ahead)."""
    if request.param:
        from medsegany.models.sam2_tracker import Sam2Tracker

        def new_tracker(feature_cache_mb: float = 1024.0):
            return Sam2Tracker(
                medsam2.model,
                feature_cache_mb=feature_cache_mb,
                precision=medsam2.precision,
                step_graphs=True,
                lookahead=True,
            )

        monkeypatch.setattr(medsam2, "new_tracker", new_tracker)
    return request.param


def test_medsam2_propagates_forward_then_backward_and_reuses_features(medsam2, gpu_path):
    assert medsam2.image_size == 512 and medsam2.model_id == "medsam2_latest"
    volume = disc_volume()
    session = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    first, second = session.add_object("disc"), session.add_object("half")
    session.add_prompts(first, box_prompt(volume, 1))
    session.add_prompts(second, make_slice_prompts(volume, box_ijk=(10, 10, 1, 28, 38, 1)))
    results = list(session.propagate())
    order = [(r.object_id, r.slice_index) for r in results]
    assert order == [(first, 2), (first, 3), (first, 0), (second, 2), (second, 3), (second, 0)]
    tracker = session.tracker(2)
    for result in results:
        stored = tracker.result(result.object_id, result.slice_index)
        np.testing.assert_array_equal(result.mask_frame, stored.mask_frame)
        np.testing.assert_array_equal(
            session.mask_kji(result.object_id)[result.slice_index], stored.mask_frame
        )
        assert result.score == stored.object_score_logit
    assert tracker.frames_encoded == 4  # features once per slice for both objects

    # a correction: a negative click on slice 2 changes slices 2 and 3, leaves 0 and 1 as they were
    before = {oid: session.mask_kji(oid).copy() for oid in (first, second)}
    logits_before = {i: tracker.result(first, i).mask_logits_frame for i in range(4)}
    centre = (volume.shape_ijk[0] / 2, volume.shape_ijk[1] / 2, 2)
    session.add_prompts(first, SlicePrompts(2, 2, None, (centre,), (0,)))
    rerun = list(session.propagate())
    assert [(r.object_id, r.slice_index) for r in rerun] == [(first, 3)]
    for i in (2, 3):
        assert not np.array_equal(tracker.result(first, i).mask_logits_frame, logits_before[i])
    np.testing.assert_array_equal(session.mask_kji(first)[:2], before[first][:2])
    np.testing.assert_array_equal(session.mask_kji(second), before[second])
    assert tracker.frames_encoded == 4

    # undo the correction and its propagation: masks and prompts exactly as before; redo gives it back
    corrected = session.mask_kji(first).copy()
    session.undo()
    session.undo()
    np.testing.assert_array_equal(session.mask_kji(first), before[first])
    assert list(session.objects[first].prompts) == [1]
    session.redo()
    session.redo()
    np.testing.assert_array_equal(session.mask_kji(first), corrected)


def test_stop_rule_and_exclusive_objects(medsam2, gpu_path):
    volume = disc_volume(num_frames=3)
    # every absent slice ends a direction at once
    rule = Sam2StopRule(absent_slices=1, area_collapse_fraction=0.5)
    session = SegmentationSession(
        volume, medsam2, intensity=(0.0, 255.0), overlap="exclusive", sam2_stop=rule
    )
    first, second = session.add_object("a"), session.add_object("b")
    session.add_prompts(first, box_prompt(volume, 1))
    session.add_prompts(second, make_slice_prompts(volume, box_ijk=(5, 5, 1, 40, 40, 1)))
    list(session.propagate())
    assert not (session.mask_kji(first) & session.mask_kji(second)).any()
    tracker = session.tracker(2)
    for oid in (first, second):
        obj = session.objects[oid]
        for step, index in ((+1, 2), (-1, 0)):
            track = tracker.result(oid, index)
            area = int(track.mask_frame.sum()) if track is not None else 0
            prompted_area = int((obj.logits_frames[1] > 0).sum()) if 1 in obj.logits_frames else 0
            ended = track is None or track.object_score_logit <= 0 or area < 0.5 * prompted_area
            assert (step in obj.stop_reasons) == ended
            if ended:
                assert not session.mask_kji(oid)[index].any()  # cleared beyond the stop


def test_sam2_1_tiny_at_1024_through_the_store(tmp_path):
    model = install_random_model("sam2.1_hiera_tiny", "sam2.1_hiera_t", tmp_path, seed=1)
    assert model.image_size == 1024
    volume = disc_volume(num_frames=2)
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    object_id = session.add_object()
    prompt = session.add_prompts(object_id, box_prompt(volume, 0))
    results = list(session.propagate())
    assert [r.slice_index for r in results] == [1]
    tracker = session.tracker(2)
    np.testing.assert_array_equal(session.mask_kji(object_id)[0], prompt.mask_frame)
    np.testing.assert_array_equal(session.mask_kji(object_id)[1], tracker.result(object_id, 1).mask_frame)
    assert tracker.frames_encoded == 2


def test_a_slice_range_leaves_the_slices_outside_it_untouched(medsam2):
    volume = disc_volume(num_frames=6)
    session = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    disc = session.add_object("disc")
    session.add_prompts(disc, box_prompt(volume, 2))
    list(session.propagate())
    before = session.mask_kji(disc).copy()
    session.add_prompts(disc, make_slice_prompts(volume, box_ijk=(12, 10, 2, 30, 36, 2)))  # another box

    results = list(session.propagate(slice_range=(1, 3)))
    assert {r.slice_index for r in results} == {1, 3}  # the prompt's runs, cut at the range's edges
    after = session.mask_kji(disc)
    np.testing.assert_array_equal(after[[0, 4, 5]], before[[0, 4, 5]])
    rest = list(session.propagate())  # without a range: the runs the range cut go on to the ends
    assert {r.slice_index for r in rest} == {0, 1, 3, 4, 5}


def test_features_encoded_ahead_are_used_and_give_the_same_masks(medsam2):
    volume = disc_volume()
    ahead = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)

    progress = list(ahead.encode_ahead(2, 2))

    assert [i for p in progress for i in p.frames] == [2, 3, 1, 0]
    assert progress[-1].cached == 4 and ahead.cached_frames() == 4
    tracker = ahead.tracker(2)
    object_id = ahead.add_object("disc")
    ahead.add_prompts(object_id, box_prompt(volume, 1))
    list(ahead.propagate())
    assert tracker.frames_encoded == 4  # nothing encoded after the prompt

    cold = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    other = cold.add_object("disc")
    cold.add_prompts(other, box_prompt(volume, 1))
    list(cold.propagate())
    np.testing.assert_array_equal(ahead.mask_kji(object_id), cold.mask_kji(other))
    for k in range(4):
        np.testing.assert_array_equal(
            tracker.result(object_id, k).mask_logits_frame, cold.tracker(2).result(other, k).mask_logits_frame
        )


def test_features_kept_in_host_memory_give_the_same_masks(medsam2, gpu_path, monkeypatch):
    """offload_features, as the memory plan asks on a small GPU: the trackers keep the features in host
    memory and copy them back for every use. On this CPU the stand-ins negate the values both ways, so a
    read that skipped the copy back (by the graph path's buffers, the step launched ahead, a correction)
    would change the masks."""
    import medsegany.models.sam2_features as sam2_features

    volume = disc_volume()

    def segment(session):
        object_id = session.add_object("disc")
        session.add_prompts(object_id, box_prompt(volume, 1))
        list(session.propagate())
        centre = (volume.shape_ijk[0] / 2, volume.shape_ijk[1] / 2, 2)
        session.add_prompts(object_id, SlicePrompts(2, 2, None, (centre,), (0,)))  # a negative click
        list(session.propagate())
        return session.mask_kji(object_id)

    kept = segment(SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL))
    monkeypatch.setattr(sam2_features, "to_host", lambda fpn: [-t for t in fpn])
    monkeypatch.setattr(sam2_features, "to_device", lambda fpn, device: [-t for t in fpn])
    offloaded = SegmentationSession(
        volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL, offload_features=True
    )
    np.testing.assert_array_equal(segment(offloaded), kept)
    tracker = offloaded.tracker(2)
    assert tracker.offload_features and tracker.frames_encoded == 4
    assert all(tracker._cache.stored(k) is not None for k in range(4))


def test_running_out_of_memory_while_a_drawn_mask_rebuilds_the_tracker_is_the_one_line_error(medsam2):
    """After an undo, ``add_mask`` first rebuilds the object's tracker state with model calls; memory that
    runs out there is the one-line ModelError as in every other model call, and the session goes on."""
    from medsegany.errors import ModelError

    volume = disc_volume()
    session = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    object_id = session.add_object("disc")
    session.add_prompts(object_id, box_prompt(volume, 1))
    session.add_prompts(object_id, box_prompt(volume, 2))
    session.undo()  # the tracker no longer matches: the next call on the object rebuilds it
    kept = session.mask_kji(object_id).copy()
    tracker = session.tracker(2)
    real_add_prompts = tracker.add_prompts
    calls = []

    def out_of_memory_at_the_rebuild(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_add_prompts(*args, **kwargs)

    tracker.add_prompts = out_of_memory_at_the_rebuild
    drawn = session.mask_kji(object_id)[1] | (volume.voxels_kji[3] > 127)
    with pytest.raises(ModelError, match="out of memory"):
        session.add_mask(object_id, 2, 3, drawn)
    assert "mask_frame" in calls[0]  # it failed in the rebuild, before the drawn mask's own call
    np.testing.assert_array_equal(session.mask_kji(object_id), kept)
    result = session.add_mask(object_id, 2, 3, drawn)  # the next try works
    assert result.source == "prompt" and session.objects[object_id].prompted_slices() == [1, 3]


def test_a_correction_the_model_runs_out_of_memory_on_leaves_no_trace_in_the_tracker(medsam2):
    """After an undo, a correction first gives the tracker the slice's mask, then the clicks. Memory that
    ran out at the clicks left that mask in the tracker as a prompt the session did not have: every later
    propagation used it. The tracker is now rebuilt from the session's prompts at the next call."""
    from medsegany.errors import ModelError

    volume = disc_volume(num_frames=5)
    session = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    disc = session.add_object("disc")
    session.add_prompts(disc, box_prompt(volume, 1))
    list(session.propagate())
    session.add_prompts(disc, box_prompt(volume, 1))
    session.undo()  # the tracker no longer matches: the next call rebuilds it
    tracker = session.tracker(2)
    real_add_prompts = tracker.add_prompts

    def out_of_memory_at_the_clicks(*args, **kwargs):
        if kwargs.get("mask_frame") is None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_add_prompts(*args, **kwargs)

    tracker.add_prompts = out_of_memory_at_the_clicks
    y, x = np.argwhere(session.mask_kji(disc)[3])[0]
    click = SlicePrompts(2, 3, None, ((float(x), float(y), 3.0),), (0,))
    with pytest.raises(ModelError, match=r"\(the prompt was not applied: nothing changed\)"):
        session.add_prompts(disc, click)
    tracker.add_prompts = real_add_prompts
    assert session.objects[disc].prompted_slices() == [1]
    session.add_prompts(disc, box_prompt(volume, 1))
    assert tracker.conditioning_frames(disc) == [1]


def test_a_fresh_prompt_past_a_stop_fills_the_gap_as_both_prompts_at_once_do(medsam2):
    # SAM 2 gives the gap between two fresh prompts to the lower one's forward run. Prompted on slice 1,
    # that run stops at 3 (slice 2 kept); a fresh prompt on 5 makes it run on to 4, though 1 is unchanged.
    volume = disc_volume(num_frames=8)
    stop_after_1 = Sam2StopRule(absent_slices=10**6, area_collapse_fraction=0.0, max_slices=1)

    def session_with(*keys):
        session = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=stop_after_1)
        disc = session.add_object("disc")
        for key in keys:
            session.add_prompts(disc, box_prompt(volume, key))
        return session, session.objects[disc]

    at_once, expected = session_with(1, 5)
    list(at_once.propagate())

    incremental, obj = session_with(1)
    list(incremental.propagate())
    assert obj.stop_reasons == {1: "slice 3: 1 slices reached"}
    assert sorted(obj.slice_sources) == [0, 1, 2]
    incremental.add_prompts(obj.object_id, box_prompt(volume, 5))
    results = list(incremental.propagate())
    # 1's forward run (now through to 5) and 5's, which stops at 7; 1's backward run is unchanged
    assert [r.slice_index for r in results] == [2, 3, 4, 6]
    assert obj.slice_sources == expected.slice_sources
    assert obj.origins == expected.origins == {0: (1, -1), 2: (1, 1), 3: (1, 1), 4: (1, 1), 6: (5, 1)}
    assert obj.stop_reasons == expected.stop_reasons == {1: "slice 7: 1 slices reached"}
    masks, masks_at_once = obj.mask_kji, expected.mask_kji
    assert [k for k in range(8) if masks[k].any()] == [k for k in range(8) if masks_at_once[k].any()]
    # the same masks up to the memory of the tracking done before: slices 0-2 were tracked without 5
    for k in range(8):
        union = (masks[k] | masks_at_once[k]).sum()
        assert union == 0 or (masks[k] & masks_at_once[k]).sum() > 0.9 * union, k
    assert list(incremental.propagate()) == []  # nothing changed since


def test_a_negative_click_alone_corrects_a_propagated_slice(medsam2):
    """SAM 2 takes a visited slice's prompt as a correction with its previous mask (Meta's predictor does
    too): negative points alone are a prompt there, and only there."""
    volume = disc_volume(num_frames=5)
    session = SegmentationSession(volume, medsam2, intensity=(0.0, 255.0), sam2_stop=KEEP_ALL)
    disc = session.add_object("disc")
    session.add_prompts(disc, box_prompt(volume, 1))
    list(session.propagate())
    assert session.mask_kji(disc)[3].any(), "random weights still segment the propagated slice"
    y, x = np.argwhere(session.mask_kji(disc)[3])[0]
    click = make_slice_prompts(
        volume, points_ijk=[(float(x), float(y), 3)], point_labels=[0], axis=2, corrects_a_mask=True
    )
    result = session.add_prompts(disc, click)
    assert result.source == "prompt" and sorted(session.objects[disc].prompts) == [1, 3]
    list(session.propagate())  # the correction's runs go on from it
