"""Where the time goes: seconds per iteration split into collect / update / relabel / eval, for any script and env;
and, for PEARL-based scripts, the cost of one gradient step at paper size in fp32 and bf16.

    # per-iteration split: run each script for at most --seconds (then Ctrl-C, which the scripts handle), read the
    # time/* keys of its eval.jsonl, print a table and save benchmarks/results/speed_<env>.json
    python benchmarks/speed.py iteration pearl.py --env sparse-point-robot --seconds 120 \\
        --flags "--num-train-steps-per-itr 200 --eval-interval 1"

    # one gradient step at paper size (16 tasks x 256, context 100, nets 300, obs 20, act 6), fp32 vs --bf16,
    # median of --steps steps, repeated --repeats times (the spread shows how busy the machine was); also the
    # step's matmul FLOPs (torch's FlopCounterMode), this machine's matmul rate at the layer shape, measured
    # between the repeats, and the step time as a multiple of FLOPs / rate (the floor); and the step's own matmuls
    # (recorded by shape, forward and backward) replayed alone: the time an eager step running them cannot go below
    python benchmarks/speed.py grad-step --threads 2

    # what a paper-size run of a script costs on this machine, and its peak RSS: a 2-iteration run of the paper
    # config for --env with --steps of the gradient steps per iteration (and, if given, fewer initial steps per task
    # and meta-test runs), then measured seconds per env step / gradient step / meta-test run x the paper's counts;
    # CPU time (user + system) of the run as well as wall time, since this machine is shared
    python benchmarks/speed.py cost hfr.py --env sawyer-push --steps 10 --evals 1 --threads 1

All modes keep the machine's other work in mind: they report ranges or CPU time, not a single best number, and
results/*.json record the CPU model, the date and the load average. benchmarks/speed.md collects the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("time/collect", "time/update", "time/eval")  # hfr.py's time/relabel is a part of time/collect and time/update


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with its family / model numbers (which tell AMD generations apart)."""
    info = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    amx = " AMX" if "amx_tile" in info.get("flags", "") else ""
    return (f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')}{amx}), {os.cpu_count()} CPUs")


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident memory, anonymous transparent huge pages) of process pid now, in MB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    with open(f"/proc/{pid}/smaps_rollup") as f:
        huge = next((int(line.split()[1]) for line in f if line.startswith("AnonHugePages")), 0)
    return rss / 1024, huge / 1024


