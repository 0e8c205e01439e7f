"""Sam2Tracker gives Meta's SAM2VideoPredictor's masks: same weights, frames and prompts, on the CPU in
float32 and, where the CPU computes bf16 natively (what precision "auto" picks there), under bf16 autocast
on both sides.

Meta's predictor reads frames only through ``sam2.sam2_video_predictor.load_video_frames`` (JPEG files,
lossy); the test replaces that function so ``init_state`` receives exactly the preprocessed tensor our
tracker uses. On the CPU Meta's hole filling needs the CUDA extension ``sam2._C`` and is skipped without
it, so Meta's ``get_connected_components`` is replaced by our CPU implementation (checked against a
reference in test_sam2_holes.py): both sides then run Meta's hole-filling semantics.

Both sides share one model instance (built by ``build_sam2_model``; test_sam2_build.py checks it equals
Meta's own build). Its ``forward_image`` is memoised on the exact bytes of its input, which only avoids
re-encoding frames that Meta's one-frame feature cache drops: a different input is never served from it.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from medsegany.models.sam2_cpu_attention import matmul_attention, matmul_attention_active  # noqa: E402
from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy, random_checkpoint  # noqa: E402

# Both sides run the same operations in the same order: on this CPU they agree exactly in float32 and in
# bf16 (0.0 measured); the margin allows another BLAS's summation order, far below bf16's 0.4 % rounding.
RELATIVE_TOLERANCE = 1e-4


def relative_error(ours: np.ndarray, meta: np.ndarray) -> float:
    return float(np.abs(ours - meta).max() / max(np.abs(meta).max(), 1e-6))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from medsegany.models.sam2_build import build_sam2_model

    checkpoint = random_checkpoint(tmp_path_factory.mktemp("sam2"), CONFIG_512, seed=0)
    model = build_sam2_model(CONFIG_512, checkpoint, device="cpu")
    encode = model.forward_image
    memo: dict[tuple, dict] = {}

    def memoised_forward_image(images):
        autocast = torch.is_autocast_enabled("cpu")  # a bf16 run never gets float32 features, nor back
        by_matmul = matmul_attention_active()  # nor features of the other attention arithmetic
        digest = hashlib.sha256(images.float().numpy().tobytes()).hexdigest()
        key = (tuple(images.shape), autocast, by_matmul, digest)
        if key not in memo:
            memo[key] = encode(images)
        out = memo[key]
        return {name: list(value) if isinstance(value, list) else value for name, value in out.items()}

    model.forward_image = memoised_forward_image
    return model


def meta_state(model, frames, monkeypatch):
    """Meta's inference state over exactly our preprocessed frames."""
    import sam2.sam2_video_predictor as video_predictor
    import sam2.utils.misc as sam2_misc
    from medsegany.models.sam2_frames import preprocess_frames
    from medsegany.models.sam2_holes import connected_components

    images = preprocess_frames(frames, model.image_size)
    height, width = frames.shape[1:]
    monkeypatch.setattr(video_predictor, "load_video_frames", lambda **_: (images.clone(), height, width))
    monkeypatch.setattr(sam2_misc, "get_connected_components", connected_components)
    return model.init_state(video_path="in-memory frames")


