"""Tests for medsegany.prompt_file: JSON prompt files and the CLI's --box / --point arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
from medsegany.errors import PromptError
from medsegany.prompt_file import ObjectPrompts, describe, load_prompt_file, parse_box_arg, parse_point_arg
from medsegany.prompts import make_slice_prompts
from medsegany.volume import Volume

SHAPE_KJI = (10, 20, 30)  # I 0..29, J 0..19, K 0..9

#: Permuted and flipped axes with anisotropic spacing (like the DeepLesion files), to test RAS input.
OBLIQUE_IJK_TO_RAS = np.array(
    [[0.0, 0.0, -5.0, 40.0], [-0.7, 0.0, 0.0, 10.0], [0.0, 0.8, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.fixture
def volume() -> Volume:
    return Volume(np.zeros(SHAPE_KJI, dtype=np.int16), OBLIQUE_IJK_TO_RAS)


def write(tmp_path, document) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def load_error(tmp_path, volume, document) -> PromptError:
    with pytest.raises(PromptError) as caught:
        load_prompt_file(write(tmp_path, document), volume)
    assert caught.value.fix and "\n" not in str(caught.value)
    return caught.value


# ---- grouping -------------------------------------------------------------------------------------


def test_points_join_the_box_on_their_slice_and_orphans_form_their_own(tmp_path, volume):
    document = {
        "objects": [
            {
                "name": "liver",
                "boxes_ijk": [[2, 3, 5, 12, 9, 5], [20, 10, 7, 4, 2, 7]],
                "points_ijk": [[6, 6, 5, 1], [7, 4, 5.2, 0], [8, 8, 2, 1], [9, 9, 2]],
            },
            {"name": "spleen", "points_ijk": [[3, 3, 4, 1]]},
        ]
    }
    objects = load_prompt_file(write(tmp_path, document), volume)
    assert [o.name for o in objects] == ["liver", "spleen"]
    assert all(isinstance(o, ObjectPrompts) for o in objects)
    liver = objects[0].prompts
    assert [(p.axis, p.slice_index) for p in liver] == [(2, 2), (2, 5), (2, 7)]
    assert liver[0].box_ijk is None and liver[0].points_ijk == ((8.0, 8.0, 2.0), (9.0, 9.0, 2.0))
    assert liver[0].point_labels == (1, 1)  # a point without a label is positive
    assert liver[1].box_ijk == (2.0, 3.0, 5.0, 12.0, 9.0, 5.0)
    assert liver[1].points_ijk == ((6.0, 6.0, 5.0), (7.0, 4.0, 5.0)) and liver[1].point_labels == (1, 0)
    assert liver[2].box_ijk == (4.0, 2.0, 7.0, 20.0, 10.0, 7.0) and liver[2].points_ijk == ()
    spleen = objects[1].prompts
    assert len(spleen) == 1 and (spleen[0].axis, spleen[0].slice_index) == (2, 4)  # K without boxes


def test_orphan_points_take_the_axis_of_the_objects_boxes(tmp_path, volume):
    document = {"objects": [{"name": "a", "boxes_ijk": [[2, 4, 1, 12, 4, 8]], "points_ijk": [[5, 9, 3, 1]]}]}
    prompts = load_prompt_file(write(tmp_path, document), volume)[0].prompts
    assert [(p.axis, p.slice_index) for p in prompts] == [(1, 4), (1, 9)]


def test_ras_prompts_equal_their_ijk_equivalents(tmp_path, volume):
    box_low, box_high = np.array([3.0, 2.0, 6.0]), np.array([15.0, 11.0, 6.0])
    point_ijk = np.array([7.0, 5.0, 6.0])
    corners_ras = volume.ijk_to_ras_points(np.array([box_high, box_low]))
    point_ras = volume.ijk_to_ras_points(point_ijk)
    document = {
        "objects": [
            {
                "name": "lesion",
                "boxes_ras": [corners_ras.ravel().tolist()],
                "points_ras": [[*point_ras.tolist(), 0]],
            }
        ]
    }
    (prompts,) = load_prompt_file(write(tmp_path, document), volume)[0].prompts
    expected = make_slice_prompts(
        volume, box_ijk=(*box_low, *box_high), points_ijk=[point_ijk], point_labels=[0]
    )
    np.testing.assert_allclose(prompts.box_ijk, expected.box_ijk, atol=1e-9)
    np.testing.assert_allclose(prompts.points_ijk, expected.points_ijk, atol=1e-9)
    assert (prompts.axis, prompts.slice_index, prompts.point_labels) == (2, 6, (0,))


def roi_file(path, volume, low_ijk, high_ijk):
    """A Slicer ROI markups file (RAS, axis-aligned in the object frame) covering IJK low..high."""
    corners_ras = volume.ijk_to_ras_points(np.array([low_ijk, high_ijk], dtype=float))
    center, size = corners_ras.mean(axis=0), np.abs(corners_ras[1] - corners_ras[0])
    markup = {
        "type": "ROI",
        "coordinateSystem": "RAS",
        "roiType": "Box",
        "center": center.tolist(),
        "orientation": np.eye(3).ravel().tolist(),
        "size": size.tolist(),
        "controlPoints": [{"position": center.tolist(), "positionStatus": "defined"}],
    }
    path.write_text(json.dumps({"markups": [markup]}))
    return path


def points_file(path, volume, points_ijk):
    points_ras = volume.ijk_to_ras_points(np.asarray(points_ijk, dtype=float))
    control_points = [{"label": f"F-{n}", "position": p.tolist()} for n, p in enumerate(points_ras)]
    path.write_text(
        json.dumps(
            {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": control_points}]}
        )
    )
    return path


def test_markups_files_are_the_boxes_and_points_of_their_object(tmp_path, volume):
    """Names relative to the prompt file's folder; ':-' makes a file's points negative."""
    (tmp_path / "marks").mkdir()
    roi_file(tmp_path / "marks" / "liver_box.mrk.json", volume, (3, 2, 6), (15, 11, 6))
    points_file(tmp_path / "marks" / "liver_out.mrk.json", volume, [(7, 5, 6)])
    points_file(tmp_path / "marks" / "liver_in.mrk.json", volume, [(8, 8, 2)])
    names = ["marks/liver_box.mrk.json", "marks/liver_out.mrk.json:-", "marks/liver_in.mrk.json"]
    got = load_prompt_file(write(tmp_path, {"objects": [{"name": "liver", "markups": names}]}), volume)[
        0
    ].prompts
    boxes, points = [[3, 2, 6, 15, 11, 6]], [[7, 5, 6, 0], [8, 8, 2, 1]]
    expected = {"objects": [{"name": "liver", "boxes_ijk": boxes, "points_ijk": points}]}
    (tmp_path / "expected").mkdir()
    wanted = load_prompt_file(write(tmp_path / "expected", expected), volume)[0].prompts
    assert [(p.axis, p.slice_index, p.point_labels) for p in got] == [(2, 2, (1,)), (2, 6, (0,))]
    assert [(p.axis, p.slice_index, p.point_labels) for p in wanted] == [(2, 2, (1,)), (2, 6, (0,))]
    for mine, theirs in zip(got, wanted, strict=True):
        np.testing.assert_allclose(mine.points_ijk, theirs.points_ijk, atol=1e-9)
        assert (mine.box_ijk is None) == (theirs.box_ijk is None)
        if mine.box_ijk is not None:
            np.testing.assert_allclose(mine.box_ijk, theirs.box_ijk, atol=1e-9)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (3, "markups[0] is not a file name"),
        ("absent.mrk.json", "markups[0]: markups file"),
        ("box.mrk.json:-", "markups[0] holds an ROI and is marked negative"),
    ],
)
def test_error_a_bad_markups_entry_names_the_object_and_entry(tmp_path, volume, entry, words):
    roi_file(tmp_path / "box.mrk.json", volume, (3, 2, 6), (15, 11, 6))
    error = load_error(tmp_path, volume, {"objects": [{"name": "liver", "markups": [entry]}]})
    assert f"object 'liver' {words}" in str(error)


def test_error_a_markups_point_outside_the_volume_names_its_file_and_label(tmp_path, volume):
    """It said "markups[1] point 1": the entry, not which file, and the file's labels were not told."""
    points_file(tmp_path / "in.mrk.json", volume, [(7, 5, 6)])
    points_file(tmp_path / "out.mrk.json", volume, [(8, 8, 6), (900, 8, 6)])
    error = load_error(
        tmp_path, volume, {"objects": [{"name": "liver", "markups": ["in.mrk.json", "out.mrk.json"]}]}
    )
    assert "object 'liver' markups[1] (out.mrk.json) point 'F-1' at RAS (" in error.problem
    assert "is outside the volume" in error.problem


