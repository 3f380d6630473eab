"""benchmarks/bench_gpu.py's code path, run on the CPU at the tiny size (it measures nothing here)."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_emits_one_json_line_per_part(capsys):
    assert load_script().main(["--dry-run"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    parts = {record["part"]: record for record in records}
    measured = ("clip", "vae_encode", "unet_eager", "decode_chunk14_eager", "decode_chunk7_eager", "end_to_end")
    assert all(parts[name]["seconds"] > 0 for name in measured)
    assert parts["unet_eager"]["max_abs_diff_vs_eager"] == 0.0
    assert "unet_cuda_graph" not in parts  # CUDA graphs only on CUDA
    assert "compile off" in parts["setup"]["runtime"]


def test_without_a_gpu_it_says_so_and_measures_nothing(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_script().main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no CUDA GPU on this machine, nothing measured" in captured.err
