"""The Slicer module file itself (it needs Slicer to run): it compiles, its UI has every widget it
uses, and the user guide lists every keyboard shortcut it installs.

And the widget against the library it is a client of: every library name it imports exists, every
attribute it reads of the logic, the model worker, encode-ahead and a running action exists, and every
call it makes binds to the callee's signature. A renamed method or a dropped keyword in the library then
fails here, not in a user's Slicer."""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.util
import inspect
import py_compile
import re
import textwrap
import xml.etree.ElementTree as ElementTree
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MedSegAny" / "MedSegAny.py"
UI = ROOT / "MedSegAny" / "Resources" / "UI" / "MedSegAny.ui"
TREE = ast.parse(MODULE.read_text(encoding="utf-8"))


def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "MedSegAny.pyc"), doraise=True)


def test_ui_defines_every_widget_the_module_uses():
    names = {widget.get("name") for widget in ElementTree.parse(UI).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    assert used and used <= names, f"missing in the .ui: {sorted(used - names)}"


def test_user_guide_lists_every_shortcut():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    shortcuts = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SHORTCUTS"
    )
    keys = [ast.literal_eval(entry)[0] for entry in shortcuts.elts]
    guide = (ROOT / "docs" / "SLICER_USER_GUIDE.md").read_text(encoding="utf-8")
    assert len(keys) >= 6 and all(key in guide for key in keys)


#: Slicer's main-window menus (Base/QTApp/Resources/UI/qSlicerMainWindow.ui, 5.10: "&File", "&Edit",
#: "&View", "&Help"). Their menu bar grabs Alt+<mnemonic> in the window (Windows, Linux); a panel shortcut
#: on the same keys is then ambiguous: Qt sends the presses to each in turn, and a QShortcut receiving an
#: ambiguous one emits activatedAmbiguously(), never activated().
SLICER_MENU_MNEMONICS = ("Alt+F", "Alt+E", "Alt+V", "Alt+H")


def _shortcuts() -> list[tuple[str, str, str]]:
    node = next(
        node.value
        for node in TREE.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SHORTCUTS"
    )
    return [ast.literal_eval(entry) for entry in node.elts]


def test_no_shortcut_is_taken_by_slicers_menus_and_each_button_names_its_own():
    """Alt+E ("From my edit") was the Edit menu's mnemonic: the presses opened the Edit menu and never
    used the edit."""
    shortcuts = _shortcuts()
    assert not [keys for keys, _, _ in shortcuts if keys in SLICER_MENU_MNEMONICS]
    labels = {
        widget.get("name"): widget.findtext("property[@name='text']/string") or ""
        for widget in ElementTree.parse(UI).iter("widget")
    }
    for keys, method, _ in shortcuts:
        assert f"({keys})" in labels[f"{method}Button"]


def _library(module_path: str):
    """MedSegAnyLib.x (the module folder's name in Slicer) is the package medsegany.x here."""
    return importlib.import_module("medsegany" + module_path.removeprefix("MedSegAnyLib"))


def _receiver_classes() -> dict[str, type]:
    """What the widget's receivers are: ``self.logic`` and its ``logic`` aliases, and so on."""
    from medsegany.slicer_encode_ahead import EncodeAhead
    from medsegany.slicer_logic import AIAction, RunningAction, SlicerSegmentationLogic, UndoStep
    from medsegany.slicer_worker import ModelWorker

    return {
        "self.logic": SlicerSegmentationLogic,
        "logic": SlicerSegmentationLogic,
        "self.worker": ModelWorker,
        "self.encodeAhead": EncodeAhead,
        "self.running": RunningAction,
        "running": RunningAction,
        "self.running.action": AIAction,
        "self.running.action.step": UndoStep,
    }