@pytest.mark.parametrize(
    ("precision", "gpu_path", "by_matmul"),
    [
        ("float32", False, False),
        ("float32", False, True),
        ("bfloat16", False, True),
        ("bfloat16", False, False),
        ("float32", True, False),
        ("bfloat16", True, False),
    ],
)
def test_propagation_and_correction_match_meta(model, monkeypatch, precision, gpu_path, by_matmul):
    """``gpu_path=True``: the tracker as on CUDA: steps split around the memory attention (replayed from
    CUDA graphs there, run eagerly here) and launched one ahead, holes filled in the step
    (sam2_holes.fill_holes_without_host) and masks resized where it ran.
    ``by_matmul=True``: the CPU's default, attention by matrix products (sam2_cpu_attention). In bf16
    Meta's predictor then runs it too: everything else must still be Meta's, operation for operation (how
    far that attention is from PyTorch's fused kernel is in test_sam2_cpu_attention.py). In float32, where
    only the memory's cross-attention changes (values projected last, scores in float32), ours is held to
    Meta's predictor as it ships, fused kernel and all."""
    from medsegany.models.compute import autocast_context, cpu_has_native_bf16
    from medsegany.models.sam2_tracker import Sam2Tracker

    if precision == "bfloat16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: precision auto runs float32 here")

    # 4 frames keep the test near 30 s of CPU: the prompt on frame 1 has one frame behind it and two ahead
    frames = blob_frames(num_frames=4)
    middle, corrected = 1, 2
    box = disc_box_xyxy(frames, middle)
    negative_point = np.array([[frames.shape[2] / 2, frames.shape[1] / 2]], np.float32)

    # ours: a box on frame 1, forward then backward, then a negative click on the next frame
    tracker = Sam2Tracker(
        model, precision=precision, step_graphs=gpu_path, lookahead=gpu_path, matmul_attention=by_matmul
    )
    assert tracker.matmul_attention == by_matmul
    tracker.set_frames(frames)
    ours_prompt = tracker.add_prompts(7, middle, box_frame_xyxy=box)
    ours = {}
    for direction in (+1, -1):
        for result in tracker.propagate(middle, direction):
            assert result.object_id == 7
            ours[result.frame_index] = (result.mask_logits_frame, result.object_score_logit)
    ours_correction = tracker.add_prompts(
        7, corrected, points_frame_xy=negative_point, point_labels=np.array([0])
    )
    ours_after = {r.frame_index: r.mask_logits_frame for r in tracker.propagate(corrected, +1)}

    # Meta: the same calls on SAM2VideoPredictor (under autocast for bf16, as Meta's notebooks run it)
    meta_context = contextlib.ExitStack()
    meta_context.enter_context(autocast_context("cpu", precision))
    meta_context.enter_context(matmul_attention(by_matmul and precision == "bfloat16"))
    state = meta_state(model, frames, monkeypatch)
    _, _, meta_prompt = model.add_new_points_or_box(state, frame_idx=middle, obj_id=7, box=box)
    meta = {}
    for reverse in (False, True):
        for frame_index, _, logits in model.propagate_in_video(
            state, start_frame_idx=middle, reverse=reverse
        ):
            meta[frame_index] = logits[0, 0].float().numpy()
    _, _, meta_correction = model.add_new_points_or_box(
        state, frame_idx=corrected, obj_id=7, points=negative_point, labels=np.array([0])
    )
    meta_after = {
        frame_index: logits[0, 0].float().numpy()
        for frame_index, _, logits in model.propagate_in_video(state, start_frame_idx=corrected)
    }
    meta_context.__exit__(None, None, None)

    # the random weights see the object (score > 0), so the logits are real masks, not -1024 everywhere
    assert ours[middle][1] > 0 and (ours[middle][0] > 0).any()
    assert sorted(ours) == sorted(meta) == list(range(len(frames)))
    assert relative_error(ours_prompt, meta_prompt[0, 0].float().numpy()) <= RELATIVE_TOLERANCE
    for frame_index, (logits, _) in ours.items():
        assert logits.shape == frames.shape[1:] and logits.dtype == np.float32
        assert relative_error(logits, meta[frame_index]) <= RELATIVE_TOLERANCE, frame_index
        np.testing.assert_array_equal(logits > 0, meta[frame_index] > 0)
    assert relative_error(ours_correction, meta_correction[0, 0].float().numpy()) <= RELATIVE_TOLERANCE
    assert sorted(ours_after) == sorted(meta_after) == [corrected, corrected + 1]
    for frame_index, logits in ours_after.items():
        assert relative_error(logits, meta_after[frame_index]) <= RELATIVE_TOLERANCE, frame_index
        np.testing.assert_array_equal(logits > 0, meta_after[frame_index] > 0)

    # the correction changed its frame and the frame after it, and nothing on the other side of it
    assert not np.array_equal(ours_after[corrected], ours[corrected][0])
    assert not np.array_equal(ours_after[corrected + 1], ours[corrected + 1][0])
    for frame_index in range(corrected):
        np.testing.assert_array_equal(tracker.result(7, frame_index).mask_logits_frame, ours[frame_index][0])
    assert tracker.conditioning_frames(7) == [middle, corrected]
    assert tracker.frames_encoded == len(frames)  # every frame encoded once for all of the above