def test_error_markups_given_as_one_name_shows_a_list_of_names(tmp_path, volume):
    """The fix for a "markups" that is not a list showed a list of lists, as for boxes: it lists names."""
    error = load_error(tmp_path, volume, {"objects": [{"name": "liver", "markups": "box.mrk.json"}]})
    assert error.problem == "object 'liver': markups is not a list"
    assert error.fix == 'write "markups": ["liver_box.mrk.json"]'


def test_comment_fields_are_allowed(tmp_path, volume):
    document = {
        "version": 1,
        "comment": "x",
        "objects": [{"name": "a", "comment": "y", "points_ijk": [[1, 1, 1]]}],
    }
    assert len(load_prompt_file(write(tmp_path, document), volume)) == 1


def test_a_utf8_file_with_a_byte_order_mark_reads_like_one_without(tmp_path, volume):
    # Notepad and PowerShell 5 save UTF-8 with a byte-order mark; the object's UTF-8 name survives it
    document = {"objects": [{"name": "Leber rechts ä", "boxes_ijk": [[2, 3, 4, 10, 12, 4]]}]}
    plain, marked = tmp_path / "plain.json", tmp_path / "marked.json"
    plain.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    marked.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    objects = load_prompt_file(marked, volume)
    assert objects == load_prompt_file(plain, volume)
    assert objects[0].name == "Leber rechts ä"