def _instance_attributes(cls: type) -> set[str]:
    """Names a class's instances carry: dataclass fields and ``self.NAME = ...`` in its (bases') code."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        if is_dataclass(klass):
            names |= {field.name for field in fields(klass)}
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    names.add(target.attr)
    return names


def _widget_uses(receivers: dict[str, type]) -> list[tuple[str, str, ast.AST]]:
    """(receiver, attribute, the node using it) for each attribute the widget reads of a receiver."""
    used = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Attribute):
            receiver = ast.unparse(node.value)
            if receiver in receivers:
                used.append((receiver, node.attr, node))
    return used


def _calls_of(node: ast.AST) -> list[ast.Call]:
    return [call for call in ast.walk(TREE) if isinstance(call, ast.Call) and call.func is node]


def _binds(callee, call: ast.Call) -> str | None:
    """None when the call's arguments fit ``callee``'s signature, else why not."""
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(kw.arg is None for kw in call.keywords):
        return None  # *args / **kwargs: not checkable statically
    try:
        signature = inspect.signature(callee)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*range(len(call.args)), **{kw.arg: None for kw in call.keywords})
    except TypeError as error:
        return f"{ast.unparse(call)}: {error}"
    return None


def test_the_widget_imports_only_names_the_library_has():
    imports = [
        node
        for node in ast.walk(TREE)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MedSegAnyLib")
    ]
    assert len(imports) >= 10
    missing = [
        f"{node.module}.{alias.name}"
        for node in imports
        for alias in node.names
        if not hasattr(_library(node.module), alias.name)
    ]
    assert not missing


def test_every_library_function_the_widget_calls_binds_to_its_signature():
    imported = {}
    for node in ast.walk(TREE):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MedSegAnyLib"):
            for alias in node.names:
                imported[alias.asname or alias.name] = getattr(_library(node.module), alias.name)
    calls = [
        node
        for node in ast.walk(TREE)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported
    ]
    assert len(calls) >= 10
    problems = [problem for call in calls if (problem := _binds(imported[call.func.id], call))]
    assert not problems


def test_every_attribute_the_widget_uses_of_the_logic_worker_and_actions_exists():
    pytest.importorskip("slicer")  # slicer_logic's classes import MRML helpers lazily; keep it headless
    receivers = _receiver_classes()
    uses = _widget_uses(receivers)
    assert len({attribute for receiver, attribute, _ in uses if "logic" in receiver}) >= 15
    known = {name: _instance_attributes(cls) for name, cls in receivers.items()}
    missing = sorted(
        {
            f"{receiver}.{attribute} ({receivers[receiver].__name__})"
            for receiver, attribute, _ in uses
            if not hasattr(receivers[receiver], attribute) and attribute not in known[receiver]
        }
    )
    assert not missing


def test_every_method_the_widget_calls_on_them_binds_to_its_signature():
    pytest.importorskip("slicer")
    receivers = _receiver_classes()
    problems = []
    checked = 0
    for receiver, attribute, node in _widget_uses(receivers):
        method = inspect.getattr_static(receivers[receiver], attribute, None)
        if not callable(method) or isinstance(method, (staticmethod, classmethod, type)):
            continue
        for call in _calls_of(node):
            checked += 1
            # a method looked up on the class: the widget passes everything after self
            call_with_self = ast.Call(
                func=call.func, args=[ast.Constant(0), *call.args], keywords=call.keywords
            )
            if problem := _binds(method, call_with_self):
                problems.append(problem)
    assert checked >= 15
    assert not problems


class _LibraryAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of ``MedSegAnyLib.x`` (the module folder's name in Slicer) give the very module object
    ``medsegany.x``: no second copy of any library module (its classes, its state) is made."""

    def find_spec(self, name, path=None, target=None):
        if name == "MedSegAnyLib" or name.startswith("MedSegAnyLib."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def __init__(self) -> None:
        self.real_specs: dict[str, object] = {}

    def create_module(self, spec):
        module = importlib.import_module("medsegany" + spec.name.removeprefix("MedSegAnyLib"))
        self.real_specs[module.__name__] = module.__spec__  # the import system sets the alias's spec on it
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.real_specs[module.__name__]  # already imported as medsegany.x: its own spec


def test_the_modules_slicer_self_test_passes_on_real_mrml(monkeypatch):
    """MedSegAnyTest (what Slicer's "Reload and Test" runs) on slicer-core's MRML: the module file is
    imported with stand-ins only for Qt, CTK and Slicer's scripted-module base classes."""
    import sys
    import types
    import unittest

    slicer = pytest.importorskip("slicer")
    from slicer_scene_testing import mrml_scene

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None) -> None:
            self.shown.append(message)

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    for name, stand_in in (("qt", types.ModuleType("qt")), ("ctk", types.ModuleType("ctk"))):
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setattr(sys, "meta_path", [_LibraryAlias(), *sys.meta_path])
    try:
        with mrml_scene() as scene:
            monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
            spec = importlib.util.spec_from_file_location("MedSegAny_under_test", MODULE)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            test = module.MedSegAnyTest("test_prompt_propagate_undo")
            test.shown = []
            test.test_prompt_propagate_undo()  # its own assertions: propagation, mask, undo, redo
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "MedSegAnyLib"]:
            del sys.modules[name]
    assert test.shown[-1] == "Test passed"


