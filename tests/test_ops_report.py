"""Which implementation each op runs: ``sald_fast.ops.backend_report`` / ``backend_line``, the
start-up line of ``train.full`` and ``sald-fast``, the once-per-reason fallback notices, and
``torch.compile`` of the models with no Dynamo warnings and no graph breaks (backends loaded
before tracing)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sald_fast import ops
from sald_fast.ops import dispatch, reference
from sald_fast.skeleton import SIGNING_SKELETON

REPO = Path(__file__).resolve().parents[1]
# The ops the C++ extension (backend "cuda") implements for CPU tensors; auto takes it for both on the CPU.
EXTENSION_OPS = ("film_residual_layernorm", "skeletal_graph_conv")


def _extension_loads() -> bool:
    return dispatch._try_load("cuda")


@pytest.fixture
def fresh_notes(monkeypatch):
    """An empty record of the fallbacks already logged (each test sees its own first notice)."""
    monkeypatch.setattr(dispatch, "_noted", set())


@pytest.fixture
def no_extension(monkeypatch, fresh_notes):
    """The dispatcher as in a process where the extension module fails to import (a real import)."""
    monkeypatch.setattr(dispatch, "_loaded", {b for b in dispatch._loaded if b != "cuda"})
    monkeypatch.setattr(dispatch, "_load_errors", {})
    monkeypatch.setitem(dispatch._BACKEND_MODULES, "cuda", "sald_fast.ops._no_such_extension")
    for op in EXTENSION_OPS:
        monkeypatch.delitem(dispatch._IMPLS[op], "cuda", raising=False)


def _ops_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("sald_fast.ops")]


def _graph_conv_inputs():
    ip, ix = SIGNING_SKELETON.neighbourhood()
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 2, 44, 3, generator=g), ip, ix, torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)


# ----------------------------------------------------------------------------- report and line

def test_line_for_cpu_auto_names_every_op_and_its_implementation():
    line = ops.backend_line("cpu", "auto")
    report = ops.backend_report(torch.device("cpu"), "auto")
    assert list(report) == list(ops.OPS)
    expected = {op: "reference" for op in ops.OPS}
    for op in EXTENSION_OPS:
        expected[op] = "extension" if _extension_loads() else "reference"
    assert report == expected
    assert line == "ops on cpu (backend auto): " + " ".join(f"{op}={impl}" for op, impl in expected.items())
    assert "\n" not in line


def test_reference_backend_is_all_reference_and_none_means_the_default():
    assert set(ops.backend_report("cpu", "reference").values()) == {"reference"}
    with ops.use_backend("reference"):
        line = ops.backend_line("cpu")
    assert line.startswith("ops on cpu (backend reference): ")
    assert all(f"{op}=reference" in line for op in ops.OPS)
    with ops.use_backend("auto"):
        assert ops.backend_line("cpu").startswith("ops on cpu (backend auto): ")


def test_report_matches_what_the_ops_run():
    for backend in ("reference", "auto"):
        report = ops.backend_report("cpu", backend)
        for op in ops.OPS:
            fn = dispatch.resolve(op, backend, torch.device("cpu"))
            impl = next(b for b, f in dispatch._IMPLS[op].items() if f is fn)
            assert dispatch.IMPLEMENTATIONS[impl] == report[op], (backend, op)


def test_requested_backend_without_the_op_is_reported_unavailable(caplog, fresh_notes):
    caplog.set_level(logging.WARNING, logger="sald_fast.ops")
    if not _extension_loads():
        pytest.skip("the extension cannot be built here")
    for _ in range(2):
        report = ops.backend_report("cpu", "cuda")
    assert report["skeletal_graph_conv"] == "extension"
    assert report["film_residual_layernorm"] == "extension"
    assert report["temporal_attention"] == "unavailable"
    with pytest.raises(RuntimeError, match="backend 'cuda' has no implementation of temporal_attention"):
        dispatch.resolve("temporal_attention", "cuda", torch.device("cpu"))
    messages = [r.getMessage() for r in _ops_records(caplog)]
    assert len(messages) == 2 and all("raises" in m for m in messages), messages  # once per op, not per call


def test_bad_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        ops.backend_report("cpu", "fastest")
    with pytest.raises(ValueError, match="unknown op"):
        ops.prepare("auto", ops=["conv"])


# ----------------------------------------------------------------------------- fallback notices

def test_auto_fallback_logs_the_reason_once(caplog, no_extension):
    caplog.set_level(logging.INFO, logger="sald_fast.ops")
    h, ip, ix, ws, wn = _graph_conv_inputs()
    expected = reference.skeletal_graph_conv(h, ip, ix, ws, wn, None)
    for _ in range(4):
        out = ops.skeletal_graph_conv(h, ip, ix, ws, wn, backend="auto")
        torch.testing.assert_close(out, expected)
    assert ops.backend_report("cpu", "auto")["skeletal_graph_conv"] == "reference"
    ops.prepare("auto", "cpu")
    records = _ops_records(caplog)
    # one notice per op auto would have taken from the extension, none repeated
    assert sorted(r.getMessage().split(" on ")[0] for r in records) == [f"auto: {op}" for op in EXTENSION_OPS], \
        [r.getMessage() for r in records]
    record = next(r for r in records if "skeletal_graph_conv" in r.getMessage())
    assert record.name == "sald_fast.ops" and record.levelno == logging.WARNING
    assert record.getMessage().startswith("auto: skeletal_graph_conv on cpu uses the reference: extension unavailable "
                                          "(ModuleNotFoundError: No module named 'sald_fast.ops._no_such_extension'")
    # a requested backend that cannot load still raises, naming it and the reason
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available: ModuleNotFoundError"):
        ops.skeletal_graph_conv(h, ip, ix, ws, wn, backend="cuda")
    assert "cuda" not in ops.available_backends("skeletal_graph_conv")


def test_no_grad_notice_names_what_actually_runs(caplog, fresh_notes, monkeypatch):
    """When the no-grad order's own candidate cannot run either, the INFO notice names the
    implementation that does (the reference here), not the order's first entry."""
    if not dispatch._try_load("cuda"):
        pytest.skip("the C++ extension does not build here")
    caplog.set_level(logging.INFO, logger="sald_fast.ops")
    op = "skeletal_graph_conv"
    monkeypatch.setitem(dispatch._AUTO_ORDER, op, {"cuda_device": ("cuda",), "cpu_device": ("cuda",),
                                                    "cpu_device_no_grad": ("triton",)})  # Triton has no CPU kernels
    assert dispatch.resolve(op, "auto", torch.device("cpu"), grad=False) is dispatch._IMPLS[op]["reference"]
    notice = [r.getMessage() for r in _ops_records(caplog) if "without gradients" in r.getMessage()]
    assert len(notice) == 1 and notice[0].startswith(f"auto: {op} on cpu uses the reference for calls without "
                                                     "gradients: the extension is"), notice