# ---- file-level errors ----------------------------------------------------------------------------


def test_error_missing_file(tmp_path, volume):
    with pytest.raises(PromptError, match="does not exist"):
        load_prompt_file(tmp_path / "nope.json", volume)


def test_error_bad_json_says_where(tmp_path, volume):
    error = load_error(tmp_path, volume, '{"objects": [\n  {"name": "a",}\n]}')
    assert "not valid JSON" in error.problem and "line 2" in error.problem


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '{"objects": [{"name": "liver", "boxes_ijk": [[2, 3, 4, 10, 12, 4]], '
            '"boxes_ijk": [[2, 3, 6, 10, 12, 6]]}]}',
            "\"boxes_ijk\" twice in one JSON object (object 'liver')",
        ),
        (
            '{"objects": [{"name": "liver", "points_ijk": [[5, 5, 4]]}], '
            '"objects": [{"name": "spleen", "points_ijk": [[5, 5, 6]]}]}',
            '"objects" twice in one JSON object,',
        ),
        ('{"objects": [{"name": "liver", "name": "spleen", "points_ijk": [[5, 5, 4]]}]}', '"name" twice'),
    ],
)
def test_error_a_key_given_twice_is_refused_not_half_dropped(tmp_path, volume, text, words):
    # json.loads alone keeps the last of two equal keys: the first boxes or objects would be lost unsaid
    error = load_error(tmp_path, volume, text)
    assert words in error.problem and "once" in error.fix
    assert ("in one list" in error.fix) == ('"name"' not in words)


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ([], 'no "objects" list'),
        ({"object": []}, 'no "objects" list'),
        ({"objects": [], "extra": 1}, "unknown top-level field 'extra'"),
        ({"objects": []}, "not a non-empty list"),
        ({"objects": {"name": "a"}}, "not a non-empty list"),
        ({"objects": [3]}, "objects[0] is not a JSON object"),
        ({"objects": [{"boxes_ijk": []}]}, "objects[0] has no name"),
        ({"objects": [{"name": " "}]}, "objects[0] has an empty name"),
        # "has no name" (add one) sent the user to look for a misspelt key
        ({"objects": [{"name": 3, "points_ijk": [[1, 2, 3]]}]}, "objects[0] has the name 3, which is not"),
        ({"objects": [{"name": ["liver"]}]}, 'objects[0] has the name ["liver"], which is not text'),
        ({"objects": [{"name": "a", "box_ijk": []}]}, "object 'a': unknown field 'box_ijk'"),
        ({"objects": [{"name": "a"}]}, "object 'a' has no prompts"),
        ({"objects": [{"name": "a", "boxes_ijk": [1, 2, 3, 4, 5, 6]}]}, "object 'a' boxes_ijk[0] is 1"),
        ({"objects": [{"name": "a", "boxes_ijk": {"b": 1}}]}, "object 'a': boxes_ijk is not a list"),
        (
            {"objects": [{"name": "a", "boxes_ijk": [[1, 2, 3, 4, 5]]}]},
            "boxes_ijk[0] is [1, 2, 3, 4, 5] (5 values)",
        ),
        ({"objects": [{"name": "a", "boxes_ras": [[1, 2, 3, 4, 5, "x"]]}]}, "object 'a' boxes_ras[0]"),
        ({"objects": [{"name": "a", "points_ijk": [[1, 2]]}]}, "object 'a' points_ijk[0] is [1, 2]"),
        ({"objects": [{"name": "a", "points_ras": [[1, 2, 3, 1, 0]]}]}, "object 'a' points_ras[0]"),
        ({"objects": [{"name": "a", "points_ijk": [[1, 2, 3, 2]]}]}, "object 'a' points_ijk[0] has label 2"),
        ({"objects": [{"name": "a", "points_ijk": [[1, 2, 3, "1"]]}]}, 'points_ijk[0] has label "1"'),
        (
            {
                "objects": [
                    {"name": "a", "points_ijk": [[1, 2, 3, 1]]},
                    {"name": "a", "points_ijk": [[1, 2, 3, 1]]},
                ]
            },
            "names object 'a' twice",
        ),
    ],
)
def test_error_structure_names_object_and_field(tmp_path, volume, document, words):
    error = load_error(tmp_path, volume, document)
    assert words in error.problem, error.problem