# -- the panel's own methods, run on the real library -------------------------------------------------


class _Recorder:
    """A stand-in Qt object: any attribute may be set; a method call is recorded and returns None."""

    def __init__(self, **attributes) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.__dict__.update(attributes)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args))


@pytest.fixture()
def panel(monkeypatch):
    """(module, widget, shown): MedSegAny.py imported with stand-ins for Qt, CTK, Slicer's application and
    its message boxes; a widget whose .ui is made of stand-ins and whose logic, worker and encode-ahead
    are the library's. ``shown``: the messages it showed and the timers it started, in order."""
    import contextlib
    import sys
    import types

    slicer = pytest.importorskip("slicer")
    util = importlib.import_module("slicer.util")
    shown: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        # as Slicer's (Base/Python/slicer/util.py): shows the error (unless show=False), then raises it again
        try:
            yield
        except Exception as error:
            if show:
                shown.append(("error", f"{message} {error}"))
            raise

    qt = types.ModuleType("qt")
    qt.QTimer = type(
        "QTimer", (), {"singleShot": staticmethod(lambda ms, call: shown.append(("timer", call.__name__)))}
    )
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for base in ("Module", "ModuleWidget", "ModuleLogic", "ModuleTest"):
        stand_in = type(base, (), {"__init__": lambda self, parent=None: None})
        setattr(scripted, f"ScriptedLoadable{base}", stand_in)
    for name, stand_in in (("qt", qt), ("ctk", types.ModuleType("ctk"))):
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setattr(sys, "meta_path", [_LibraryAlias(), *sys.meta_path])
    monkeypatch.setattr(slicer, "app", _Recorder(), raising=False)
    monkeypatch.setattr(util, "errorDisplay", lambda text, **kw: shown.append(("error", text)))
    monkeypatch.setattr(util, "warningDisplay", lambda text, **kw: shown.append(("warning", text)))
    monkeypatch.setattr(util, "tryWithErrorDisplay", try_with_error_display)
    try:
        spec = importlib.util.spec_from_file_location("MedSegAny_under_test", MODULE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        widget = module.MedSegAnyWidget()
        widget.ui = types.SimpleNamespace(
            statusLabel=_Recorder(text=""),
            modelInfoLabel=_Recorder(text=""),
            encodeAheadCheckBox=_Recorder(checked=True),
            inputVolumeSelector=_Recorder(currentNode=lambda: None),
            modelComboBox=_Recorder(currentData="litemedsam"),
            deviceComboBox=_Recorder(currentText="auto"),
        )
        widget.encodeTimer = _Recorder()
        yield module, widget, shown
        if widget.worker is not None:
            widget.worker.shutdown()
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "MedSegAnyLib"]:
            del sys.modules[name]


