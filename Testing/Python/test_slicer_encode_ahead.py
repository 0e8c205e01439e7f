"""The panel's encoding ahead (medsegany.slicer_encode_ahead) on a real worker thread and a headless MRML
scene: it starts from the slice in view, restarts from another slice, stops before an action, and the
action then encodes nothing again and writes the same segment as without it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)

from medsegany.slicer_encode_ahead import EncodeAhead  # noqa: E402
from medsegany.slicer_logic import SlicerSegmentationLogic, view_slice_index  # noqa: E402
from medsegany.slicer_worker import ModelWorker, wait_until  # noqa: E402
from slicer_scene_testing import (  # noqa: E402
    SHAPE_KJI,
    WORLD_IJK_TO_RAS,
    ThresholdModel,
    add_roi_on_slice,
    add_segmentation,
    add_volume_node,
    mrml_scene,
    phantom_kji,
    vtk_matrix,
    world_ras,
)
from test_slicer_logic import BOX_IJK, _mask, library_mask  # noqa: E402

SLICES = SHAPE_KJI[0]


class CountingModel(ThresholdModel):
    """Counts the frames it encodes; with ``hold`` set, each encoder call waits until it is released."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[int] = []
        self.hold: threading.Event | None = None
        self.calls_started = 0

    def embed_frames(self, frames):
        self.calls_started += 1
        if self.hold is not None:
            self.hold.wait(30)
        self.encoded.append(len(frames))
        return super().embed_frames(frames)


@pytest.fixture()
def scene():
    with mrml_scene() as new_scene:
        yield new_scene


@pytest.fixture()
def worker():
    model_worker = ModelWorker("test worker")
    yield model_worker
    model_worker.shutdown()


def _panel(scene, model):
    volume_node = add_volume_node(scene, phantom_kji())
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic = SlicerSegmentationLogic(model=model, intensity="auto")
    logic.set_target(volume_node, segmentation, target)
    return logic, volume_node, segmentation, target


def _finish(ahead: EncodeAhead) -> None:
    assert wait_until(lambda: ahead.poll() is None and not ahead.running, timeout_s=30)


def _held_in_first_call(scene, worker, axis: int, slice_index: int):
    """(model, logic, ahead): a job encoding from ``slice_index``, held inside its first encoder call."""
    model = CountingModel()
    logic, *_ = _panel(scene, model)
    model.hold = threading.Event()
    ahead = EncodeAhead(logic, worker)
    assert ahead.request(axis, slice_index)
    assert wait_until(lambda: model.calls_started == 1)
    return model, logic, ahead


def _box_gives_the_librarys_segment(scene, logic, model, volume_node, segmentation, target) -> None:
    """A box through the logic encodes nothing more and writes what the library alone gives."""
    logic.segment(add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4)))
    assert sum(model.encoded) == SLICES
    np.testing.assert_array_equal(
        _mask(segmentation, target, volume_node), library_mask(volume_node, [(BOX_IJK, (), ())])
    )


def test_slices_encoded_ahead_serve_the_next_action_which_writes_the_same_segment(scene, worker):
    model = CountingModel()
    logic, volume_node, segmentation, target = _panel(scene, model)
    ahead = EncodeAhead(logic, worker)

    assert ahead.request(2, 6)
    _finish(ahead)

    assert sum(model.encoded) == SLICES and ahead.progress.cached == SLICES
    assert ahead.progress.frames[-1] in (0, SLICES - 1) and ahead.error is None
    _box_gives_the_librarys_segment(scene, logic, model, volume_node, segmentation, target)


def test_stop_returns_once_the_encoder_call_ends_and_keeps_what_was_encoded(scene, worker):
    model, logic, ahead = _held_in_first_call(scene, worker, 2, 6)

    stopper = threading.Timer(0.2, model.hold.set)  # the encoder call ends 0.2 s after stop() is asked
    stopper.start()
    ahead.stop()

    assert not worker.busy and not ahead.running
    # one encoder call (of the memory plan's batch: 1 slice on a CPU for a model that states none, as
    # the estimator counted), nothing after it
    assert model.encoded == [1] and logic.session.cached_frames() == 1
    assert 6 in logic.session.embeddings(2)


def test_a_request_from_another_slice_restarts_from_there(scene, worker):
    model, logic, ahead = _held_in_first_call(scene, worker, 2, 0)
    assert ahead.request(2, 0)  # the same slice: the running job goes on
    assert ahead.pending is None

    assert ahead.request(2, 9)  # another slice: the job stops after its call, the new one waits
    assert ahead.pending == (2, 9)
    model.hold.set()
    _finish(ahead)

    cache = logic.session.embeddings(2)
    assert 0 in cache and 9 in cache and sum(model.encoded) == SLICES
    assert ahead.target == (2, 9)


def test_back_at_the_running_jobs_slice_while_another_waits_starts_from_the_slice_asked_last(scene, worker):
    model, _, ahead = _held_in_first_call(scene, worker, 2, 0)
    assert ahead.request(2, 9)  # the user scrolls away: the job from 0 is cancelled, 9 waits
    assert ahead.request(2, 0)  # and back to 0, where the prompt will be
    assert ahead.pending == (2, 0)
    model.hold.set()
    _finish(ahead)
    assert ahead.target == (2, 0) and sum(model.encoded) == SLICES


