"""bench.report: the summary's "fastest" (eager included, baselines out) and the README's
generated benchmark section (it equals what bench.report makes from bench/RESULTS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._format import fastest, format_seconds, parse_seconds
from bench.report import README_BEGIN, README_END, readme_block, resummarize, summary_table, update_readme

ROOT = Path(__file__).resolve().parent.parent

RESULTS = """# Benchmark results

## CPU: test machine

Measured 2026-01-01 by `python -m bench.report` in 1.0 min.

Roofline (measured): copy 10.0 GB/s (128 MiB device copy), matmul 0.1 TFLOP/s (2048^3, float32).

**Summary** (stale):

| group | fastest | median | vs eager | vs torch.compile | roofline |
|---|---|---|---|---|---|
| op forward | compiled_reference | 2.00 ms | 0.50x | 1.00x | 5.0% |

### op forward

shape

| implementation | median | vs eager | vs torch.compile | GB/s | TFLOP/s | roofline | rounds |
|---|---|---|---|---|---|---|---|
| reference | 1.00 ms | 1.00x | 2.00x | 1.0 | — | 10.0% | 9 |
| compiled_reference | 2.00 ms | 0.50x | 1.00x | 0.5 | — | 5.0% | 9 |

### agg vs copy

shape

| implementation | median | vs eager | vs torch.compile | GB/s | TFLOP/s | roofline | rounds |
|---|---|---|---|---|---|---|---|
| aggregate | 3.00 ms | — | — | 1.0 | — | 10.0% | 9 |
| copy | 1.50 ms | — | — | 2.0 | — | 20.0% | 9 |
"""


def test_fastest_includes_eager_and_skips_baselines():
    assert fastest({"reference": 1.0, "compiled_reference": 2.0, "extension": 1.5}) == "reference"
    assert fastest({"reference": 1.0, "extension": 0.5}) == "extension"
    assert fastest({"aggregate": 3.0, "copy": 1.0}) == "aggregate"
    assert fastest({"copy": 1.0}) == "copy"


def test_seconds_round_trip():
    for s in (2.5, 0.01234, 3.2e-5):
        assert parse_seconds(format_seconds(s)) == pytest.approx(s, rel=1e-2)
    with pytest.raises(ValueError, match="not a time"):
        parse_seconds("fast")


def test_summary_and_readme_block_from_results():
    text = resummarize(RESULTS)
    assert "| op forward | reference | 1.00 ms | 1.00x | 2.00x | 10.0% |" in text
    assert "| agg vs copy | aggregate | 3.00 ms |" in text
    assert "(stale)" not in text and "compiled_reference | 2.00 ms | 0.50x" in text  # the group table stays
    block = readme_block(text)
    assert block.startswith(README_BEGIN) and block.endswith(README_END)
    assert "**CPU: test machine**. Measured 2026-01-01" in block and "copy 10.0 GB/s" in block
    assert summary_table({"g": {"reference": (1.0, "1%"), "fast": (2.0, "2%")}}).endswith("| g | reference | 1.00 s | 1.00x | — | 1% |\n")


def test_update_readme_replaces_only_the_marked_section():
    readme = f"# title\n\nbefore\n\n{README_BEGIN}\nold figures\n{README_END}\n\nafter\n"
    out = update_readme(readme, f"{README_BEGIN}\nnew\n{README_END}")
    assert out == f"# title\n\nbefore\n\n{README_BEGIN}\nnew\n{README_END}\n\nafter\n"
    with pytest.raises(ValueError, match="README.md has no generated benchmark section"):
        update_readme("# no markers\n", "x")


def test_readme_figures_are_generated_from_results():
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    begin, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    assert readme[begin:end] == readme_block(results), "run: python -m bench.report --readme-only"
    assert resummarize(results) == results, "run: python -m bench.report --readme-only"


def test_the_roofline_is_the_higher_of_two_measurements_and_shares_follow_it():
    from bench._common import Roofline, higher_roofline, rescale_shares

    start = Roofline(copy_gbps=20.0, matmul_tflops=0.1, dtype="float32", copy_mib=128, matmul_n=2048)
    end = Roofline(copy_gbps=10.0, matmul_tflops=0.2, dtype="float32", copy_mib=128, matmul_n=2048)
    roof = higher_roofline(start, end)
    assert (roof.copy_gbps, roof.matmul_tflops) == (20.0, 0.2)
    with pytest.raises(ValueError, match="different sizes"):
        higher_roofline(start, Roofline(20.0, 0.1, "float32", 1, 64))
    # 0.15 TFLOP/s was 150% of the start's matmul rate; against the end's, 75%
    entries = [{"extra_info": {"median_s": 1.0, "flops": int(0.15e12), "bytes": 0, "roofline_pct": 150.0}},
               {"extra_info": {"median_s": 0.5, "flops": 0, "bytes": int(5e9), "roofline_pct": 100.0}},
               {"extra_info": {"median_s": 1.0}}]  # nothing counted: left alone
    rescale_shares(entries, roof)
    assert [e["extra_info"].get("roofline_pct") for e in entries] == [75.0, 50.0, None]


def test_write_atomic_leaves_the_old_file_whole_when_the_write_fails(tmp_path, monkeypatch):
    """A write that dies (killed, disk full) leaves the previous file as it was and no temporary file."""
    from bench import report

    target = tmp_path / "RESULTS.md"
    report.write_atomic(target, "old\n")
    assert target.read_text() == "old\n"

    def fail(fd):  # the new text written, then the disk is full before it reaches it
        raise OSError("disk full")

    monkeypatch.setattr("sald_fast.checkpoint.os.fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        report.write_atomic(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md"]


def test_a_heading_suffix_keeps_a_partial_run_beside_the_main_section(tmp_path, monkeypatch):
    """``--heading-suffix``: a second, partial run (``bench.gpu_check``'s two report parts) gets its
    own section instead of replacing the device's (pytest is faked: it writes one benchmark)."""
    import json

    from bench import report

    def fake_pytest_main(args, plugins=()):
        path = Path(next(a for a in args if a.startswith("--benchmark-json=")).split("=", 1)[1])
        path.write_text(json.dumps({"sald_fast": {"heading": "GPU: Fake", "date": "2026-12-01"}, "benchmarks": [
            {"name": "b", "group": "op forward", "stats": {"median": 0.001, "rounds": 3},
             "extra_info": {"impl": "reference"}}]}))
        return 0

    monkeypatch.setattr(pytest, "main", fake_pytest_main)
    out = tmp_path / "RESULTS.md"
    common = ["--out", str(out), "--readme", str(tmp_path / "no-readme.md")]
    assert report.main(["-k", "sampling", *common]) == 0
    assert report.main(["-k", "triton", "--heading-suffix", "compiled, kernels", *common]) == 0
    assert report.main(["-k", "triton", "--heading-suffix", "compiled, kernels", *common]) == 0
    text = out.read_text()
    assert text.count("## GPU: Fake\n") == 1 and text.count("## GPU: Fake (compiled, kernels)\n") == 1
    assert "--heading-suffix 'compiled, kernels'`" in text
