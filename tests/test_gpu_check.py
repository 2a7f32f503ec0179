"""``python -m bench.gpu_check``: refuses a machine without a GPU (non-zero exit, says so), builds
the wheel download for the offline GPU machine, and its results section merges into RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_it_says_so_and_exits_non_zero():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU on this machine" in proc.stderr and "nothing was run" in proc.stderr


def _fake_wheel(directory: Path, name: str, requires: list[str]) -> None:
    """A wheel file holding only METADATA with ``requires`` as its Requires-Dist lines."""
    import zipfile

    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(directory / f"{name.replace('-', '_')}-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-1.0.dist-info/METADATA", meta)


def test_wheels_downloads_our_missing_requirements_and_their_dependencies_without_torch(tmp_path, monkeypatch):
    """``--wheels`` downloads in rounds until every declared dependency (for CPython 3.12 on Linux,
    no extras) is there: a fake pip writes wheels whose metadata declare more."""
    declared = {"diffusers": ["importlib_metadata", "torch>=2", "numpy", "extra-only; extra == 'test'",
                              "win-only; sys_platform == 'win32'"],
                "importlib-metadata": ["zipp>=3.20", 'lazy-importer>=0.1; python_version < "3.15"',
                                       'old-only; python_version < "3.8"'],
                "zipp": [], "lazy-importer": []}
    calls = []

    def fake_run(cmd, timeout, env=None):
        calls.append(cmd)
        directory = Path(cmd[cmd.index("-d") + 1])
        for req in cmd[cmd.index("-d") + 2:]:
            name = req.split(">")[0].split("=")[0].split("<")[0].split("!")[0].strip().lower().replace("_", "-")
            _fake_wheel(directory, name, declared.get(name, []))
        return 0, "", 0.0

    monkeypatch.setattr(gpu_check, "_run", fake_run)
    assert gpu_check.main(["--wheels", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w").is_dir() and len(calls) == 3  # ours, then importlib_metadata, then zipp + lazy-importer
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("-d") + 1] == str(tmp_path / "w")
    requested = [c for call in calls for c in call[call.index("-d") + 2:]]
    names = {c.split(">")[0].split("=")[0].split("<")[0].lower() for c in requested}
    assert {"diffusers", "rouge-score", "smplx", "setuptools", "importlib_metadata", "zipp", "lazy-importer"} <= names
    assert "zipp>=3.20" in requested and "lazy-importer>=0.1" in requested
    assert not names & {"torch", "triton", "transformers", "numpy"}  # on the GPU machine already
    assert not names & {"extra-only", "win-only", "old-only"}  # not for CPython 3.12 on Linux without extras
    assert len(requested) == len(set(requested))  # nothing asked for twice


def test_wheels_fails_when_pip_download_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "_run", lambda cmd, timeout, env=None: (1, "no such version", 0.0))
    assert gpu_check.main(["--wheels", str(tmp_path / "w")]) == 1


def test_every_requirement_not_on_the_gpu_machine_is_downloaded():
    """Every requirement of pyproject.toml not on the GPU machine is in the download list."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = deps["dependencies"] + deps["optional-dependencies"]["dev"]
    present = {p.lower() for p in gpu_check.PRESENT}
    for req in wanted:
        name = req.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if name not in present:
            assert any(r.lower().startswith(name) for r in gpu_check.WHEEL_REQUIREMENTS), name


def test_install_command_is_offline(tmp_path):
    cmd = gpu_check.install_command(tmp_path, ["diffusers>=0.30"])
    assert "--no-index" in cmd and cmd[cmd.index("--find-links") + 1] == str(tmp_path) and cmd[-1] == "diffusers>=0.30"


