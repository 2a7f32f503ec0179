"""Shared machinery of the benchmark suite (used by ``bench/conftest.py`` and every ``bench`` module).

- ``DEVICE`` / ``DTYPE``: ``"cuda"`` and bfloat16 when a GPU is there, else ``"cpu"`` and float32.
- :func:`measure_roofline`: the device's copy bandwidth (GB/s, a large device-to-device copy) and
  matrix rate (TFLOP/s, a large square matmul in ``DTYPE``), measured at the start of a session;
  the JSON gets the higher of that and a second measurement at its end (:func:`higher_roofline`),
  and every share is recomputed against it (:func:`rescale_shares`).
- :class:`Timer`: pytest-benchmark done right for a device: warm-up (and compilation) outside the
  timed region, a pool of input sets cycled call by call so that their total exceeds twice the
  last-level cache (L2 on a GPU), one device sync closing every round, rounds sized to a time
  budget (``benchmark.pedantic``), and ``extra_info`` with bytes moved and FLOPs (counted from
  shapes), achieved GB/s and TFLOP/s at the median time, and the fraction of the roofline
  ``max(GB/s / copy GB/s, TFLOP/s / matmul TFLOP/s)``.
- :func:`compiled`: ``torch.compile`` of a function or module, cached per (target, backend, mode).
- :func:`count_flops`: matmul/conv/attention FLOPs of one call, from shapes (``torch.utils.flop_counter``).
- :func:`environment`: device, driver / CUDA / torch / triton versions and date, for the report.

Environment: ``SALD_BENCH_QUICK=1`` (set by ``python -m bench.report --quick``) shrinks the time
budgets and round counts. Under ``--benchmark-disable`` (the CI smoke run) every case runs once
on tiny shapes, nothing is timed and ``torch.compile`` uses the ``aot_eager`` backend.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import itertools
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import torch

from bench._format import format_seconds, speedups  # noqa: F401  (the terminal summary uses them from here)

CUDA = torch.cuda.is_available()
# Triton's interpreter must be chosen before Triton is imported. Without a GPU it is switched on
# (the Triton benchmarks then run as a CPU smoke test under --benchmark-disable); they are timed on
# the CPU only when the user set TRITON_INTERPRET themselves (the interpreter's timings mean nothing).
TRITON_INTERPRET_FROM_USER = "TRITON_INTERPRET" in os.environ
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
QUICK = os.environ.get("SALD_BENCH_QUICK", "0") not in ("", "0")

# Per benchmark: seconds of timed rounds aimed at, and the bounds on the number of rounds.
BUDGET_S = {"cuda": 0.1 if QUICK else 0.4, "cpu": 0.5 if QUICK else 2.5}[DEVICE]
MIN_ROUNDS = {"cuda": 3 if QUICK else 10, "cpu": 1 if QUICK else 3}[DEVICE]
MAX_ROUNDS = 500 if CUDA else 100
# A pass over the pool longer than SLOW_PASS_S (a whole DDIM-50 sampling, a big training step)
# is stable with fewer rounds: at least MIN_SLOW_ROUNDS.
SLOW_PASS_S = {"cuda": 0.25, "cpu": 2.0}[DEVICE]
MIN_SLOW_ROUNDS = {"cuda": 2 if QUICK else 3, "cpu": 1 if QUICK else 2}[DEVICE]
MAX_POOL = 256  # input sets per pool at most

# (benchmark group, implementation) -> median seconds, for the terminal summary
RESULTS: dict[str, dict[str, float]] = {}


def sync() -> None:
    """Wait for the device (no-op on the CPU)."""
    if CUDA:
        torch.cuda.synchronize()


def is_smoke(config) -> bool:
    """True under ``--benchmark-disable``: run every case once, on tiny shapes."""
    return bool(config.getoption("benchmark_disable", default=False))


def compile_backend(config) -> str:
    """``torch.compile`` backend of the "compiled" implementations: inductor when timing, aot_eager in the smoke run."""
    return "aot_eager" if is_smoke(config) else "inductor"


def autocast():
    """The precision models run in: bf16 autocast with fp32 weights on CUDA (as ``train/`` does), fp32 on the CPU."""
    if CUDA:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ----------------------------------------------------------------------------- roofline

@dataclass(frozen=True)
class Roofline:
    """Measured ceilings: ``copy_gbps`` (bytes read + written per second / 1e9) and ``matmul_tflops`` in ``dtype``."""

    copy_gbps: float
    matmul_tflops: float
    dtype: str
    copy_mib: float
    matmul_n: int


MEASURED_ROOFLINE: list[Roofline] = []  # filled by measure_roofline, read when the JSON is written


def _median_seconds(fn: Callable[[], Any], reps: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_copy(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src)``: the copy that sets the roofline's bandwidth, and the copy baseline the
    benchmarks compare with (same op, preallocated destination, no allocation in the timing)."""
    return dst.copy_(src)


