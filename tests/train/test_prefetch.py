"""Off-policy prefetch (score_rl/train/prefetch.py): the batch sampled ahead reaches exactly its step, errors surface
in the caller's thread, a failing step waits for the sampling thread. Plain functions for the sampler: milliseconds."""

import threading
import time

import pytest

from score_rl.train.prefetch import Background, Prefetch


def _prefetch(threaded, sample=None):
    calls = []

    def default(step):
        calls.append(step)
        return [f"episode of step {step}"]

    return Prefetch(sample or default, threaded, threading.Event()), calls


@pytest.mark.parametrize("threaded", [False, True])
def test_a_prefetched_batch_goes_to_its_step_only(threaded):
    prefetch, calls = _prefetch(threaded)
    assert prefetch.take(0) is None
    prefetch.start(1)
    with prefetch.learning():
        assert prefetch.learners_busy.is_set()
    assert not prefetch.learners_busy.is_set(), "recovered workers may fetch weights once learning is done"
    prefetch.finish()
    assert calls == [1] and prefetch.ready[0] == 1
    assert prefetch.take(2) is None and prefetch.ready is None, "a batch for another step is dropped, never reused"
    prefetch.start(2)
    prefetch.finish()
    episodes, seconds = prefetch.take(2)
    assert episodes == ["episode of step 2"] and seconds >= 0


def test_in_process_the_batch_is_sampled_at_once_before_the_step_learns():
    order = []
    prefetch, _ = _prefetch(False, sample=lambda step: order.append("sample") or [])
    prefetch.start(1)
    order.append("learn")
    prefetch.finish()
    assert order == ["sample", "learn"]


def test_a_sampling_error_is_raised_in_the_callers_thread():
    def broken(step):
        raise ValueError("worker exploded")

    prefetch, _ = _prefetch(True, sample=broken)
    prefetch.start(1)
    with pytest.raises(ValueError, match="worker exploded"):
        prefetch.finish()


def test_an_error_of_the_step_waits_for_the_sampling_thread_first():
    done = threading.Event()

    def slow(step):
        time.sleep(0.2)
        done.set()
        return []

    prefetch, _ = _prefetch(True, sample=slow)
    prefetch.start(1)
    with pytest.raises(RuntimeError, match="shaping failed"):
        with prefetch.learning():
            raise RuntimeError("shaping failed")
    assert done.is_set(), "no thread is left driving the workers"


def test_a_restored_batch_keeps_its_unknown_rollout_time():
    prefetch, calls = _prefetch(False)
    prefetch.restore(5, ["restored"], None)
    assert prefetch.take(5) == (["restored"], None) and calls == []


def test_background_times_its_function():
    job = Background(lambda: time.sleep(0.05) or 7, threaded=True)
    assert job.result() == 7 and job.seconds >= 0.05
