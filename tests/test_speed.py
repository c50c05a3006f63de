"""benchmarks/speed.py: grad-step's recorded matmuls are the step's own, on either kernel (their FLOPs are torch's FLOP
count) and are replayed with their layouts; a tiny configuration produces every reported number; cost prices a
paper-size run from two measured iterations; run_measured reports a child's own peak memory."""

import argparse
import importlib.util
import os
import sys
import time
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed", os.path.join(ROOT, "benchmarks", "speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_matmuls_records_forward_and_backward_products(speed):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(5, 3)
    w = torch.randn(2, 6, 4, requires_grad=True)

    def step():
        (net(x).square().sum() + torch.bmm(torch.ones(2, 7, 6), w).sum()).backward()

    found = speed.step_matmuls(torch, step)
    shapes = sorted((spec[i][1], spec[j][1]) for _, spec, (i, j, _) in found)
    # forward: x @ W1^T (5x3 @ 3x4), h @ W2^T (5x4 @ 4x2), the bmm; backward: the weight gradients of both layers,
    # the input gradient of layer 2 (layer 1's input needs none) and the bmm's gradient for w
    assert shapes == sorted([((5, 3), (3, 4)), ((5, 4), (4, 2)), ((2, 7, 6), (2, 6, 4)), ((2, 5), (5, 4)),
                             ((4, 5), (5, 3)), ((5, 2), (2, 4)), ((2, 6, 7), (2, 7, 4))]), shapes
    with FlopCounterMode(display=False) as counter:
        step()
    assert sum(speed.product_flops(p) for p in found) == counter.get_total_flops()


def test_the_onednn_products_are_recorded_and_replayed_with_their_layouts(speed):
    m = speed.load_script("pearl.py")
    torch.manual_seed(0)
    layer, x, d = m.Linear(20, 48), torch.randn(64, 20, requires_grad=True), torch.randn(64, 48)

    def step():
        layer(x).backward(d)

    with FlopCounterMode(display=False) as counter:  # torch's path: addmm, and mm for each gradient
        step()
    m.matmul = "onednn"
    try:
        found = speed.step_matmuls(torch, step)
    finally:
        m.matmul = "default"
    assert {f.name() for f, _, _ in found} == {"mkldnn::_linear_pointwise"} and len(found) == 3
    assert sum(speed.product_flops(p) for p in found) == counter.get_total_flops()  # the same products
    # the weight gradient's first factor is x transposed (the smaller one): replayed as a transposed view
    wgrad = [spec for _, spec, _ in found if spec[0][1] == (20, 64)]
    assert wgrad and wgrad[0][0][2] == (1, 20)
    replayed = speed.replay_args(torch, wgrad[0], torch.Generator().manual_seed(0))
    assert replayed[0].shape == (20, 64) and replayed[0].stride() == (1, 20)
    assert speed.matmuls_ms(torch, found, time.perf_counter, reps=2) > 0


def test_grad_step_reports_the_matmul_only_time_kernels_and_memory(speed):
    args = argparse.Namespace(script="pearl.py", threads=1, tasks=2, batch=16, context=8, net_size=16, obs_dim=5,
                              act_dim=2, warmup=1, steps=2, repeats=2, naive=True, clock="wall", cuda=False)
    res = speed.grad_step(args)
    for key in ("fp32_default", "fp32_onednn", "bf16"):
        r = res[key]
        # 4 networks of 4 layers and the encoder's 4, forward and backward: dozens of products
        assert r["matmuls_per_step"] > 40 and r["gflop_per_step"] > 0
        assert len(r["matmuls_only_ms_per_repeat"]) == 2 and r["matmuls_only_ms"] > 0
        assert r["x_matmuls_only"] == pytest.approx(r["median_ms"] / r["matmuls_only_ms"], rel=0.05)
    assert res["fp32_default"]["gflop_per_step"] == pytest.approx(res["fp32_onednn"]["gflop_per_step"])
    assert "fp32_default_naive" in res and res["fp32_kernel_auto"] in ("default", "onednn")
    assert res["peak_rss_mb"] >= res["rss_mb"] > 0
    # every Linear shape of the step, with each kernel's forward / backward rate
    assert {(r["rows"], r["in"], r["out"]) for r in res["layer_gflops"]} >= {(32, 12, 16), (32, 16, 16), (16, 8, 200)}
    assert all(r[k]["forward_gflops"] > 0 for r in res["layer_gflops"] for k in ("fp32_default", "bf16"))


def test_grad_step_cuda_without_a_gpu_is_a_one_line_error(speed):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    args = argparse.Namespace(script="pearl.py", threads=1, cuda=True)
    with pytest.raises(SystemExit, match="^error: --cuda: torch finds no CUDA device here$"):
        speed.grad_step(args)


def test_price_scales_the_measured_iterations_to_the_paper_counts(speed):
    paper = types.SimpleNamespace(num_initial_steps=2000, num_train_tasks=50, num_train_steps_per_itr=1000,
                                  num_evals=2)
    # iteration 1: 300 initial steps x 50 tasks (15,000) + 10,000 collected; iteration 2: 10,000 collected
    one = {"env_steps": 25_000, "time/collect": 30.0, "time/relabel": 10.0, "time/update": 1.0, "time/eval": 3.0}
    two = {"env_steps": 35_000, "time/collect": 25.0, "time/relabel": 20.0, "time/update": 2.0, "time/eval": 4.0}
    p = speed.price(paper, one, two, steps=10, evals=1)
    assert p["initial_pool"] == pytest.approx((20.0 - 5.0) / 15_000 * 100_000)  # 1 ms per env step
    assert p["collect_per_iteration"] == 25.0 and p["update_per_iteration"] == pytest.approx(200.0)
    assert p["eval_per_iteration"] == pytest.approx(8.0)


def test_run_measured_reports_the_childs_own_peak_memory(speed, tmp_path):
    code = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(0.6)"
    r = speed.run_measured([sys.executable, "-c", code], 1, str(tmp_path / "log"))
    assert r["rc"] == 0 and r["peak_rss_mb"] >= 300 and r["median_rss_mb"] > 0


def test_run_measured_samples_the_largest_process_under_a_launcher(speed, tmp_path):
    # the child holds its memory for most of the run even when a busy machine slows the two interpreters' start
    child = "import time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(3.0)"
    launcher = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    r = speed.run_measured([sys.executable, "-c", launcher], 1, str(tmp_path / "log"))
    assert r["rc"] == 0 and r["peak_rss_mb"] >= 200 and r["median_rss_mb"] >= 150  # the child's, not the launcher's
