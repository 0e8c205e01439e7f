"""Prompts from 3D Slicer markups files (``.mrk.json``): an ROI is a box, a point list's points are clicks.

A labelling team places boxes and points in Slicer, saves them (File > Save: one ``.mrk.json`` per markups
node), and segments on another machine with ``medsegany segment --markups`` or a batch. Positions are read
as Slicer reads them: in the file's ``coordinateSystem`` (LPS, Slicer's default since 4.11, when the field
is missing; RAS), in the node's own coordinates. A parent transform is not stored in the file, so a
transformed node must be hardened before it is saved (Transforms module).

The ROI's geometry follows Slicer's writer: ``center`` and ``size`` in its object frame, ``orientation``
the 3 x 3 matrix (row-major) whose columns are the ROI's axes, all in the file's coordinate system.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PromptError
from .geometry import LPS_TO_RAS

#: The markups types that are prompts: a point list ("Fiducial" in the file) and an ROI.
POINT_LIST_TYPE, ROI_TYPE = "Fiducial", "ROI"


@dataclass(frozen=True)
class MarkupsPromptsRas:
    """What one markups file holds for a prompt, in RAS millimetres: each ROI's 8 corners and the placed
    points of its point lists; ``point_names``: each point as the file says it, for messages (its label and
    position in the file's coordinates, e.g. "point 'F-2' at LPS (-90, -30, 6)")."""

    path: Path
    rois_corners_ras: tuple[np.ndarray, ...]
    points_ras: tuple[tuple[float, float, float], ...]
    point_names: tuple[str, ...] = ()


def read_markups_file(path: str | Path) -> MarkupsPromptsRas:
    """The ROIs and placed points of a ``.mrk.json`` file; PromptError naming what is wrong with it."""
    path = Path(path).expanduser()
    document = _read_json(path)
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups:
        raise PromptError(
            f'{path} holds no markups (no "markups" list)', "give a .mrk.json file that Slicer saved"
        )
    rois, points, names = [], [], []
    for index, markup in enumerate(markups):
        what = f"{path} markups[{index}]"
        if not isinstance(markup, dict):
            raise PromptError(f"{what} is not an object", "give a .mrk.json file that Slicer saved")
        to_ras = _to_ras(markup, what)
        kind = markup.get("type")
        if kind == ROI_TYPE:
            rois.append(_roi_corners_ras(markup, to_ras, what))
        elif kind == POINT_LIST_TYPE:
            for point_ras, name in _placed_points_ras(markup, to_ras, what):
                points.append(point_ras)
                names.append(name)
        else:
            raise PromptError(
                f"{what} is a {kind!r} markups, not a point list or an ROI",
                "save the prompt as a point list (points) or an ROI (a box) in Slicer",
            )
    # a point list with no placed point is no prompt, not an error: the panel's "MedSegAny -" list is often
    # empty, and a command that gives nothing at all is told "no prompt was given"
    return MarkupsPromptsRas(path, tuple(rois), tuple(points), tuple(names))


def _read_json(path: Path) -> object:
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise PromptError(f"markups file {path} {problem}", "check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(f"cannot read markups file {path} ({error})", "give a .mrk.json file") from None
    except json.JSONDecodeError as error:
        raise PromptError(
            f"markups file {path} is not valid JSON ({error})", "give a .mrk.json file that Slicer saved"
        ) from None


def _coordinate_system(markup: dict, what: str) -> str:
    system = str(markup.get("coordinateSystem", "LPS")).upper()  # Slicer reads a file without it as LPS
    if system not in ("LPS", "RAS"):
        raise PromptError(f"{what} has the coordinate system {system!r}", "save it in LPS or RAS (Slicer)")
    return system


def _to_ras(markup: dict, what: str) -> np.ndarray:
    return LPS_TO_RAS[:3, :3] if _coordinate_system(markup, what) == "LPS" else np.eye(3)


def _numbers(value: object, count: int, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise PromptError(f"{what} is not {count} numbers ({value!r})", "save the markups again in Slicer")
    return array


def _roi_corners_ras(markup: dict, to_ras: np.ndarray, what: str) -> np.ndarray:
    """(8, 3) corners in RAS: centre + axes @ (+-size / 2)."""
    if markup.get("roiType", "Box") != "Box":
        raise PromptError(f"{what} is a {markup.get('roiType')!r} ROI", "draw a box ROI")
    if not _placed(markup.get("controlPoints", [])):
        raise PromptError(f"{what} (an ROI) has not been placed", "draw the box on a slice in Slicer first")
    center = to_ras @ _numbers(markup.get("center"), 3, f"{what} center")
    orientation = _numbers(markup.get("orientation", np.eye(3).ravel()), 9, f"{what} orientation")
    axes = to_ras @ orientation.reshape(3, 3)
    half_size = _numbers(markup.get("size"), 3, f"{what} size") / 2.0
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    return center + (signs * half_size) @ axes.T


def _placed(control_points: object) -> list[dict]:
    """The control points the user placed: a point still following the mouse or skipped is not a click."""
    if not isinstance(control_points, list):
        return []
    return [
        point
        for point in control_points
        if isinstance(point, dict) and point.get("positionStatus", "defined") == "defined"
    ]


def _placed_points_ras(
    markup: dict, to_ras: np.ndarray, what: str
) -> list[tuple[tuple[float, float, float], str]]:
    """(RAS point, its name in messages) of each placed point."""
    system = _coordinate_system(markup, what)
    points = []
    for number, point in enumerate(_placed(markup.get("controlPoints", []))):
        label = point.get("label") or f"#{number}"
        position = _numbers(point.get("position"), 3, f"{what} point {label!r} position")
        name = f"point {label!r} at {system} ({', '.join(f'{v:.4g}' for v in position)})"
        points.append((tuple(float(v) for v in to_ras @ position), name))
    return points