def test_nothing_starts_before_the_model_is_loaded_or_while_the_worker_is_busy(scene, worker):
    logic, *_ = _panel(scene, "litemedsam")  # a model id, not loaded yet
    ahead = EncodeAhead(logic, worker)
    assert not ahead.request(2, 3) and ahead.handle is None

    logic, *_ = _panel(scene, CountingModel())
    gate = threading.Event()
    worker.submit(lambda context: [gate.wait(30)], label="load model")
    ahead = EncodeAhead(logic, worker)
    assert not ahead.request(2, 3)
    gate.set()
    assert wait_until(lambda: not worker.busy)
    assert ahead.request(2, 3)
    _finish(ahead)


def test_a_view_gives_the_slice_through_its_centre(scene):
    volume_node = add_volume_node(scene, phantom_kji())
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    for k, expected in ((4.0, 4), (7.4, 7), (-3.0, 0), (40.0, SLICES - 1)):
        slice_to_ras = np.eye(4)
        slice_to_ras[:3, 3] = world_ras([(5.0, 6.0, k)])[0]
        node.GetSliceToRAS().DeepCopy(vtk_matrix(slice_to_ras))
        assert view_slice_index(node, volume_node, 2) == expected
    slice_to_ras[:3, 3] = WORLD_IJK_TO_RAS[:3, :3] @ [3.0, 9.0, 2.0] + WORLD_IJK_TO_RAS[:3, 3]
    node.GetSliceToRAS().DeepCopy(vtk_matrix(slice_to_ras))
    assert view_slice_index(node, volume_node, 0) == 3 and view_slice_index(node, volume_node, 1) == 9


def test_a_volume_is_enough_to_encode_ahead_and_the_later_target_reuses_it(scene, worker):
    model = CountingModel()
    volume_node = add_volume_node(scene, phantom_kji())
    logic = SlicerSegmentationLogic(model=model, intensity="auto")
    logic.set_volume(volume_node)  # no segmentation or segment chosen yet
    ahead = EncodeAhead(logic, worker)

    assert ahead.request(2, 6)
    _finish(ahead)

    assert sum(model.encoded) == SLICES
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    logic.set_target(volume_node, segmentation, target)
    _box_gives_the_librarys_segment(scene, logic, model, volume_node, segmentation, target)


def test_cancel_returns_at_once_and_the_job_ends_after_its_encoder_call(scene, worker):
    model, _, ahead = _held_in_first_call(scene, worker, 2, 6)
    ahead.request(2, 3)  # a restart waiting for the job to end...

    ahead.cancel()  # ...is dropped: the panel starts an action instead

    assert ahead.running and ahead.pending is None and worker.busy  # the encoder call is still in flight
    model.hold.set()
    assert wait_until(lambda: not ahead.running and not worker.busy)
    assert ahead.poll() is None and not ahead.running and model.calls_started == 1


def test_undo_and_redo_work_while_slices_are_encoded_ahead(scene, worker):
    model = CountingModel()
    logic, volume_node, segmentation, target = _panel(scene, model)
    logic.segment(add_roi_on_slice(scene, BOX_IJK[:3], BOX_IJK[3:], np.eye(4)))
    segmented = _mask(segmentation, target, volume_node)
    model.hold = threading.Event()
    ahead = EncodeAhead(logic, worker)
    assert ahead.request(1, 10)  # another axis: nothing of it is cached yet
    assert wait_until(lambda: model.calls_started > 0 and ahead.running)

    logic.undo()  # the panel allows it meanwhile: main thread, no model call
    assert not _mask(segmentation, target, volume_node).any()
    logic.redo()
    np.testing.assert_array_equal(_mask(segmentation, target, volume_node), segmented)

    model.hold.set()
    _finish(ahead)
    assert ahead.error is None and ahead.progress.encoded == ahead.progress.planned > 0


def test_a_failed_job_keeps_its_error_but_not_its_session_once_the_panel_moves_on(scene, worker):
    import gc
    import weakref

    class FailingModel(CountingModel):
        def embed_frames(self, frames):
            if self.calls_started == 1:  # the job's second encoder call
                raise RuntimeError("the encoder failed")
            return super().embed_frames(frames)

    logic, *_ = _panel(scene, FailingModel())
    ahead = EncodeAhead(logic, worker)
    assert ahead.request(2, 6)
    _finish(ahead)
    assert str(ahead.error) == "the encoder failed" and logic.session.cached_frames() == 1
    first_session = weakref.ref(logic.session)

    ahead.stop()
    logic.configure(intensity=(0.0, 100.0))  # another window: the next action gets a new session
    logic.volume()
    gc.collect()

    # the error's traceback held the old session (its volume copy and features) for as long as the panel
    # kept the error: the next session's memory plan counted that memory as taken
    assert logic.session is None and first_session() is None
    assert str(ahead.error) == "the encoder failed"