def exact_tracker(model, frames):
    """Our tracker as the float32 comparisons need it: Meta's step (no split), PyTorch's fused attention."""
    from medsegany.models.sam2_tracker import Sam2Tracker

    tracker = Sam2Tracker(
        model, precision="float32", step_graphs=False, lookahead=False, matmul_attention=False
    )
    tracker.set_frames(frames)
    return tracker


def ours_run(tracker, start, direction, **options) -> dict[tuple[int, int], np.ndarray]:
    """{(object, frame): logits} of one propagation of our tracker."""
    return {
        (r.object_id, r.frame_index): r.mask_logits_frame
        for r in tracker.propagate(start, direction, **options)
    }


def meta_run(model, state, **options) -> dict[tuple[int, int], np.ndarray]:
    """{(object, frame): logits} of one ``propagate_in_video`` (every object of the state)."""
    return {
        (object_id, frame_index): logits[i, 0].float().numpy()
        for frame_index, object_ids, logits in model.propagate_in_video(state, **options)
        for i, object_id in enumerate(object_ids)
    }


def assert_same(ours: dict, meta: dict, keys=None) -> None:
    """Every (object, frame) of ``ours`` (or of ``keys``) equals Meta's, logits and mask."""
    keys = sorted(ours) if keys is None else keys
    assert keys and set(keys) <= set(meta)
    for key in keys:
        assert relative_error(ours[key], meta[key]) <= RELATIVE_TOLERANCE, key
        np.testing.assert_array_equal(ours[key] > 0, meta[key] > 0)


def meta_prompt(model, state, object_id, **prompt) -> np.ndarray:
    """Meta's logits of one object after ``add_new_points_or_box`` (or ``add_new_mask`` with ``mask``)."""
    if "mask" in prompt:
        _, object_ids, logits = model.add_new_mask(state, obj_id=object_id, **prompt)
    else:
        _, object_ids, logits = model.add_new_points_or_box(state, obj_id=object_id, **prompt)
    return logits[list(object_ids).index(object_id), 0].float().numpy()