def test_a_device_chosen_while_the_model_loads_ahead_is_loaded_next_not_called_ready(panel, monkeypatch):
    import threading

    import medsegany.models.registry
    import medsegany.slicer_install
    from medsegany.slicer_logic import SlicerSegmentationLogic
    from medsegany.slicer_worker import wait_until
    from slicer_scene_testing import ThresholdModel

    _, widget, _ = panel
    loading, started, loaded = threading.Event(), threading.Event(), []

    def load_model(model_id, device=None):
        started.set()
        loading.wait(30)
        loaded.append((model_id, device))
        return ThresholdModel()

    monkeypatch.setattr(medsegany.models.registry, "load_model", load_model)
    monkeypatch.setattr(medsegany.slicer_install, "loads_without_asking", lambda model_id, store=None: True)
    widget.logic = SlicerSegmentationLogic(model="litemedsam")

    widget._loadModelAhead()  # the panel opens: the default model (device "auto") loads on the worker
    assert started.wait(10)
    widget.ui.deviceComboBox.currentText = "cpu"
    widget.onModelChanged()  # the user picks the CPU meanwhile: the worker is busy loading
    loading.set()
    assert wait_until(lambda: widget.loadingAhead.finished)
    widget._checkLoadingAhead()  # the panel's 500 ms timer

    # before: "Model ready: place a box or points." with the CPU model never loaded ahead
    assert wait_until(lambda: loaded == [("litemedsam", None), ("litemedsam", "cpu")])
    assert widget.ui.statusLabel.text == "Loading the model in the background..."
    assert wait_until(lambda: widget.loadingAhead.finished)
    widget._checkLoadingAhead()
    assert widget.logic.model_loaded and widget.ui.statusLabel.text == "Model ready: place a box or points."


def test_a_worker_error_is_logged_with_its_own_traceback(panel, caplog):
    import logging

    _, widget, shown = panel

    def encoder_step():
        raise RuntimeError("a bug in the model")

    try:
        encoder_step()
    except RuntimeError as caught:
        error = caught  # as a RunningAction keeps it: the panel shows it later, outside any except block
    with caplog.at_level(logging.ERROR):
        widget._showError(error)

    assert shown == [("error", "MedSegAny failed: a bug in the model")]
    # before: logging.exception outside an except block logged "NoneType: None", no traceback
    assert "in encoder_step" in caplog.text and "NoneType: None" not in caplog.text


def test_the_model_loads_for_an_action_while_slices_are_encoded_ahead(panel, monkeypatch):
    """Download pressed while encoding ahead runs, or encoding ahead started by the events the panel
    processes before loading: the load waits for the encoder call in flight instead of being refused."""
    import threading

    import medsegany.models.registry
    import medsegany.slicer_install
    from medsegany.slicer_encode_ahead import EncodeAhead
    from medsegany.slicer_logic import SlicerSegmentationLogic
    from medsegany.slicer_worker import ModelWorker, wait_until
    from slicer_scene_testing import ThresholdModel, add_volume_node, mrml_scene, phantom_kji

    _, widget, shown = panel
    hold, calls = threading.Event(), []

    class HeldModel(ThresholdModel):
        def embed_frames(self, frames):
            calls.append(len(frames))
            hold.wait(30)
            return super().embed_frames(frames)

    model = HeldModel()
    monkeypatch.setattr(medsegany.models.registry, "load_model", lambda model_id, device=None: model)
    monkeypatch.setattr(medsegany.slicer_install, "ensure_python_packages", lambda family, confirm: None)
    with mrml_scene() as scene:
        widget.logic = SlicerSegmentationLogic(model="litemedsam")
        widget.logic.set_volume(add_volume_node(scene, phantom_kji()))
        widget.worker = ModelWorker("test worker")
        widget.worker.run_sync(lambda context: [widget.logic.load_model()])
        widget.encodeAhead = EncodeAhead(widget.logic, widget.worker)
        assert widget.encodeAhead.request(2, 6)
        assert wait_until(lambda: calls == [1])  # inside its first encoder call
        threading.Timer(0.3, hold.set).start()

        widget._ensureReady()  # before: "Loading the model failed. 'encode ahead' is still running"

    assert not any(kind == "error" for kind, _ in shown)
    assert widget.ui.statusLabel.text == "LiteMedSAM ready" and not widget.worker.busy
    assert not widget.encodeAhead.running and calls == [1]  # stopped after its encoder call


