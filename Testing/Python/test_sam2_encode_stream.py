"""The SAM 2 image encoder on a CUDA stream of its own (medsegany.models.sam2_encode_stream).

On the CPU the tracker's wiring is checked with a stand-in stream that records what it is asked: every
batch is encoded inside ``encoding``, and every frame's features are made ready (the main stream would
wait for its batch) before the tracker first reads them, once. On CUDA the masks are compared with the
tracker without the stream.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from medsegany.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    return build_sam2_model(CONFIG_512, None, device="cuda" if torch.cuda.is_available() else "cpu")


class RecordingStream:
    """Stands in for EncoderStream: records the batches and the frames made ready, runs nothing apart."""

    def __init__(self):
        self.log: list[tuple] = []
        self.pending: set[int] = set()
        self.batches = 0

    @contextlib.contextmanager
    def encoding(self, frame_indices):
        frames = [int(f) for f in frame_indices]
        self.log.append(("encode", frames))
        yield
        self.pending.update(frames)
        self.batches += 1

    def ready(self, frame_index, tensors):
        if frame_index in self.pending:
            self.pending.discard(frame_index)
            self.log.append(("ready", frame_index, len(list(tensors))))

    def forget(self):
        self.pending.clear()


def track(tracker, frames, key):
    tracker.set_frames(frames)
    tracker.precompute_features(batch_size=2)
    tracker.add_prompts(1, key, box_frame_xyxy=disc_box_xyxy(frames, key))
    logits = {}
    for direction in (+1, -1):
        for result in tracker.propagate(key, direction):
            logits[result.frame_index] = result.mask_logits_frame
    return logits


def test_off_on_a_cpu_whatever_is_asked(monkeypatch):
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_encode_stream import ENCODE_STREAM_VARIABLE
    from medsegany.models.sam2_tracker import Sam2Tracker

    cpu_model = build_sam2_model(CONFIG_512, None, device="cpu")
    assert Sam2Tracker(cpu_model, encode_stream=True).encoder_stream_batches is None
    monkeypatch.setenv(ENCODE_STREAM_VARIABLE, "1")
    assert Sam2Tracker(cpu_model).encoder_stream_batches is None


def test_every_frame_is_made_ready_before_it_is_read(model):
    from medsegany.models.sam2_tracker import Sam2Tracker

    frames = blob_frames(num_frames=5)
    expected = track(Sam2Tracker(model, precision="float32"), frames, key=2)
    tracker = Sam2Tracker(model, precision="float32")
    recording = RecordingStream()
    tracker._encoder_stream = recording
    got = track(tracker, frames, key=2)
    assert sorted(got) == sorted(expected) == list(range(5))
    for frame_index, logits in expected.items():
        np.testing.assert_array_equal(got[frame_index], logits)
    # 3 batches of 2 frames, in order; then each frame ready once, after its batch, with its 3 feature
    # levels and the 3 shared positional encodings
    encoded = [entry[1] for entry in recording.log if entry[0] == "encode"]
    assert encoded == [[0, 1], [2, 3], [4]] and tracker.encoder_stream_batches == 3
    ready = [entry for entry in recording.log if entry[0] == "ready"]
    assert sorted(entry[1] for entry in ready) == list(range(5))
    assert all(entry[2] == 6 for entry in ready)
    assert not recording.pending
    assert tracker.frames_encoded == 5  # the features were used, not encoded again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA stream needs a CUDA GPU")
def test_same_masks_with_the_encoder_on_its_own_stream(model):
    from medsegany.models.sam2_tracker import Sam2Tracker

    frames = blob_frames(num_frames=12)
    expected = track(Sam2Tracker(model, encode_stream=False), frames, key=5)
    tracker = Sam2Tracker(model, encode_stream=True)
    got = track(tracker, frames, key=5)
    assert tracker.encoder_stream_batches == 6
    for frame_index, logits in expected.items():
        np.testing.assert_array_equal(got[frame_index], logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA stream needs a CUDA GPU")
def test_a_failed_batch_still_marks_its_frames_and_trackers_share_the_stream():
    """Frames a batch cached before it failed are still waited for; one stream per device (cuBLAS keeps
    a workspace per stream for good)."""
    from medsegany.models.sam2_encode_stream import EncoderStream

    first, second = EncoderStream("cuda"), EncoderStream("cuda")
    assert first.stream is second.stream
    with pytest.raises(RuntimeError, match="batch failed"), first.encoding([3, 4]):
        raise RuntimeError("batch failed")
    assert set(first._pending) == {3, 4}
    assert torch.cuda.current_stream() != first.stream  # the side stream is left


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA stream needs a CUDA GPU")
def test_features_moved_to_host_memory_while_batches_run_give_the_same_masks(model):
    """Moving the features to host memory (the plan's offload, or after running out of memory) waits for
    batches still running on the encoder's stream, so no half-written features are copied."""
    from medsegany.models.sam2_tracker import Sam2Tracker

    frames = blob_frames(num_frames=12)
    expected = track(Sam2Tracker(model, encode_stream=False), frames, key=5)
    tracker = Sam2Tracker(model, encode_stream=True)
    tracker.set_frames(frames)
    tracker.precompute_features(batch_size=2)  # queued on the side stream; the host does not wait
    tracker.offload_features = True
    got = track(tracker, frames, key=5)
    assert tracker.offload_features
    for frame_index, logits in expected.items():
        np.testing.assert_array_equal(got[frame_index], logits)
