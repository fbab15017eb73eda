"""What every harness shares: the contract check (allowed errors, per-example deadline, memory bound) and the
time budget.

A harness input *fails* when the target raises anything but its documented error types, runs past
``DEADLINE_S`` (a hang: SIGALRM interrupts it), or its traced allocations peak more than ``MEMORY_BOUND``
bytes above where they started (``tracemalloc`` sees Python and numpy buffers).

Budget: ``FTEDGE_FUZZ_SECONDS`` unset runs each target once, derandomized, with a fixed number of examples
(about 60 s for all targets in CI). Set, it runs every target for that many seconds divided among the
targets, in rounds of freshly seeded examples (local deep fuzzing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy

CORPUS = Path(__file__).resolve().parent / "corpus"
DEADLINE_S = float(os.environ.get("FTEDGE_FUZZ_DEADLINE", "20"))
MEMORY_BOUND = 64 * 2**20
TARGETS = tuple(t for t in ("wav", "bundle", "deploy", "commands", "collector", "http", "detect_yaml",
                           "detect_labels", "detect_coco", "calibration")
                if (Path(__file__).parent / f"{t}.py").exists())


# Set by the corpus replay: a known bug then fails (strict xfail documents it); random runs skip known bugs.
STRICT_KNOWN = False
_SOURCE_ROOTS = tuple(str(Path(__file__).resolve().parents[2] / d) for d in ("runtime", "device_agent", "fleet",
                                                                              "src", "export"))


def signature(exc: BaseException) -> str:
    """``ExcType@file.py:function`` of the innermost frame in ftedge's own code (where the bug is)."""
    where, tb = "?", exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith(_SOURCE_ROOTS):
            where = f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}:{code.co_name}"
        tb = tb.tb_next
    return f"{type(exc).__name__}@{where}"


class Hang(BaseException):
    """Raised by SIGALRM inside an example that ran past DEADLINE_S (BaseException: no target catches it)."""


class ContractViolation(AssertionError):
    """The target broke its contract on one input (escaped error, hang, memory bomb)."""


@contextlib.contextmanager
def guarded(what: str, allowed: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Run one example: allowed errors are swallowed, anything else becomes a ContractViolation."""
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"{what}: still running after {DEADLINE_S:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        yield
    except allowed:
        pass
    except Hang as exc:
        raise ContractViolation(f"hang: {exc}") from None
    except ContractViolation:
        raise
    except BaseException as exc:  # noqa: BLE001 - that is the point
        sig = signature(exc)
        from tests.fuzz.known import KNOWN

        if sig in KNOWN and not STRICT_KNOWN:
            return  # a reported bug owned elsewhere: keep looking for new ones
        raise ContractViolation(f"{what}: undocumented {sig}: {str(exc)[:300]}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        peak = tracemalloc.get_traced_memory()[1]
        if started:
            tracemalloc.stop()
    grew = peak - base
    if grew > MEMORY_BOUND:
        raise ContractViolation(f"{what}: allocated {grew / 2**20:.0f} MiB (bound {MEMORY_BOUND / 2**20:.0f} MiB)")


def corpus(target: str) -> list[Path]:
    """The saved seed inputs of a target (every file under corpus/<target>/ except README*)."""
    d = CORPUS / target
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(("README", ".")))


def fuzz_seconds() -> float | None:
    raw = os.environ.get("FTEDGE_FUZZ_SECONDS")
    return float(raw) if raw else None


def run_budgeted(check: Callable[[bytes], None], strategy: SearchStrategy[bytes], ci_examples: int) -> int:
    """Fuzz ``check`` with ``strategy``: once derandomized (CI), or in fresh random rounds for the deep budget.

    Returns the number of rounds run.
    """
    common = dict(deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])

    def one_round(**kw: object) -> None:
        @settings(**common, **kw)
        @given(strategy)
        def fuzz(data: bytes) -> None:
            check(data)
        fuzz()

    total = fuzz_seconds()
    if total is None:
        one_round(max_examples=ci_examples, derandomize=True)
        return 1
    until, rounds = time.monotonic() + total / len(TARGETS), 0
    while time.monotonic() < until:
        one_round(max_examples=max(ci_examples, 200), derandomize=False)
        rounds += 1
    return rounds


def workdir(target: str) -> Path:
    """A scratch folder for one harness, removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=f"ftedge-fuzz-{target}-"))
    atexit.register(shutil.rmtree, d, True)
    return d