def test_error_nan_coordinates(tmp_path, volume):
    error = load_error(tmp_path, volume, '{"objects": [{"name": "a", "points_ijk": [[1, NaN, 3, 1]]}]}')
    assert "object 'a' points_ijk[0]" in error.problem


# ---- prompt-level errors carry the object's name ---------------------------------------------------


def test_error_invalid_box_names_object_and_box(tmp_path, volume):
    error = load_error(tmp_path, volume, {"objects": [{"name": "kidney", "boxes_ijk": [[1, 1, 1, 5, 6, 7]]}]})
    assert error.problem.startswith("object 'kidney' boxes_ijk[0]:")
    assert "share no slice index" in error.problem


def test_error_ras_box_not_on_a_slice(tmp_path, volume):
    error = load_error(tmp_path, volume, {"objects": [{"name": "k", "boxes_ras": [[0, 0, 0, 10, 10, 10]]}]})
    assert error.problem.startswith("object 'k' boxes_ras[0]:") and "not on one slice" in error.problem


def test_error_two_boxes_on_one_slice(tmp_path, volume):
    document = {"objects": [{"name": "a", "boxes_ijk": [[1, 1, 3, 5, 6, 3], [7, 7, 3, 9, 9, 3]]}]}
    assert "two boxes on slice K=3" in load_error(tmp_path, volume, document).problem


def test_error_point_on_the_slices_of_two_boxes(tmp_path, volume):
    document = {
        "objects": [
            {"name": "a", "boxes_ijk": [[1, 1, 3, 9, 9, 3], [1, 5, 1, 9, 5, 8]], "points_ijk": [[4, 5, 3, 1]]}
        ]
    }
    assert "lies on the slices of two boxes (K=3, J=5)" in load_error(tmp_path, volume, document).problem


def test_error_orphan_point_with_boxes_on_several_axes(tmp_path, volume):
    document = {
        "objects": [
            {"name": "a", "boxes_ijk": [[1, 1, 3, 9, 9, 3], [1, 5, 1, 9, 5, 8]], "points_ijk": [[4, 7, 6, 1]]}
        ]
    }
    assert (
        "on no box's slice and the boxes are on several axes"
        in load_error(tmp_path, volume, document).problem
    )


