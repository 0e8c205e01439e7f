"""A SAM 2 tracking step replayed from CUDA graphs: the same kernels, launched without Python.

Why: on an H200, one tracking step of SAM 2.1 tiny at 512 px (memory attention, mask decoder, memory
encoder) keeps the GPU busy for 2.5 ms but takes 26-30 ms of wall time: 833 kernel launches, each a trip
through Python and PyTorch's dispatcher (``benchmarks/results/gpu_profile_eager_h200.json``). A CUDA
graph records those launches once and replays them with one call.

How the step is split (:meth:`StepGraphs.track`):

1. which memories and object pointers the frame attends to is chosen in Python, by Meta's rules
   (:func:`medsegany.models.sam2_memory_gather.select_memory`), and their tensors are gathered into the
   graph's input buffers with three copies, as are the frame's features (copied only when they changed);
2. the rest (the temporal encodings added to the memory, the pointers' encoding, memory attention,
   prompt encoder with no prompt, mask decoder, object pointer, memory encoder), which depends on the
   frame only through tensors, replays from a graph recorded for this memory length, and its outputs
   are cloned out of the graph's buffers (the next replay reuses them).

Until 2026-11-27 step 1 was Meta's own ``_prepare_memory_conditioned_features`` with its call of the
memory attention intercepted: 22 operations a step issued from Python outside the graph, against 3 now
(``benchmarks/step_host_work.py``). With ``fill_hole_area`` the graph also fills the mask's small holes
(:func:`~medsegany.models.sam2_holes.fill_holes_without_host`), which the host did after every step;
the resize to the frame stays outside (one launch), so that one set of graphs serves every volume axis.

The shapes change only while the memory fills (one graph per number of memory frames and object
pointers: about 16 per direction), so graphs are recorded the first time a length is seen and kept
(least recently used dropped beyond ``max_graphs``). Without CUDA (or ``capture=False``) the same split
runs eagerly; the tests compare it with Meta's ``track_step`` on the CPU. If recording fails (a driver
or PyTorch without graph support), a warning is logged and every step runs eagerly.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from typing import Any

from ..out_of_memory import is_out_of_memory
from .compute import cuda_side_stream
from .sam2_holes import fill_holes_in_mask_logits, fill_holes_without_host
from .sam2_memory_attention import attend_to_memory
from .sam2_memory_gather import (
    GatheredMemory,
    gather_memory,
    memory_from_gathered,
    select_memory,
    token_major,
)
from .sam2_step_compile import compiled_step
from .sam2_unprompted_heads import forward_heads_unprompted

log = logging.getLogger(__name__)

# 16 lengths per direction while the memory fills (7 memory frames, 16 object pointers at most), a few
# more for corrections (a second conditioning frame); each graph holds only its input/output buffers.
DEFAULT_MAX_GRAPHS = 48
# model -> {compile_step: its StepGraphs} (weak keys: graphs go with the model); a compiled and an eager
# step each keep their graphs, so trackers that differ only in that do not record again each time
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def step_after_memory(
    model: Any,
    vision_feats: list[Any],
    vision_pos_embeds: list[Any],
    feat_sizes: list[tuple[int, int]],
    memory: Any,
    memory_pos: Any,
    num_obj_ptr_tokens: int,
) -> tuple[Any, Any, Any, Any, list[Any]]:
    """Meta's tracking step from its memory attention on, for a frame with no prompt (as ``track_step``
    with ``point_inputs=None``, ``mask_inputs=None``, ``run_mem_encoder=True``), the same numbers: the
    memory attention's keys prepared once (:mod:`~medsegany.models.sam2_memory_attention`), the mask heads
    without recomputing their constant inputs (:mod:`~medsegany.models.sam2_unprompted_heads`).

    Returns (low-res mask logits, object pointer, object score logits, memory features, memory pos enc).
    """
    batch, channels = vision_feats[-1].size(1), model.hidden_dim
    height, width = feat_sizes[-1]
    pix_feat = attend_to_memory(
        model.memory_attention,
        vision_feats[-1],
        vision_pos_embeds[-1],
        memory,
        memory_pos,
        num_obj_ptr_tokens,
    )
    pix_feat = pix_feat.permute(1, 2, 0).view(batch, channels, height, width)
    high_res_features = [
        x.permute(1, 2, 0).view(x.size(1), x.size(2), *size)
        for x, size in zip(vision_feats[:-1], feat_sizes[:-1])
    ]
    low_res_masks, high_res_masks, obj_ptr, object_score_logits = forward_heads_unprompted(
        model, pix_feat, high_res_features or None
    )
    maskmem_features, maskmem_pos_enc = model._encode_new_memory(
        current_vision_feats=vision_feats,
        feat_sizes=feat_sizes,
        pred_masks_high_res=high_res_masks,
        object_score_logits=object_score_logits,
        is_mask_from_pts=False,
    )
    return low_res_masks, obj_ptr, object_score_logits, maskmem_features, maskmem_pos_enc


def step_from_gathered(
    model: Any,
    vision_feats: list[Any],
    vision_pos_embeds: list[Any],
    feat_sizes: list[tuple[int, int]],
    gathered: GatheredMemory,
    maskmem_pos_enc: Any,
    fill_hole_area: int = 0,
) -> tuple[Any, Any, Any, Any, list[Any]]:
    """The step from gathered memory: :func:`memory_from_gathered`, then :func:`step_after_memory`, then
    with ``fill_hole_area`` > 0 Meta's hole filling, without the host
    (:func:`~medsegany.models.sam2_holes.fill_holes_without_host`). Returns :func:`step_after_memory`'s
    outputs, the memory features token-major (see
    :func:`~medsegany.models.sam2_memory_gather.token_major`)."""
    memory, memory_pos, num_ptr_tokens = memory_from_gathered(model, gathered, maskmem_pos_enc)
    masks, ptr, score, features, pos_enc = step_after_memory(
        model, vision_feats, vision_pos_embeds, feat_sizes, memory, memory_pos, num_ptr_tokens
    )
    if fill_hole_area > 0:
        masks = fill_holes_without_host(masks, fill_hole_area)
    return masks, ptr, score, token_major(features), pos_enc


class _Input:
    """A graph input buffer that copies a new source in only when it changed: the features' positional
    encodings are the same tensors every step. The last source is held, so its memory cannot be reused
    by another tensor at the same address. An in-place change bumps a tensor's version; tensors made in
    inference mode have none, and the tracker never changes its sources (cached features, the shared
    positional encodings) in place."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self._source: Any = None
        self._signature: tuple | None = None

    def forget(self) -> None:
        """Let the last source go (its memory is freed with its owner); the next load copies."""
        self._source, self._signature = None, None

    def load(self, tensor: Any) -> None:
        version = None if tensor.is_inference() else tensor._version
        signature = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, version)
        if self._source is not None and signature == self._signature:
            return
        self.buffer.copy_(tensor, non_blocking=True)
        self._source, self._signature = tensor, signature


