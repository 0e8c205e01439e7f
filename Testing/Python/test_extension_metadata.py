"""The extension's three descriptions agree, and Slicer's build will package everything it needs.

``CMakeLists.txt`` (EXTENSION_* variables) is the source of truth; ``MedSegAny.s4ext`` (legacy index
format) and ``MedSegAny.json`` (Extensions Index, schema 1.0.2) must say the same thing.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "MedSegAny"
RAW_PREFIX = "https://raw.githubusercontent.com/"

#: Properties of the Extensions Index catalog entry schema v1.0.2 (it forbids any other key).
SCHEMA_1_0_2_TYPES = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "dicom_support_rule": str,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
SCHEMA_1_0_2_REQUIRED = {"$schema", "category", "scm_url"}


def _cmake_variables(path: Path) -> dict[str, str]:
    """``set(NAME value)`` pairs of a CMake file (quoted or bare values, comments removed)."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    variables = {}
    for name, value in re.findall(r"set\(\s*([A-Za-z_][A-Za-z0-9_]*)\s+(.*?)\)\s*$", text, flags=re.M | re.S):
        words = shlex.split(value)
        variables[name] = words[0] if len(words) == 1 else " ".join(words)
    return variables


def _s4ext(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        entries[key] = value.strip()
    return entries


@pytest.fixture(scope="module")
def cmake() -> dict[str, str]:
    return _cmake_variables(ROOT / "CMakeLists.txt")


@pytest.fixture(scope="module")
def s4ext() -> dict[str, str]:
    return _s4ext(ROOT / f"{NAME}.s4ext")


@pytest.fixture(scope="module")
def catalog() -> dict:
    return json.loads((ROOT / f"{NAME}.json").read_text(encoding="utf-8"))


def test_extension_name_is_the_project_name():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(rf"^project\(\s*{NAME}\s*\)", text, flags=re.M)
    assert (ROOT / f"{NAME}.s4ext").is_file() and (ROOT / f"{NAME}.json").is_file()


def test_category_depends_and_scm_agree(cmake, s4ext, catalog):
    assert cmake["EXTENSION_CATEGORY"] == s4ext["category"] == catalog["category"] == "Segmentation"
    depends = cmake["EXTENSION_DEPENDS"].split()
    assert depends == s4ext["depends"].split() == catalog["build_dependencies"]
    assert "PyTorch" in depends
    assert s4ext["scm"] == catalog["scm_type"] == "git"
    assert s4ext["scmurl"] == catalog["scm_url"]
    assert s4ext["scmrevision"] == catalog["scm_revision"]
    assert (
        cmake["EXTENSION_BUILD_SUBDIRECTORY"] == s4ext["build_subdirectory"] == catalog["build_subdirectory"]
    )
    assert (cmake["EXTENSION_ENABLED"] == "1") == (s4ext["enabled"] == "1") == catalog["enabled"]


def test_homepage_description_contributors_icon_agree(cmake, s4ext, catalog):
    assert cmake["EXTENSION_HOMEPAGE"] == s4ext["homepage"]
    # The homepage is the repository the index builds from.
    assert cmake["EXTENSION_HOMEPAGE"].rstrip("/") == catalog["scm_url"].removesuffix(".git").rstrip("/")
    assert cmake["EXTENSION_DESCRIPTION"] == s4ext["description"]
    assert len(cmake["EXTENSION_DESCRIPTION"]) >= 40
    assert cmake["EXTENSION_CONTRIBUTORS"] == s4ext["contributors"] != ""
    assert cmake["EXTENSION_STATUS"] == s4ext["status"]
    assert cmake["EXTENSION_ICONURL"] == s4ext["iconurl"]
    assert cmake["EXTENSION_SCREENSHOTURLS"].split() == s4ext["screenshoturls"].split()


def _local_path_of(url: str, homepage: str) -> Path:
    """The file in this repository that a raw.githubusercontent.com URL of the homepage repo points to."""
    repository = homepage.removeprefix("https://github.com/").rstrip("/")
    prefix = f"{RAW_PREFIX}{repository}/"
    assert url.startswith(prefix), f"{url} is not a raw URL of {homepage}"
    _revision, _, relative = url.removeprefix(prefix).partition("/")
    return ROOT / relative


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_icon_and_screenshot_urls_point_at_files_in_this_repository(cmake):
    icon = _local_path_of(cmake["EXTENSION_ICONURL"], cmake["EXTENSION_HOMEPAGE"])
    assert icon == ROOT / "Resources" / "Icons" / f"{NAME}.png"
    assert _png_size(icon) == (128, 128)
    for url in cmake["EXTENSION_SCREENSHOTURLS"].split():
        assert _local_path_of(url, cmake["EXTENSION_HOMEPAGE"]).is_file(), url


def test_module_icon_is_a_128_pixel_png():
    assert _png_size(ROOT / NAME / "Resources" / "Icons" / f"{NAME}.png") == (128, 128)


def test_catalog_entry_follows_schema_1_0_2(catalog):
    assert catalog["$schema"].endswith("/slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert catalog.keys() >= SCHEMA_1_0_2_REQUIRED
    unknown = set(catalog) - set(SCHEMA_1_0_2_TYPES)
    assert not unknown, f"schema 1.0.2 forbids {sorted(unknown)}"
    for key, value in catalog.items():
        assert isinstance(value, SCHEMA_1_0_2_TYPES[key]), key
    assert catalog["scm_type"] in ("git", "local")
    assert all(isinstance(d, str) for d in catalog["build_dependencies"])
    assert 1 <= catalog["tier"] <= 5


def test_minimum_slicer_version_is_enforced(cmake):
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert cmake["MedSegAny_MINIMUM_SLICER_VERSION"] == "5.10"
    assert re.search(r"if\(Slicer_VERSION VERSION_LESS MedSegAny_MINIMUM_SLICER_VERSION\)", text)
    assert text.index("find_package(Slicer") < text.index("Slicer_VERSION VERSION_LESS")


def test_subdirectories_are_built():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for folder in (NAME, f"{NAME}Lib"):
        assert f"add_subdirectory({folder})" in text
        assert (ROOT / folder / "CMakeLists.txt").is_file()


def test_module_cmake_registers_generic_and_self_tests():
    text = (ROOT / NAME / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT \$\{MODULE_NAME\}\.py\s*\)", text)
    assert _cmake_variables(ROOT / NAME / "CMakeLists.txt")["MODULE_NAME"] == NAME


def test_module_script_has_the_classes_slicer_loads():
    script = ROOT / NAME / f"{NAME}.py"
    if not script.is_file():
        pytest.skip(f"{script.relative_to(ROOT)} is not written yet")
    tree = ast.parse(script.read_text(encoding="utf-8"))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {NAME, f"{NAME}Widget", f"{NAME}Logic", f"{NAME}Test"} <= classes


def test_library_cmake_installs_every_library_file():
    text = (ROOT / f"{NAME}Lib" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_SUBDIR" in text
    patterns = re.findall(r"file\(GLOB_RECURSE \w+ RELATIVE \S+ CONFIGURE_DEPENDS \*(\.\w+)\)", text)
    assert sorted(patterns) == [".json", ".py"]
    library = ROOT / f"{NAME}Lib"
    files = [
        path
        for path in library.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.name != "CMakeLists.txt"
    ]
    not_installed = [str(path.relative_to(library)) for path in files if path.suffix not in patterns]
    assert not not_installed, f"Slicer would not install {not_installed}: add them to the CMake globs"
    assert (library / "models" / "__init__.py").is_file(), (
        "models/ must be a package for the subfolder install"
    )


def test_library_modules_import_each_other_relatively():
    """In Slicer the package is ``MedSegAnyLib``, so ``import medsegany`` inside it would fail there."""
    offenders = []
    for path in (ROOT / f"{NAME}Lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(name.split(".")[0] in ("medsegany", f"{NAME}Lib") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"absolute imports of the library: {offenders}"


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "Apache-2.0"', pyproject, flags=re.M)