def test_error_slice_problem_names_object_and_slice(tmp_path, volume):
    document = {"objects": [{"name": "a", "points_ijk": [[4, 7, 6, 0]]}]}
    error = load_error(tmp_path, volume, document)
    assert error.problem.startswith("object 'a' slice K=6:") and "only negative points" in error.problem
    document = {"objects": [{"name": "b", "boxes_ijk": [[1, 1, 3, 9, 9, 3]], "points_ijk": [[40, 7, 3, 1]]}]}
    error = load_error(tmp_path, volume, document)
    assert error.problem.startswith("object 'b' points_ijk[0] I=40 is outside the volume")


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [
        # the bad point is the third of points_ijk, the second on its slice
        ({"points_ijk": [[5, 5, 7, 1], [6, 6, 3, 1], [40, 5, 3, 1]]}, "points_ijk[2] I=40 is outside"),
        # the bad point is a RAS one; a good IJK point comes first on its slice
        ({"points_ijk": [[6, 6, 3, 1]], "points_ras": [[-30, 5, 3, 1]]}, "points_ras[0] I=-30 is outside"),
        # an orphan point on a slice past the volume's last
        ({"points_ijk": [[6, 6, 3, 1], [6, 6, 12, 1]]}, "points_ijk[1] is on slice K=12, outside the volume"),
        # the bad box is the first RAS one, after a good IJK box
        ({"boxes_ras": [[-300, 20, -27, -290, 25, -27]]}, "boxes_ras[0]: box"),
    ],
)
def test_errors_name_the_entry_at_fault_not_its_place_on_the_slice(tmp_path, fields, culprit):
    volume = Volume(np.zeros(SHAPE_KJI, dtype=np.int16), np.eye(4))
    document = {"objects": [{"name": "b", "boxes_ijk": [[1, 1, 3, 9, 9, 3]], **fields}]}
    error = load_error(tmp_path, volume, document)
    assert error.problem.startswith(f"object 'b' {culprit}")


# ---- CLI arguments --------------------------------------------------------------------------------


def test_parse_box_arg():
    assert parse_box_arg("1,2,3,4,5,3") == (1.0, 2.0, 3.0, 4.0, 5.0, 3.0)
    assert parse_box_arg(" 1.5, -2 ,3,4,5,3 ") == (1.5, -2.0, 3.0, 4.0, 5.0, 3.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1,2,3,4,5", "has 5 values, it needs 6"),
        ("1,2,3,4,5,6,7", "has 7 values, it needs 6"),
        ("1,2,3,4,5,", "has 6 values"),
        ("1,2,3,a,5,6", "not a number"),
        ("1,2,3,inf,5,6", "NaN or infinity"),
        ("", "has 1 values"),
    ],
)
def test_parse_box_arg_errors(text, words):
    with pytest.raises(PromptError) as caught:
        parse_box_arg(text)
    assert words in caught.value.problem and "--box" in caught.value.fix


def test_parse_point_arg():
    assert parse_point_arg("1,2,3") == ((1.0, 2.0, 3.0), 1)
    assert parse_point_arg("1,2,3:+") == ((1.0, 2.0, 3.0), 1)
    assert parse_point_arg("1.5,-2,3:-") == ((1.5, -2.0, 3.0), 0)
    assert parse_point_arg(" 1, 2, 3 : - ") == ((1.0, 2.0, 3.0), 0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1,2", "has 2 values, it needs 3"),
        ("1,2,3,4", "has 4 values, it needs 3"),
        ("1,2,3:x", "ends in ':x'"),
        ("1,2,3:", "ends in ':'"),
        ("1,b,3:-", "not a number"),
        ("1,2,nan", "NaN or infinity"),
    ],
)
def test_parse_point_arg_errors(text, words):
    with pytest.raises(PromptError) as caught:
        parse_point_arg(text)
    assert words in caught.value.problem and caught.value.fix


def test_describe_lists_each_objects_slices(tmp_path, volume):
    document = {
        "objects": [
            {
                "name": "liver",
                "boxes_ijk": [[2, 3, 5, 12, 9, 5]],
                "points_ijk": [[6, 6, 5, 1], [8, 8, 2, 0], [8, 9, 2]],
            },
            {"name": "spleen", "points_ijk": [[3, 3, 4, 1]]},
        ]
    }
    text = describe(load_prompt_file(write(tmp_path, document), volume))
    assert text.splitlines() == ["liver: K=2 2 pts, K=5 box 1 pts", "spleen: K=4 1 pts"]


@pytest.mark.parametrize("digits", [400, 5000])
def test_error_an_integer_of_hundreds_of_digits(tmp_path, volume, digits):
    """Beyond a float (400 digits) or Python's own limit for reading one (4300): a traceback before."""
    point = "[1, " + "9" * digits + ", 3, 1]"
    error = load_error(tmp_path, volume, '{"objects": [{"name": "a", "points_ijk": [' + point + "]}]}")
    assert "not valid JSON" in error.problem or "object 'a' points_ijk[0]" in error.problem
