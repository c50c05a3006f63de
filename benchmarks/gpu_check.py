"""The GPU path, checked in one go: `speed.py grad-step --cuda` and a 2-iteration (or equally tiny) run of each of the
six scripts with --cuda, and with --bf16 where the script has it; one JSON with every check's outcome.

    python benchmarks/gpu_check.py                      # on a machine with one CUDA GPU; <= ~5 minutes
    python benchmarks/gpu_check.py --out results.json   # default benchmarks/results/gpu_check.json

A check passes when its command exits 0, wrote its eval.jsonl (the scripts) or its results (grad-step), and the
process really used the GPU: each script runs under a small wrapper that records torch.cuda.max_memory_allocated()
at exit (0 means CUDA was never touched, e.g. a silent fall-back to the CPU). pearl.py and hfr.py run their paper-size
networks and meta-batch (16 tasks x 256, nets 300) for a few gradient steps; the others their tests' tiny configs.
The whole plan stops starting new checks when --budget seconds are spent (those are marked skipped).

Without CUDA it says so in one line and exits with code 1. `--device cpu` runs the same plan on the CPU with the
smallest sizes (--no-cuda): a dry run of this file's own logic, which its test uses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run a script as __main__ and record, at exit, how much GPU memory it ever held (0: CUDA never touched).
WRAPPER = """import atexit, json, runpy, sys
import torch
out, path, sys.argv = sys.argv[1], sys.argv[2], sys.argv[2:]
def report():
    used = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
    with open(out, "w") as f:
        json.dump({"cuda_max_memory_mb": round(used / 2**20, 1)}, f)