def test_several_objects_added_removed_and_a_mask_prompt_match_meta(model, monkeypatch):
    """Meta batches objects in one state, each with its own memory: objects prompted on different frames
    and propagated together, one added after the others were propagated (a mask prompt, then a click on
    it), one removed. Propagating from frame 1 tracks object 2 towards its prompt on frame 3: on frame 1
    its memory has no object pointer (only conditioning frames at or behind the tracked frame give one),
    which stopped float32 runs with a dtype error, Meta's too on this shared model before the tracker
    promoted such a memory (sam2_memory_attention.promoted_memory)."""
    frames = blob_frames(num_frames=4)  # 4 frames: about 20 s of CPU
    box = disc_box_xyxy(frames, 1)
    points, labels = np.array([[40, 32], [8, 8]], np.float32), np.array([1, 0])  # no box
    drawn = frames[2] > 0.5
    click = np.array([[40, 32]], np.float32)

    tracker = exact_tracker(model, frames)
    state = meta_state(model, frames, monkeypatch)
    prompted = {
        1: (
            tracker.add_prompts(1, 1, box_frame_xyxy=box),
            meta_prompt(model, state, 1, frame_idx=1, box=box),
        ),
        2: (
            tracker.add_prompts(2, 3, points_frame_xy=points, point_labels=labels),
            meta_prompt(model, state, 2, frame_idx=3, points=points, labels=labels),
        ),
    }
    for ours, meta in prompted.values():
        assert relative_error(ours, meta) <= RELATIVE_TOLERANCE
    # one propagation of both objects each way from the first prompt, as propagate_in_video's default
    ours = {**ours_run(tracker, 1, +1), **ours_run(tracker, 1, -1)}
    meta = {**meta_run(model, state), **meta_run(model, state, reverse=True)}
    assert sorted(ours) == sorted(meta) == [(o, f) for o in (1, 2) for f in range(4)]
    assert_same(ours, meta)
    assert (ours[(2, 1)] > 0).any()  # object 2 was tracked on frame 1, before its prompt

    # object 3 after the others were propagated: a drawn mask, then a negative click on the same frame
    assert (
        relative_error(
            tracker.add_prompts(3, 2, mask_frame=drawn), meta_prompt(model, state, 3, frame_idx=2, mask=drawn)
        )
        <= RELATIVE_TOLERANCE
    )
    ours_click = tracker.add_prompts(3, 2, points_frame_xy=click, point_labels=np.array([0]))
    meta_click = meta_prompt(model, state, 3, frame_idx=2, points=click, labels=np.array([0]))
    assert relative_error(ours_click, meta_click) <= RELATIVE_TOLERANCE
    assert not np.array_equal(ours_click > 0, drawn)  # the click changed the drawn mask
    # object 3 alone from its frame (Meta runs every object: 1 and 2 again, from frame 2)
    ours = {**ours_run(tracker, 2, +1, object_ids=[3]), **ours_run(tracker, 2, -1, object_ids=[3])}
    meta = {
        **meta_run(model, state, start_frame_idx=2),
        **meta_run(model, state, start_frame_idx=2, reverse=True),
    }
    assert_same(ours, meta)
    # objects 1 and 2 run again the same way: their memory held frames 0-3 already, as Meta's did
    assert_same(
        {**ours_run(tracker, 2, +1, object_ids=[1, 2]), **ours_run(tracker, 2, -1, object_ids=[1, 2])}, meta
    )

    # object 2 removed, then object 1 corrected on frame 2 and propagated on with object 3
    tracker.remove_object(2)
    model.remove_object(state, 2)
    assert tracker.object_ids == [1, 3]
    assert (
        relative_error(
            tracker.add_prompts(1, 2, points_frame_xy=click, point_labels=np.array([0])),
            meta_prompt(model, state, 1, frame_idx=2, points=click, labels=np.array([0])),
        )
        <= RELATIVE_TOLERANCE
    )
    assert_same(ours_run(tracker, 2, +1), meta_run(model, state, start_frame_idx=2))