class _Graph:
    """One recorded step: input buffers, the graph, its output buffers."""

    def __init__(
        self, inputs: list[_Input], memory: GatheredMemory, graph: Any, outputs: tuple[Any, ...]
    ) -> None:
        self.inputs = inputs
        self.memory = memory
        self.graph = graph
        self.outputs = outputs


class StepGraphs:
    """Tracking steps of one SAM 2 model, replayed from CUDA graphs (one per memory length).

    ``capture=False`` runs the same split eagerly (CPU, MPS, or to compare). ``compile_step``: the step
    from the gathered memory through ``torch.compile`` (:class:`~medsegany.models.compiled_call.
    CompiledCall`), with or without graphs. Use from one thread, inside the caller's inference-mode and
    autocast context (they are recorded into the graph: a graph recorded under bf16 autocast replays bf16
    kernels).
    """

    def __init__(
        self, model: Any, capture: bool, max_graphs: int = DEFAULT_MAX_GRAPHS, compile_step: bool = False
    ) -> None:
        # weakly: _SHARED maps the model to these graphs with a weak key, which a strong reference from
        # its own value would keep alive for the whole process (with its bf16 copy and graph memory)
        self._model = weakref.ref(model)
        self.capture = bool(capture)
        self.max_graphs = int(max_graphs)
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool: Any = None
        self.recorded = 0
        self.record_seconds = 0.0
        self.replays = 0
        self.fallback_reason: str | None = None
        self.compiled_step = compiled_step(step_from_gathered) if compile_step else None

    @property
    def _step(self) -> Any:
        """What runs the step from the gathered memory: compiled, or :func:`step_from_gathered` itself."""
        return step_from_gathered if self.compiled_step is None else self.compiled_step

    @property
    def model(self) -> Any:
        model = self._model()
        if model is None:  # a tracker holds its model, so a caller cannot get here through one
            raise RuntimeError("the model of these step graphs was freed")
        return model

    def forget_sources(self) -> None:
        """Let every graph input's last source go: the model outlives its sessions, and each graph would
        otherwise keep the features of the last frame it stepped (up to one frame per memory length)."""
        for graph in self._graphs.values():
            for graph_input in graph.inputs:
                graph_input.forget()

    def clear(self) -> None:
        """Drop every graph and the memory pool they share (after a failed recording)."""
        self._graphs.clear()
        self._pool = None

    def track(
        self,
        frame_index: int,
        vision_feats: list[Any],
        vision_pos_embeds: list[Any],
        feat_sizes: list[tuple[int, int]],
        memory_bank: dict[str, Any],
        num_frames: int,
        reverse: bool,
        fill_hole_area: int = 0,
    ) -> tuple[Any, Any, Any, Any, list[Any]]:
        """One tracking step of an unprompted frame, as :func:`step_from_gathered` returns it (with
        ``fill_hole_area`` > 0 its mask's small holes filled inside the graph). The mask, pointer, score
        and memory features are the caller's own (cloned out of the graph's buffers); the memory
        positional encodings are the graph's (the same values at every replay)."""
        selection = select_memory(self.model, frame_index, memory_bank, num_frames, reverse)
        maskmem_pos_enc = selection.spatial[0][1]["maskmem_pos_enc"][-1]
        device = vision_feats[-1].device
        if not self.capture:
            gathered = gather_memory(selection, device)
            masks, ptr, score, features, pos_enc = self._step(
                self.model, vision_feats, vision_pos_embeds, feat_sizes, gathered, maskmem_pos_enc
            )
            # eagerly the shared filler picks the fastest way here (SciPy on a CPU); the same masks
            return fill_holes_in_mask_logits(masks, fill_hole_area), ptr, score, features, pos_enc
        # only the lowest level's positional encoding enters the step (the memory attention's)
        tensors = [*vision_feats, vision_pos_embeds[-1], maskmem_pos_enc]
        first_memory = selection.spatial[0][1]["maskmem_features"]
        first_pointer = selection.pointers[0][1]["obj_ptr"] if selection.pointers else None
        key = (
            tuple((tuple(t.shape), t.dtype) for t in tensors),
            len(selection.spatial),
            tuple(first_memory.shape),
            first_memory.dtype,
            len(selection.pointers),
            None if first_pointer is None else (tuple(first_pointer.shape), first_pointer.dtype),
            selection.max_pointers,
            fill_hole_area,
        )
        graph = self._graphs.get(key)
        if graph is None:
            gathered = gather_memory(selection, device)
            graph = self._record(key, tensors, gathered, feat_sizes, len(vision_feats), fill_hole_area)
            if graph is None:  # recording failed: eager from now on
                return self.track(
                    frame_index,
                    vision_feats,
                    vision_pos_embeds,
                    feat_sizes,
                    memory_bank,
                    num_frames,
                    reverse,
                    fill_hole_area,
                )
        else:
            self._graphs.move_to_end(key)
            for buffer, tensor in zip(graph.inputs, tensors):
                buffer.load(tensor)
            gather_memory(selection, device, out=graph.memory)
        graph.graph.replay()
        self.replays += 1
        masks, ptr, score, features, pos_enc = graph.outputs
        return masks.clone(), ptr.clone(), score.clone(), features.clone(), pos_enc

    def _record(
        self,
        key: tuple,
        tensors: list[Any],
        gathered: GatheredMemory,
        feat_sizes: list[tuple[int, int]],
        levels: int,
        fill_hole_area: int,
    ) -> _Graph | None:
        import torch

        start = time.perf_counter()
        inputs = [_Input(torch.empty_like(t)) for t in tensors]
        for buffer, tensor in zip(inputs, tensors):
            buffer.load(tensor)  # the first copy; the next step copies only what changed
        buffers = [i.buffer for i in inputs]
        feats, pos, maskmem_pos_enc = buffers[:levels], buffers[levels : levels + 1], buffers[levels + 1]
        memory = gathered  # made for this step alone (gather_memory): it becomes the graph's input buffers

        def body() -> tuple[Any, ...]:
            return self._step(self.model, feats, pos, feat_sizes, memory, maskmem_pos_enc, fill_hole_area)

        try:
            graph, outputs = self._capture(body, feats[0].device)
            self._pool = graph.pool()
        except Exception as error:
            if is_out_of_memory(error):
                # not a lack of graph support: the run's out-of-memory handling reports it, and the
                # next run records again
                raise
            # no graph support here: say so once, then run eagerly
            self.capture = False
            self.clear()
            self.fallback_reason = f"{type(error).__name__}: {str(error).strip()[:200]}"
            log.warning(
                "recording the tracking step as a CUDA graph failed (%s); running eagerly",
                self.fallback_reason,
            )
            return None
        recorded = _Graph(inputs, memory, graph, (*outputs[:4], list(outputs[4])))
        self._graphs[key] = recorded
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        self.recorded += 1
        self.record_seconds += time.perf_counter() - start
        return recorded

    def _capture(self, body: Any, device: Any) -> tuple[Any, tuple[Any, ...]]:
        """Record ``body`` as a CUDA graph on ``device``: (the graph, the output tensors its replays
        overwrite).

        Everything the graph path does around it (buffers, gathering, copies only of what changed,
        clones) is exercised on the CPU by tests that stand in for this method.
        """
        import torch

        # streams and graphs belong to the current device: make it the features' one (cuda:1 too)
        with torch.cuda.device(device):
            previous = torch.cuda.current_stream()
            try:
                return self._capture_on_current_device(body, device.type)
            except BaseException:
                # torch.cuda.graph leaves its capture stream current when the body fails (its exit
                # ends the capture, which raises, before it restores the stream): every later kernel
                # would queue there
                torch.cuda.set_stream(previous)
                raise

    def _capture_on_current_device(self, body: Any, device_type: str) -> tuple[Any, tuple[Any, ...]]:
        import torch

        # PyTorch's advice for graphs under autocast: no cast cache (a cached cast made while recording
        # would be freed behind the graph's back); the weights are bf16 already, so nothing is lost
        no_cast_cache = torch.autocast(
            device_type,
            dtype=torch.get_autocast_dtype(device_type),
            enabled=torch.is_autocast_enabled(device_type),
            cache_enabled=False,
        )
        with no_cast_cache:
            # warm up on a side stream (cuBLAS/cuDNN pick kernels and workspaces outside the graph):
            # the device's one, as every recording and the encoder's batches use (cuda_side_stream)
            side = cuda_side_stream(None)  # inside _capture's torch.cuda.device: the features' device
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a CUDA call from another thread (Slicer's) does not void this capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                outputs = body()
        return graph, outputs


def step_graphs_for(model: Any, capture: bool, compile_step: bool = False) -> StepGraphs:
    """The model's one :class:`StepGraphs` for a compiled or an eager step, shared by all its trackers (a
    session makes one per axis and per run; recording a graph costs about three steps, so they are
    recorded once per model)."""
    by_step = _SHARED.setdefault(model, {})
    graphs = by_step.get(bool(compile_step))
    # graphs that failed to record stay eager: asking again would only fail (and warn) again
    if graphs is None or (graphs.capture != bool(capture) and graphs.fallback_reason is None):
        graphs = StepGraphs(model, capture, compile_step=bool(compile_step))
        by_step[bool(compile_step)] = graphs
    return graphs


def default_capture(device: Any) -> bool:
    """Record graphs on CUDA devices only (MPS and CPU have no CUDA graphs)."""
    from .compute import device_type

    return device_type(device) == "cuda"
