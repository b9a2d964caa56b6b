"""The ONNX Runtime session factory, `hyperkit run` and `hyperkit bench` (CPU; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hyperkit.demo import fixture_path
from hyperkit.errors import BadInputError
from hyperkit.runtime import CPU, make_session, open_session


def test_make_session_keeps_its_signature():
    session, provider = make_session(fixture_path("generator/task2.onnx"), prefer_gpu=False)
    assert provider == CPU and session.get_inputs()[0].name == "x"


def test_providers_end_with_the_cpu_and_the_used_one_is_reported():
    s = open_session(fixture_path("generator/task2.onnx"), prefer_gpu=True, threads=2)
    assert s.requested[-1] == CPU
    assert s.provider == s.session.get_providers()[0]
    if s.provider == CPU:  # this machine: CUDA missing, said quietly in one line
        assert "CPU" in s.note and "\n" not in s.note
    assert "2 threads" in s.describe()


def test_an_unloadable_model_is_bad_input(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(BadInputError, match="ONNX Runtime cannot load the model"):
        open_session(tmp_path / "x.onnx", prefer_gpu=False)


def test_run_cli(tmp_path, run_cli):
    model = fixture_path("generator/task2.onnx")
    result = run_cli("run", model, "--batch", "3", "--cpu", "--json", "-o", tmp_path / "y.npy")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["provider"] == CPU and out["outputs"]["y"]["shape"] == [3, 5] and out["family"] == "generator-baked"
    assert np.load(tmp_path / "y.npy").shape == (3, 5)
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 4, 4), np.float32))
    result = run_cli("run", model, "--input", tmp_path / "x.npy", "--cpu")
    assert result.code == 0 and "y [2, 5]" in result.stdout


def test_bench_cli_reports_percentiles_and_parity(run_cli):
    result = run_cli(
        "bench",
        fixture_path("generator/task2.onnx"),
        "--batch",
        "1",
        "--batch",
        "4",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--cpu",
        "--threads",
        "1",
        "--json",
    )
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["batch"] for r in out["batches"]] == [1, 4]
    assert all(r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0 for r in out["batches"])
    assert out["parity"]["max_abs"] <= 1e-5


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from hyperkit.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'hypnettorch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
