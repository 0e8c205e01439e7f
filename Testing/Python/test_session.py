"""SegmentationSession with a fast fake model: streaming, both directions, stop rule, ranges, clearing."""

from __future__ import annotations

import numpy as np
import pytest
from fake_models import ThresholdModel
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


def test_rerun_with_a_shorter_range_clears_stale_slices():
    volume = phantom()
    session = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    run(session)
    results = run(session, slice_range=(12, 16))
    cleared = {r.slice_index for r in results if r.source == "cleared"}
    assert cleared == {8, 9, 10, 11, 17, 18, 19, 20}
    assert set(np.flatnonzero(session.mask_kji(object_id).any(axis=(1, 2)))) == set(range(12, 17))


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