def run_measured(cmd: list[str], threads: int, log_path: str, seconds: float | None = None) -> dict:
    """Run cmd with `threads` OpenMP threads (stopped with SIGINT after `seconds`, if given): its exit code, wall
    time, CPU time (user + system) and peak resident memory, from the kernel's accounting of this very child; and,
    sampled every 0.2 s, its median resident memory and its largest amount of transparent huge pages (the peak
    alone moves by ~100 MB between identical runs: short transients set it)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    t0, samples = time.time(), []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        stop_at, signals = t0 + seconds if seconds else float("inf"), [signal.SIGINT, signal.SIGKILL]
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(OSError, StopIteration):
                samples.append(memory_mb(proc.pid))
            if time.time() > stop_at and signals:  # the scripts stop cleanly on SIGINT: finished iterations are
                proc.send_signal(signals.pop(0))  # in eval.jsonl; SIGKILL 30 s later if it did not
                stop_at += 30
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss, huge = zip(*samples) if samples else ((0.0,), (0.0,))
    return {"rc": proc.returncode, "wall_s": round(time.time() - t0, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "median_rss_mb": round(float(np.median(rss)), 1), "max_huge_pages_mb": round(max(huge), 1)}



def iteration_split(args) -> dict:
    out = {}
    for script in args.scripts:
        run_dir = os.path.join(ROOT, "benchmarks", "runs", "speed", f"{os.path.splitext(script)[0]}__{args.env}")
        os.makedirs(run_dir, exist_ok=True)
        if os.path.exists(os.path.join(run_dir, "eval.jsonl")):
            os.remove(os.path.join(run_dir, "eval.jsonl"))
        cmd = [sys.executable, script, "--env", args.env, *shlex.split(args.flags), "--run-dir", run_dir]
        print("$ " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
        usage = run_measured(cmd, args.threads, os.path.join(run_dir, "stdout.log"), args.seconds)
        path = os.path.join(run_dir, "eval.jsonl")
        rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
        rows = [r for r in rows if all(k in r for k in KEYS)]
        if not rows:
            print(f"  {script}: no iteration with time/* keys finished (see {run_dir}/stdout.log)")
            continue
        table = [[r["iteration"]] + [r[k] for k in KEYS] + [r.get("time/relabel", 0.0)] for r in rows]
        steady = table[1:] or table  # the first iteration also collects the initial pool
        mean = np.mean([t[1:] for t in steady], 0)
        out[script] = {"command": " ".join(cmd[1:]), "threads": args.threads, "iterations": table,
                       "steady_mean": dict(zip(KEYS + ("time/relabel",), mean.round(4).tolist())),
                       "relabel_share_of_iteration": float(mean[3] / max(mean[:3].sum(), 1e-12)), **usage}
        print(f"  {script}  (seconds per iteration; steady = mean over iterations after the first; relabel is a "
              f"part of collect and update; peak RSS {usage['peak_rss_mb']:.0f} MB)")
        print("    " + f"{'iteration':>9} {'collect':>9} {'update':>9} {'eval':>9} {'relabel':>9} {'total':>9}")
        for t in table:
            print("    " + f"{t[0]:>9} " + " ".join(f"{x:9.3f}" for x in t[1:]) + f" {sum(t[1:4]):9.3f}")
        print("    " + f"{'steady':>9} " + " ".join(f"{x:9.3f}" for x in mean) + f" {mean[:3].sum():9.3f}"
              + f"   relabel share {out[script]['relabel_share_of_iteration']:.1%}")
    return out


def paper_cost(args) -> dict:
    """What a paper-size run of args.script costs here: a 2-iteration run of the paper config for --env with
    --steps gradient steps per iteration (and --initial-steps / --evals if given), the rates it measures (iteration
    1 minus iteration 2 is the initial pool), times the paper's counts of env steps, gradient steps and meta-test runs.
    Each phase is also scaled by CPU time / wall time of the run: the cost on a core this run had to itself."""
    m = load_script(args.script)
    import envs

    paper = m.resolve_args(m.Args(env=args.env), envs.make(args.env))  # every None field: the --env value
    initial = args.initial_steps or paper.num_initial_steps
    evals = args.evals or paper.num_evals
    name = f"{os.path.splitext(os.path.basename(args.script))[0]}__{args.env}"
    run_dir = os.path.join(ROOT, "benchmarks", "runs", "speed", f"cost__{name}")
    if os.path.isdir(run_dir):
        import shutil

        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    cmd = [sys.executable, os.path.join(ROOT, args.script), "--env", args.env, "--num-iterations", "2",
           "--num-train-steps-per-itr", str(args.steps), "--num-initial-steps", str(initial), "--num-evals",
           str(evals), *shlex.split(args.flags), "--run-dir", run_dir]
    print("$ " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    usage = run_measured(cmd, args.threads, os.path.join(run_dir, "stdout.log"))
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        one, two = [json.loads(line) for line in f]
    phases = price(paper, one, two, args.steps, evals)  # seconds at paper size, from this run's wall times
    per_iteration = phases["collect_per_iteration"] + phases["update_per_iteration"] + phases["eval_per_iteration"]
    total = phases["initial_pool"] + paper.num_iterations * per_iteration
    cpu_share = usage["cpu_s"] / usage["wall_s"]  # < 1 when other work took this run's core
    out = {"script": args.script, "env": args.env, "cpu": cpu_model(), "threads": args.threads, "command": cmd[1:],
           **usage, "cpu_share": round(cpu_share, 3), "measured": {"iteration_1": one, "iteration_2": two},
           "paper": {k: getattr(paper, k) for k in ("num_iterations", "num_train_steps_per_itr", "num_initial_steps",
                                                     "num_train_tasks", "num_evals", "meta_batch", "batch_size")},
           "paper_seconds_wall": {k: round(v, 1) for k, v in phases.items()},
           "paper_seconds_per_iteration_wall": round(per_iteration, 1), "paper_hours_wall": round(total / 3600, 2),
           "paper_seconds_per_iteration_cpu": round(per_iteration * cpu_share, 1),
           "paper_hours_cpu": round(total * cpu_share / 3600, 2)}
    print(f"  {args.script} --env {args.env}: {per_iteration:.0f} s per paper iteration ({paper.num_iterations} of "
          f"them) + {phases['initial_pool']:.0f} s initial pool = {total / 3600:.1f} h of wall time here; scaled by "
          f"this run's CPU share {cpu_share:.2f}: {per_iteration * cpu_share:.0f} s per iteration, "
          f"{total * cpu_share / 3600:.1f} h; peak RSS {usage['peak_rss_mb']:.0f} MB, median "
          f"{usage['median_rss_mb']:.0f} MB, huge pages up to {usage['max_huge_pages_mb']:.0f} MB (rc {usage['rc']})",
          flush=True)
    return out


def price(paper, one: dict, two: dict, steps: int, evals: int) -> dict:
    """Seconds of a paper-size run's phases from the eval.jsonl rows of a 2-iteration run with `steps` gradient
    steps and `evals` meta-test runs per task: the initial pool at iteration 1's rate of env steps beyond
    iteration 2's (the relabeler's seconds taken out of both: hfr.py relabels during collection), iteration 2's
    collection as it is, its gradient steps and meta-test runs scaled to the paper's counts."""
    env_s = [r["time/collect"] - r.get("time/relabel", 0.0) for r in (one, two)]
    initial_steps = 2 * one["env_steps"] - two["env_steps"]  # iteration 1's env steps minus iteration 2's
    return {"initial_pool": (env_s[0] - env_s[1]) / initial_steps * paper.num_initial_steps * paper.num_train_tasks,
            "collect_per_iteration": two["time/collect"],
            "update_per_iteration": two["time/update"] / steps * paper.num_train_steps_per_itr,
            "eval_per_iteration": two["time/eval"] / evals * paper.num_evals}


