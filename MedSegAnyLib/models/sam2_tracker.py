"""Track prompted objects through a stack of in-memory frames with a SAM 2 model's memory.

:class:`Sam2Tracker` reproduces Meta's ``SAM2VideoPredictor`` (``add_new_points_or_box``,
``add_new_mask``, ``propagate_in_video``, ``clear_all_prompts_in_frame``) step by step with the model's
own methods (``forward_image``, ``track_step``, ``_encode_new_memory``), so the numbers are Meta's, but:

- frames come from memory (no JPEG files), see :mod:`medsegany.models.sam2_frames`;
- image features are computed once per frame and kept in a bounded cache (Meta keeps one frame), shared
  by every object, correction and re-propagation; :meth:`Sam2Tracker.precompute_features` batches them;
- the state is typed (:mod:`medsegany.models.sam2_state`);
- small holes are filled without Meta's optional CUDA extension (:mod:`medsegany.models.sam2_holes`);
- on a CPU under bf16 the attention runs as two bf16 matrix products and a softmax, not PyTorch's fused
  kernel, and the memory attention projects its values after it (:mod:`medsegany.models.sam2_cpu_attention`:
  a tracking step 0.30 -> 0.18 s); in float32 the memory attention does the same with float32 scores
  (0.465 -> 0.39-0.41 s on a CPU without native bf16);
- on CUDA the tracking steps replay from CUDA graphs (:mod:`medsegany.models.sam2_step_graphs`: the
  memory gathered in 3 copies by :mod:`medsegany.models.sam2_memory_gather`, the holes filled inside the
  graph), one launched ahead of the one being finished (:mod:`medsegany.models.sam2_lookahead`), and
  under bf16 the weights are cast once (:func:`medsegany.models.sam2_speedups.shared_bf16_copy`); on a
  CPU freed memory is kept until a run ends (:mod:`medsegany.allocator`);
- a correction on a tracked frame makes it a conditioning frame (the model option
  ``add_all_frames_to_correct_as_cond`` that :func:`~medsegany.models.sam2_build.build_sam2_model`
  turns on); re-propagating from it, away from the first prompt, updates the frames after it only;
- a run backward from frame 0 yields the prompted frame 0 and marks it visited, as every other run does
  its start; Meta's ``propagate_in_video(reverse=True)`` from frame 0 runs nothing, so a click there
  afterwards is a fresh prompt in Meta's (no memory) and a correction here (3661 vs 5007 px of 5120 on
  random weights, only where frame 0 was never propagated forward). The session never runs it: a prompt
  on the first slice has no backward run (:mod:`medsegany.session_runs`).

Example::

    tracker = Sam2Tracker(build_sam2_model("sam2.1_hiera_t512", checkpoint))
    tracker.set_frames(frames_nhw)                      # uint8 or float [0, 1], N x H x W
    tracker.add_prompts(1, 40, box_frame_xyxy=np.array([30, 40, 80, 90]))
    for direction in (+1, -1):
        for result in tracker.propagate(40, direction):
            if result.object_score_logit <= 0:
                break                                   # the object ended on this side
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..allocator import release_fragments, retained_freed_memory
from ..errors import ModelError, PromptError, VolumeError
from .compute import switch_from_environment, without_cudnn_attention
from .sam2_compiled_encoder import COMPILE_ENCODER_VARIABLE, compiled_forward_image
from .sam2_cpu_attention import install as install_cpu_attention
from .sam2_cpu_attention import matmul_attention
from .sam2_encode_stream import ENCODE_STREAM_VARIABLE, EncoderStream
from .sam2_features import FeatureCache, fpn_feature_bytes
from .sam2_frames import check_frames, preprocess_frames
from .sam2_holes import fill_holes_in_mask_logits
from .sam2_lookahead import LaunchedStep, copy_to_host, record_step
from .sam2_memory_attention import promote_memory_without_pointers
from .sam2_memory_gather import supports as memory_gather_supports
from .sam2_memory_gather import token_major
from .sam2_speedups import memoise_position_embedding, shared_bf16_copy
from .sam2_state import FrameOutput, FramePrompts, ObjectTrack, TrackResult
from .sam2_step_compile import COMPILE_STEP_VARIABLE
from .sam2_step_graphs import default_capture, step_graphs_for

# "0" turns the CPU's attention by matrix products off, in bf16 and float32 (see sam2_cpu_attention)
MATMUL_ATTENTION_VARIABLE = "MEDSEGANY_MATMUL_ATTENTION"
# Meta clamps earlier logits fed back with new clicks to [-32, 32] "to avoid rare numerical issues".
PREV_LOGITS_CLAMP = 32.0


def padded_batch_size(count: int, limit: int) -> int:
    """The encoder batch that ``count`` frames run in: the next power of two, at most ``limit`` (the
    batch asked for, which the memory plan counted), never fewer than ``count``.

    Why, on CUDA: a run's last batch has whatever size is left, so every volume brought sizes the process
    had not run, and on an H200 (2026-11-28, ``benchmarks/encoder_batch_shapes.py``) the first batch of a
    new size took 0.02-0.06 s longer than later ones, 0.49-0.60 s with PyTorch's cuDNN attention (see
    :func:`~medsegany.models.compute.without_cudnn_attention`). Rounded up, a process meets at most 1, 2,
    4, ... up to the batch: 10, 11 and 12 frames asked for in batches of 16 ran as 16 in 12.9-13.3 ms,
    as fast as a batch of 16 already run (13.4-13.9 ms). The copies dropped cost at most as much as the
    frames kept.
    """
    return max(count, min(1 << max(0, count - 1).bit_length(), limit))


def preferred_encoder_batch(device_type: str) -> int:
    """Frames per SAM 2 encoder call: 1 on a CPU (SAM 2.1 tiny at 512: 0.63 s an image alone vs 0.82 s
    in batches of 4 in float32, 0.41 vs 0.43 s in bf16, on the 2-core CPU), 16 on a GPU (an H200 encoded
    300 frames in batches of 32 in 0.23 s, where batches of 4 leave it mostly idle; 16 bound the frames
    encoded beyond where an object ends to two batches, see medsegany.encode_ahead.EncodeAheadInRun)."""
    return 1 if device_type == "cpu" else 16


class Sam2Tracker:
    """Promptable tracking of objects through one stack of frames (one volume axis) with a SAM 2 model.

    ``model`` is a built ``SAM2VideoPredictor`` (see :func:`medsegany.models.sam2_build.build_sam2_model`).
    ``precision`` ("auto", "float32", "bfloat16", see :mod:`medsegany.models.compute`): "auto" runs bf16
    autocast on CUDA (as Meta's demos) and on CPUs with native bf16 (1.6x float32 there), float32 elsewhere;
    "float32" gives Meta's float32 numbers (on a CPU within float32 rounding, see ``matmul_attention``).
    ``feature_cache_mb`` bounds the cached image features (about
    4 MB a frame at 512 px, 17 MB at 1024 px in float32, half in bf16). ``step_graphs`` (tracking steps
    replayed from CUDA graphs, :mod:`~medsegany.models.sam2_step_graphs`) and ``lookahead`` (one step
    launched ahead, :mod:`~medsegany.models.sam2_lookahead`) default to on for CUDA, off elsewhere; both
    give the same masks. ``matmul_attention`` (attention as matrix products on a CPU,
    :mod:`~medsegany.models.sam2_cpu_attention`) defaults to on where the tracker runs on a CPU, unless
    ``MEDSEGANY_MATMUL_ATTENTION=0``: under bf16 it rounds the attention scores to bf16 (on random weights
    the masks stay as close to float32 as the fused kernel's); in float32 only the memory's
    cross-attention changes, to within float32 rounding of Meta's numbers (7e-7 of the largest logit).
    ``encode_stream`` (the image encoder on a CUDA stream of its own,
    :mod:`~medsegany.models.sam2_encode_stream`) is off unless asked for or ``MEDSEGANY_ENCODE_STREAM=1``,
    and CUDA only. ``pad_batches`` (a short encoder batch padded to a power
    of two, :func:`padded_batch_size`) defaults to on for CUDA. ``compile_step`` (the split step through
    ``torch.compile``, :mod:`~medsegany.models.sam2_step_compile`; masks close to the eager step's, not
    bitwise) is off unless asked for or ``MEDSEGANY_COMPILE_STEP=1``, and needs the split
    (``step_graphs``); ``compile_encoder`` (the image encoder through ``torch.compile``,
    :mod:`~medsegany.models.sam2_compiled_encoder`) likewise, or ``MEDSEGANY_COMPILE_ENCODER=1``. Not
    thread-safe: drive one tracker from one thread.
    """

    def __init__(
        self,
        model: Any,
        feature_cache_mb: float = 1024.0,
        precision: str = "auto",
        step_graphs: bool | None = None,
        lookahead: bool | None = None,
        matmul_attention: bool | None = None,
        encode_stream: bool | None = None,
        pad_batches: bool | None = None,
        compile_step: bool | None = None,
        compile_encoder: bool | None = None,
    ) -> None:
        import torch

        from .compute import resolve_precision

        for option in ("non_overlap_masks", "clear_non_cond_mem_around_input"):
            # multi-object options of Meta's predictor; objects are tracked independently here
            if getattr(model, option, False):
                raise ModelError(f"model option {option} is not supported", f"build it with {option}=false")
        model.eval()
        memoise_position_embedding(model)  # exact: the same embedding, interpolated once per size
        # float32: a frame whose memory has no object pointer gets it in float32, as one with them does
        promote_memory_without_pointers(model.memory_attention)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(self.device.type, precision)
        self._autocast_dtype = torch.bfloat16 if self.precision == "bfloat16" else None
        # bf16: weights cast once instead of at every call (same numbers, see sam2_speedups)
        self.model = shared_bf16_copy(model) if self._autocast_dtype is not None else model
        # tracking steps split around the memory attention and replayed from CUDA graphs (see
        # sam2_step_graphs); None = on CUDA only, True on another device = the same split, eagerly
        use_graphs = self.device.type == "cuda" if step_graphs is None else bool(step_graphs)
        use_graphs = use_graphs and memory_gather_supports(model)  # models with a memory (all video ones)
        # the split step through torch.compile (sam2_step_compile); off unless asked for
        compile_step = switch_from_environment(compile_step, COMPILE_STEP_VARIABLE, default=False)
        self.compile_step = compile_step and use_graphs
        capture = default_capture(self.device)
        self._steps = step_graphs_for(self.model, capture, self.compile_step) if use_graphs else None
        # one step launched ahead of the one being yielded (see sam2_lookahead); None = on CUDA only (on
        # a CPU it would only compute one step too many where the caller stops)
        self._lookahead = self.device.type == "cuda" if lookahead is None else bool(lookahead)
        matmul_attention = switch_from_environment(matmul_attention, MATMUL_ATTENTION_VARIABLE, default=True)
        # on a CPU: bf16 attention by matrix products, and the memory's cross-attention (bf16 or float32)
        # with its values projected last; the stand-in goes in once per process
        cpu = self.device.type == "cpu"
        self.matmul_attention = bool(matmul_attention) and cpu and install_cpu_attention()
        # the image encoder on a CUDA stream of its own (sam2_encode_stream); off unless asked for
        encode_stream = switch_from_environment(encode_stream, ENCODE_STREAM_VARIABLE, default=False)
        use_stream = encode_stream and self.device.type == "cuda"
        self._encoder_stream = EncoderStream(self.device) if use_stream else None
        # a short encoder batch padded to a power of two (see padded_batch_size); None = on CUDA only
        self.pad_batches = self.device.type == "cuda" if pad_batches is None else bool(pad_batches)
        # the image encoder through torch.compile (sam2_compiled_encoder); off unless asked for
        compile_encoder = switch_from_environment(compile_encoder, COMPILE_ENCODER_VARIABLE, default=False)
        self._compiled_encoder = compiled_forward_image(self.model) if compile_encoder else None
        self.image_size = int(model.image_size)
        self._cache = FeatureCache(int(feature_cache_mb * 2**20))
        self._frames_nhw: np.ndarray | None = None
        self._stack_length: int | None = None
        self._objects: dict[int, ObjectTrack] = {}
        self._maskmem_pos_enc: list[Any] | None = None
        self.frames_encoded = 0  # image-encoder runs, counted per frame (tests check features are reused)

    # ------------------------------------------------------------------ frames and features
    def set_frames(self, frames_nhw: np.ndarray, stack_length: int | None = None) -> None:
        """Use these frames (N, H, W), uint8 or float in [0, 1]; forgets all objects and cached features.

        ``stack_length``: when the frames are consecutive frames of a longer stack (a slab of a volume,
        :mod:`medsegany.slab`), that stack's length; None: N. SAM 2 divides an object pointer's temporal
        distance by ``min(frames, 16) - 1`` (Meta's ``num_frames`` in
        ``_prepare_memory_conditioned_features``), so a slab's logits are the whole stack's only with the
        whole stack's count (6 frames of 12 without it: 2.3e-5 of the largest logit apart, random
        weights). Frame indices stay the slab's: distances do not depend on where it starts (Meta's memory
        stride for evaluation, 1 unless a configuration sets another; none of the catalog's does).
        """
        frames_nhw = check_frames(frames_nhw)
        if stack_length is not None and int(stack_length) < len(frames_nhw):
            raise VolumeError(
                f"a stack of {stack_length} frames cannot hold these {len(frames_nhw)}",
                "pass the length of the stack the frames were cut from, or None",
            )
        self._frames_nhw = frames_nhw
        self._stack_length = None if stack_length is None else int(stack_length)
        self._cache.clear()
        if self._encoder_stream is not None:
            self._encoder_stream.forget()
        if self._steps is not None:
            self._steps.forget_sources()  # the old frames' features, held by the graphs' inputs
        self._objects.clear()

    @property
    def preferred_batch_size(self) -> int:
        """Frames per encoder call on this tracker's device (see :func:`preferred_encoder_batch`)."""
        return preferred_encoder_batch(self.device.type)

    @property
    def step_graph_stats(self) -> dict[str, Any] | None:
        """CUDA graphs of the tracking step (shared by the model's trackers): how many were recorded, in
        how many seconds, replays, why recording fell back to eager steps, and whether steps are launched
        ahead; None without the split."""
        steps = self._steps
        if steps is None:
            return None
        compiled = steps.compiled_step
        return {
            "lookahead": self._lookahead,
            "capture": steps.capture,
            "recorded": steps.recorded,
            "record_s": steps.record_seconds,
            "replays": steps.replays,
            "fallback_reason": steps.fallback_reason,
            "compile_step": compiled is not None,
            "step_compiled": None if compiled is None else compiled.report.compiled,
            "step_compiles": None if compiled is None else compiled.compiles,
            "step_compiled_graphs": None if compiled is None else compiled.graphs,
            "step_compile_s": None if compiled is None else compiled.report.seconds,
            "step_compile_fallback": None if compiled is None else compiled.report.fallback_reason,
        }

    @property
    def encoder_compile_stats(self) -> dict[str, Any] | None:
        """The image encoder through torch.compile: compiled or not, the calls that compiled and the graphs
        they made, their seconds, why it fell back to eager; None when not asked for."""
        call = self._compiled_encoder
        if call is None:
            return None
        return {
            "compiled": call.report.compiled,
            "compiles": call.compiles,
            "graphs": call.graphs,
            "compile_s": call.report.seconds,
            "fallback_reason": call.report.fallback_reason,
        }

    @property
    def encoder_stream_batches(self) -> int | None:
        """Encoder batches run on the encoder's own CUDA stream (sam2_encode_stream); None when off."""
        return None if self._encoder_stream is None else self._encoder_stream.batches

    @property
    def num_frames(self) -> int:
        return 0 if self._frames_nhw is None else int(self._frames_nhw.shape[0])

    @property
    def stack_length(self) -> int:
        """The frames of the stack these are part of (``set_frames``): what SAM 2's memory is told."""
        return self.num_frames if self._stack_length is None else self._stack_length

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the frames, rows then columns."""
        frames = self._require_frames()
        return int(frames.shape[1]), int(frames.shape[2])

    def feature_bytes_per_frame(self) -> int:
        """Bytes of one frame's cached image features (to size ``feature_cache_mb``, advise on memory)."""
        return fpn_feature_bytes(self.image_size, self._autocast_dtype is not None)

    @property
    def feature_cache_bytes(self) -> int:
        """The feature cache's budget in bytes (least recently used frames are evicted beyond it)."""
        return self._cache.max_bytes

    @feature_cache_bytes.setter
    def feature_cache_bytes(self, value: int) -> None:
        self._cache.max_bytes = int(value)
        self._cache.fit_budget()  # a smaller budget evicts now

    def evict_features(self, count: int) -> int:
        """Evict up to ``count`` least recently used frames' features; returns how many went."""
        return self._cache.evict_oldest(count)

    @property
    def offload_features(self) -> bool:
        """Whether the frames' features are kept in host memory, copied to the device when used (the
        memory plan's choice when the GPU cannot hold them all; a no-op on a CPU). Turning it on moves
        the features already cached; turning it off leaves them there and keeps new ones on the device."""
        return self._cache.offload

    @offload_features.setter
    def offload_features(self, value: bool) -> None:
        if value:
            if self._encoder_stream is not None:
                # the copies below run on the current stream: batches still running on the encoder's
                # own stream must end first, or half-written features would be copied
                import torch

                torch.cuda.current_stream(self.device).wait_stream(self._encoder_stream.stream)
            self._cache.move_to_host()
        else:
            self._cache.offload = False

    @property
    def cached_frame_count(self) -> int:
        """Frames whose image features are cached."""
        return len(self._cache)

    def has_features(self, frame_index: int) -> bool:
        """True when the frame's image features are cached (nothing to encode)."""
        return int(frame_index) in self._cache

    def _require_frames(self) -> np.ndarray:
        if self._frames_nhw is None:
            raise VolumeError("the tracker has no frames", "call set_frames first")
        return self._frames_nhw

    def _check_frame_index(self, frame_index: int) -> int:
        n = len(self._require_frames())
        if not 0 <= int(frame_index) < n:
            raise PromptError(f"frame {frame_index} is outside the stack of {n} frames", f"use 0..{n - 1}")
        return int(frame_index)

    def _compute(self) -> contextlib.AbstractContextManager:
        """No autograd; bf16 autocast under bf16 precision (and on a CPU the attention by matrix products).
        Entered per step, never across a ``yield``."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self._autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self._autocast_dtype))
        stack.enter_context(matmul_attention(self.matmul_attention))
        return stack

    def _retained_memory(self) -> contextlib.AbstractContextManager:
        """On a CPU, freed activations stay in the process for the next frame (medsegany.allocator: a
        tracking step 0.35 -> 0.30 s, a frame's features 0.38 -> 0.31 s on the 2-core development CPU)."""
        return retained_freed_memory(self.device.type == "cpu")

    def _encode_images(self, frame_indices: Sequence[int], batch_limit: int = 1) -> None:
        """Run the image encoder on a batch of frames and cache each frame's features separately (on
        the encoder's own stream when there is one: the host does not wait for it). ``batch_limit``: the
        batch asked for, up to which a shorter batch may be padded (see :func:`padded_batch_size`)."""
        if self._encoder_stream is None:
            self._encode_batch(frame_indices, batch_limit)
            return
        with self._encoder_stream.encoding(frame_indices):
            self._encode_batch(frame_indices, batch_limit)

    def _encode_batch(self, frame_indices: Sequence[int], batch_limit: int) -> None:
        release_fragments()  # between two slices: the heap's holes go back once they pile up (allocator)
        frames = self._require_frames()
        images = preprocess_frames(frames[list(frame_indices)], self.image_size, self.device)
        count = len(frame_indices)
        size = padded_batch_size(count, batch_limit) if self.pad_batches else count
        if size > count:  # copies of the last frame: encoded, then dropped
            import torch

            images = torch.cat([images, images[-1:].expand(size - count, -1, -1, -1)])
        with without_cudnn_attention(self.device):  # a new batch size costs 0.05 s, not 0.5 s (H200)
            if self._compiled_encoder is None:
                backbone_out = self.model.forward_image(images)
            else:
                backbone_out = self._compiled_encoder(self.model, images)
        pos_enc = self._cache.pos_enc
        if pos_enc is None:  # the same for every frame: one copy (16 MiB at 512 px; 3-6 ms a clone)
            pos_enc = [p[0:1].clone() for p in backbone_out["vision_pos_enc"]]
        for i, frame_index in enumerate(frame_indices):
            # clone: a slice would keep the whole batch's storage alive in the cache
            fpn = [f[i : i + 1].clone() for f in backbone_out["backbone_fpn"]]
            self._cache.put(frame_index, fpn, pos_enc)
        self.frames_encoded += len(frame_indices)

    def precompute_features(self, frame_indices: Iterable[int] | None = None, batch_size: int = 4) -> int:
        """Encode the frames not yet cached, ``batch_size`` at a time; returns how many were encoded.

        Frames beyond the cache budget evict the least recently used ones, so ask only for what fits.
        """
        self._require_frames()
        indices = range(self.num_frames) if frame_indices is None else frame_indices
        todo = [self._check_frame_index(i) for i in dict.fromkeys(indices) if i not in self._cache]
        # one autocast region for all batches: it casts the float32 weights to bf16 once, not per batch
        # (27 M parameters, about 20 ms an image on the 2-core CPU)
        batch = max(1, int(batch_size))
        with self._retained_memory(), self._compute():
            for start in range(0, len(todo), batch):
                self._encode_images(todo[start : start + batch], batch_limit=batch)
        return len(todo)

    def _frame_features(self, frame_index: int) -> tuple[list[Any], list[Any], list[tuple[int, int]]]:
        """(vision_feats, vision_pos_embeds, feat_sizes) as Meta's ``_get_image_feature`` (batch 1)."""
        release_fragments()  # the start of every tracking step, between two slices (see _encode_batch)
        fpn = self._cache.get(frame_index)
        if fpn is None:
            self._encode_images([frame_index])
            fpn = self._cache.get(frame_index)
        if self._encoder_stream is not None:  # its batch may still be running on the encoder's stream
            self._encoder_stream.ready(frame_index, [*fpn, *self._cache.pos_enc])
        backbone_out = {"backbone_fpn": list(fpn), "vision_pos_enc": list(self._cache.pos_enc)}
        _, vision_feats, vision_pos_embeds, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        return vision_feats, vision_pos_embeds, feat_sizes

    # ------------------------------------------------------------------ objects
    @property
    def object_ids(self) -> list[int]:
        return list(self._objects)

    def _object(self, object_id: int) -> ObjectTrack:
        if object_id not in self._objects:
            raise PromptError(f"object {object_id} has no prompts", "add a box, points or a mask first")
        return self._objects[object_id]

    def conditioning_frames(self, object_id: int) -> list[int]:
        """Frames where this object was prompted and that condition its tracking."""
        return self._object(object_id).conditioning_frames()

    def tracked_frames(self, object_id: int) -> list[int]:
        """Frames with an output for this object (prompted or tracked)."""
        track = self._object(object_id)
        outputs = (track.conditioning, track.tracked, track.pending_conditioning, track.pending_tracked)
        return sorted(set().union(*outputs))

    def result(self, object_id: int, frame_index: int) -> TrackResult | None:
        """The latest output of this object on a frame, or None when there is none."""
        output = self._object(object_id).latest_output(self._check_frame_index(frame_index))
        return None if output is None else self._result(frame_index, object_id, output)

    def remove_object(self, object_id: int) -> None:
        self._objects.pop(object_id, None)

    def reset(self) -> None:
        """Forget all objects; keep the frames and their cached features."""
        self._objects.clear()

    # ------------------------------------------------------------------ prompts
    def _point_inputs(
        self,
        box_frame_xyxy: np.ndarray | None,
        points_frame_xy: np.ndarray | None,
        point_labels: np.ndarray | None,
    ) -> tuple[Any, Any]:
        """Points in model pixels (1, P, 2) and labels (1, P), box first, as ``add_new_points_or_box``."""
        import torch

        if (points_frame_xy is None) != (point_labels is None):
            raise PromptError("points and point labels must be given together", "pass both or neither")
        points = np.zeros((0, 2), np.float32) if points_frame_xy is None else np.asarray(points_frame_xy)
        labels = np.zeros((0,), np.int32) if point_labels is None else np.asarray(point_labels)
        points = points.astype(np.float32).reshape(-1, 2) if points.size else np.zeros((0, 2), np.float32)
        labels = labels.astype(np.int32).reshape(-1)
        if len(points) != len(labels):
            raise PromptError(
                f"{len(points)} points but {len(labels)} labels", "give one label (1 or 0) per point"
            )
        if not np.isin(labels, (0, 1)).all():
            raise PromptError("point labels must be 1 (inside) or 0 (outside)", "fix the labels")
        if box_frame_xyxy is not None:
            box = np.asarray(box_frame_xyxy, dtype=np.float32).reshape(-1)
            if box.shape != (4,):
                raise PromptError(f"a box needs 4 numbers (x0, y0, x1, y1), got {box.size}", "fix the box")
            points = np.concatenate([box.reshape(2, 2), points])
            labels = np.concatenate([np.array([2, 3], np.int32), labels])
        if not np.isfinite(points).all():
            raise PromptError("prompt coordinates must be finite numbers", "fix the box or points")
        height, width = self.frame_shape
        coords = torch.from_numpy(points)[None]
        # Meta's order of operations: normalise by (W, H), then scale to the model's square input
        coords = coords / torch.tensor([width, height]) * self.image_size
        return coords.to(self.device), torch.from_numpy(labels)[None].to(self.device)

    def _mask_inputs(self, mask_frame: np.ndarray) -> Any:
        """A binary frame mask resized to S x S as ``add_new_mask`` (antialiased bilinear, >= 0.5)."""
        import torch
        from torch.nn.functional import interpolate

        mask = np.asarray(mask_frame)
        if mask.shape != self.frame_shape:
            raise PromptError(
                f"mask prompt has shape {mask.shape}, frames are {self.frame_shape}",
                "pass a mask of the frame",
            )
        mask_t = torch.from_numpy(mask.astype(bool))[None, None].float().to(self.device)
        if mask_t.shape[-2:] == (self.image_size, self.image_size):
            return mask_t
        resized = interpolate(
            mask_t, size=(self.image_size,) * 2, align_corners=False, mode="bilinear", antialias=True
        )
        return (resized >= 0.5).float()

    def add_prompts(
        self,
        object_id: int,
        frame_index: int,
        box_frame_xyxy: np.ndarray | None = None,
        points_frame_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_frame: np.ndarray | None = None,
        keep_previous_points: bool = False,
    ) -> np.ndarray:
        """Prompt an object on a frame; returns its mask logits (H, W) float32 on that frame.

        Coordinates are frame pixels, x = column, y = row. Points replace the object's earlier points and
        box on this frame unless ``keep_previous_points`` (then they are appended; a box cannot be). A mask
        prompt replaces the points. On a frame no propagation visited, this is an initial prompt (no
        memory, like SAM); on a visited frame it is a correction that also uses the memory and the previous
        mask. Either way the frame becomes a conditioning frame once :meth:`propagate` starts.
        """
        import torch

        frame_index = self._check_frame_index(frame_index)
        has_points = box_frame_xyxy is not None or points_frame_xy is not None
        if mask_frame is not None and has_points:
            raise PromptError("a mask prompt cannot be combined with a box or points", "send them separately")
        if mask_frame is None and not has_points:
            raise PromptError("no prompt given", "pass a box, points with labels, or a mask")
        if keep_previous_points and box_frame_xyxy is not None:
            raise PromptError("a box must come before the points of a frame", "add the box without keep")

        previous = self._objects[object_id].prompts.get(frame_index) if object_id in self._objects else None
        if mask_frame is not None:
            prompts = FramePrompts(mask_model=self._mask_inputs(mask_frame))
        else:
            coords, labels = self._point_inputs(box_frame_xyxy, points_frame_xy, point_labels)
            if keep_previous_points and previous is not None and previous.point_coords_model is not None:
                coords = torch.cat([previous.point_coords_model, coords], dim=1)
                labels = torch.cat([previous.point_labels, labels], dim=1)
            prompts = FramePrompts(point_coords_model=coords, point_labels=labels)

        track = self._objects.setdefault(object_id, ObjectTrack(object_id))
        is_initial = frame_index not in track.visited_direction
        reverse = False if is_initial else track.visited_direction[frame_index] < 0
        is_conditioning = is_initial or bool(self.model.add_all_frames_to_correct_as_cond)
        pending = track.pending_conditioning if is_conditioning else track.pending_tracked
        with self._compute():
            if prompts.mask_model is not None:
                output = self._run_frame(
                    track, frame_index, is_initial, None, prompts.mask_model, reverse, False
                )
            else:
                # Meta feeds the latest mask on this frame back into the decoder with the new clicks
                earlier = pending.get(frame_index)
                for bank in (track.conditioning, track.tracked):
                    earlier = bank.get(frame_index) if earlier is None else earlier
                prev_logits = None
                if earlier is not None:
                    prev_logits = earlier.pred_masks.to(self.device).clamp(
                        -PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP
                    )
                point_inputs = {
                    "point_coords": prompts.point_coords_model,
                    "point_labels": prompts.point_labels,
                }
                output = self._run_frame(
                    track, frame_index, is_initial, point_inputs, None, reverse, False, prev_logits
                )
        track.prompts[frame_index] = prompts
        pending[frame_index] = output
        return self._to_frame_resolution(output.pred_masks)

    def clear_prompts(self, object_id: int, frame_index: int) -> None:
        """Remove an object's prompts on a frame, as Meta's ``clear_all_prompts_in_frame``.

        A conditioning output on that frame stays as an ordinary tracked output (re-propagate to refresh it).
        """
        track = self._object(object_id)
        track.prompts.pop(frame_index, None)
        track.pending_conditioning.pop(frame_index, None)
        track.pending_tracked.pop(frame_index, None)
        output = track.conditioning.pop(frame_index, None)
        if output is not None:
            track.tracked[frame_index] = output
            track.visited_direction.pop(frame_index, None)

    def clear_outputs(self, object_id: int, frames: Iterable[int]) -> None:
        """Forget tracked (not prompted) outputs on these frames, e.g. beyond where a propagation stopped.

        Stale outputs would otherwise remain (and serve as memory) after a re-propagation that ends earlier.
        Prompted frames keep their outputs; use :meth:`clear_prompts` for them.
        """
        track = self._object(object_id)
        for frame_index in frames:
            if frame_index in track.conditioning or frame_index in track.pending_conditioning:
                continue
            track.tracked.pop(frame_index, None)
            track.pending_tracked.pop(frame_index, None)
            track.visited_direction.pop(frame_index, None)

    # ------------------------------------------------------------------ propagation
    def propagate(
        self,
        start_frame: int,
        direction: int = +1,
        end_frame: int | None = None,
        object_ids: Sequence[int] | None = None,
    ) -> Iterator[TrackResult]:
        """Track objects frame by frame from ``start_frame`` (included) towards ``end_frame`` (included).

        ``direction`` is +1 (increasing frame index) or -1; ``end_frame`` defaults to the last (first) frame.
        Yields one :class:`TrackResult` per object and frame, frame by frame; prompted frames yield their
        prompted output. Each frame's state is complete before it is yielded, so the caller may stop at any
        time (e.g. when ``object_score_logit <= 0``) and then :meth:`clear_outputs` beyond that frame.
        """
        if direction not in (1, -1):
            raise PromptError(f"direction must be +1 or -1, got {direction}", "pass +1 or -1")
        start_frame = self._check_frame_index(start_frame)
        if end_frame is None:
            end_frame = self.num_frames - 1 if direction > 0 else 0
        end_frame = self._check_frame_index(end_frame)
        if (end_frame - start_frame) * direction < 0:
            raise PromptError(
                f"end frame {end_frame} lies behind start frame {start_frame} for direction {direction:+d}",
                "swap them or flip the direction",
            )
        tracks = [self._object(i) for i in (self.object_ids if object_ids is None else object_ids)]
        if not tracks:
            raise PromptError("no object has prompts", "add a box, points or a mask first")
        for track in tracks:
            self._commit_prompts(track)
        return self._propagate(tracks, range(start_frame, end_frame + direction, direction), direction)

    def _propagate(self, tracks: list[ObjectTrack], order: range, direction: int) -> Iterator[TrackResult]:
        with self._retained_memory():  # process-wide, not thread-local: it may span the yields
            if self._lookahead:
                yield from self._propagate_ahead(tracks, order, direction)
            else:
                yield from self._propagate_strict(tracks, order, direction)

    def _propagate_strict(
        self, tracks: list[ObjectTrack], order: range, direction: int
    ) -> Iterator[TrackResult]:
        for frame_index in order:
            for track in tracks:
                output = track.conditioning.get(frame_index)
                if output is None:
                    with self._compute():
                        output = self._track_frame(track, frame_index, direction < 0)
                    track.tracked[frame_index] = output
                track.visited_direction[frame_index] = direction
                yield self._result(frame_index, track.object_id, output)

    def _propagate_ahead(
        self, tracks: list[ObjectTrack], order: range, direction: int
    ) -> Iterator[TrackResult]:
        """As :meth:`_propagate_strict`, with the next step launched before the current one is finished."""
        ahead: LaunchedStep | None = None
        try:
            for frame_index in order:
                for track in tracks:
                    launched = self._launch(track, frame_index, direction)
                    done, ahead = ahead, launched
                    if done is not None:
                        yield self._finish(done)
            done, ahead = ahead, None
            if done is not None:
                yield self._finish(done)
        finally:
            if ahead is not None:  # launched but never yielded: the caller stopped before it
                ahead.revert()

    def _launch(self, track: ObjectTrack, frame_index: int, direction: int) -> LaunchedStep:
        """Launch one step, its holes filled where it runs (inside its graph with step graphs) and its
        mask resized to the frame there, and queue the copy of the frame's logits to the host."""
        output = track.conditioning.get(frame_index)
        computed = output is None
        if computed:
            with self._compute():
                output = self._track_frame(track, frame_index, direction < 0)
                frame_logits = self._frame_logits(output.pred_masks)
        step = record_step(track, frame_index, direction, output, computed)
        if computed:
            step.host_logits, step.host_score, step.ready = copy_to_host(
                frame_logits, output.object_score_logits
            )
        return step

    def _finish(self, step: LaunchedStep) -> TrackResult:
        """The step's result: its frame's logits, copied out of the page-locked buffer they arrived in
        (the session may keep them)."""
        if not step.computed:
            return self._result(step.frame_index, step.track.object_id, step.output)
        step.wait()
        return TrackResult(
            frame_index=step.frame_index,
            object_id=step.track.object_id,
            mask_logits_frame=step.host_logits[0, 0].numpy().copy(),
            object_score_logit=float(step.host_score.reshape(-1)[0]),
        )

    def _commit_prompts(self, track: ObjectTrack) -> None:
        """Encode new prompted frames' memory and file them (Meta's ``propagate_in_video_preflight``)."""
        from torch.nn.functional import interpolate

        with self._compute():
            for pending, bank in (
                (track.pending_tracked, track.tracked),
                (track.pending_conditioning, track.conditioning),
            ):
                for frame_index, output in pending.items():
                    if output.maskmem_features is None:
                        high_res_masks = interpolate(
                            output.pred_masks.to(self.device),
                            size=(self.image_size, self.image_size),
                            mode="bilinear",
                            align_corners=False,
                        )
                        vision_feats, _, feat_sizes = self._frame_features(frame_index)
                        features, pos_enc = self.model._encode_new_memory(
                            current_vision_feats=vision_feats,
                            feat_sizes=feat_sizes,
                            pred_masks_high_res=high_res_masks,
                            object_score_logits=output.object_score_logits,
                            is_mask_from_pts=True,  # Meta: "these frames are what the user interacted with"
                        )
                        output.maskmem_features = token_major(features.to(self._memory_dtype()))
                        output.maskmem_pos_enc = self._shared_maskmem_pos_enc(pos_enc)
                    bank[frame_index] = output
                pending.clear()
        if not track.conditioning:
            raise PromptError(
                f"object {track.object_id} has no conditioning frame",
                "prompt it on a frame before propagating",
            )
        for frame_index in track.conditioning:
            track.tracked.pop(frame_index, None)

    # ------------------------------------------------------------------ one frame
    def _memory_dtype(self) -> Any:
        import torch

        return torch.bfloat16  # Meta stores spatial memories in bf16 on every device

    def _shared_maskmem_pos_enc(self, pos_enc: list[Any] | None) -> list[Any] | None:
        """One copy of the memory positional encoding for all frames (Meta's ``_get_maskmem_pos_enc``)."""
        if pos_enc is None:
            return None
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [p[0:1].clone() for p in pos_enc]
        return self._maskmem_pos_enc

    def _track_frame(self, track: ObjectTrack, frame_index: int, reverse: bool) -> FrameOutput:
        """One tracking step of an unprompted frame, its holes filled where it ran: through the step
        graphs when there are (inside the graph), else Meta's step (see :meth:`_fill_holes`)."""
        if self._steps is None:
            return self._run_frame(track, frame_index, False, None, None, reverse, True)
        area = int(self.model.fill_hole_area)
        outputs = self._steps.track(*self._step_inputs(track, frame_index, reverse), area)
        return self._frame_output(*outputs, fill_holes=False)

    def _step_inputs(self, track: ObjectTrack, frame_index: int, reverse: bool) -> tuple[Any, ...]:
        """The arguments of ``StepGraphs.track`` for this frame."""
        vision_feats, vision_pos_embeds, feat_sizes = self._frame_features(frame_index)
        return (
            frame_index,
            vision_feats,
            vision_pos_embeds,
            feat_sizes,
            track.memory_bank(),
            self.stack_length,
            reverse,
        )

    def _frame_output(
        self,
        pred_masks: Any,
        obj_ptr: Any,
        object_score_logits: Any,
        maskmem_features: Any,
        maskmem_pos_enc: list[Any] | None,
        fill_holes: bool = True,
    ) -> FrameOutput:
        """Meta's post-processing of a step's outputs (``_run_single_frame_inference``)."""
        if maskmem_features is not None:  # token-major: gathered with one copy (sam2_memory_gather)
            maskmem_features = token_major(maskmem_features.to(self._memory_dtype()))
        if fill_holes:
            pred_masks = self._fill_holes(pred_masks)
        return FrameOutput(
            pred_masks=pred_masks,
            obj_ptr=obj_ptr,
            object_score_logits=object_score_logits,
            maskmem_features=maskmem_features,
            maskmem_pos_enc=self._shared_maskmem_pos_enc(maskmem_pos_enc),
        )

    def _fill_holes(self, pred_masks: Any) -> Any:
        """Meta's filling of small background holes in mask logits (none when the model sets no area)."""
        if self.model.fill_hole_area > 0:
            return fill_holes_in_mask_logits(pred_masks, self.model.fill_hole_area)
        return pred_masks

    def _run_frame(
        self,
        track: ObjectTrack,
        frame_index: int,
        is_initial: bool,
        point_inputs: dict[str, Any] | None,
        mask_inputs: Any | None,
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: Any | None = None,
    ) -> FrameOutput:
        """One ``track_step`` on one object, as Meta's ``_run_single_frame_inference`` (batch of 1)."""
        vision_feats, vision_pos_embeds, feat_sizes = self._frame_features(frame_index)
        out = self.model.track_step(
            frame_idx=frame_index,
            is_init_cond_frame=is_initial,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=track.memory_bank(),
            num_frames=self.stack_length,
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        return self._frame_output(
            out["pred_masks"],
            out["obj_ptr"],
            out["object_score_logits"],
            out["maskmem_features"],
            out["maskmem_pos_enc"],
        )

    def _frame_logits(self, pred_masks: Any) -> Any:
        """Low-res logits (N, 1, h, w) -> (N, 1, H, W) float32 at the frame's pixels, resized where they
        are (Meta's ``_get_orig_video_res_output``); one place for every path, so that a step launched
        ahead and a result read later give the same numbers."""
        from torch.nn.functional import interpolate

        return interpolate(pred_masks.float(), size=self.frame_shape, mode="bilinear", align_corners=False)

    def _to_frame_resolution(self, pred_masks: Any) -> np.ndarray:
        """Low-res logits -> (H, W) float32 numpy at the frame's pixels (:meth:`_frame_logits`)."""
        import torch

        with torch.inference_mode():
            return self._frame_logits(pred_masks)[0, 0].to("cpu", torch.float32).numpy()

    def _result(self, frame_index: int, object_id: int, output: FrameOutput) -> TrackResult:
        return TrackResult(
            frame_index=frame_index,
            object_id=object_id,
            mask_logits_frame=self._to_frame_resolution(output.pred_masks),
            object_score_logit=output.object_score,
        )
