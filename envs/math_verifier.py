"""math-verify in a process pool with a per-item wall-clock deadline enforced here (see envs/math.py)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Optional, Sequence, Tuple

from score_rl.envs.math_answers import strip_units

TIMEOUT = "timeout"

_MV_CONFIG = None


def _math_verify_config():
    global _MV_CONFIG
    if _MV_CONFIG is None:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig

        # units=False: units are stripped by strip_units (a whitelist); math-verify's own rule drops any trailing
        # \text{...}, which would accept hedges like "4 \text{ or 3}".
        _MV_CONFIG = [LatexExtractionConfig(
            boxed_match_priority=0,
            try_extract_without_anchor=False,
            normalization_config=NormalizationConfig(
                basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False,
            ),
        )]
    return _MV_CONFIG


def _mv_parse(answer: str):
    from math_verify import parse

    return parse("\\boxed{" + answer + "}", extraction_config=_math_verify_config(), fallback_mode="no_fallback",
                 extraction_mode="first_match", parsing_timeout=None)


def math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify's equivalence of two extracted answers (no timeout: call it in a pool worker, or trusted input)."""
    from math_verify import verify

    gold_parsed = _mv_parse(strip_units(gold))
    pred_parsed = _mv_parse(strip_units(pred))
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, allow_set_relation_comp=True))


def _worker_init(memory_mb: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills the pool
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: we enforce our own
    math_verify_equal("1", "1")  # import and warm up sympy before the first deadline starts


def _worker_ping() -> int:
    return os.getpid()


def _worker_verify(pred: str, gold: str) -> Tuple[str, str]:
    """("equal" | "unequal" | "error", detail); never raises (errors are results)."""
    try:
        return ("equal" if math_verify_equal(pred, gold) else "unequal"), ""
    except MemoryError:
        return "error", "out of memory"
    except BaseException as err:  # a verifier must not crash on model output
        return "error", f"{type(err).__name__}: {err}"[:200]


class VerifierPool:
    """Process pool running ``_worker_verify`` with a per-item wall-clock deadline.

    At most ``workers`` items are in flight, so an item's clock starts when a worker is free for it. An item past
    its deadline is a ``"timeout"``; its worker cannot be interrupted, so every worker is killed and the pool is
    rebuilt (the other in-flight items run again). If a worker dies, the items it may have held run again one at a
    time; one that kills its worker again is an ``"error"``.
    """

    def __init__(self, workers: int, timeout_s: float, memory_mb: int = 0, startup_timeout_s: float = 120.0,
                 func=None):
        self.workers, self.timeout_s, self.memory_mb = workers, timeout_s, memory_mb
        self.startup_timeout_s = startup_timeout_s
        self.func = func or _worker_verify  # a picklable (module-level) function (pred, gold) -> (status, detail)
        self._executor: Optional[ProcessPoolExecutor] = None
        self.restarts = 0  # pools killed after a timeout or a crash (for tests and logs)

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(self.memory_mb,))
        try:
            pings = [executor.submit(_worker_ping) for _ in range(self.workers)]
            done, not_done = wait(pings, timeout=self.startup_timeout_s)
            failure = next((f.exception() for f in done if f.exception() is not None), None)
        except BrokenProcessPool as err:
            not_done, failure = (), err
        if not_done or failure is not None:
            self._kill(executor)
            why = f"{type(failure).__name__}: {failure}" if failure is not None else \
                f"no answer within {self.startup_timeout_s:.0f} s"
            raise RuntimeError(
                f"the math verifier's worker processes did not start ({why}). They are started with "
                "multiprocessing 'spawn', which imports the main script again: a script that verifies math at "
                "import time must guard its entry point with `if __name__ == '__main__':`")
        self._executor = executor
        return executor

    @staticmethod
    def _kill(executor: ProcessPoolExecutor) -> None:
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            try:
                process.kill()
            except Exception:  # already gone
                pass
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)

    def _discard(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            self._kill(executor)
            self.restarts += 1

    def worker_pids(self) -> List[int]:
        """Process ids of the current workers (empty before the first run and after close)."""
        if self._executor is None:
            return []
        return sorted((getattr(self._executor, "_processes", None) or {}).keys())

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    # --- work ----------------------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
        """One ("equal" | "unequal" | "timeout" | "error", detail) per (pred, gold) job, in order."""
        results: List[Optional[Tuple[str, str]]] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        suspects: set = set()  # items in flight when a worker died: they run alone
        inflight: Dict[Any, Tuple[int, float]] = {}

        def requeue_all_inflight(broken: bool) -> None:
            for fut, (idx, _) in list(inflight.items()):
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    results[idx] = fut.result()
                elif broken and idx in suspects:
                    results[idx] = ("error", "the verifier process died")
                else:
                    if broken:
                        suspects.add(idx)
                    queue.appendleft(idx)
            inflight.clear()
            self._discard()

        while queue or inflight:
            executor = self._executor or self._start()
            broken = False
            while queue and len(inflight) < self.workers:
                if any(idx in suspects for idx, _ in inflight.values()):
                    break  # a suspect runs alone
                idx = queue[0]
                if idx in suspects and inflight:
                    break
                try:
                    fut = executor.submit(self.func, *jobs[idx])
                except BrokenProcessPool:
                    broken = True
                    break
                queue.popleft()
                inflight[fut] = (idx, time.monotonic() + self.timeout_s)
            if broken:
                requeue_all_inflight(broken=True)
                continue
            next_deadline = min(deadline for _, deadline in inflight.values())
            done, _ = wait(list(inflight), timeout=max(0.0, next_deadline - time.monotonic()),
                           return_when=FIRST_COMPLETED)
            for fut in done:
                if fut.exception() is not None:
                    if isinstance(fut.exception(), BrokenProcessPool):
                        broken = True
                        continue  # handled with the rest of the in-flight items below
                    idx, _ = inflight.pop(fut)
                    results[idx] = ("error", repr(fut.exception())[:200])
                else:
                    idx, _ = inflight.pop(fut)
                    results[idx] = fut.result()
            if broken:
                requeue_all_inflight(broken=True)
                continue
            now = time.monotonic()
            expired = [fut for fut, (_, deadline) in inflight.items() if deadline <= now and not fut.done()]
            if expired:
                for fut in expired:
                    idx, _ = inflight.pop(fut)
                    results[idx] = (TIMEOUT, f"no verdict within {self.timeout_s:g} s")
                requeue_all_inflight(broken=False)  # the hung worker cannot be interrupted: rebuild the pool
        return [r if r is not None else ("error", "no result") for r in results]


# ================================================================================================================
# Data loading
# ================================================================================================================