def load_script(path: str):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, ROOT)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def naive_gradient_step(m, agent, optims, batch, context, a, obs_dim, act_dim):
    """The same update written the straightforward way, for comparison only: (tasks, batch, .) 3-D tensors, the
    policy loss backpropagated into the Q weights, one backward per loss. Same networks, same result."""
    import torch
    import torch.nn.functional as F

    o, b = obs_dim, obs_dim + act_dim
    obs, act, rew, nobs, done = batch[..., :o], batch[..., o:b], batch[..., b:b + 1], batch[..., b + 1:b + 1 + o], batch[..., -1:]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)
    with autocast:
        mu, var = agent.encoder(context)
        z = m.sample_z(mu, var)[:, None].expand(-1, obs.shape[1], -1)
        action, log_pi, mean, log_std = agent.policy(obs, z.detach())
        q1, q2 = (q(torch.cat([obs, act, z], -1)).float() for q in (agent.qf1, agent.qf2))
        v = agent.vf(torch.cat([obs, z.detach()], -1)).float()
        with torch.no_grad():
            y = a.reward_scale * rew + (1 - done) * a.discount * agent.target_vf(torch.cat([nobs, z], -1)).float()
    for k in optims:
        optims[k].zero_grad()
    (a.kl_lambda * m.kl_to_standard_normal(mu, var).sum()).backward(retain_graph=True)
    (F.mse_loss(q1, y) + F.mse_loss(q2, y)).backward()
    optims["qf"].step(), optims["encoder"].step()
    with autocast:
        x = torch.cat([obs, action, z.detach()], -1)
        min_q = torch.min(agent.qf1(x), agent.qf2(x)).float()
    F.mse_loss(v, (min_q - log_pi).detach()).backward()
    optims["vf"].step()
    with torch.no_grad():
        torch._foreach_lerp_(list(agent.target_vf.parameters()), list(agent.vf.parameters()), a.soft_target_tau)
    ((log_pi - min_q).mean() + 1e-3 * mean.square().mean() + 1e-3 * log_std.square().mean()).backward()
    optims["policy"].step()


