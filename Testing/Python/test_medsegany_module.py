"""The Slicer module file itself (it needs Slicer to run): it compiles, its UI has every widget it
uses, and the user guide lists every keyboard shortcut it installs."""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MedSegAny" / "MedSegAny.py"
UI = ROOT / "MedSegAny" / "Resources" / "UI" / "MedSegAny.ui"


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
