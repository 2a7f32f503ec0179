"""pytest settings of the benchmark suite; the machinery lives in ``bench/_common.py``.

Importing ``bench._common`` first sets ``TRITON_INTERPRET=1`` when there is no GPU (unless the
user set it), before anything imports Triton. Torch's thread count is left at its default.

Fixtures: ``smoke`` (``--benchmark-disable``: each case once, tiny shapes), ``compile_backend``
(inductor, aot_eager in the smoke run), ``roofline`` (session: the device's copy bandwidth and
matmul rate, measured once, at the first benchmark), ``timer`` (:class:`bench._common.Timer`).
Hooks: the ``--benchmark-json`` file gets a ``sald_fast`` entry (device, versions, date,
roofline) for ``python -m bench.report``; the terminal summary lists each group's speed-ups.
"""

from __future__ import annotations

from bench import _common as common  # noqa: I001  (first: sets TRITON_INTERPRET before Triton loads)

import pytest

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # the suite needs pytest-benchmark (pip install -e ".[dev]")
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    # raised inside torch while compiling; says nothing about this suite
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(scope="session")
def smoke(pytestconfig) -> bool:
    return common.is_smoke(pytestconfig)


@pytest.fixture(scope="session")
def compile_backend(pytestconfig) -> str:
    return common.compile_backend(pytestconfig)


@pytest.fixture(scope="session")
def roofline(smoke) -> common.Roofline:
    return common.measure_roofline(small=smoke)


@pytest.fixture
def timer(benchmark, roofline, smoke) -> common.Timer:
    return common.Timer(benchmark, roofline, smoke)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    # the roofline again at the end of the run: the ceiling is the higher of the two measurements
    # (one taken in a slow minute put shares above 100%), and every share is recomputed against it
    if common.MEASURED_ROOFLINE and not common.is_smoke(config):
        start = common.MEASURED_ROOFLINE[0]
        roof = common.higher_roofline(start, common.measure_roofline())
        common.MEASURED_ROOFLINE[:] = [roof]
        common.rescale_shares(output_json.get("benchmarks", []), roof)
    output_json["sald_fast"] = common.environment()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not common.RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"speed-ups on {common.DEVICE} (median times; x = faster than eager reference / torch.compile of it):")
    for group, times in common.RESULTS.items():
        write(f"  {group}")
        for impl, (vs_eager, vs_compiled) in common.speedups(times).items():
            parts = [f"{impl:<26} {common.format_seconds(times[impl]):>10}"]
            if vs_eager is not None and impl != "reference":
                parts.append(f"x{vs_eager:.2f} vs eager")
            if vs_compiled is not None and impl != "compiled_reference":
                parts.append(f"x{vs_compiled:.2f} vs compile")
            write("    " + "  ".join(parts))