def test_closing_the_scene_stops_the_running_action_and_forgets_the_scene(panel):
    """File > Close Scene during a propagation: the action stops after its slice in flight, and the logic
    lets go of the closed case's session and undo steps (they stayed: GPU memory the next case's plan
    counted as taken, and undo steps for segments that no longer exist)."""
    import gc
    import threading
    import weakref

    import numpy as np
    from medsegany.slicer_logic import SlicerSegmentationLogic
    from medsegany.slicer_worker import ModelWorker
    from slicer_scene_testing import (
        ThresholdModel,
        add_roi_on_slice,
        add_segmentation,
        add_volume_node,
        mrml_scene,
        phantom_kji,
    )

    _, widget, shown = panel
    model = ThresholdModel()
    model.gate, model.gate_after = threading.Event(), 1  # the second slice waits for the gate

    with mrml_scene() as scene:
        volume_node = add_volume_node(scene, phantom_kji())
        segmentation, (target, _) = add_segmentation(scene, volume_node)
        roi = add_roi_on_slice(scene, (6, 5, 6), (18, 14, 6), np.eye(4))
        widget.logic = SlicerSegmentationLogic(model=model)
        widget.logic.set_target(volume_node, segmentation, target)
        widget.worker = ModelWorker("test worker")
        widget.running = widget.logic.start(
            widget.worker, widget.logic.plan_prompt_action(roi, propagate=True)
        )
        assert model.reached_gate.wait(30)
        session = weakref.ref(widget.logic.session)
        for name in (
            "segmentSelector",
            "placeBoxButton",
            "placePositiveButton",
            "placeNegativeButton",
            "useEditButton",
            "propagateButton",
            "cancelButton",
            "undoButton",
            "redoButton",
            "acceptButton",
            "directionComboBox",
            "rangeFromSpinBox",
            "rangeToSpinBox",
            "intensityLabel",
        ):
            setattr(widget.ui, name, _Recorder(currentSegmentID=lambda: "", currentData=None))
        threading.Timer(0.3, model.gate.set).start()

        widget.onSceneStartClose()

    gc.collect()
    assert widget.running is None and not widget.worker.busy
    assert session() is None and not widget.logic.can_undo and widget.logic.volume_node is None
    assert not any(kind == "error" for kind, _ in shown)


def test_a_module_reload_during_a_propagation_finishes_the_action_as_one_undo_step(panel):
    """The module is reloaded (or Slicer exits) while a propagation runs: cleanup() stopped the timer and
    the worker, the slices already written stayed in the segment, and the action's undo step and
    provenance were lost (no undo, no tag). It now stops after the slice in flight and finishes the
    action, as a cancelled one."""
    import threading

    import numpy as np
    from medsegany.mrml_segment import segment_mask_kji
    from medsegany.slicer_logic import SlicerSegmentationLogic, read_provenance
    from medsegany.slicer_worker import ModelWorker, wait_until
    from slicer_scene_testing import (
        ThresholdModel,
        add_roi_on_slice,
        add_segmentation,
        add_volume_node,
        mrml_scene,
        phantom_kji,
    )

    _, widget, shown = panel
    model = ThresholdModel()
    model.gate, model.gate_after = threading.Event(), 2  # the third slice waits for the gate

    with mrml_scene() as scene:
        volume_node = add_volume_node(scene, phantom_kji())
        segmentation, (target, _) = add_segmentation(scene, volume_node)
        roi = add_roi_on_slice(scene, (6, 5, 6), (18, 14, 6), np.eye(4))
        widget.logic = logic = SlicerSegmentationLogic(model=model)
        logic.set_target(volume_node, segmentation, target)
        widget.worker = worker = ModelWorker("test worker")
        widget.running = logic.start(worker, logic.plan_prompt_action(roi, propagate=True))
        assert model.reached_gate.wait(30)
        running = widget.running
        # the panel's timer writes the two slices computed before the gate
        assert wait_until(lambda: running.poll() or running.action.step.slices_written == 2)
        assert not running.finished
        threading.Timer(0.3, model.gate.set).start()

        widget.cleanup()

        assert widget.running is None and not worker.busy
        written = segment_mask_kji(segmentation, target, volume_node).any(axis=(1, 2)).sum()
        assert written >= 2 and running.step is not None and running.step.slices_written == written
        assert logic.can_undo and read_provenance(segmentation, target)["actions"][-1]["cancelled"]
        logic.undo()
        assert not segment_mask_kji(segmentation, target, volume_node).any()
    assert not any(kind == "error" for kind, _ in shown)