def measure_roofline(small: bool = False) -> Roofline:
    """Copy bandwidth and matmul rate of ``DEVICE`` in ``DTYPE`` (tiny problems when ``small``: smoke run)."""
    if small:
        copy_bytes, n, reps = 1 << 20, 64, 2
    elif CUDA:
        copy_bytes, n, reps = 1 << 30, 8192, 20
    else:
        copy_bytes, n, reps = 1 << 27, 2048, 3
    elem = torch.finfo(DTYPE).bits // 8
    src = torch.ones(copy_bytes // elem, device=DEVICE, dtype=DTYPE)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: device_copy(src, dst), reps)
    del src, dst
    a = torch.randn(n, n, device=DEVICE).to(DTYPE)
    b = torch.randn(n, n, device=DEVICE).to(DTYPE)
    mm_s = _median_seconds(lambda: a @ b, reps)
    roof = Roofline(copy_gbps=round(2 * copy_bytes / copy_s / 1e9, 1), matmul_tflops=round(2 * n**3 / mm_s / 1e12, 3),
                    dtype=str(DTYPE).replace("torch.", ""), copy_mib=copy_bytes / 2**20, matmul_n=n)
    MEASURED_ROOFLINE[:] = [roof]
    return roof


def higher_roofline(first: Roofline, second: Roofline) -> Roofline:
    """The higher copy bandwidth and the higher matmul rate of two measurements of the same sizes:
    the ceiling the device reached during a run (a share of a roofline measured in a slow minute
    can pass 100%)."""
    if (first.dtype, first.copy_mib, first.matmul_n) != (second.dtype, second.copy_mib, second.matmul_n):
        raise ValueError(f"rooflines of different sizes or dtypes cannot be combined: {first} and {second}")
    return replace(first, copy_gbps=max(first.copy_gbps, second.copy_gbps),
                   matmul_tflops=max(first.matmul_tflops, second.matmul_tflops))


def rescale_shares(benchmarks: list[dict[str, Any]], roof: Roofline) -> None:
    """Recompute every benchmark's ``roofline_pct`` (pytest-benchmark's JSON entries, in place) from
    its median time, bytes and FLOPs against ``roof``."""
    for entry in benchmarks:
        info = entry.get("extra_info", {})
        median, nbytes, flops = info.get("median_s"), info.get("bytes", 0), info.get("flops", 0)
        if median and (nbytes or flops):
            share = max(nbytes / median / 1e9 / roof.copy_gbps, flops / median / 1e12 / roof.matmul_tflops)
            info["roofline_pct"] = round(100 * share, 1)


# ----------------------------------------------------------------------------- inputs

def last_level_cache_bytes() -> int:
    """L2 of the GPU, or the CPU's last-level cache (sysfs; 32 MiB when unknown)."""
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        return int(getattr(props, "L2_cache_size", 50 << 20))
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return best or 32 << 20


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) tuple/list/dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def input_pool(make_set: Callable[[int], tuple], smoke: bool) -> list[tuple]:
    """Input sets ``make_set(seed)`` for seeds 0, 1, ...: enough that together they exceed twice the
    last-level cache (at most ``MAX_POOL``), so a small op cannot be timed on cache-resident data.
    Two sets in the smoke run (the rotation itself gets exercised)."""
    first = make_set(0)
    count = 2 if smoke else min(MAX_POOL, max(1, math.ceil(2 * last_level_cache_bytes() / max(1, tensor_bytes(first)))))
    return [first] + [make_set(seed) for seed in range(1, count)]


# ----------------------------------------------------------------------------- compile / FLOPs

_COMPILED: dict[tuple, Callable] = {}


def _raise_recompile_limits() -> None:
    """The suite compiles the same code (one op, one model class) for many shapes, modes and
    instances: past Dynamo's default limit of 8 it would silently run eager code instead."""
    import torch._dynamo.config as dynamo_config

    for name, value in (("recompile_limit", 256), ("cache_size_limit", 256),
                        ("accumulated_recompile_limit", 4096), ("accumulated_cache_size_limit", 4096)):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, value)