def test_auto_on_the_cpu_runs_the_extension_only_in_calls_with_gradients(caplog, fresh_notes):
    """Measured: the extension's CPU kernels win in training steps and lose in sampling, so auto
    picks them per call by whether the call records autograd, and says why once."""
    if not dispatch._try_load("cuda"):
        pytest.skip("the C++ extension does not build here")
    caplog.set_level(logging.INFO, logger="sald_fast.ops")
    for op in EXTENSION_OPS:
        assert dispatch.resolve(op, "auto", torch.device("cpu"), grad=True) is dispatch._IMPLS[op]["cuda"]
        for _ in range(3):
            assert dispatch.resolve(op, "auto", torch.device("cpu"), grad=False) is dispatch._IMPLS[op]["reference"]
        assert dispatch.resolve(op, "auto", torch.device("cpu")) is dispatch._IMPLS[op]["cuda"]  # not known
    assert set(ops.backend_report("cpu", "auto", grad=False)[op] for op in EXTENSION_OPS) == {"reference"}
    assert set(ops.backend_report("cpu", "auto", grad=True)[op] for op in EXTENSION_OPS) == {"extension"}
    assert ops.backend_report("cpu", "cuda", grad=False)["skeletal_graph_conv"] == "extension"  # asked for: runs
    messages = [r.getMessage() for r in _ops_records(caplog)]
    for op in EXTENSION_OPS:
        mine = [m for m in messages if m.startswith(f"auto: {op} on cpu")]
        assert len(mine) == 1 and mine[0].startswith(f"auto: {op} on cpu uses the reference for calls without "
                                                     "gradients: the extension is slower than the reference in calls "
                                                     "without gradients ("), messages
    assert all(r.levelno == logging.INFO for r in _ops_records(caplog) if "without gradients" in r.getMessage())
    # the public ops pass the call's mode: the same inputs take either path, with the same result
    h, ip, ix, ws, wn = _graph_conv_inputs()
    with torch.no_grad():
        plain = ops.skeletal_graph_conv(h, ip, ix, ws, wn, backend="auto")
    hg = h.clone().requires_grad_(True)
    trained = ops.skeletal_graph_conv(hg, ip, ix, ws, wn, backend="auto")
    torch.testing.assert_close(trained.detach(), plain, rtol=1e-5, atol=1e-5)
    assert ("skeletal_graph_conv", dispatch.Inputs("cpu", h.dtype, h.shape[2], None, True)) in dispatch._auto_choices
    assert dispatch._auto_choices[("skeletal_graph_conv", dispatch.Inputs("cpu", h.dtype, h.shape[2], None, False))] \
        == "reference"