def test_two_conditioning_frames_merged_clicks_mask_and_limited_runs_match_meta(model, monkeypatch):
    """One object prompted on two frames before any propagation (a box then a click kept with it; points
    only, positive and negative, then one more kept), propagated forward through both, backward from each
    (reverse-only runs), a click merged into a conditioning frame, a drawn mask then a click on a tracked
    frame, runs limited in length (Meta's ``max_frame_num_to_track``, our ``end_frame``) and one that starts
    on the last frame."""
    frames = blob_frames(num_frames=5)
    box = disc_box_xyxy(frames, 1)
    points, labels = np.array([[40, 32], [8, 8]], np.float32), np.array([1, 0])
    inside, outside = np.array([[44, 30]], np.float32), np.array([[20, 50]], np.float32)
    drawn = frames[4] > 0.5
    tracker = exact_tracker(model, frames)
    state = meta_state(model, frames, monkeypatch)

    def both_prompt(frame, keep=False, **prompt):
        ours = tracker.add_prompts(
            1,
            frame,
            box_frame_xyxy=prompt.get("box"),
            points_frame_xy=prompt.get("points"),
            point_labels=prompt.get("labels"),
            mask_frame=prompt.get("mask"),
            keep_previous_points=keep,
        )
        if keep:
            prompt["clear_old_points"] = False
        meta = meta_prompt(model, state, 1, frame_idx=frame, **prompt)
        assert relative_error(ours, meta) <= RELATIVE_TOLERANCE, (frame, sorted(prompt))
        return ours

    both_prompt(1, box=box)
    both_prompt(1, keep=True, points=inside, labels=np.array([1]))
    both_prompt(3, points=points, labels=labels)
    both_prompt(3, keep=True, points=outside, labels=np.array([0]))
    assert tracker.conditioning_frames(1) == [1, 3]

    # backward first (nothing tracked forward yet), from the later prompt through the earlier one
    assert_same(ours_run(tracker, 3, -1), meta_run(model, state, start_frame_idx=3, reverse=True))
    assert_same(ours_run(tracker, 1, +1), meta_run(model, state, start_frame_idx=1))
    assert_same(ours_run(tracker, 1, -1), meta_run(model, state, start_frame_idx=1, reverse=True))
    # a click added to a conditioning frame's points after propagation, then a mask on a tracked frame
    # and a click replacing it (Meta feeds the mask's logits back with it)
    both_prompt(3, keep=True, points=np.array([[30, 20]], np.float32), labels=np.array([1]))
    both_prompt(4, mask=drawn)
    both_prompt(4, points=np.array([[40, 32]], np.float32), labels=np.array([0]))
    limited = ours_run(tracker, 1, +1, end_frame=2)
    assert sorted(limited) == [(1, 1), (1, 2)]
    assert_same(limited, meta_run(model, state, start_frame_idx=1, max_frame_num_to_track=1))
    limited = ours_run(tracker, 4, -1, end_frame=2)
    assert_same(limited, meta_run(model, state, start_frame_idx=4, reverse=True, max_frame_num_to_track=2))
    assert sorted(limited) == [(1, 2), (1, 3), (1, 4)]
    assert_same(ours_run(tracker, 3, +1), meta_run(model, state, start_frame_idx=3))
    last = ours_run(tracker, 4, +1)  # the last frame alone: its prompted output
    assert sorted(last) == [(1, 4)]
    assert_same(last, meta_run(model, state, start_frame_idx=4))
    assert tracker.conditioning_frames(1) == [1, 3, 4]


