"""Shared helpers of odeplug's benchmark scripts (``bench_*.py``, run by hand, never
collected by pytest).

Importing this module pins every thread pool to one thread (BLAS, OpenMP, XLA): it sets
the environment variables, so import it before NumPy, torch or JAX. Then:

* :func:`setup_torch`, :func:`setup_jax`: one thread, float64;
* :func:`mlp_params`, :func:`initial_state`: the benchmark problem, from one seed;
* :func:`measure`: timeit-style medians, several functions interleaved (ABAB...),
  and ratios of paired samples (:func:`paired_ratio`);
* :func:`peak_memory`: peak memory of one call (tracemalloc, malloc or resident size);
* :func:`reset_peak_rss`, :func:`current_rss`, :func:`peak_rss`: resident memory;
* :func:`write_section`: a markdown section of ``docs/benchmarks.md`` between markers.
"""

from __future__ import annotations

import os

# Before NumPy, torch and JAX are imported (their pools are sized at import).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"
_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if _XLA not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA).strip()

import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "benchmarks.md"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

HIDDEN = 64
OMEGA = 4.0  # angular frequency of the field's linearisation (sets the number of steps)
RTOL, ATOL = 1e-6, 1e-8
SEED = 0


# ------------------------------------------------------------------------ engines


def setup_torch():
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass
    return torch


def setup_jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


# ------------------------------------------------------------------------ problem


