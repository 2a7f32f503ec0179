"""``python -m bench.sampling_ab``: every implementation is timed in every round, and
``--roofline`` divides each call's FLOPs by a matrix rate measured in the same round."""

from __future__ import annotations

import re

from bench import sampling_ab


def test_sampling_ab_prints_each_implementation_and_its_share_of_the_matrix_rate(capsys, monkeypatch):
    rates = iter([0.5, 0.25])
    monkeypatch.setattr(sampling_ab, "matmul_rate", lambda: next(rates))  # one per round, in order
    assert sampling_ab.main(["--frames", "8", "--steps", "2", "--reps", "2", "--roofline"]) == 0
    out = capsys.readouterr().out
    for name in ("reference", "fast"):
        assert re.search(rf"^  {name} +median +[0-9.]+ ms", out, re.M), out
    rate_line = re.search(r"median 0\.375 TFLOP/s \(min 0\.250, max 0\.500\); the reference run's FLOPs: ([0-9.]+) "
                          r"TFLOP", out)
    assert rate_line, out
    shares = dict(re.findall(r"^  (\w+) +([0-9.]+)% of the matrix rate", out, re.M))
    assert set(shares) == {"reference", "fast"}
    assert all(float(v) > 0 for v in shares.values())


def test_sampling_flops_grow_by_the_same_amount_per_step():
    from bench.test_bench_model import _config
    from sald_fast.pipeline import SignSALD

    model = SignSALD.from_config(_config("tiny", True), seed=0).eval()
    one, two, three = (sampling_ab._sampling_flops(model, ["a sentence"], 8, n) for n in (1, 2, 3))
    assert one > 0 and two - one > 0
    assert three - two == two - one
