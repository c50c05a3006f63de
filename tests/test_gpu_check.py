"""benchmarks/gpu_check.py without a GPU: it refuses in one line; its plan covers the six scripts with --cuda (and
--bf16 where a script has it) with flags each script accepts; a check fails on a bad exit, a missing log, or a run
that never touched the GPU."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("pearl.py", "hfr.py", "hipi.py", "gh_air.py", "mier.py", "mcat.py")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_it_says_so_in_one_line_and_exits_non_zero(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "r.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: no CUDA device here"), p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "r.json").exists()


def test_the_plan_runs_every_script_on_cuda_and_bf16_where_it_has_it(gpu_check, tmp_path):
    checks = gpu_check.plan("cuda", str(tmp_path))
    names = [c["name"] for c in checks]
    assert names[0] == "speed.py grad-step --cuda" and "--cuda" in checks[0]["cmd"]
    assert names[1:] == [n for s in SCRIPTS for n in [f"{s} --cuda"] + ([f"{s} --cuda --bf16"] if s in SCRIPTS[:2]
                                                                            else [])]
    for c in checks[1:]:
        assert c["cmd"][-len(c["shown"]) + 2:] == c["shown"][2:] and c["cmd"][4].endswith(c["shown"][1])
        assert "--cuda" in c["shown"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_scripts_flags_in_the_plan_are_accepted(gpu_check, script, tmp_path):
    check = next(c for c in gpu_check.plan("cuda", str(tmp_path)) if c["name"] == f"{script} --cuda")
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    flags = check["shown"][2:]
    if "--matmul" not in flags and script in ("pearl.py", "hfr.py"):
        flags += ["--matmul", "default"]  # no kernel measurement: this test checks the flags only
    module.parse_command_line(flags)  # a rejected flag would be SystemExit(2)


def test_a_check_fails_on_its_exit_code_a_missing_log_or_a_run_that_never_used_the_gpu(gpu_check, tmp_path):
    script = tmp_path / "fake.py"
    script.write_text("import os, sys\nd = sys.argv[sys.argv.index('--run-dir') + 1]\nos.makedirs(d, exist_ok=True)\n"
                      "open(os.path.join(d, 'eval.jsonl'), 'w').write('{\"iteration\": 1}\\n')\n"
                      "sys.exit(int(sys.argv[1]))\n")

    def check(code, wrapped=True):
        run_dir = str(tmp_path / f"run{code}")
        wrapper = [sys.executable, "-c", gpu_check.WRAPPER, os.path.join(run_dir, "gpu_memory.json")]
        return {"name": "fake", "kind": "script", "run_dir": run_dir, "result": os.path.join(run_dir, "eval.jsonl"),
                "shown": ["python", "fake.py"], "timeout": 60,
                "cmd": [*(wrapper if wrapped else [sys.executable]), str(script), str(code), "--run-dir", run_dir]}

    deadline = 1e12
    on_cpu = gpu_check.run_check(check(0), deadline, need_gpu=True)  # exit 0, a log: only the GPU is missing
    assert on_cpu["iterations_logged"] == 1 and on_cpu["cuda_max_memory_mb"] == 0.0 and not on_cpu["ok"]
    assert on_cpu["status"] == "the GPU was never used (the run fell back to the CPU)"
    failed = gpu_check.run_check(check(3, wrapped=False), deadline, need_gpu=False)
    assert not failed["ok"] and "exit code 3" in failed["status"]
    assert "skipped" in gpu_check.run_check(check(0), 0.0, need_gpu=False)["status"]  # the budget is spent
