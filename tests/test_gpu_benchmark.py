"""benchmarks/gpu.py --cpu-smoke: every row of the GPU benchmark trains (two steps, tiny model, CPU), the flash rows
say why they cannot run here, and the table has the columns the README's GPU section quotes."""

import contextlib
import importlib.util
import io
import os

import pytest
from _tiny import one_thread  # noqa: F401  (one_thread: an autouse fixture; the smoke run sets 1 thread too)

BENCHMARK = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu.py")


@pytest.mark.slow
def test_cpu_smoke_runs_every_row():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", BENCHMARK)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = gpu.main(["--cpu-smoke"])
    assert status == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    lines = lines[
        lines.index("CPU, 2 steps of 2 x 64 tokens (1 not timed), bf16=False") :
    ]  # DeepSpeed may print first
    header = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert header == gpu.HEADERS
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[3:]]
    assert len(rows) == len(gpu.SMOKE_MODELS) * len(gpu.ROWS) == 12
    for model, attention, compiled, documents, tokens, mfu, memory, _ratio, row_status in rows:
        if attention == "flash_attention_2":
            assert (tokens, row_status) == ("-", "skipped: needs CUDA")
            continue
        assert row_status == "ok" and float(tokens.replace(",", "")) > 0, (model, attention, compiled, documents)
        assert (mfu, memory) == ("-", "-")  # fp32 on a CPU: no peak, no CUDA memory
    assert {(r[1], r[2], r[3]) for r in rows} == {(a, "on" if c else "off", d) for a, c, d in gpu.ROWS}
    assert [r[7] for r in rows if r[1] == "sdpa" and r[2] == "off" and r[3] == "shared"] == ["1.00", "1.00"]