def compiled(target: Callable, backend: str, mode: str | None = None, dynamic: bool | None = False) -> Callable:
    """``torch.compile(target, backend=backend, mode=mode, dynamic=dynamic)``, one per (target, backend, mode)."""
    key = (target, backend, mode)
    if key not in _COMPILED:
        _raise_recompile_limits()
        options = {"mode": mode} if mode else {}
        _COMPILED[key] = torch.compile(target, backend=backend, dynamic=dynamic, **options)
    return _COMPILED[key]


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and any backward it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- timing

class Timer:
    """Times one benchmark: ``timer(step, pool, group=..., impl=..., nbytes=..., flops=..., **info)``.

    ``step(*pool[i])`` is one call of the thing measured (it need not sync). Warm-up: ``warmup``
    passes over the pool (give 2 where the first pass compiles, 3 for CUDA graphs), plus one more
    when ``warmup`` is 1 and the pass was short; the last pass sizes the rounds. Then
    ``benchmark.pedantic`` with ``iterations=len(pool)``: a round calls ``step`` once per input
    set, in turn, and syncs after the last; its time / len(pool) is one sample. Returns the last
    output of ``step``.
    """

    def __init__(self, benchmark, roofline: Roofline, smoke: bool) -> None:
        self.benchmark, self.roofline, self.smoke = benchmark, roofline, smoke

    def __call__(self, step: Callable, pool: Sequence[tuple], *, group: str, impl: str, nbytes: int = 0,
                 flops: int = 0, warmup: int = 1, **info: Any) -> Any:
        bench = self.benchmark
        bench.group = group
        bench.extra_info.update(impl=impl, device=DEVICE, bytes=int(nbytes), flops=int(flops), pool=len(pool), **info)
        k = len(pool)
        last: list[Any] = [None]
        if self.smoke:
            return bench.pedantic(step, args=pool[0], rounds=1, iterations=1)

        def one_pass() -> float:
            start = time.perf_counter()
            for args in pool:
                last[0] = step(*args)
            sync()
            return time.perf_counter() - start

        per_pass = one_pass()
        for _ in range(warmup - 1):
            per_pass = one_pass()
        if warmup == 1 and per_pass < 2.0:
            per_pass = one_pass()  # a better estimate of the call time, when it is cheap
        min_rounds = MIN_ROUNDS if per_pass < SLOW_PASS_S else MIN_SLOW_ROUNDS
        rounds = max(min_rounds, min(MAX_ROUNDS, int(BUDGET_S / max(per_pass, 1e-9))))
        counter = itertools.count()

        def call() -> None:
            i = next(counter) % k
            last[0] = step(*pool[i])
            if i == k - 1:
                sync()  # closes the round: every launched kernel is inside the timed region

        bench.pedantic(call, rounds=rounds, iterations=k, warmup_rounds=0)
        sync()
        self._record(group, impl, nbytes, flops)
        return last[0]

    def _record(self, group: str, impl: str, nbytes: int, flops: int) -> None:
        stats = getattr(getattr(self.benchmark, "stats", None), "stats", None)
        if stats is None or not stats.data:
            return
        median = stats.median
        gbps = nbytes / median / 1e9
        tflops = flops / median / 1e12
        share = max(gbps / self.roofline.copy_gbps, tflops / self.roofline.matmul_tflops)
        info = self.benchmark.extra_info
        info.update(median_s=median, rounds=len(stats.data))
        if nbytes:
            info["GB/s"] = round(gbps, 2)
        if flops:
            info["TFLOP/s"] = round(tflops, 4)
        if nbytes or flops:
            info["roofline_pct"] = round(100 * share, 1)
        RESULTS.setdefault(group, {})[impl] = median


# ----------------------------------------------------------------------------- environment

def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    """What the report prints about the run: device heading, versions, date, roofline."""
    if CUDA:
        name = torch.cuda.get_device_name(0)
        heading = name
    else:
        name = _cpu_name()
        heading = f"CPU: {name} ({os.cpu_count()} logical cores)"
    roof = MEASURED_ROOFLINE[0] if MEASURED_ROOFLINE else None
    return {
        "heading": heading,
        "device": DEVICE,
        "device_name": name,
        "dtype": str(DTYPE).replace("torch.", ""),
        "driver": _nvidia_driver() if CUDA else "n/a",
        "cuda": torch.version.cuda or "n/a",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": QUICK,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "roofline": asdict(roof) if roof else None,
    }
