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