def mlp_params(dim: int, hidden: int = HIDDEN, omega: float = OMEGA,
               seed: int = SEED) -> dict[str, np.ndarray]:
    """Weights of the field ``W2 tanh(W1 y + b1) + b2`` (float64, one seed).

    ``W2 = omega (D/H) S W1^T`` with ``S`` skew-symmetric and ``b2 = W2 v``: the field is
    ``omega (D/H) S grad V(y)`` with ``V(y) = sum(logcosh(W1 y + b1)) + (W1^T v) . y``,
    a Hamiltonian flow. ``V`` is conserved and grows without bound (``|v| < 1``), so every
    trajectory stays bounded and keeps oscillating, near the origin at about ``omega``
    rad per unit time: the number of steps grows in proportion to ``t1``.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, dim)) / np.sqrt(dim)
    b1 = 0.5 * rng.standard_normal(hidden)
    if dim == 2:
        skew = np.array([[0.0, -1.0], [1.0, 0.0]])
    else:
        a = rng.standard_normal((dim, dim))
        skew = (a - a.T) / np.sqrt(2 * dim)
    w2 = omega * (dim / hidden) * skew @ w1.T
    v = 0.5 * np.clip(rng.standard_normal(hidden), -1.5, 1.5) / 1.5
    b2 = w2 @ v
    return {"W1": w1, "b1": b1, "W2": w2, "b2": b2}


def initial_state(batch: int, dim: int, seed: int = SEED + 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, dim))


def numpy_field(t, y, p):
    """The field on NumPy arrays, ``y`` of shape ``(batch, D)``."""
    return np.tanh(y @ p["W1"].T + p["b1"]) @ p["W2"].T + p["b2"]


# ------------------------------------------------------------------------- timing

# CPU time of this process (every thread): on a machine shared with other work it does
# not count the time this process waits for a core, which wall time does. Every engine is
# pinned to one thread, so on an idle machine the two agree. ``use_wall_clock()`` switches.
CLOCK: Callable[[], float] = time.process_time


def use_wall_clock() -> None:
    global CLOCK
    CLOCK = time.perf_counter


def _autorange(fn: Callable[[], object], min_time: float, clock: Callable[[], float]) -> int:
    """Calls per sample so that a sample lasts at least ``min_time`` seconds."""
    number = 1
    while True:
        start = clock()
        for _ in range(number):
            fn()
        elapsed = clock() - start
        if elapsed >= min_time or number >= 10_000:
            return number
        number = max(number * 2, int(number * 1.2 * min_time / max(elapsed, 1e-9)))


class Timings(dict):
    """Median seconds per call of each function (``timings[name]``), with the samples.

    ``samples[name][i]`` is the ``i``-th round's time of ``name``; one round times every
    function once, back to back.
    """

    def __init__(self, samples: dict[str, list[float]]):
        super().__init__({name: statistics.median(values) for name, values in samples.items()})
        self.samples = samples

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of ``time(a) / time(b)`` within a round.

        On a shared machine the speed of the whole machine drifts by 10-20% over
        seconds; both sides of one round see the same drift, so the ratio of paired
        samples is far steadier than the ratio of the two medians.
        """
        return paired_ratio(self.samples[a], self.samples[b])


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of ``a[i] / b[i]``: the ratio of two interleaved series of timings."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def measure(fns: dict[str, Callable[[], object]], repeats: int = 7,
            min_time: float = 0.05, warmup: int = 1,
            clock: Callable[[], float] | None = None,
            budget: float | None = None) -> Timings:
    """Median seconds per call of each function, and the paired samples.

    timeit-style: warm-up calls, then a number of calls per sample chosen so a sample
    lasts ``min_time``; ``repeats`` rounds of one sample of each function, interleaved
    (A B, then B A, then A B...) so that the noise of a shared machine hits every
    function alike; :meth:`Timings.ratio` compares two functions round by round.
    ``clock`` defaults to :data:`CLOCK`. ``budget``: at most about that many seconds of
    samples (fewer repeats, but at least 5, for slow functions).
    """
    clock = CLOCK if clock is None else clock
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    numbers = {name: _autorange(fn, min_time, clock) for name, fn in fns.items()}
    if budget is not None:
        start = clock()
        for name, fn in fns.items():
            for _ in range(numbers[name]):
                fn()
        round_time = clock() - start  # one sample of each function
        repeats = max(5, min(repeats, int(budget / max(round_time, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        for name in list(fns) if round_ % 2 == 0 else list(fns)[::-1]:
            fn, number = fns[name], numbers[name]
            start = clock()
            for _ in range(number):
                fn()
            samples[name].append((clock() - start) / number)
    return Timings(samples)


# ------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def trim_heap() -> bool:
    """Give the C allocator's free memory back to the kernel (glibc ``malloc_trim(0)``).

    glibc keeps freed memory for reuse: after a warm-up call (or a compilation) the heap
    holds pages that a measured call reuses without raising the resident size, which
    hides its peak. Trimmed first, the peak resident size sees the call's memory.
    False off glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident size of this process (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def current_rss() -> int:
    """Resident bytes now."""
    kib = _status_kib("VmRSS")
    return 1024 * kib if kib is not None else peak_rss()


def peak_rss() -> int:
    """Peak resident bytes since the start or since :func:`reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * kib


class MallocSampler:
    """Bytes in use by the C allocator (glibc ``mallinfo2``: ``uordblks + hblkhd``), and
    their peak over the calls of :meth:`sample` since :meth:`start`.

    torch's CPU tensors (and NumPy's arrays) live in ``malloc``'d memory, so this counts
    every tensor byte, exactly, without the page granularity and the free memory the
    allocator keeps that blur the resident size. It sees the peak only where it is
    sampled: call :meth:`sample` where the memory is highest (at each evaluation of the
    vector field, say). ``available`` is False off glibc (< 2.33).
    """

    class _Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    def __init__(self):
        try:
            libc = ctypes.CDLL("libc.so.6")
            self._mallinfo2 = libc.mallinfo2
            self._mallinfo2.restype = self._Info
            self.available = True
        except (OSError, AttributeError):
            self.available = False
        self.start()

    def in_use(self) -> int:
        if not self.available:
            return 0
        info = self._mallinfo2()
        return info.uordblks + info.hblkhd

    def start(self) -> None:
        self.base = self.peak = self.in_use()
        self.samples = 0

    def sample(self, *_: Any) -> None:
        self.samples += 1
        value = self.in_use()
        if value > self.peak:
            self.peak = value


def peak_memory(engine: str, fn: Callable[[], Any], method: str | None = None,
                sampler: MallocSampler | None = None) -> dict:
    """Peak memory of one call of ``fn`` above what the process held before it.

    ``method``:

    * ``"tracemalloc"`` (default for the reference engine): NumPy reports its array
      buffers to tracemalloc, so the peak is exact and free of allocator noise;
    * ``"malloc"``: the peak of ``sampler`` (a :class:`MallocSampler` that the caller
      samples during ``fn``, e.g. from a forward hook of a torch module) above its value
      before the call;
    * ``"rss"`` (default for torch and JAX, whose buffers tracemalloc does not see): the
      kernel's peak resident size, reset just before the call (after :func:`trim_heap`),
      minus the resident size then. Coarse (pages, memory the allocator keeps): good
      for tens of MiB.

    The peak resident size is also returned (``rss_bytes``) with ``"malloc"`` and
    ``"rss"``. Run it in a fresh process after a small warm-up call, so that imports,
    lazy initialisation and compilation are not counted.

    Returns ``{"result", "peak_bytes", "peak_mib", "method", "rss_bytes"}``.
    """
    if method is None:
        method = "tracemalloc" if engine == "reference" else "rss"
    gc.collect()
    rss = None
    if method == "tracemalloc":
        tracemalloc.start()
        try:
            result = fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        label = "tracemalloc peak"
    elif method in ("rss", "malloc"):
        trim_heap()
        exact = reset_peak_rss()
        before = current_rss()
        if method == "malloc":
            if sampler is None or not sampler.available:
                raise ValueError("method 'malloc' needs an available MallocSampler")
            sampler.start()
        result = fn()
        rss = max(0, peak_rss() - before)
        if method == "malloc":
            sampler.sample()
            peak = sampler.peak - sampler.base
            label = "malloc in use (mallinfo2), peak of samples"
        else:
            peak = rss
            label = "peak RSS - RSS before" + ("" if exact else " (ru_maxrss: not reset)")
    else:
        raise ValueError(f"unknown method {method!r}")
    return {"result": result, "peak_bytes": peak, "peak_mib": peak / 2**20, "method": label,
            "rss_bytes": rss}


# ----------------------------------------------------------------------- reporting


VERSIONED = ("numpy", "scipy", "autograd", "torch", "torchdiffeq", "jax", "jaxlib",
             "diffrax", "equinox")


def environment() -> str:
    """Date, machine and library versions, as a markdown paragraph."""
    versions = []
    for name in VERSIONED:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Run {now} on `{platform.platform()}` ({platform.machine()}, "
        f"{platform.processor() or 'unknown processor'}), {os.cpu_count()} CPUs "
        f"({usable} usable), Python {platform.python_version()}; every engine pinned to "
        f"one thread. Versions: {', '.join(versions)}."
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def write_section(name: str, body: str, path: Path = DOCS) -> Path:
    """Write ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` of the
    markdown file, creating it if missing and leaving the other sections alone."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nWritten by the scripts in `tests/benchmarks/` (run by hand, not "
        "part of the test suite). Each script replaces only its own section.\n"
    )
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def fmt_ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_mb(n_bytes: float | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:.2f}"