def test_gpu_tests_exist_and_section_merges(tmp_path):
    for t in gpu_check.GPU_TESTS:
        assert (REPO / t).is_file(), t
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nintro\n\n## CPU: X\n\nold cpu\n")
    gpu_check.write_section(results, "NVIDIA H100 (80 GiB), torch 2.11", [("tests", 0, "5 passed in 3s", 3.0),
                                                                        ("bench", 1, "1 failed", 9.0)], 12.0)
    text = results.read_text()
    assert "## CPU: X\n\nold cpu" in text and "## GPU check: NVIDIA H100" in text
    assert "| tests | ok: 5 passed in 3s | 3 s |" in text and "| bench | FAILED (exit 1): 1 failed | 9 s |" in text
    gpu_check.write_section(results, "NVIDIA H100 (80 GiB), torch 2.11", [("tests", 0, "6 passed", 1.0)], 1.0)
    assert results.read_text().count("## GPU check: NVIDIA H100") == 1


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir() or sys.platform != "linux", reason="reads /proc")
def test_a_stage_past_its_time_is_killed_with_its_children(tmp_path):
    """A timed-out stage's whole process group goes (a compiler a test started would otherwise
    keep running and hold the extension's build lock), and the exit code says it timed out."""
    import time

    pidfile = tmp_path / "pid"
    cmd = ["bash", "-c", f"sleep 120 & echo $! > {pidfile}; echo started; wait"]
    start = time.perf_counter()
    rc, out, _ = gpu_check._run(cmd, timeout=2)
    assert rc == 124 and "started" in out and "timed out after 2 s" in out
    assert time.perf_counter() - start < 30
    pid = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), "the stage's child survived the timeout"


def test_a_stage_output_that_is_not_utf8_is_read():
    rc, out, _ = gpu_check._run([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff\\n')"],
                                timeout=60)
    assert rc == 0 and "ok \ufffd" in out


def test_the_check_runs_every_stage_in_order_and_writes_after_each(tmp_path, monkeypatch):
    """With a GPU (faked here): one pytest process per test file, in GPU_TESTS order, each given what
    is left of --test-timeout; a failing file does not stop the next; the results section is written
    after every stage; files and report parts past their time limit are "not run" and make the
    exit code 1."""
    clock = {"now": 0.0}
    calls = []
    results = tmp_path / "RESULTS.md"

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock["now"]

    def fake_run(cmd, timeout, env=None):
        calls.append((cmd, timeout))
        if len(calls) > 1:  # the earlier stages are already in the results file
            assert results.read_text().count("\n| ") >= len(calls) - 1
        clock["now"] += 100.0
        failed = "test_triton_attention.py" in " ".join(cmd)
        return (1, "1 failed, 3 passed in 99s", 100.0) if failed else (0, "5 passed in 99s", 100.0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "_device_line", lambda: "FAKE GPU (80 GiB), torch 2.11")
    monkeypatch.setattr(gpu_check, "missing_modules", lambda: {})
    monkeypatch.setattr(gpu_check, "_run", fake_run)
    monkeypatch.setattr(gpu_check, "time", FakeTime)
    rc = gpu_check.main(["--results", str(results), "--test-timeout", "250", "--bench-timeout", "150"])
    assert rc == 1
    tests = [c for c, _ in calls if "pytest" in c]
    assert [c[c.index("pytest") + 1] for c in tests] == list(gpu_check.GPU_TESTS[:3])  # 250 s: three files started
    assert [t for _, t in calls[:3]] == [250.0, 150.0, 50.0]  # each starts with what is left
    assert all("-x" not in c for c in tests)
    reports = [c for c, _ in calls if "bench.report" in c]
    assert len(reports) == 2  # 150 s: two of the three report parts started
    assert "--heading-suffix" not in reports[0] and "--heading-suffix" in reports[1]
    assert calls[-1][1] == 50.0  # the second report part gets the rest of --bench-timeout
    text = results.read_text()
    assert text.count("## GPU check: FAKE GPU") == 1
    assert "| correctness: `cuda_graph_sampling` | ok: 5 passed in 99s | 100 s |" in text
    assert "| correctness: `triton_attention` | FAILED (exit 1): 1 failed, 3 passed in 99s | 100 s |" in text
    assert "| correctness: `triton_film_layernorm` | ok" in text
    assert "| correctness: `triton_compile` | not run: the tests' time limit (--test-timeout) was spent | 0 s |" in text
    assert "| backends | ok" in text
    assert "| quick benchmark report: the torch.compile implementations" in text and text.rstrip().endswith(
        "| not run: the benchmarks' time limit (--bench-timeout) was spent | 0 s |")
