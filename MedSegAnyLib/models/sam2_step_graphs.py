"""A SAM 2 tracking step replayed from CUDA graphs: the same kernels, launched without Python.

Why: on an H200, one tracking step of SAM 2.1 tiny at 512 px (memory attention, mask decoder, memory
encoder) keeps the GPU busy for 2.5 ms but takes 26-30 ms of wall time: 833 kernel launches, each a trip
through Python and PyTorch's dispatcher (``benchmarks/results/gpu_profile_eager_h200.json``). A CUDA
graph records those launches once and replays them with one call.

How the step is split (:meth:`StepGraphs.track`):

1. Meta's own ``_prepare_memory_conditioned_features`` picks the memories and object pointers for the frame
   and assembles them (its Python logic: which frames, their temporal encodings), eagerly; its call of
   the memory attention is intercepted to take the assembled ``memory`` and ``memory_pos`` instead;
2. the rest (memory attention, prompt encoder with no prompt, mask decoder, object pointer, memory
   encoder), which depends on the frame only through tensors, runs from a graph recorded for this
   memory length: the frame's features and the memory are copied into the graph's input buffers, the
   graph replays, and its outputs are cloned out of the graph's buffers (the next replay reuses them).

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

log = logging.getLogger(__name__)

# 16 lengths per direction while the memory fills (7 memory frames, 16 object pointers at most), a few
# more for corrections (a second conditioning frame); each graph holds only its input/output buffers.
DEFAULT_MAX_GRAPHS = 48
# model -> its StepGraphs (weak keys: graphs go with the model)
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _MemoryRecorder:
    """Stands in for ``memory_attention.forward``: keeps its inputs, returns the current features."""

    def __init__(self) -> None:
        self.inputs: dict[str, Any] = {}

    def __call__(self, curr: Any, memory: Any, curr_pos: Any = None, memory_pos: Any = None, **kwargs: Any):
        self.inputs = {"memory": memory, "memory_pos": memory_pos, **kwargs}
        # Meta reshapes the result (HW, B, C) -> (B, C, H, W) and returns it; nobody uses it here
        return curr[0] if isinstance(curr, list) else curr


def assemble_memory(
    model: Any,
    frame_index: int,
    vision_feats: list[Any],
    vision_pos_embeds: list[Any],
    feat_sizes: list[tuple[int, int]],
    memory_bank: dict[str, Any],
    num_frames: int,
    reverse: bool,
) -> tuple[Any, Any, int]:
    """(memory, memory_pos, num_obj_ptr_tokens) as Meta's tracking step feeds its memory attention."""
    attention = model.memory_attention
    recorder = _MemoryRecorder()
    shadowed = attention.__dict__.get("forward")  # e.g. a torch.compile'd forward set on the instance
    attention.forward = recorder
    try:
        model._prepare_memory_conditioned_features(
            frame_idx=frame_index,
            is_init_cond_frame=False,
            current_vision_feats=vision_feats[-1:],
            current_vision_pos_embeds=vision_pos_embeds[-1:],
            feat_sizes=feat_sizes[-1:],
            output_dict=memory_bank,
            num_frames=num_frames,
            track_in_reverse=reverse,
        )
    finally:
        if shadowed is None:
            del attention.forward
        else:
            attention.forward = shadowed
    inputs = recorder.inputs
    return inputs["memory"], inputs["memory_pos"], int(inputs.get("num_obj_ptr_tokens", 0))


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
    with ``point_inputs=None``, ``mask_inputs=None``, ``run_mem_encoder=True``).

    Returns (low-res mask logits, object pointer, object score logits, memory features, memory pos enc).
    """
    batch, channels = vision_feats[-1].size(1), model.hidden_dim
    height, width = feat_sizes[-1]
    pix_feat = model.memory_attention(
        curr=vision_feats[-1:],
        curr_pos=vision_pos_embeds[-1:],
        memory=memory,
        memory_pos=memory_pos,
        num_obj_ptr_tokens=num_obj_ptr_tokens,
    )
    pix_feat = pix_feat.permute(1, 2, 0).view(batch, channels, height, width)
    high_res_features = [
        x.permute(1, 2, 0).view(x.size(1), x.size(2), *size)
        for x, size in zip(vision_feats[:-1], feat_sizes[:-1])
    ]
    _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = model._forward_sam_heads(
        backbone_features=pix_feat,
        point_inputs=None,
        mask_inputs=None,
        high_res_features=high_res_features or None,
        multimask_output=model._use_multimask(False, None),
    )
    maskmem_features, maskmem_pos_enc = model._encode_new_memory(
        current_vision_feats=vision_feats,
        feat_sizes=feat_sizes,
        pred_masks_high_res=high_res_masks,
        object_score_logits=object_score_logits,
        is_mask_from_pts=False,
    )
    return low_res_masks, obj_ptr, object_score_logits, maskmem_features, maskmem_pos_enc


class _Graph:
    """One recorded step: input buffers, the graph, its output buffers."""

    def __init__(self, inputs: list[Any], graph: Any, outputs: tuple[Any, ...]) -> None:
        self.inputs = inputs
        self.graph = graph
        self.outputs = outputs


class StepGraphs:
    """Tracking steps of one SAM 2 model, replayed from CUDA graphs (one per memory length).

    ``capture=False`` runs the same split eagerly (CPU, MPS, or to compare). Use from one thread, inside
    the caller's inference-mode and autocast context (they are recorded into the graph: a graph recorded
    under bf16 autocast replays bf16 kernels).
    """

    def __init__(self, model: Any, capture: bool, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        self.model = model
        self.capture = bool(capture)
        self.max_graphs = int(max_graphs)
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool: Any = None
        self._side_stream: Any = None
        self.recorded = 0
        self.record_seconds = 0.0
        self.replays = 0
        self.fallback_reason: str | None = None

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
    ) -> tuple[Any, Any, Any, Any, list[Any]]:
        """One tracking step of an unprompted frame, as :func:`step_after_memory` returns it; the tensors
        are the caller's own (cloned out of the graph's buffers)."""
        memory, memory_pos, num_ptr_tokens = assemble_memory(
            self.model,
            frame_index,
            vision_feats,
            vision_pos_embeds,
            feat_sizes,
            memory_bank,
            num_frames,
            reverse,
        )
        if not self.capture:
            return step_after_memory(
                self.model, vision_feats, vision_pos_embeds, feat_sizes, memory, memory_pos, num_ptr_tokens
            )
        key = (
            tuple(memory.shape),
            memory.dtype,
            tuple(memory_pos.shape),
            num_ptr_tokens,
            tuple(tuple(t.shape) for t in vision_feats),
            tuple(t.dtype for t in vision_feats),
        )
        # only the lowest level's positional encoding enters the step (the memory attention's)
        tensors = [*vision_feats, vision_pos_embeds[-1], memory, memory_pos]
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._record(key, tensors, feat_sizes, len(vision_feats), num_ptr_tokens)
            if graph is None:  # recording failed: eager from now on
                return self.track(
                    frame_index, vision_feats, vision_pos_embeds, feat_sizes, memory_bank, num_frames, reverse
                )
        else:
            self._graphs.move_to_end(key)
        for buffer, tensor in zip(graph.inputs, tensors):
            if buffer.data_ptr() != tensor.data_ptr():
                buffer.copy_(tensor, non_blocking=True)
        graph.graph.replay()
        self.replays += 1
        masks, ptr, score, features, pos_enc = graph.outputs
        return masks.clone(), ptr.clone(), score.clone(), features.clone(), [p.clone() for p in pos_enc]

    def _record(
        self,
        key: tuple,
        tensors: list[Any],
        feat_sizes: list[tuple[int, int]],
        levels: int,
        num_ptr_tokens: int,
    ) -> _Graph | None:
        import torch

        start = time.perf_counter()
        inputs = [t.clone() for t in tensors]
        feats, pos = inputs[:levels], inputs[levels : levels + 1]
        memory, memory_pos = inputs[levels + 1], inputs[levels + 2]

        def body() -> tuple[Any, ...]:
            return step_after_memory(self.model, feats, pos, feat_sizes, memory, memory_pos, num_ptr_tokens)

        # PyTorch's advice for graphs under autocast: no cast cache (a cached cast made while recording
        # would be freed behind the graph's back); the weights are bf16 already, so nothing is lost
        device_type = feats[0].device.type
        no_cast_cache = torch.autocast(
            device_type,
            dtype=torch.get_autocast_dtype(device_type),
            enabled=torch.is_autocast_enabled(device_type),
            cache_enabled=False,
        )
        try:
            with no_cast_cache:
                # warm up on a side stream (cuBLAS/cuDNN pick kernels and workspaces outside the graph);
                # one stream for all recordings: cuBLAS keeps a workspace per stream for good, and a new
                # stream per graph left about 1 GB of them behind on an H200 (19 graphs; see the README)
                if self._side_stream is None:
                    self._side_stream = torch.cuda.Stream()
                side = self._side_stream
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        body()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    outputs = body()
            self._pool = graph.pool()
        except Exception as error:  # no graph support here: say so once, then run eagerly
            self.capture = False
            self.clear()
            self.fallback_reason = f"{type(error).__name__}: {str(error).strip()[:200]}"
            log.warning(
                "recording the tracking step as a CUDA graph failed (%s); running eagerly",
                self.fallback_reason,
            )
            return None
        recorded = _Graph(inputs, graph, (*outputs[:4], list(outputs[4])))
        self._graphs[key] = recorded
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        self.recorded += 1
        self.record_seconds += time.perf_counter() - start
        return recorded


def step_graphs_for(model: Any, capture: bool) -> StepGraphs:
    """The model's one :class:`StepGraphs`, shared by all its trackers (a session makes one per axis and
    per run; recording a graph costs about three steps, so they are recorded once per model)."""
    graphs = _SHARED.get(model)
    # graphs that failed to record stay eager: asking again would only fail (and warn) again
    if graphs is None or (graphs.capture != bool(capture) and graphs.fallback_reason is None):
        graphs = StepGraphs(model, capture)
        _SHARED[model] = graphs
    return graphs


def default_capture(device: Any) -> bool:
    """Record graphs on CUDA devices only (MPS and CPU have no CUDA graphs)."""
    from .compute import device_type

    return device_type(device) == "cuda"