def test_a_sessions_correction_reruns_what_metas_run_from_the_correction_changes(model, monkeypatch):
    """The session re-runs only the runs a correction owns (medsegany.session_runs): after a negative
    click on slice 4 of 6 (tracked forward from a box on 1), the run from 4 onward, which equals Meta's
    ``propagate_in_video(start_frame_idx=4)``; slices 0-3 keep their masks. Meta's predictor re-run from
    its first prompt changes those too (the correction's memory joins every frame's: SAM 2.1 attends to
    all conditioning frames), 2, 10 and 12 of about 2500 px on slices 0, 2 and 3 here: the session's
    deliberate choice, documented in session_runs."""
    from medsegany.models.registry import Sam2VideoModel
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.session_runs import Run
    from medsegany.session_sam2 import Sam2StopRule
    from medsegany.volume import Volume

    monkeypatch.setenv("MEDSEGANY_MATMUL_ATTENTION", "0")  # the fused kernel, as Meta's float32 runs
    frames = blob_frames(num_frames=6, height=48, width=56, seed=1)
    volume = Volume((frames * 255).astype(np.float32), np.eye(4), name="discs")
    keep_all = Sam2StopRule(absent_slices=10**6, area_collapse_fraction=0.0)
    wrapped = Sam2VideoModel("random", model, "cpu", model.image_size, None, precision="float32")
    session = SegmentationSession(volume, wrapped, intensity=(0.0, 255.0), sam2_stop=keep_all)
    disc = session.add_object("disc")
    x0, y0, x1, y1 = disc_box_xyxy(frames, 1)
    box = make_slice_prompts(volume, box_ijk=(x0, y0, 1, x1, y1, 1))
    session.add_prompts(disc, box)
    list(session.propagate())
    first = session.mask_kji(disc).copy()

    state = meta_state(model, session.tracker(2)._frames_nhw, monkeypatch)  # the session's windowed slices
    model.add_new_points_or_box(state, frame_idx=1, obj_id=1, box=box.box_frame_xyxy())
    meta = {**meta_run(model, state, start_frame_idx=1), **meta_run(model, state, reverse=True)}
    for k in range(6):
        np.testing.assert_array_equal(first[k], meta[(1, k)] > 0)

    inside = np.argwhere(first[4])
    y, x = inside[len(inside) // 2]
    click = make_slice_prompts(
        volume, points_ijk=[(float(x), float(y), 4)], point_labels=[0], axis=2, corrects_a_mask=True
    )
    assert session.runs_of_prompt(disc, 4) == [Run(4, +1, 5, True)]
    session.add_prompts(disc, click)
    assert [r.slice_index for r in session.propagate()] == [5]
    after = session.mask_kji(disc)
    model.add_new_points_or_box(
        state, frame_idx=4, obj_id=1, points=click.points_frame_xy(), labels=click.labels_array()
    )
    meta_from_correction = {**meta, **meta_run(model, state, start_frame_idx=4)}
    for k in range(6):
        np.testing.assert_array_equal(after[k], meta_from_correction[(1, k)] > 0)
    assert (after[4] != first[4]).sum() > 100  # the click removed part of slice 4
    for k in range(4):
        np.testing.assert_array_equal(after[k], first[k])

    meta_whole = {**meta_run(model, state), **meta_run(model, state, reverse=True)}
    changed = [k for k in range(4) if ((meta_whole[(1, k)] > 0) != first[k]).any()]
    assert 2 in changed and 3 in changed, changed  # the slices between the prompt and the correction


@pytest.mark.parametrize("gpu_path", [False, True])
def test_a_slab_of_the_stack_gives_metas_logits_of_the_whole_stack(model, monkeypatch, gpu_path):
    """Frames 2..7 of 12 as a stack of their own (what ``--slice-range`` and a memory plan's slab hand
    the tracker), told the whole stack's length, give the logits of Meta's predictor on all 12 frames
    over the same range, exactly. SAM 2 divides an object pointer's distance by min(frames, 16) - 1: told
    only its own 6 frames, the slab was 2.3e-5 of the largest logit apart (random weights).
    ``gpu_path``: the split step and its memory selection (sam2_memory_gather), launched one ahead."""
    from medsegany.models.sam2_tracker import Sam2Tracker

    monkeypatch.setenv("MEDSEGANY_MATMUL_ATTENTION", "0")  # the fused kernel, as Meta's float32 runs
    frames = blob_frames(num_frames=12, height=48, width=56)
    first, last, prompted = 2, 7, 5
    box = disc_box_xyxy(frames, prompted)

    def slab_run(stack_length):
        tracker = Sam2Tracker(model, precision="float32", step_graphs=gpu_path, lookahead=gpu_path)
        tracker.set_frames(frames[first : last + 1], stack_length=stack_length)
        tracker.add_prompts(1, prompted - first, box_frame_xyxy=box)
        forward = ours_run(tracker, prompted - first, +1)
        backward = ours_run(tracker, prompted - first, -1)
        return {(1, k + first): logits for (_, k), logits in {**forward, **backward}.items()}

    state = meta_state(model, frames, monkeypatch)
    model.add_new_points_or_box(state, frame_idx=prompted, obj_id=1, box=box)
    meta = {
        **meta_run(model, state, start_frame_idx=prompted, max_frame_num_to_track=last - prompted),
        **meta_run(
            model, state, start_frame_idx=prompted, reverse=True, max_frame_num_to_track=prompted - first
        ),
    }
    assert sorted(meta) == [(1, k) for k in range(first, last + 1)]
    ours = slab_run(stack_length=len(frames))
    assert sorted(ours) == sorted(meta)
    assert (meta[(1, prompted)] > 0).any() and (meta[(1, last)] > 0).any()  # real masks, not -1024
    for key, logits in ours.items():
        assert relative_error(logits, meta[key]) == 0.0, key
    # told only its own 6 frames, the slab's tracked frames move (the check above can fail)
    alone = slab_run(stack_length=None)
    assert max(relative_error(alone[key], meta[key]) for key in meta if key != (1, prompted)) > 1e-7