def test_fallback_notices_are_per_op_backend_device_and_reason(caplog, fresh_notes, monkeypatch):
    """A requested backend without kernels for the tensors' device runs the reference, logged once
    per device type and reason; another reason is a new notice."""
    caplog.set_level(logging.WARNING, logger="sald_fast.ops")

    def fake(*args):
        return "fake"

    monkeypatch.setattr(dispatch, "_loaded", dispatch._loaded | {"cuda"})
    monkeypatch.setitem(dispatch._IMPLS["skeletal_graph_conv"], "cuda", fake)
    monkeypatch.setitem(dispatch._DEVICES, ("skeletal_graph_conv", "cuda"), ("cpu",))
    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # only the device type is looked at
    for _ in range(3):
        assert dispatch.resolve("skeletal_graph_conv", "cuda", cpu) is fake
        assert dispatch.resolve("skeletal_graph_conv", "cuda", gpu) is reference.skeletal_graph_conv
    assert ops.backend_report("cuda", "cuda")["skeletal_graph_conv"] == "reference"
    assert ops.backend_report("cpu", "cuda")["skeletal_graph_conv"] == "extension"
    messages = [r.getMessage() for r in _ops_records(caplog) if "skeletal_graph_conv" in r.getMessage()]
    assert messages == ["backend 'cuda': skeletal_graph_conv on cuda uses the reference: "
                        "extension has no cuda kernels in this build"]
    monkeypatch.setitem(dispatch._DEVICES, ("skeletal_graph_conv", "cuda"), ("xpu",))
    dispatch.resolve("skeletal_graph_conv", "cuda", cpu)
    dispatch.resolve("skeletal_graph_conv", "cuda", cpu)
    assert len([r for r in _ops_records(caplog) if "skeletal_graph_conv" in r.getMessage()]) == 2


def test_no_logging_while_compiling(caplog, no_extension, monkeypatch):
    """resolve runs at trace time: it logs nothing there, and the first eager call still logs."""
    caplog.set_level(logging.WARNING, logger="sald_fast.ops")
    dispatch._try_load("cuda")  # the import failure itself, outside the "trace"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch.resolve("skeletal_graph_conv", "auto", torch.device("cpu")) is reference.skeletal_graph_conv
    assert not _ops_records(caplog) and not dispatch._noted
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    dispatch.resolve("skeletal_graph_conv", "auto", torch.device("cpu"))
    assert len(_ops_records(caplog)) == 1


# ----------------------------------------------------------------------------- auto per call

def _triton_loads() -> bool:
    return dispatch._try_load("triton")


