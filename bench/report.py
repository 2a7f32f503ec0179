"""``python -m bench.report``: run the benchmark suite on this machine and write ``bench/RESULTS.md``.

    python -m bench.report                  # the whole suite (CUDA if there is a GPU, else the CPU)
    python -m bench.report --quick          # fewer rounds (SALD_BENCH_QUICK=1)
    python -m bench.report -k graph_conv    # a subset (pytest -k expression)
    python -m bench.report --out my.md --json raw.json -- -x   # after --: more pytest arguments

Runs ``pytest bench --benchmark-only --benchmark-json=FILE`` in this process, then writes one
section for this device into the results file: a section is headed by its device's name, and the
sections of other devices already in the file are kept as they are (only this device's section is
replaced). A section holds the device, driver / CUDA / torch / triton versions, the date, the
roofline the suite measured, a summary table (each group's fastest implementation), then a table
per benchmark group: median time, speed-up vs the eager reference and vs ``torch.compile`` of the
reference, achieved GB/s and TFLOP/s, and the share of the roofline; last, what was not measured
here and why (e.g. "Triton: needs a GPU" on a CPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "RESULTS.md"
PREAMBLE = ("# Benchmark results\n\n"
            "Written by `python -m bench.report` (see `bench/report.py`). One section per device; running the "
            "report replaces only the section of the device it runs on. Speed-ups are ratios of median times: "
            "\"vs eager\" against the reference path, \"vs torch.compile\" against `torch.compile` of the reference. "
            "Roofline share = max(achieved GB/s / copy GB/s, achieved TFLOP/s / matmul TFLOP/s), both ceilings "
            "measured by the suite on the device.\n\n")
IMPL_ORDER = ["reference", "compiled_reference", "triton", "extension", "fast", "compiled_fast",
              "compiled_fast_cudagraphs", "fast_cuda_graph", "aggregate", "aggregate_transpose", "copy"]
IGNORED_SKIPS = ("Skipping non-benchmark",)


class SkipCollector:
    """pytest plugin: why things were skipped (reason -> count), and the ids of failures."""

    def __init__(self) -> None:
        self.skips: dict[str, int] = {}
        self.failed: list[str] = []

    def _skip(self, report) -> None:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith(IGNORED_SKIPS):
            self.skips[reason] = self.skips.get(reason, 0) + 1

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and report.when in ("setup", "call"):
            self._skip(report)
        elif report.failed:
            self.failed.append(report.nodeid)

    def pytest_collectreport(self, report) -> None:
        if report.skipped:
            self._skip(report)
        elif report.failed:
            self.failed.append(report.nodeid)


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def _num(info: dict, key: str, fmt: str, unit: str = "") -> str:
    return format(info[key], fmt) + unit if key in info else "—"


def _groups(benchmarks: list[dict]) -> dict[str, list[dict]]:
    """group -> its benchmarks, in run order, implementations in IMPL_ORDER."""
    groups: dict[str, list[dict]] = {}
    for b in benchmarks:
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    rank = {impl: i for i, impl in enumerate(IMPL_ORDER)}
    for rows in groups.values():
        rows.sort(key=lambda b: rank.get(b["extra_info"].get("impl"), len(rank)))
    return groups


def _speedups(rows: list[dict]) -> dict[str, tuple[float | None, float | None]]:
    times = {b["extra_info"].get("impl", b["name"]): b["stats"]["median"] for b in rows}
    ref, comp = times.get("reference"), times.get("compiled_reference")
    return {impl: (ref / t if ref else None, comp / t if comp else None) for impl, t in times.items()}


def render_section(data: dict[str, Any], skips: dict[str, int], failed: list[str], command: str, wall_s: float) -> str:
    """The markdown section (starting with its ``## heading`` line) for one run's JSON."""
    env = data.get("sald_fast", {})
    groups = _groups(data.get("benchmarks", []))
    out = [f"## {env.get('heading', 'unknown device')}\n\n"]
    out.append(f"Measured {env.get('date', '?')} by `{command}` in {wall_s / 60:.1f} min"
               f"{' (quick: fewer rounds)' if env.get('quick') else ''}.\n\n")
    out.append("| device | driver | CUDA | torch | triton | Python | threads | bench dtype |\n|---|---|---|---|---|---|---|---|\n")
    out.append(f"| {env.get('device_name', '?')} | {env.get('driver', '?')} | {env.get('cuda', '?')} | {env.get('torch', '?')} "
               f"| {env.get('triton', '?')} | {env.get('python', '?')} | {env.get('threads', '?')} | {env.get('dtype', '?')} |\n\n")
    roof = env.get("roofline")
    if roof:
        out.append(f"Roofline (measured): copy {roof['copy_gbps']} GB/s ({roof['copy_mib']:.0f} MiB device copy), "
                   f"matmul {roof['matmul_tflops']} TFLOP/s ({roof['matmul_n']}^3, {roof['dtype']}).\n\n")
    if any(reason.startswith("Triton: needs a GPU") for reason in skips):
        out.append("**Triton: needs a GPU.** The Triton kernel benchmarks did not run on this machine.\n\n")
    if groups:
        out.append("**Summary** (each group's fastest implementation other than the eager reference):\n\n")
        out.append("| group | fastest | median | vs eager | vs torch.compile | roofline |\n|---|---|---|---|---|---|\n")
        for group, rows in groups.items():
            others = [b for b in rows if b["extra_info"].get("impl") != "reference"] or rows
            best = min(others, key=lambda b: b["stats"]["median"])
            impl = best["extra_info"].get("impl", best["name"])
            vs_eager, vs_comp = _speedups(rows)[impl]
            out.append(f"| {group} | {impl} | {_fmt_time(best['stats']['median'])} | {_fmt_ratio(vs_eager)} | "
                       f"{_fmt_ratio(vs_comp)} | {_num(best['extra_info'], 'roofline_pct', '.1f', '%')} |\n")
        out.append("\n")
    for group, rows in groups.items():
        info = rows[0]["extra_info"]
        details = [str(info[k]).replace("torch.", "") for k in ("shape", "dtype", "precision") if k in info]
        if info.get("pool", 1) > 1:
            details.append(f"{info['pool']} input sets cycled (> 2x last-level cache)")
        out.append(f"### {group}\n\n{'; '.join(map(str, details))}\n\n")
        out.append("| implementation | median | vs eager | vs torch.compile | GB/s | TFLOP/s | roofline | rounds |\n"
                   "|---|---|---|---|---|---|---|---|\n")
        ratios = _speedups(rows)
        for b in rows:
            e = b["extra_info"]
            impl = e.get("impl", b["name"])
            vs_eager, vs_comp = ratios[impl]
            out.append(f"| {impl} | {_fmt_time(b['stats']['median'])} | {_fmt_ratio(vs_eager)} | {_fmt_ratio(vs_comp)} | "
                       f"{_num(e, 'GB/s', '.1f')} | {_num(e, 'TFLOP/s', '.3f')} | {_num(e, 'roofline_pct', '.1f', '%')} | "
                       f"{b['stats'].get('rounds', '?')} |\n")
        out.append("\n")
    if skips:
        out.append("Not measured here:\n\n")
        out.extend(f"- {reason} ({n} case{'s' if n > 1 else ''})\n" for reason, n in skips.items())
        out.append("\n")
    if failed:
        out.append("Failed (see the pytest output): " + ", ".join(f"`{f}`" for f in failed) + "\n\n")
    return "".join(out)


def merge_sections(existing: str, section: str) -> str:
    """``existing`` (a results file, possibly empty) with ``section`` replacing the section of the
    same heading, or appended; other sections and the preamble are kept."""
    heading = section.splitlines()[0].strip()
    preamble: list[str] = []
    sections: list[list[str]] = []
    for line in existing.splitlines(keepends=True):
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            preamble.append(line)
    new = section if section.endswith("\n\n") else section.rstrip("\n") + "\n\n"
    parts, replaced = [], False
    for lines in sections:
        if lines[0].strip() == heading:
            parts.append(new)
            replaced = True
        else:
            text = "".join(lines)
            parts.append(text if text.endswith("\n\n") else text.rstrip("\n") + "\n\n")
    if not replaced:
        parts.append(new)
    head = "".join(preamble) if "".join(preamble).strip() else PREAMBLE
    if not head.endswith("\n\n"):
        head = head.rstrip("\n") + "\n\n"
    return (head + "".join(parts)).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds per benchmark (SALD_BENCH_QUICK=1)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression selecting benchmarks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--json", type=Path, help="also keep pytest-benchmark's raw JSON here")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)

    if args.quick:
        os.environ["SALD_BENCH_QUICK"] = "1"  # read by bench._common when pytest imports it
    import pytest

    with tempfile.TemporaryDirectory() as tmp:
        json_path = args.json or Path(tmp) / "bench.json"
        pytest_args = [str(BENCH_DIR), "--benchmark-only", f"--benchmark-json={json_path}", "-p", "no:cacheprovider"]
        if args.keyword:
            pytest_args += ["-k", args.keyword]
        pytest_args += args.pytest_args
        collector = SkipCollector()
        start = time.perf_counter()
        rc = int(pytest.main(pytest_args, plugins=[collector]))
        wall = time.perf_counter() - start
        if not json_path.exists():
            print(f"bench.report: no benchmark results (pytest exit code {rc}); {args.out} left unchanged", file=sys.stderr)
            return rc or 1
        data = json.loads(json_path.read_text())
    command = "python -m bench.report" + (" --quick" if args.quick else "") + (f" -k '{args.keyword}'" if args.keyword else "")
    section = render_section(data, collector.skips, collector.failed, command, wall)
    existing = args.out.read_text() if args.out.exists() else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(merge_sections(existing, section))
    print(f"bench.report: wrote the '{section.splitlines()[0][3:]}' section of {args.out} "
          f"({len(data.get('benchmarks', []))} benchmarks, {wall / 60:.1f} min)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