def _target_chosen(widget, volume_node, segmentation_node, segment_id: str) -> None:
    """The panel's selectors on a volume and segment, with stand-ins for the rest of what updateGUI sets."""
    widget.ui.inputVolumeSelector = _Recorder(currentNode=lambda: volume_node)
    widget.ui.segmentSelector = _Recorder(
        currentNode=lambda: segmentation_node, currentSegmentID=lambda: segment_id
    )
    widget.ui.autoPropagateCheckBox = _Recorder(checked=False)
    widget.ui.directionComboBox = _Recorder(currentData="both")
    for name in ("placeBox", "placePositive", "placeNegative", "useEdit", "propagate", "cancel"):
        setattr(widget.ui, f"{name}Button", _Recorder())
    for name in ("undoButton", "redoButton", "acceptButton", "progressBar", "intensityLabel"):
        setattr(widget.ui, name, _Recorder())
    widget.ui.rangeFromSpinBox, widget.ui.rangeToSpinBox = _Recorder(), _Recorder()


def test_each_box_waits_for_its_second_corner(panel, monkeypatch):
    """Slicer places an ROI with two clicks: the first corner is a control point of its own (size 0, 2 of
    them required), the second makes the box and the ROI keeps one centre point
    (vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints). PointPositionDefinedEvent fires at both clicks
    (vtkMRMLMarkupsNode::SetNthControlPointPositionOrientationWorld). At the first one the panel took the
    one-point ROI as the box: a warning "zero width or height in voxels" popped up in the middle of every
    box drawn. The prompt now waits for the box; the second click segments it."""
    import numpy as np
    import slicer
    from medsegany.mrml_adapter import segment_mask_kji
    from medsegany.slicer_logic import SlicerSegmentationLogic
    from medsegany.slicer_worker import ModelWorker, wait_until
    from slicer_scene_testing import (
        ThresholdModel,
        add_segmentation,
        add_volume_node,
        mrml_scene,
        phantom_kji,
    )

    _, widget, shown = panel
    with mrml_scene() as scene:
        monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
        spacing = np.array([0.9, 1.2, 2.5])
        volume_node = add_volume_node(scene, phantom_kji(), ijk_to_ras=np.diag([*spacing, 1.0]), parent=None)
        segmentation, (target, _) = add_segmentation(scene, volume_node)
        view = scene.AddNewNodeByClass("vtkMRMLSliceNode")  # the Red view on slice K=6
        view.GetSliceToRAS().SetElement(2, 3, 6 * spacing[2])
        widget.logic = SlicerSegmentationLogic(model=ThresholdModel())
        widget.worker = ModelWorker("test worker")
        widget.timer = _Recorder()
        widget._viewAxis = 2
        monkeypatch.setattr(widget, "_viewSliceNode", lambda: view)
        monkeypatch.setattr(widget, "_ensureReady", lambda: None)  # the model is an instance: nothing to load
        _target_chosen(widget, volume_node, segmentation, target)
        widget.logic.set_target(volume_node, segmentation, target)
        roi = widget.logic.prompt_nodes(scene)[0]
        corners_ras = [np.array([6.0, 7.0, 6.0]) * spacing, np.array([17.0, 16.0, 6.0]) * spacing]

        roi.AddControlPointWorld(*corners_ras[0])  # the first click (as it leaves the ROI)
        assert roi.GetNumberOfControlPoints() == 1 and roi.GetSize() == (0.0, 0.0, 0.0)
        widget.onPromptPlaced(roi, roi.PointPositionDefinedEvent)

        # before: [("warning", "ROI 'MedSegAny box' has zero width or height in voxels ...")]
        assert shown == [] and widget.running is None
        roi.AddControlPointWorld(*corners_ras[1])  # the second click: Slicer makes the box of both
        assert roi.GetNumberOfControlPoints() == 1 and roi.GetSize()[0] > 0
        widget.onPromptPlaced(roi, roi.PointPositionDefinedEvent)
        assert widget.running is not None
        assert wait_until(lambda: widget.running.poll())
        mask_kji = segment_mask_kji(segmentation, target, volume_node)

        assert shown == [] and widget.running.error is None
        widget.running = None  # as the panel's timer leaves it

        # the next box (Box button): its ROI asks for two corners again. Before, the emptied ROI kept its
        # box's 1 required point, so Slicer ended the placement at the first click: a zero-size ROI
        interaction = scene.AddNewNodeByClass("vtkMRMLInteractionNode")
        application = _Recorder(
            GetSelectionNode=lambda: scene.AddNewNodeByClass("vtkMRMLSelectionNode"),
            GetInteractionNode=lambda: interaction,
        )
        monkeypatch.setattr(slicer, "app", _Recorder(applicationLogic=lambda: application))
        widget.ui.viewComboBox = _Recorder(currentText="Red")
        widget.ui.encodeAheadCheckBox.checked = False
        widget._startPlacing(0)
        assert interaction.GetCurrentInteractionMode() == interaction.Place
        roi.AddControlPointWorld(*corners_ras[0])  # the panel's observer calls onPromptPlaced
        assert roi.GetRequiredNumberOfControlPoints() == 2  # before: 1, the placement ended here
        assert shown == [] and widget.running is None
        roi.AddControlPointWorld(*corners_ras[1])
        assert widget.running is not None and wait_until(lambda: widget.running.poll())
        widget.removeObservers()

    assert shown == [] and widget.running.error is None
    # the box's slice is segmented, inside the two corners (bright pixels of the phantom's ellipsoid)
    rows, cols = np.nonzero(mask_kji[6])
    assert rows.size > 50 and rows.min() >= 7 and rows.max() <= 16 and cols.min() >= 6 and cols.max() <= 17
    assert not mask_kji[[k for k in range(mask_kji.shape[0]) if k != 6]].any()


