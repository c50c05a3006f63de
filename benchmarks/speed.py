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

Both modes keep the machine's other work in mind: they report ranges, not a single best number.
"""

from __future__ import annotations

import argparse
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
KEYS = ("time/collect", "time/update", "time/relabel", "time/eval")


def iteration_split(args) -> dict:
    out = {}
    for script in args.scripts:
        run_dir = os.path.join(ROOT, "benchmarks", "runs", "speed", f"{os.path.splitext(script)[0]}__{args.env}")
        os.makedirs(run_dir, exist_ok=True)
        if os.path.exists(os.path.join(run_dir, "eval.jsonl")):
            os.remove(os.path.join(run_dir, "eval.jsonl"))
        cmd = [sys.executable, script, "--env", args.env, *shlex.split(args.flags), "--run-dir", run_dir]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
        print("$ " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
        with open(os.path.join(run_dir, "stdout.log"), "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=args.seconds)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)  # the scripts stop cleanly; finished iterations are in eval.jsonl
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        path = os.path.join(run_dir, "eval.jsonl")
        rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
        rows = [r for r in rows if all(k in r for k in KEYS)]
        if not rows:
            print(f"  {script}: no iteration with time/* keys finished (see {run_dir}/stdout.log)")
            continue
        table = [[r["iteration"]] + [r[k] for k in KEYS] for r in rows]
        steady = table[1:] or table  # the first iteration also collects the initial pool
        mean = np.mean([t[1:] for t in steady], 0)
        out[script] = {"command": " ".join(cmd[1:]), "threads": args.threads, "iterations": table,
                       "steady_mean": dict(zip(KEYS, mean.round(4).tolist())),
                       "relabel_share_of_iteration": float(mean[2] / max(mean.sum(), 1e-12))}
        print(f"  {script}  (seconds per iteration; steady = mean over iterations after the first)")
        print("    " + f"{'iteration':>9} {'collect':>9} {'update':>9} {'relabel':>9} {'eval':>9} {'total':>9}")
        for t in table:
            print("    " + f"{t[0]:>9} " + " ".join(f"{x:9.3f}" for x in t[1:]) + f" {sum(t[1:]):9.3f}")
        print("    " + f"{'steady':>9} " + " ".join(f"{x:9.3f}" for x in mean) + f" {mean.sum():9.3f}"
              + f"   relabel share {out[script]['relabel_share_of_iteration']:.1%}")
    return out


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
    for q in (it, gs):
        q.add_argument("--name", default=None, help="results/<name>.json (default speed_<env> / speed_grad_step)")
    args = p.parse_args(argv)
    if args.mode == "iteration":
        res, name = iteration_split(args), args.name or f"speed_{args.env}"
    else:
        res, name = grad_step(args), args.name or "speed_grad_step"
    res = {"mode": args.mode, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "load_average_at_end": os.getloadavg(), **res}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