atexit.register(report)
runpy.run_path(path, run_name="__main__")
"""

# (script, flags of a tiny run, flags added on the GPU, has --bf16). The tiny flags are the tests' small configs.
PEARL_TINY = ["--env", "sparse-point-robot", "--num-iterations", "2", "--num-train-tasks", "16", "--num-initial-steps",
              "40", "--num-tasks-sample", "2", "--num-steps-prior", "40", "--num-steps-posterior", "40",
              "--num-evals", "1", "--eval-interval", "2"]
PEARL_SMALL = ["--num-train-steps-per-itr", "2", "--meta-batch", "2", "--batch-size", "16", "--embedding-batch-size",
               "16", "--net-size", "16", "--encoder-size", "16"]
PEARL_GPU = ["--num-train-steps-per-itr", "20"]  # the paper's networks and batches
SCRIPTS = [
    ("pearl.py", PEARL_TINY, PEARL_SMALL, PEARL_GPU, True),
    ("hfr.py", PEARL_TINY + ["--log-partition-samples", "3", "--relabel-prob", "1"], PEARL_SMALL, PEARL_GPU, True),
    ("hipi.py", ["--env", "four-rooms", "--relabel", "future", "--learning-starts", "30", "--eval-every", "40",
                 "--batch-size", "16", "--hidden", "16", "--num-eval-tasks", "1", "--total-timesteps", "400"], [], [],
     False),
    ("gh_air.py", ["--env", "point-reacher", "--total-timesteps", "120", "--learning-starts", "40", "--grad-steps",
                   "3", "--batch-size", "16", "--hidden", "16", "16", "--num-candidates", "10", "--cache-size", "8",
                   "--eval-every", "2", "--num-eval-tasks", "2"], [], [], False),
    ("mier.py", ["--env", "cheetah-negated-joints", "--num-epochs", "3", "--train-steps", "3", "--initial-repeats",
                 "1", "--tasks-per-epoch", "2", "--steps-prior", "20", "--steps-posterior", "20", "--adapt-batch",
                 "20", "--meta-batch", "3", "--num-eval-tasks", "2", "--relabel-tasks", "2",
                 "--extrapolation-epochs", "2", "--sac-steps-per-epoch", "4", "--relabel-interval", "2",
                 "--rollout-batch", "200", "--cross-tasks", "4", "--sac-hidden", "32,32", "--model-hidden", "32",
                 "--context-steps", "3", "--finetune-steps", "2"], [], [], False),
    ("mcat.py", ["--env", "cheetah-armature", "--horizon", "25", "--learning-starts", "125", "--model-updates", "4",
                 "--translator-updates", "4", "--updates-per-step", "0.2", "--num-train-tasks", "3",
                 "--num-test-tasks", "2", "--transfer-window", "2", "--reward-delay", "10", "--model-batch-size", "32",
                 "--task-feature-batch", "16", "--batch-size", "32", "--sil-batch-size", "32", "--total-timesteps",
                 "600"], [], [], False),
]
GRAD_STEP_CPU = ["--tasks", "2", "--batch", "16", "--context", "8", "--net-size", "16", "--warmup", "1", "--steps", "1",
                 "--repeats", "1"]
GRAD_STEP_GPU = ["--cuda", "--warmup", "3", "--steps", "10", "--repeats", "3"]


def plan(device: str, work: str) -> list[dict]:
    """Every check of this device, in order: name, command, where its output goes, what it must write."""
    gpu = device == "cuda"
    checks = [{"name": "speed.py grad-step" + (" --cuda" if gpu else ""), "kind": "grad-step",
               "cmd": [sys.executable, os.path.join(ROOT, "benchmarks", "speed.py"), "grad-step", "--threads", "1",
                       *(GRAD_STEP_GPU if gpu else GRAD_STEP_CPU), "--name", os.path.join(work, "grad_step")],
               "result": os.path.join(work, "grad_step.json"), "timeout": 150}]
    checks[0]["shown"] = ["python", "benchmarks/speed.py", *checks[0]["cmd"][2:]]
    for script, tiny, small, big, bf16 in SCRIPTS:
        for variant in [[]] + ([["--bf16"]] if bf16 else []):
            name = " ".join([script, "--cuda" if gpu else "--no-cuda", *variant])
            run_dir = os.path.join(work, name.replace(" ", "_").replace("-", ""))
            flags = [*tiny, *(big if gpu else small), "--cuda" if gpu else "--no-cuda", *variant, "--seed", "1",
                     "--run-dir", run_dir]
            checks.append({"name": name, "kind": "script", "run_dir": run_dir,
                           "result": os.path.join(run_dir, "eval.jsonl"),
                           "shown": ["python", script, *flags], "timeout": 90,
                           "cmd": [sys.executable, "-c", WRAPPER, os.path.join(run_dir, "gpu_memory.json"),
                                   os.path.join(ROOT, script), *flags]})
    return checks


def run_check(check: dict, deadline: float, need_gpu: bool) -> dict:
    """Run one check (stopped at its timeout or the plan's deadline) and say whether it passed, and why not."""
    out = {"name": check["name"], "command": " ".join(check["shown"])}
    left = deadline - time.time()
    if left < 15:
        return {**out, "ok": False, "status": "skipped: the time budget is spent"}
    if check["kind"] == "script":
        os.makedirs(check["run_dir"], exist_ok=True)
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        p = subprocess.run(check["cmd"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=min(check["timeout"], left))
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = None, (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    out.update({"rc": rc, "wall_s": round(time.time() - t0, 1), "output_tail": text[-1500:]})
    problems = []
    if rc != 0:
        problems.append("timed out" if rc is None else f"exit code {rc}")
    if not os.path.isfile(check["result"]):
        problems.append(f"no {os.path.basename(check['result'])}")
    elif check["kind"] == "grad-step":
        with open(check["result"]) as f:
            out["grad_step"] = json.load(f)
    else:
        with open(check["result"]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out["iterations_logged"] = len(rows)
        if rows:
            out["last_row"] = {k: v for k, v in rows[-1].items() if k.startswith(("eval/return", "time/", "iteration"))
                               or k in ("env_steps", "global_step", "epoch")}
        if not rows:
            problems.append("empty eval.jsonl")
    if check["kind"] == "script":
        path = os.path.join(check["run_dir"], "gpu_memory.json")
        used = json.load(open(path))["cuda_max_memory_mb"] if os.path.isfile(path) else None
        out["cuda_max_memory_mb"] = used
        if need_gpu and not used:
            problems.append("the GPU was never used (the run fell back to the CPU)")
    out["ok"] = not problems
    out["status"] = "ok" if not problems else "; ".join(problems)
    return out


def device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or "?"}
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    if device == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                     "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)})
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default): the GPU check; cpu: the same plan on the CPU, smallest sizes (a dry run)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_check.json"))
    p.add_argument("--budget", type=float, default=280.0, help="seconds after which no new check starts (default 280)")
    p.add_argument("--only", nargs="*", default=None, help="run only the checks whose name starts with one of these")
    p.add_argument("--list", action="store_true", help="print the plan's commands and exit")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA device here (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda or 'none'}); nothing was run. On a CPU, --device cpu is a dry run.",
              file=sys.stderr)
        return 1
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        checks = plan(args.device, work)
        if args.only is not None:
            checks = [c for c in checks if any(c["name"].startswith(o) for o in args.only)]
        if args.list:
            for c in checks:
                print(c["name"] + ": " + " ".join(c["shown"]))
            return 0
        results = []
        for c in checks:
            results.append(run_check(c, t0 + args.budget, need_gpu=args.device == "cuda"))
            r = results[-1]
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: {r['status']} ({r.get('wall_s', 0):.0f} s)",
                  flush=True)
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "device": args.device,
              **device_info(args.device), "wall_s": round(time.time() - t0, 1), "all_ok": all(r["ok"] for r in results),
              "checks": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{sum(r['ok'] for r in results)}/{len(results)} checks passed in {report['wall_s']:.0f} s; wrote {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