def gemm_gflops(torch, dtype, rows: int, width: int, clock, reps: int = 30) -> float:
    """Matmul throughput at the step's layer shape: (rows x width) @ (width x width) as forward, input-gradient
    and weight-gradient products, GFLOP/s over all three. The gradient step cannot beat its FLOPs at this rate."""
    g = torch.Generator().manual_seed(1)
    x, d = (torch.randn(rows, width, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(width, width, generator=g).to(dtype)
    products = (lambda: x @ w, lambda: d @ w.t(), lambda: d.t() @ x)
    for f in products:
        f()
    t0 = clock()
    for _ in range(reps):
        for f in products:
            f()
    return 3 * reps * 2 * rows * width * width / (clock() - t0) / 1e9


def step_matmuls(torch, step) -> list[tuple]:
    """Every matrix product one call of `step()` runs, forward and backward, as (batched?, shape of A, shape of B,
    dtype), recorded below autograd and autocast by a TorchDispatchMode. Replayed alone by `matmuls_ms`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    operands = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.addmm.default: (1, 2),
                aten.baddbmm.default: (1, 2)}
    found = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in operands:
                i, j = operands[func]
                found.append((args[i].dim() == 3, tuple(args[i].shape), tuple(args[j].shape), args[i].dtype))
            return func(*args, **(kwargs or {}))

    with Record():
        step()
    return found


def matmuls_ms(torch, products: list[tuple], clock, reps: int = 10) -> float:
    """Median time of running just `products` back to back on contiguous random operands of their shapes: the
    step's matmul work with nothing else around it, i.e. what an eager version running the same products cannot beat."""
    g = torch.Generator().manual_seed(2)
    ops = [(torch.bmm if batched else torch.mm, torch.randn(a, generator=g).to(dt), torch.randn(b, generator=g).to(dt))
           for batched, a, b, dt in products]
    for f, x, y in ops:
        f(x, y)
    ts = []
    for _ in range(reps):
        t0 = clock()
        for f, x, y in ops:
            f(x, y)
        ts.append(clock() - t0)
    return 1000 * float(np.median(ts))


def grad_step(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    m = load_script(args.script)
    obs_dim, act_dim, T, B, C = args.obs_dim, args.act_dim, args.tasks, args.batch, args.context
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    res = {}
    for bf16 in (False, True):
        a = dataclasses.replace(m.Args(), **{**m.DEFAULTS, "bf16": bf16, "net_size": args.net_size, "batch_size": B,
                                             "embedding_batch_size": C, "meta_batch": T})
        ctx_dim = obs_dim + act_dim + 1
        g = torch.Generator().manual_seed(0)
        batch = torch.randn(T, B, 2 * obs_dim + act_dim + 2, generator=g)
        batch[..., -1] = 0.0
        context = torch.randn(T, C, ctx_dim, generator=g)
        steps = {"script": lambda *x: m.gradient_step(*x)}
        if args.naive:
            steps["naive"] = lambda *x: naive_gradient_step(m, *x)
        setups = {}
        for name in steps:
            torch.manual_seed(0)
            agent = m.PEARL(obs_dim, act_dim, ctx_dim, a)
            setups[name] = (agent, m.make_optimizers(agent, a.learning_rate))
            for _ in range(args.warmup):
                steps[name](*setups[name], batch, context, a, obs_dim, act_dim)
        with FlopCounterMode(display=False) as counter:  # matmul FLOPs of one step, forward and backward
            steps["script"](*setups["script"], batch, context, a, obs_dim, act_dim)
        gflop = counter.get_total_flops() / 1e9
        products = step_matmuls(torch, lambda: steps["script"](*setups["script"], batch, context, a, obs_dim, act_dim))
        dtype = torch.bfloat16 if bf16 else torch.float32
        medians, peaks, mm_only = {name: [] for name in steps}, [], []
        for _ in range(args.repeats):  # variants interleaved, so a busy spell hits both
            peaks.append(gemm_gflops(torch, dtype, T * B, args.net_size, clock))
            mm_only.append(matmuls_ms(torch, products, clock))
            for name, step in steps.items():
                ts = []
                for _ in range(args.steps):
                    t0 = clock()
                    step(*setups[name], batch, context, a, obs_dim, act_dim)
                    ts.append(clock() - t0)
                medians[name].append(1000 * float(np.median(ts)))
        for name, meds in medians.items():
            key = ("bf16" if bf16 else "fp32") + ("" if name == "script" else "_naive")
            res[key] = {"median_ms_per_repeat": [round(x, 1) for x in meds], "median_ms": round(float(np.median(meds)), 1),
                        "min_ms": round(min(meds), 1), "max_ms": round(max(meds), 1)}
            print(f"  {key}: {res[key]['median_ms']:.1f} ms per gradient step (repeat medians "
                  f"{res[key]['min_ms']:.1f} .. {res[key]['max_ms']:.1f}; {args.repeats} x {args.steps} steps)", flush=True)
        key = "bf16" if bf16 else "fp32"
        peak = float(np.median(peaks))
        floor_ms = 1000 * gflop / peak
        res[key].update({"gflop_per_step": round(gflop, 2), "gemm_gflops_per_repeat": [round(x, 1) for x in peaks],
                         "gemm_gflops": round(peak, 1), "floor_ms": round(floor_ms, 1),
                         "x_floor": round(res[key]["median_ms"] / floor_ms, 2),
                         "matmuls_per_step": len(products),
                         "matmuls_only_ms_per_repeat": [round(x, 1) for x in mm_only],
                         "matmuls_only_ms": round(float(np.median(mm_only)), 2),
                         "x_matmuls_only": round(res[key]["median_ms"] / float(np.median(mm_only)), 2)})
        print(f"  {key}: {gflop:.1f} GFLOP per step; matmul {peak:.0f} GFLOP/s at {T * B} x {args.net_size} x "
              f"{args.net_size} -> floor {floor_ms:.1f} ms; the step takes {res[key]['x_floor']:.2f} x the floor",
              flush=True)
        print(f"  {key}: the step's {len(products)} matmuls alone, replayed on contiguous operands: "
              f"{res[key]['matmuls_only_ms']:.1f} ms (repeats {min(mm_only):.1f} .. {max(mm_only):.1f}); the step "
              f"takes {res[key]['x_matmuls_only']:.2f} x that", flush=True)
    res["speedup_bf16"] = round(res["fp32"]["median_ms"] / res["bf16"]["median_ms"], 2)
    res["config"] = {"script": args.script, "threads": args.threads, "clock": args.clock, "tasks": T, "batch": B,
                     "context": C, "net_size": args.net_size, "obs_dim": obs_dim, "act_dim": act_dim,
                     "torch": torch.__version__}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    it = sub.add_parser("iteration", help="collect / update / relabel / eval seconds per iteration")
    it.add_argument("scripts", nargs="+", help="scripts to compare, e.g. pearl.py hfr.py")
    it.add_argument("--env", required=True)
    it.add_argument("--flags", default="", help="extra flags for every script (one quoted string)")
    it.add_argument("--seconds", type=float, default=120.0, help="stop each run after this long (default 120)")
    it.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the run (default 2)")
    gs = sub.add_parser("grad-step", help="one gradient step of a PEARL-based script, fp32 vs bf16")
    gs.add_argument("--script", default="pearl.py")
    gs.add_argument("--threads", type=int, default=2)
    gs.add_argument("--tasks", type=int, default=16)
    gs.add_argument("--batch", type=int, default=256)
    gs.add_argument("--context", type=int, default=100)
    gs.add_argument("--net-size", type=int, default=300)
    gs.add_argument("--obs-dim", type=int, default=20)
    gs.add_argument("--act-dim", type=int, default=6)
    gs.add_argument("--warmup", type=int, default=5)
    gs.add_argument("--steps", type=int, default=20)
    gs.add_argument("--repeats", type=int, default=5)
    gs.add_argument("--naive", action="store_true",
                    help="also time a straightforward version of the same update (3-D tensors, Q weight gradients "
                         "in the policy loss, one backward per loss), interleaved with the script's")
    gs.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (with --threads 1 it is robust to other "
                         "jobs taking the cores, which stretch the wall time)")
    co = sub.add_parser("cost", help="what a paper-size run costs here (and its peak RSS), from a 2-iteration run")
    co.add_argument("script", help="pearl.py or hfr.py")
    co.add_argument("--env", required=True)
    co.add_argument("--steps", type=int, default=10, help="gradient steps per iteration of the measured run")
    co.add_argument("--initial-steps", type=int, default=None, help="initial transitions per task (default: paper)")
    co.add_argument("--evals", type=int, default=None, help="meta-test runs per task (default: paper)")
    co.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the run (default 1)")
    co.add_argument("--flags", default="", help="extra flags for the script (one quoted string)")
    for q in (it, gs, co):
        q.add_argument("--name", default=None, help="results/<name>.json (default speed_<env> / speed_grad_step / "
                                                    "cost_<script>_<env>)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    if args.mode == "iteration":
        res, name = iteration_split(args), args.name or f"speed_{args.env}"
    elif args.mode == "cost":
        res = paper_cost(args)
        name = args.name or f"cost_{os.path.splitext(os.path.basename(args.script))[0]}_{args.env}"
    else:
        res, name = grad_step(args), args.name or "speed_grad_step"
    res = {"mode": args.mode, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu_model(),
           "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(), **res}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