@pytest.mark.parametrize("inputs,expected,reason", [
    (dict(dtype=torch.float64), {"film_residual_layernorm": "reference", "temporal_attention": "reference",
                                 "skeletal_attention": "reference"}, "dtype torch.float64"),
    (dict(dtype=torch.float32, num_joints=40, head_dim=64), {"film_residual_layernorm": "triton",
                                                             "temporal_attention": "triton",
                                                             "skeletal_attention": "reference"}, "J=40 joints > 32"),
    (dict(dtype=torch.bfloat16, num_joints=7, head_dim=256), {"film_residual_layernorm": "triton",
                                                              "temporal_attention": "reference",
                                                              "skeletal_attention": "reference"}, "head dim 256 > 128"),
    (dict(dtype=torch.float16, num_joints=7, head_dim=64), {"film_residual_layernorm": "triton",
                                                            "temporal_attention": "triton",
                                                            "skeletal_attention": "triton"}, None),
], ids=["fp64", "J40", "d256", "fp16-fits"])
def test_auto_chooses_per_call_from_dtype_and_shape(caplog, fresh_notes, inputs, expected, reason):
    """On CUDA tensors auto takes Triton only for inputs its kernels handle; otherwise the reference,
    with the reason logged once (the dispatcher looks only at the device type, so this runs on a CPU)."""
    if not _triton_loads():
        pytest.skip(f"triton cannot be imported here: {dispatch._load_errors.get('triton')}")
    caplog.set_level(logging.WARNING, logger="sald_fast.ops")
    cuda = torch.device("cuda")
    for _ in range(3):
        report = ops.backend_report(cuda, "auto", **inputs)
        for op, impl in expected.items():
            assert report[op] == impl, (op, report)
            fn = dispatch.resolve(op, "auto", cuda, inputs["dtype"], inputs.get("num_joints"),
                                  inputs.get("head_dim") if "attention" in op else None)
            assert fn is dispatch._IMPLS[op]["triton" if impl == "triton" else "reference"]
    messages = [r.getMessage() for r in _ops_records(caplog) if any(f" {op} " in r.getMessage() for op in expected)]
    falls = [op for op, impl in expected.items() if impl == "reference"]
    assert len(messages) == len(falls), messages  # once per op and reason, not per call
    for op in falls:
        assert any(m.startswith(f"auto: {op} on cuda uses the reference: Triton cannot take these inputs ({reason}")
                   for m in messages), messages
    # a line for these inputs says the same
    line = ops.backend_line(cuda, "auto", **inputs)
    assert all(f"{op}={impl}" in line for op, impl in expected.items())


def test_explicit_triton_with_unsupported_inputs_is_reported_unavailable(fresh_notes):
    if not _triton_loads():
        pytest.skip("triton cannot be imported here")
    report = ops.backend_report("cuda", "triton", dtype=torch.float64)
    assert report["skeletal_attention"] == "unavailable" and report["temporal_attention"] == "unavailable"
    assert ops.backend_report("cuda", "triton", dtype=torch.float32)["skeletal_attention"] == "triton"


def test_auto_on_the_cpu_with_fp64_runs_the_reference():
    q = torch.randn(1, 3, 40, 2, 4, dtype=torch.float64)
    o = ops.skeletal_attention(q, q, q, backend="auto")
    torch.testing.assert_close(o, reference.skeletal_attention(q, q, q))


