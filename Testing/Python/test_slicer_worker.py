"""The model worker thread, and the module's logic driven through it as the widget does (headless).

The widget's QTimer only calls :meth:`RunningAction.poll`; here the test thread plays the main thread
and polls until the action ends.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from denormal_testing import flushed_by_openmp_thread
from medsegany.errors import MedSegAnyError
from medsegany.slicer_worker import ModelWorker, wait_until


@pytest.fixture()
def worker():
    model_worker = ModelWorker()
    yield model_worker
    model_worker.shutdown()


def test_items_arrive_in_order_on_one_persistent_thread(worker):
    threads = []

    def job(context):
        threads.append(threading.current_thread())
        yield from range(4)

    first = worker.submit(job)
    assert [e.payload for e in first.wait() if e.kind == "item"] == [0, 1, 2, 3]
    assert first.final_kind == "done"
    worker.submit(job).wait()
    assert threads[0] is threads[1] is worker.thread and threads[0] is not threading.current_thread()


def test_errors_are_reported_to_the_main_thread(worker):
    def job(context):
        yield 1
        raise MedSegAnyError("broken model", "reinstall it")

    events = worker.submit(job).wait()
    assert [e.kind for e in events] == ["item", "error"]
    assert isinstance(events[-1].payload, MedSegAnyError)
    with pytest.raises(MedSegAnyError, match="broken model"):
        worker.run_sync(job)


def test_cancel_stops_between_items_and_closes_the_generator(worker):
    release, closed = threading.Event(), threading.Event()

    def job(context):
        try:
            for n in range(100):
                if n == 2:
                    release.wait(10)
                yield n
        finally:
            closed.set()

    handle = worker.submit(job)
    assert wait_until(lambda: len(handle._events.queue) >= 2)
    handle.cancel()
    release.set()
    events = handle.wait()
    items = [e.payload for e in handle.drain()] + [e.payload for e in events if e.kind == "item"]
    assert events[-1].kind == "cancelled" and closed.is_set()
    assert max(items) <= 2  # item 2 was being computed when cancel came; nothing after it


def test_one_job_at_a_time(worker):
    gate = threading.Event()
    handle = worker.submit(lambda context: iter([gate.wait(10)]))
    with pytest.raises(MedSegAnyError, match="still running"):
        worker.submit(lambda context: ())
    gate.set()
    handle.wait()
    assert worker.submit(lambda context: ()).wait()[-1].kind == "done"


def test_context_post_sends_progress(worker):
    def job(context):
        for fraction in (0.5, 1.0):
            context.post(("download", fraction))
        return ["loaded"]

    assert worker.run_sync(job) == [("download", 0.5), ("download", 1.0), "loaded"]


# ---------------------------------------------------------------------------------- logic through the worker

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")


@pytest.fixture()
def scene():
    from slicer_scene_testing import make_scene

    mrml_scene, segmentations_logic = make_scene()
    yield mrml_scene
    segmentations_logic.SetMRMLScene(None)
    mrml_scene.Clear(1)


def _setup(scene):
    from medsegany.slicer_logic import SlicerSegmentationLogic
    from slicer_scene_testing import (
        ThresholdModel,
        add_roi_on_slice,
        add_segmentation,
        add_volume_node,
        phantom_kji,
    )

    volume_node = add_volume_node(scene, phantom_kji())
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    roi = add_roi_on_slice(scene, (2, 2, 6), (19, 17, 6), np.eye(4))
    model = ThresholdModel()
    logic = SlicerSegmentationLogic(model=model)
    logic.set_target(volume_node, segmentation, target)
    return logic, model, volume_node, segmentation, target, roi


def test_model_runs_in_the_worker_and_mrml_writes_on_the_main_thread(scene, worker, monkeypatch):
    from medsegany.mrml_adapter import segment_mask_kji
    from medsegany.mrml_segment import SegmentWriter

    logic, model, volume_node, segmentation, target, roi = _setup(scene)
    writer_threads = set()
    original = SegmentWriter.write_slices

    def recording_write(self, *args, **kwargs):
        writer_threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegmentWriter, "write_slices", recording_write)
    running = logic.start(worker, logic.plan_prompt_action(roi))
    step = running.wait(timeout_s=30)

    assert model.threads == {worker.name}
    assert writer_threads == {threading.current_thread().name}
    assert running.action.axis == 2  # the box's slices are K slices: the panel's progress counts them
    mask = segment_mask_kji(segmentation, target, volume_node)
    np.testing.assert_array_equal(mask, logic.session.mask_kji(1))
    assert mask.any(axis=(1, 2)).sum() == step.slices_written >= 5
    assert logic.running is None and logic.can_undo


def test_cancel_through_the_worker_keeps_written_slices_as_one_undo_step(scene, worker):
    from medsegany.mrml_adapter import segment_mask_kji

    logic, model, volume_node, segmentation, target, roi = _setup(scene)
    model.gate, model.gate_after = threading.Event(), 3  # the 4th decoder call blocks
    running = logic.start(worker, logic.plan_prompt_action(roi))
    assert model.reached_gate.wait(30)
    assert not running.poll()  # slices so far are applied while the model is still busy
    with pytest.raises(MedSegAnyError, match="while"):
        logic.undo()  # refused during a run
    running.cancel()
    model.gate.set()
    step = running.wait(timeout_s=30)

    assert step.cancelled and 3 <= step.slices_written <= 4
    mask = segment_mask_kji(segmentation, target, volume_node)
    np.testing.assert_array_equal(mask, logic.session.mask_kji(1))  # segment == what the session holds
    assert mask.any(axis=(1, 2)).sum() == step.slices_written
    assert logic.undo() is step and logic.undo() is None
    assert not segment_mask_kji(segmentation, target, volume_node).any()


def test_a_model_error_in_the_worker_rolls_back_the_action(scene, worker):
    from medsegany.mrml_adapter import segment_mask_kji

    logic, model, volume_node, segmentation, target, roi = _setup(scene)
    calls = {"n": 0}
    original = model.predict

    def failing_predict(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MedSegAnyError("out of memory", "use a smaller model")
        return original(*args, **kwargs)

    model.predict = failing_predict
    running = logic.start(worker, logic.plan_prompt_action(roi))
    with pytest.raises(MedSegAnyError, match="out of memory"):
        running.wait(timeout_s=30)
    assert not segment_mask_kji(segmentation, target, volume_node).any()
    assert not logic.can_undo and logic.running is None


@pytest.mark.parametrize("deleted", ["during the run", "after its last slice"])
def test_a_target_deleted_by_the_user_ends_the_action_with_its_error(scene, worker, deleted):
    """The target segment deleted meanwhile: the action ends (before, taking back its writes raised, the
    action never finished, and the panel stayed "running"); the other segment, which the action may
    overwrite ("all"), gets back the voxels it took (deleted after the last slice, they were lost)."""
    from medsegany.mrml_adapter import segment_mask_kji
    from slicer_scene_testing import fill_segment

    logic, model, volume_node, segmentation, target, roi = _setup(scene)
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    logic.set_target(volume_node, segmentation, target, segment_editor_node=editor)
    other = segmentation.GetSegmentation().GetSegmentIdBySegmentName("other")
    other_kji = np.zeros(segment_mask_kji(segmentation, target, volume_node).shape, dtype=bool)
    other_kji[:, 5:14, 6:16] = True  # across the bright object on every slice
    fill_segment(segmentation, other, other_kji)
    if deleted == "during the run":
        model.gate, model.gate_after = threading.Event(), 2
    running = logic.start(worker, logic.plan_prompt_action(roi))
    if deleted == "during the run":
        assert model.reached_gate.wait(30)
        running.poll()
        segmentation.GetSegmentation().RemoveSegment(target)
        model.gate.set()
    else:  # every slice written, the end not yet handled
        assert running.handle._finished.wait(30)
        events = running.handle.drain()
        running.action.apply_all([event.payload for event in events if event.kind == "item"])
        for event in events:
            if event.kind != "item":
                running.handle._put(event.kind, event.payload)  # still to be polled
        assert not np.array_equal(segment_mask_kji(segmentation, other, volume_node), other_kji)
        segmentation.GetSegmentation().RemoveSegment(target)
    with pytest.raises(MedSegAnyError, match=r"deleted|no segment|does not exist"):
        running.wait(timeout_s=30)
    assert running.finished and logic.running is None
    np.testing.assert_array_equal(segment_mask_kji(segmentation, other, volume_node), other_kji)


def test_a_worker_made_after_a_model_was_loaded_flushes_denormals_in_its_openmp_threads(tuned_process):
    """A module reload makes a new worker thread: the process's tuning is done, and the new thread would
    run the model with IEEE denormals (slow on x86) while the tuning says they are flushed."""
    torch = pytest.importorskip("torch")
    if not tuned_process.flush_denormal:
        pytest.skip("this CPU cannot flush denormals")
    model_worker = ModelWorker()
    try:
        [flushed] = model_worker.run_sync(lambda context: [flushed_by_openmp_thread()], timeout_s=120)
    finally:
        model_worker.shutdown()
    assert flushed == [True] * torch.get_num_threads()