def test_an_undo_the_logic_refuses_is_told_once_in_one_line_and_the_panel_updates(panel, monkeypatch):
    """slicer.util.tryWithErrorDisplay shows its popup (the traceback under Details) and raises the error
    again (Base/Python/slicer/util.py). The panel's Undo used it: a refused undo (its segment deleted) was a
    popup plus a traceback out of the button's slot, and the panel was not updated (Undo stayed enabled
    with nothing left to undo). Now: one line, as every other refusal, and the panel updated."""
    import numpy as np
    import slicer
    from medsegany.slicer_logic import SlicerSegmentationLogic
    from slicer_scene_testing import (
        ThresholdModel,
        add_roi_on_slice,
        add_segmentation,
        add_volume_node,
        mrml_scene,
        phantom_kji,
    )

    _, widget, shown = panel
    with mrml_scene() as scene:
        monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
        volume_node = add_volume_node(scene, phantom_kji())
        segmentation, (target, _) = add_segmentation(scene, volume_node)
        widget.logic = SlicerSegmentationLogic(model=ThresholdModel())
        widget.logic.set_target(volume_node, segmentation, target)
        widget.logic.segment(roi_node=add_roi_on_slice(scene, (6, 5, 6), (18, 14, 6), np.eye(4)))
        _target_chosen(widget, volume_node, segmentation, target)
        segmentation.GetSegmentation().RemoveSegment(target)  # the user deletes the segment

        widget.undo()  # before: raised out of the slot after the popup

    assert shown == [
        (
            "warning",
            "the segment of that action (prompt + propagation) was deleted. that step is dropped; "
            "press Undo again for the actions before it.",
        )
    ]
    assert widget.ui.undoButton.enabled is False  # before: not updated


def test_a_model_that_fails_to_load_for_an_action_is_told_once(panel, monkeypatch):
    """The load inside an action ran in tryWithErrorDisplay, which shows its popup and raises again; the
    action's own handler then showed the same error: two popups for one failed load."""
    import medsegany.models.registry
    import medsegany.slicer_install
    from medsegany.slicer_logic import SlicerSegmentationLogic

    _, widget, shown = panel

    def load_model(model_id, device=None):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(medsegany.models.registry, "load_model", load_model)
    monkeypatch.setattr(medsegany.slicer_install, "ensure_python_packages", lambda family, confirm: None)
    widget.logic = SlicerSegmentationLogic(model="litemedsam")
    monkeypatch.setattr(widget, "_setTarget", lambda quiet=False: True)
    widget.ui.progressBar = _Recorder()
    monkeypatch.setattr(widget, "updateGUI", lambda *args: None)

    widget._run(lambda: None)

    # before: [("error", "Loading the model failed. CUDA error: ..."), ("error", "MedSegAny failed: ...")]
    assert [kind for kind, _ in shown] == ["error"] and "no kernel image" in shown[0][1]
    assert widget.running is None