def test_triton_import_failure_is_logged_where_a_gpu_would_use_it(caplog, fresh_notes, monkeypatch):
    caplog.set_level(logging.WARNING, logger="sald_fast.ops")
    monkeypatch.setattr(dispatch, "_loaded", {b for b in dispatch._loaded if b != "triton"})
    monkeypatch.setattr(dispatch, "_load_errors", {})
    monkeypatch.setitem(dispatch._BACKEND_MODULES, "triton", "sald_fast.ops._no_such_triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for op in ("film_residual_layernorm", "temporal_attention", "skeletal_attention"):
        monkeypatch.delitem(dispatch._IMPLS[op], "triton", raising=False)
    report = ops.backend_report("cuda", "auto")
    assert report["temporal_attention"] == "reference" and report["skeletal_attention"] == "reference"
    messages = [r.getMessage() for r in _ops_records(caplog)]
    assert messages[0].startswith("sald_fast: the Triton backend cannot be imported (ModuleNotFoundError"), messages
    assert "auto: temporal_attention on cuda uses the reference: Triton unavailable (ModuleNotFoundError" in \
        " ".join(messages)


# ----------------------------------------------------------------------------- entry points

def test_train_full_prints_the_line_first(monkeypatch, capsys, tmp_path):
    import train.full as full

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(full, "config_from_args", stop)  # the next step after the line: no training
    with pytest.raises(Stop):
        full.main(["--device", "cpu", "--backend", "reference", "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ops.backend_line("cpu", "reference")


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_cli_prints_the_line_before_loading(command, capsys, tmp_path):
    from sald_fast.cli import main

    nowhere = str(tmp_path / "nowhere")
    args = (["generate", "hello", "--out", str(tmp_path / "x.npz")] if command == "generate" else ["evaluate"])
    with ops.use_backend("reference"):
        code = main(args + ["--checkpoint", nowhere, "--device", "cpu", "--backend", "auto"])
        assert ops.get_backend() == "auto"  # --backend sets the process default the models use
    assert code == 2
    captured = capsys.readouterr()
    # the line for calls without gradients (what these commands make): the reference for the extension's ops
    assert captured.out.splitlines() == [ops.backend_line("cpu", "auto", grad=False)]
    assert captured.err.startswith("error: ") and "does not exist" in captured.err


def test_cli_default_backend_is_auto(capsys, tmp_path, monkeypatch):
    """Without --backend, both commands run (and print) backend auto, and generate loads the model
    with it; --backend still chooses."""
    from sald_fast import cli
    from sald_fast.pipeline import SignSALD

    parser = cli.build_parser()
    for command in (["generate", "hi", "--checkpoint", "c", "--out", "x.npz"], ["evaluate", "--checkpoint", "c"]):
        assert parser.parse_args(command).backend == "auto"
        assert parser.parse_args(command + ["--backend", "reference"]).backend == "reference"
    seen = {}

    class Stop(Exception):
        pass

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(SignSALD, "load", staticmethod(fake_load))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with ops.use_backend("reference"):
        with pytest.raises(Stop):
            cli.main(["generate", "hi", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.npz"),
                      "--device", "cpu"])
    assert seen["backend"] == "auto"
    assert capsys.readouterr().out.splitlines() == [ops.backend_line("cpu", "auto", grad=False)]


def test_signsald_load_defaults_to_auto():
    import inspect

    from sald_fast.pipeline import SignSALD

    assert inspect.signature(SignSALD.load).parameters["backend"].default == "auto"


# ----------------------------------------------------------------------------- torch.compile

_COMPILE_SCRIPT = textwrap.dedent("""
    import json, sys, time, warnings
    import torch
    import torch._dynamo
    import torch.nn.functional as F
    torch.set_num_threads(1)
    warnings.simplefilter("always")
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from sald_fast import ops
    from sald_fast.config import DenoiserConfig, VAEConfig
    from sald_fast.denoiser import Denoiser
    from sald_fast.vae import SkeletonVAE

    EXT = "sald_fast.ops.extension_backend"
    assert EXT not in sys.modules
    start = time.perf_counter()
    torch.manual_seed(0)
    vae = SkeletonVAE(VAEConfig(channels=(8, 8, 8), blocks_per_level=1, latent_dim=4), backend="auto")
    build = time.perf_counter() - start
    loaded_at_construction = EXT in sys.modules
    den = Denoiser(DenoiserConfig(latent_dim=4, num_atoms=7, dim=16, num_layers=2, num_heads=2, ffn_mult=2,
                                  text_dim=8, max_latent_frames=8, skip_tau=0), backend="auto")
    x = torch.randn(2, 8, 44, 9)
    z, t = torch.randn(2, 2, 7, 4), torch.tensor([3, 700])
    text, mask, lengths = torch.randn(2, 3, 8), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool(), torch.tensor([2, 1])

    def vae_step(x):
        return vae.loss(x, vae(x))["total"]

    def den_step(z, t, text, mask, lengths):
        return F.mse_loss(den(z, t, text, mask, lengths), z)

    result = {"loaded_at_construction": loaded_at_construction, "build_s": build}
    for name, fn, args in (("vae", vae_step, (x,)), ("denoiser", den_step, (z, t, text, mask, lengths))):
        explained = torch._dynamo.explain(fn)(*args)
        result[name + "_breaks"] = explained.graph_break_count
        result[name + "_reasons"] = [str(r.reason) for r in explained.break_reasons]
        torch._dynamo.reset()
        torch.manual_seed(1)  # the VAE samples its latent
        loss = torch.compile(fn, backend="aot_eager")(*args)
        loss.backward()
        torch.manual_seed(1)
        result[name + "_close"] = bool(torch.allclose(loss, fn(*args), rtol=1e-4, atol=1e-5))
    result["line"] = ops.backend_line("cpu", "auto")  # after the traces: this too would load the backends
    print("RESULT " + json.dumps(result))
""")


def _run_script(script: str, ext_dir: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SALD_FAST_EXT_DIR=str(ext_dir),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_vars)
    env.pop("TORCHDYNAMO_VERBOSE", None)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("compiler", ["found", "missing"])
def test_compiled_models_trace_with_no_dynamo_warnings_or_graph_breaks(tmp_path, compiler):
    """A fresh process with an empty extension cache (so the build happens in it, ~15-20 s here),
    or with no C++ compiler (auto falls back): the models load (build) their backends at
    construction; tracing one training step of the VAE and of a denoiser gives no "Dynamo does
    not know how to trace" warning and no graph break."""
    import json

    env = {"CXX": str(tmp_path / "no-such-compiler")} if compiler == "missing" else {}
    # a CPU check: on a GPU machine the fresh build would otherwise compile the CUDA kernels as well
    proc = _run_script(_COMPILE_SCRIPT, tmp_path / "ext-cache", CUDA_VISIBLE_DEVICES="", **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert "Dynamo does not know how to trace" not in proc.stderr, proc.stderr[-5000:]
    assert "graph break" not in proc.stderr.lower(), proc.stderr[-5000:]
    assert result["vae_breaks"] == 0, result["vae_reasons"]
    assert result["denoiser_breaks"] == 0, result["denoiser_reasons"]
    assert result["vae_close"] and result["denoiser_close"]
    if compiler == "missing":
        assert result["line"].endswith("skeletal_graph_conv=reference")
        assert "film_residual_layernorm=reference" in result["line"]
        # the CPU's notices (on a GPU machine `auto` also reports its choices on cuda)
        notices = [ln for ln in proc.stderr.splitlines() if ln.startswith("auto: ") and " on cpu " in ln]
        reason = ("extension unavailable (ImportError: sald_fast extension: no C++ compiler found "
                  f"({str(tmp_path / 'no-such-compiler')!r} is not on PATH); install g++ or set CXX "
                  "to build backend 'cuda')")
        assert sorted(notices) == [f"auto: {op} on cpu uses the reference: {reason}" for op in EXTENSION_OPS], \
            proc.stderr[-5000:]
    elif result["line"].endswith("skeletal_graph_conv=extension"):  # the build worked: it ran at construction
        assert result["loaded_at_construction"]
        assert any((tmp_path / "ext-cache").glob("ext-*/*.so"))


_UNPREPARED_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import torch
    warnings.simplefilter("always")
    from sald_fast import ops
    from sald_fast.skeleton import SIGNING_SKELETON
    ip, ix = SIGNING_SKELETON.neighbourhood()
    h, w = torch.randn(1, 2, 44, 3), torch.randn(4, 3)
    fn = torch.compile(lambda h: ops.skeletal_graph_conv(h, ip, ix, w, w, backend="auto").sum(), backend="aot_eager")
    assert "sald_fast.ops.extension_backend" not in sys.modules
    out = fn(h)  # the first resolve happens inside the trace: the import must run outside it
    torch.testing.assert_close(out, ops.skeletal_graph_conv(h, ip, ix, w, w, backend="reference").sum())
    print("UNPREPARED-OK", ops.backend_line("cpu", "auto"))
""")


def test_unprepared_backend_is_imported_outside_the_trace():
    """Compiling a raw op call before anything loaded the extension (reusing the default build
    cache, so no build): the import runs outside Dynamo's trace, with no warnings."""
    default_cache = os.environ.get("SALD_FAST_EXT_DIR") or str(Path.home() / ".cache" / "sald_fast")
    proc = _run_script(_UNPREPARED_SCRIPT, Path(default_cache))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "UNPREPARED-OK" in proc.stdout
    assert "Dynamo does not know how to trace" not in proc.stderr, proc.stderr[-5000:]
