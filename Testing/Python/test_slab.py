"""A slab of a volume as a volume of its own: geometry, prompts in its indices, results back in place."""

from __future__ import annotations

import numpy as np
import pytest
from medsegany.errors import PromptError
from medsegany.geometry import ijk_to_ras_matrix
from medsegany.prompt_file import ObjectPrompts
from medsegany.prompts import make_slice_prompts
from medsegany.slab import Slab, objects_in_slab, one_axis
from medsegany.volume import Volume


@pytest.fixture()
def volume() -> Volume:
    """An oblique, anisotropic 7 x 6 x 5 (I x J x K) volume whose voxel values encode their own IJK."""
    k, j, i = np.indices((5, 6, 7))
    direction = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, -0.6], [0.6, 0.0, 0.8]])
    matrix = ijk_to_ras_matrix((0.7, 1.1, 2.5), (10.0, -4.0, 3.0), direction)
    return Volume((100 * i + 10 * j + k).astype(np.int16), matrix, "oblique")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_voxel_of_the_slab_keeps_its_value_and_its_place_in_ras(volume, axis):
    slab = Slab(axis, 2, 3)
    cropped = slab.crop(volume)
    assert cropped.shape_ijk[axis] == 2 and np.shares_memory(cropped.voxels_kji, volume.voxels_kji)
    for index_ijk in np.ndindex(*cropped.shape_ijk):
        whole_ijk = list(index_ijk)
        whole_ijk[axis] += 2
        i, j, k = index_ijk
        assert cropped.voxels_kji[k, j, i] == volume.voxels_kji[whole_ijk[2], whole_ijk[1], whole_ijk[0]]
        np.testing.assert_allclose(
            cropped.ijk_to_ras_points(np.array([index_ijk], float)),
            volume.ijk_to_ras_points(np.array([whole_ijk], float)),
        )


def test_prompts_move_into_the_slab_and_land_on_the_same_voxels(volume):
    prompts = make_slice_prompts(
        volume, box_ijk=(1, 1, 3, 5, 4, 3), points_ijk=[(2, 2, 3), (4, 3, 3)], point_labels=[1, 0]
    )
    slab = Slab(2, 2, 4)
    cropped = slab.crop(volume)
    moved = slab.prompts_in_slab(prompts)
    assert (moved.axis, moved.slice_index) == (2, 1)
    assert moved.box_ijk == (1, 1, 1, 5, 4, 1) and moved.points_ijk == ((2, 2, 1), (4, 3, 1))
    np.testing.assert_array_equal(moved.box_frame_xyxy(), prompts.box_frame_xyxy())  # same pixels
    np.testing.assert_allclose(  # the same places in RAS
        cropped.ijk_to_ras_points(np.array(moved.points_ijk, float)),
        volume.ijk_to_ras_points(np.array(prompts.points_ijk, float)),
    )
    assert not Slab(2, 0, 2).holds(prompts) and not Slab(1, 0, 5).holds(prompts)
    with pytest.raises(ValueError):
        Slab(2, 0, 2).prompts_in_slab(prompts)


def test_the_slabs_result_goes_back_to_its_slices_of_the_volume(volume):
    slab = Slab(0, 4, 5)
    labels_kji = np.ones(slab.crop(volume).voxels_kji.shape, dtype=np.uint8)
    whole = slab.paste(labels_kji, volume.voxels_kji.shape)
    assert whole.shape == volume.voxels_kji.shape and whole.dtype == np.uint8
    assert whole[:, :, 4:6].all() and whole.sum() == labels_kji.sum()
    assert slab.to_volume_index(1) == 5 and slab.count == 2 and slab.describe() == "I 4..5"


def test_a_slab_beyond_the_volume_or_upside_down_is_refused(volume):
    with pytest.raises(PromptError, match="beyond the volume's 5 slices"):
        Slab(2, 3, 5).crop(volume)
    with pytest.raises(ValueError):
        Slab(2, 3, 2)


def test_objects_keep_their_order_and_only_the_prompts_inside(volume):
    on = {k: make_slice_prompts(volume, box_ijk=(1, 1, k, 4, 4, k)) for k in range(5)}
    objects = [ObjectPrompts("a", (on[0], on[2])), ObjectPrompts("b", (on[4],)), ObjectPrompts("c", (on[3],))]
    assert one_axis(objects) == 2
    kept, left_out = objects_in_slab(objects, Slab(2, 1, 3))
    assert [entry.name for entry in kept] == ["a", "b", "c"] and left_out == 2
    assert [p.slice_index for p in kept[0].prompts] == [1] and kept[1].prompts == ()
    assert [p.slice_index for p in kept[2].prompts] == [2]
    with pytest.raises(PromptError, match=r"slices K 1..1 hold no prompt \(prompted: \[0, 2, 3, 4\]\)"):
        objects_in_slab(objects, Slab(2, 1, 1))
    sideways = make_slice_prompts(volume, box_ijk=(1, 2, 0, 5, 2, 4))  # a J slice
    assert one_axis([*objects, ObjectPrompts("d", (sideways,))]) is None


def test_mask_prompts_move_into_the_slab_with_their_masks_and_label_values(volume):
    from medsegany.prompts import MaskPrompt

    mask_frame = np.zeros(volume.voxels_kji.shape[1:], dtype=bool)
    mask_frame[2:5, 3:6] = True
    drawn = ObjectPrompts("label_7", (MaskPrompt(2, 4, mask_frame), MaskPrompt(2, 9, mask_frame)), 7)
    (kept,), left_out = objects_in_slab([drawn], Slab(2, 3, 6))
    (inside,) = kept.prompts
    assert left_out == 1 and kept.label_value == 7 and one_axis([drawn]) == 2
    assert isinstance(inside, MaskPrompt) and inside.slice_index == 1
    np.testing.assert_array_equal(inside.mask_frame, mask_frame)
