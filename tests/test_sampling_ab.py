"""``python -m bench.sampling_ab``: every implementation is timed in every round, and
``--roofline`` divides each call's FLOPs by the matrix rate measured on either side of it."""

from __future__ import annotations

import re

import pytest

from bench import sampling_ab


def test_each_call_is_divided_by_the_rates_measured_on_either_side_of_it():
    windows = iter([0.5, 0.3, 0.1, 0.2, 0.4, 0.6])  # round 1: before, after a, after b; round 2 likewise
    durations = {"a": iter([1.0, 3.0]), "b": iter([2.0, 4.0])}
    calls, rates = [], []

    def call(name):
        calls.append(name)
        return next(durations[name])

    times, ceilings = sampling_ab.interleave(["a", "b"], call, 2, rates, lambda: next(windows))
    assert calls == ["a", "b", "b", "a"]  # each round starts with a different one
    assert times == {"a": [1.0, 3.0], "b": [2.0, 4.0]}
    assert rates == [0.5, 0.3, 0.1, 0.2, 0.4, 0.6]
    assert ceilings["a"] == pytest.approx([0.4, 0.5])  # (0.5 + 0.3) / 2, then (0.4 + 0.6) / 2
    assert ceilings["b"] == pytest.approx([0.2, 0.3])


def test_sampling_ab_prints_each_implementation_and_its_share_of_the_matrix_rate(capsys, monkeypatch):
    windows = iter([0.5, 0.3, 0.1, 0.2, 0.2, 0.2])
    monkeypatch.setattr(sampling_ab, "matmul_rate", lambda seconds: next(windows))
    assert sampling_ab.main(["--frames", "8", "--steps", "2", "--reps", "2", "--roofline"]) == 0
    out = capsys.readouterr().out
    for name in ("reference", "fast"):
        assert re.search(rf"^  {name} +median +[0-9.]+ ms", out, re.M), out
    assert re.search(r"median 0\.200 TFLOP/s \(min 0\.100, max 0\.500\) over 6 windows; the reference run's FLOPs: "
                     r"[0-9.]+ TFLOP", out), out
    shares = dict(re.findall(r"^  (\w+) +([0-9.]+)% of the matrix rate", out, re.M))
    assert set(shares) == {"reference", "fast"}
    assert all(float(v) > 0 for v in shares.values())
    assert next(windows, None) is None  # a window before each round and one after each call


def test_matmul_rate_runs_for_the_window_asked():
    import time

    start = time.perf_counter()
    assert sampling_ab.matmul_rate(0.05, n=64) > 0
    assert time.perf_counter() - start >= 0.05
    with pytest.raises(ValueError, match="seconds > 0"):
        sampling_ab.matmul_rate(0)


def test_sampling_flops_grow_by_the_same_amount_per_step():
    from bench.test_bench_model import _config
    from sald_fast.pipeline import SignSALD

    model = SignSALD.from_config(_config("tiny", True), seed=0).eval()
    one, two, three = (sampling_ab._sampling_flops(model, ["a sentence"], 8, n) for n in (1, 2, 3))
    assert one > 0 and two - one > 0
    assert three - two == two - one


def test_results_section_is_written_replaced_and_kept_out_of_the_readme(tmp_path):
    from bench.report import readme_block

    suite = ("# Benchmark results\n\n## CPU: test machine\n\nMeasured 2026-01-01 by `python -m bench.report` in 1.0 min.\n\n"
             "### op forward\n\nshape\n\n| implementation | median | vs eager | vs torch.compile | GB/s | TFLOP/s | "
             "roofline | rounds |\n|---|---|---|---|---|---|---|---|\n| reference | 1.00 ms | 1.00x | — | 1.0 | — | "
             "10.0% | 9 |\n")
    path = tmp_path / "RESULTS.md"
    path.write_text(suite)
    readme_before = readme_block(suite)
    heading = "Sampling, interleaved: tiny, 1 sentence, 64 frames, DDIM-50 (CPU: test machine)"
    sampling_ab.write_results(path, heading, "python -m bench.sampling_ab --reps 3", ["first run", "  a 1.0 ms"])
    sampling_ab.write_results(path, heading, "python -m bench.sampling_ab --reps 3", ["second run", "  a 2.0 ms"])
    text = path.read_text()
    assert text.count(f"## {heading}") == 1  # replaced, not appended twice
    assert "second run" in text and "first run" not in text
    assert "## CPU: test machine" in text and "| reference | 1.00 ms" in text  # the suite's section is kept
    assert "by `python -m bench.sampling_ab --reps 3`" in text
    assert readme_block(text) == readme_before  # the README's generated figures are the suite's alone
    assert not list(tmp_path.glob("*.tmp"))
