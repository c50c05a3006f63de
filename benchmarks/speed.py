"""Where the time goes: seconds per iteration split into collect / update / relabel / eval, for any script and env;
for PEARL-based scripts, the cost of one gradient step at paper size, per fp32 kernel and in bf16; and the authors'
PEARL beside pearl.py.

    # per-iteration split: run each script for at most --seconds (then Ctrl-C, which the scripts handle), read the
    # time/* keys of its eval.jsonl, print a table and save benchmarks/results/speed_<env>.json
    python benchmarks/speed.py iteration pearl.py --env sparse-point-robot --seconds 120 \\
        --flags "--num-train-steps-per-itr 200 --eval-interval 1"

    # one gradient step at paper size (16 tasks x 256, context 100, nets 300, obs 20, act 6): fp32 on torch's own
    # path (MKL), fp32 on oneDNN (the scripts' --matmul onednn) and --bf16, median of --steps steps, repeated
    # --repeats times and interleaved (the spread shows how busy the machine was). For each: the step's own matrix
    # products, recorded forward and backward with their kernels and operand layouts, and replayed alone (what a
    # step running them cannot go below), their FLOPs and rate; GFLOP/s per kernel at each layer shape of the step;
    # which kernel --matmul auto picks here; the process's RSS. --cuda: the same on the GPU (fp32 and bf16)
    python benchmarks/speed.py grad-step --threads 1 --clock cpu
    python benchmarks/speed.py grad-step --threads 1 --clock cpu --obs-dim 2 --act-dim 2 --context 1024  # point robot

    # what a paper-size run of a script costs on this machine, and its peak RSS: a 2-iteration run of the paper
    # config for --env with --steps of the gradient steps per iteration (and, if given, fewer initial steps per task
    # and meta-test runs), then measured seconds per env step / gradient step / meta-test run x the paper's counts;
    # CPU time (user + system) of the run as well as wall time, since this machine is shared
    python benchmarks/speed.py cost hfr.py --env sawyer-push --steps 10 --evals 1 --threads 1

    # the authors' PEARL (benchmarks/oyster_reference.py) beside pearl.py fp32 and --bf16 at the paper config: a
    # 2-iteration run of each with --steps gradient steps per iteration, one thread, rotating order per round;
    # seconds per gradient step and per paper-size iteration in CPU time, and peak RSS
    python benchmarks/speed.py versus --oyster ../oyster --env sparse-point-robot --steps 100 --rounds 1 --append

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


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux /proc), e.g. the authors' code under its launcher."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError), open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
            pids += [int(p) for p in f.read().split()]
        i += 1
    return pids


def run_measured(cmd: list[str], threads: int, log_path: str, seconds: float | None = None) -> dict:
    """Run cmd with `threads` OpenMP threads (stopped with SIGINT after `seconds`, if given): its exit code, wall
    time, CPU time (user + system) and peak resident memory, from the kernel's accounting of this child and the
    children it waited for; and, sampled every 0.2 s, the median resident memory and the largest amount of
    transparent huge pages of its largest process (the peak alone moves by ~100 MB between identical runs: short
    transients set it)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    t0, samples = time.time(), []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        stop_at, signals = t0 + seconds if seconds else float("inf"), [signal.SIGINT, signal.SIGKILL]
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            sizes = []
            for p in process_tree(proc.pid):
                with contextlib.suppress(OSError, StopIteration):
                    sizes.append(memory_mb(p))
            if sizes:
                samples.append(max(sizes))
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


def oyster_phases(out_dir: str) -> list[dict]:
    """Per iteration of an authors' run (benchmarks/oyster_reference.py run --out out_dir), from their
    progress.csv: collection, gradient steps and meta-test wall seconds (their 'Sample Time', 'Train Time', and the
    next row's '(Previous) Eval Time', i.e. the meta-test of this iteration: the last iteration's is not logged, the
    one before it stands in) and the env steps."""
    import csv
    import glob

    logs = glob.glob(os.path.join(out_dir, "*", "*", "progress.csv"))
    if len(logs) != 1:
        raise SystemExit(f"error: {out_dir}: expected one <env>/<time>/progress.csv, found {len(logs)}")
    with open(logs[0]) as f:
        rows = list(csv.DictReader(f))
    evals = [float(r["(Previous) Eval Time (s)"]) for r in rows[1:]]
    return [{"collect": float(r["Sample Time (s)"]), "update": float(r["Train Time (s)"]),
             "eval": evals[min(i, len(evals) - 1)] if evals else float("nan"),
             "env_steps": int(float(r["Number of env steps total"]))} for i, r in enumerate(rows)]


def script_phases(run_dir: str) -> list[dict]:
    """The same per iteration of a pearl.py / hfr.py run, from its eval.jsonl (time/collect, time/update, time/eval)."""
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{"collect": r["time/collect"], "update": r["time/update"], "eval": r["time/eval"],
             "env_steps": r["env_steps"]} for r in rows]


def versus(args) -> dict:
    """The authors' PEARL beside pearl.py in fp32 and with --bf16, at the paper config of --env: each a 2-iteration
    run with --steps gradient steps per iteration, one thread, run one after the other in a rotating order for
    --rounds rounds. Per run: CPU and wall time and peak RSS of the process (the kernel's accounting, which includes
    the authors' code run as a child of their launcher), and iteration 2's phases from each code's own log, turned
    from wall into CPU seconds by the run's CPU share; from them seconds per gradient step and per paper-size
    iteration (iteration 2's collection and meta-test + the paper's gradient steps per iteration)."""
    m = load_script(args.script)
    import envs

    paper = m.resolve_args(m.Args(env=args.env), envs.make(args.env))
    base = os.path.join(ROOT, "benchmarks", "runs", "speed", f"versus__{args.env}")
    variants = {"authors": None, "fp32": [], "bf16": ["--bf16"]}
    runs = {v: [] for v in variants}
    if args.append and os.path.exists(args.out_json):
        with open(args.out_json) as f:
            runs = json.load(f)["runs"]
    order, done = list(variants), max(len(rs) for rs in runs.values())
    for r in range(done, done + args.rounds):
        for v in order[r % 3:] + order[:r % 3]:  # rotating, so a busy spell does not always hit the same code
            d = os.path.join(base, f"{v}__{time.strftime('%H%M%S')}")
            if v == "authors":
                cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "oyster_reference.py"), "run", "--oyster",
                       args.oyster, "--env", args.env, "--seed", "1", "--out", d, "num_iterations=2",
                       f"num_train_steps_per_itr={args.steps}"]
            else:
                cmd = [sys.executable, os.path.join(ROOT, args.script), "--env", args.env, "--num-iterations", "2",
                       "--num-train-steps-per-itr", str(args.steps), "--seed", "1", *variants[v], "--run-dir", d]
            os.makedirs(d, exist_ok=True)
            print(f"$ {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
            usage = run_measured(cmd, 1, os.path.join(d, "run.log"))
            if usage["rc"] != 0:
                raise SystemExit(f"error: {v} exited with {usage['rc']}; see {d}/run.log")
            phases = oyster_phases(d) if v == "authors" else script_phases(d)
            share = usage["cpu_s"] / usage["wall_s"]
            two = {k: phases[1][k] * share for k in ("collect", "update", "eval")}
            run = {**usage, "cpu_share": round(share, 3), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                   "iterations_wall": phases, "s_per_step": two["update"] / args.steps,
                   "s_per_iteration": (two["collect"] + two["eval"]
                                       + paper.num_train_steps_per_itr * two["update"] / args.steps),
                   "collect_s": two["collect"], "eval_s": two["eval"]}
            runs[v].append(run)
            print(f"  {v}: {run['s_per_step']:.3f} s per gradient step, {run['s_per_iteration']:.0f} s per paper "
                  f"iteration (collect {two['collect']:.1f} s, eval {two['eval']:.1f} s, CPU share {share:.2f}); peak "
                  f"RSS {usage['peak_rss_mb']:.0f} MB", flush=True)
    summary = {}
    for v, rs in runs.items():
        if rs:
            summary[v] = {k: round(float(np.median([r[k] for r in rs])), 3)
                          for k in ("s_per_step", "s_per_iteration", "collect_s", "eval_s", "peak_rss_mb")}
            summary[v]["runs"] = len(rs)
    print(f"  medians over rounds ({args.env}, paper iteration = collection + {paper.num_train_steps_per_itr} "
          f"gradient steps + meta-test; CPU seconds, one thread):")
    print("    " + f"{'':>8} {'s/step':>8} {'s/iter':>8} {'collect':>8} {'eval':>8} {'peak RSS':>9} {'step x':>7} "
          f"{'iter x':>7}")
    for v, row in summary.items():
        a = summary.get("authors")
        fx = (f"{a['s_per_step'] / row['s_per_step']:7.2f} {a['s_per_iteration'] / row['s_per_iteration']:7.2f}"
              if a else "")
        print("    " + f"{v:>8} {row['s_per_step']:8.3f} {row['s_per_iteration']:8.1f} {row['collect_s']:8.1f} "
              f"{row['eval_s']:8.1f} {row['peak_rss_mb']:7.0f} MB {fx}")
    return {"env": args.env, "steps_per_iteration_measured": args.steps, "script": args.script,
            "paper_steps_per_iteration": paper.num_train_steps_per_itr, "oyster": args.oyster, "runs": runs,
            "median": summary}


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
    autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=a.bf16)
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


def product_ops(torch) -> dict:
    """The matrix products a step can run, each with (positions of its two factors, whether the second is given
    transposed): torch's aten products (forward and backward of its Linear) and oneDNN's linear (x @ w.T + b)."""
    aten = torch.ops.aten
    ops = {aten.mm.default: (0, 1, False), aten.bmm.default: (0, 1, False), aten.addmm.default: (1, 2, False),
           aten.baddbmm.default: (1, 2, False)}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        ops[torch.ops.mkldnn._linear_pointwise.default] = (0, 1, True)
    return ops


def product_flops(record: tuple) -> int:
    """2 x M x K x N (x batch) of one recorded product."""
    func, spec, (i, j, transposed) = record
    a, b = spec[i][1], spec[j][1]
    n = b[-2] if transposed else b[-1]
    batch = a[0] if len(a) == 3 and len(b) == 3 else 1
    rows = int(np.prod(a[:-1])) // batch
    return 2 * batch * rows * a[-1] * n


def step_matmuls(torch, step) -> list[tuple]:
    """Every matrix product one call of `step()` runs, forward and backward, as (op, its arguments, factor
    positions): tensors described by (shape, strides, dtype), everything else as given. Recorded below autograd
    and autocast by a TorchDispatchMode, so they are the kernels the step really calls (torch's BLAS path or
    oneDNN, fp32 or bf16, transposed operands included); `matmuls_ms` replays them alone."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops, found = product_ops(torch), []

    def describe(x):
        if not isinstance(x, torch.Tensor):
            return x
        return "tensor", tuple(x.shape), tuple(x.stride()), x.dtype, x.device.type

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:
                found.append((func, tuple(describe(x) for x in args), ops[func]))
            return func(*args, **(kwargs or {}))

    with Record():
        step()
    return found


def replay_args(torch, spec: tuple, g) -> list:
    """Random tensors with the recorded shapes, strides and dtypes (transposed views stay transposed)."""
    out = []
    for x in spec:
        if isinstance(x, tuple) and x and x[0] == "tensor":
            _, shape, stride, dtype, device = x
            size = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
            base = torch.randn(size, generator=g).to(device=device, dtype=dtype)
            out.append(base.as_strided(shape, stride))
        else:
            out.append(x)
    return out


def matmuls_ms(torch, products: list[tuple], clock, reps: int = 10) -> float:
    """Median time of running just `products` back to back, each with its recorded kernel, operand layouts and
    dtype, on random operands: the step's matmul work with nothing else around it, i.e. what a step running the
    same products cannot beat."""
    g = torch.Generator().manual_seed(2)
    calls = [(func, replay_args(torch, spec, g)) for func, spec, _ in products]
    for func, a in calls:
        func(*a)
    ts = []
    for _ in range(reps):
        t0 = clock()
        for func, a in calls:
            func(*a)
        ts.append(clock() - t0)
    return 1000 * float(np.median(ts))


def gemm_gflops(torch, dtype, rows: int, width: int, clock, reps: int = 30) -> float:
    """Matmul throughput of torch's own path at the step's layer shape: (rows x width) @ (width x width) as forward,
    input-gradient and weight-gradient products, GFLOP/s over all three."""
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


def layer_shapes(torch, agent, step) -> dict:
    """(rows, in, out, input needs a gradient) of every Linear call of one step, distinct, in first-call order ->
    whether autocast was on for it (under --bf16 the value heads run in fp32)."""
    seen = {}

    def hook(module, inputs, output):
        x = inputs[0]
        key = (x.numel() // module.in_features, module.in_features, module.out_features, x.requires_grad)
        seen.setdefault(key, torch.is_autocast_enabled(x.device.type))

    handles = [mod.register_forward_hook(hook) for mod in agent.modules() if isinstance(mod, torch.nn.Linear)]
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_rates(torch, m, shapes: list, autocast: dict, kernels: list[tuple], device, clock, reps: int = 5) -> list:
    """GFLOP/s of one Linear of each shape, forward and backward (input gradient where the step needs it, weight and
    bias gradients), per kernel: (name, fp32 kernel of the script's Linear, bf16 autocast?); a bf16 column runs a
    shape in fp32 where the bf16 step does (`autocast`). Best of `reps` after a warm-up."""
    g = torch.Generator().manual_seed(3)
    rows_out = []
    for shape in shapes:
        rows, n_in, n_out, needs_dx = shape
        layer = m.Linear(n_in, n_out).to(device)
        x = torch.randn(rows, n_in, generator=g).to(device).requires_grad_(needs_dx)
        d = torch.randn(rows, n_out, generator=g).to(device)
        row = {"rows": rows, "in": n_in, "out": n_out, "input_grad": needs_dx}
        for name, kernel, bf16 in kernels:
            m.matmul = kernel
            fwd, bwd = [], []
            for _ in range(reps + 1):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and autocast.get(shape, True)):
                    t0 = clock()
                    y = layer(x)
                    t1 = clock()
                wrt = [x, *layer.parameters()] if needs_dx else list(layer.parameters())
                t2 = clock()
                torch.autograd.grad(y, wrt, d.to(y.dtype))
                t3 = clock()
                fwd.append(t1 - t0), bwd.append(t3 - t2)
            flop = 2 * rows * n_in * n_out
            # three significant digits: a tiny shape on a busy core runs at well under 0.1 GFLOP/s, not at 0
            gflops = lambda f, t: float(f"{f / max(min(t[1:]), 1e-9) / 1e9:.3g}")
            row[name] = {"forward_gflops": gflops(flop, fwd),
                         "backward_gflops": gflops(flop * (2 if needs_dx else 1), bwd)}
        rows_out.append(row)
    return rows_out


def rss_mb() -> tuple[float, float]:
    """(resident memory now, peak resident memory so far) of this process, in MB (Linux VmRSS and VmHWM)."""
    with open("/proc/self/status") as f:
        kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    return round(kb["VmRSS"] / 1024, 1), round(kb["VmHWM"] / 1024, 1)


def grad_step(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("error: --cuda: torch finds no CUDA device here")
    device = torch.device("cuda" if args.cuda else "cpu")
    m = load_script(args.script)
    obs_dim, act_dim, T, B, C = args.obs_dim, args.act_dim, args.tasks, args.batch, args.context
    if args.cuda:
        def clock():
            torch.cuda.synchronize()
            return time.perf_counter()
    else:
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
    # the variants: name -> (bf16, fp32 kernel of the script's Linear). On the CPU fp32 runs on both kernels; bf16
    # products run on oneDNN either way (torch's own bf16 path), so bf16 is timed once
    onednn = not args.cuda and hasattr(m, "fastest_matmul") and torch.backends.mkldnn.is_available()
    variants = {"fp32_default": (False, "default")}
    if onednn:
        variants["fp32_onednn"] = (False, "onednn")
    variants["bf16"] = (True, "onednn" if onednn else "default")
    chosen = m.fastest_matmul(args.net_size) if onednn else "default"
    setup = m.speed_setup(chosen, args.net_size)  # as the script sets itself up at start
    if not args.cuda:
        print("  " + setup, flush=True)
    ctx_dim = obs_dim + act_dim + 1
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(T, B, 2 * obs_dim + act_dim + 2, generator=g)
    batch[..., -1] = 0.0
    context = torch.randn(T, C, ctx_dim, generator=g)
    batch, context = batch.to(device), context.to(device)
    steps = {"script": m.gradient_step}
    if args.naive:
        steps["naive"] = lambda *x: naive_gradient_step(m, *x)
    setups, products, res = {}, {}, {}
    for v, (bf16, kernel) in variants.items():
        a = dataclasses.replace(m.Args(), **{**m.DEFAULTS, "bf16": bf16, "net_size": args.net_size, "batch_size": B,
                                             "embedding_batch_size": C, "meta_batch": T})
        m.matmul = kernel
        for name, step in steps.items():
            torch.manual_seed(0)
            agent = m.PEARL(obs_dim, act_dim, ctx_dim, a).to(device)
            setups[v, name] = (a, agent, m.make_optimizers(agent, a.learning_rate))
            for _ in range(args.warmup):
                step(agent, setups[v, name][2], batch, context, a, obs_dim, act_dim)
        a, agent, optims = setups[v, "script"]
        products[v] = step_matmuls(torch, lambda: m.gradient_step(agent, optims, batch, context, a, obs_dim, act_dim))
    shapes, autocast = {}, {}
    for v, (bf16, kernel) in variants.items():  # the networks' calls (autocast off for some under bf16)
        a, agent, optims = setups[v, "script"]
        m.matmul = kernel
        found = layer_shapes(torch, agent, lambda: m.gradient_step(agent, optims, batch, context, a, obs_dim, act_dim))
        (autocast if bf16 else shapes).update(found)
    timed = {(v, name): [] for v in variants for name in steps}
    mm_only, peaks = {v: [] for v in variants}, {False: [], True: []}
    for _ in range(args.repeats):  # everything interleaved, so a busy spell hits every variant
        for bf16 in (False, True):
            if not args.cuda:
                peaks[bf16].append(gemm_gflops(torch, torch.bfloat16 if bf16 else torch.float32, T * B, args.net_size,
                                               clock))
        for v, (bf16, kernel) in variants.items():
            m.matmul = kernel
            mm_only[v].append(matmuls_ms(torch, products[v], clock))
            for name, step in steps.items():
                a, agent, optims = setups[v, name]
                ts = []
                for _ in range(args.steps):
                    t0 = clock()
                    step(agent, optims, batch, context, a, obs_dim, act_dim)
                    ts.append(clock() - t0)
                timed[v, name].append(1000 * float(np.median(ts)))
        rss_now, rss_peak = rss_mb()
    for v, (bf16, kernel) in variants.items():
        gflop = sum(product_flops(p) for p in products[v]) / 1e9
        for name in steps:
            meds = timed[v, name]
            key = v + ("" if name == "script" else "_naive")
            res[key] = {"kernel": "bf16 autocast" if bf16 else kernel,
                        "median_ms_per_repeat": [round(x, 1) for x in meds],
                        "median_ms": round(float(np.median(meds)), 1),
                        "min_ms": round(min(meds), 1), "max_ms": round(max(meds), 1)}
            print(f"  {key}: {res[key]['median_ms']:.1f} ms per gradient step (repeat medians {res[key]['min_ms']:.1f} "
                  f".. {res[key]['max_ms']:.1f}; {args.repeats} x {args.steps} steps)", flush=True)
        mm = float(np.median(mm_only[v]))
        res[v].update({"gflop_per_step": round(gflop, 2), "matmuls_per_step": len(products[v]),
                       "matmuls_only_ms_per_repeat": [round(x, 1) for x in mm_only[v]], "matmuls_only_ms": round(mm, 2),
                       "x_matmuls_only": round(res[v]["median_ms"] / mm, 2),
                       "matmul_gflops_in_step": round(gflop / mm * 1000, 1)})
        print(f"  {v}: {gflop:.1f} GFLOP of matmuls per step; its {len(products[v])} products replayed alone (same "
              f"kernels and layouts): {mm:.1f} ms ({gflop / mm * 1000:.0f} GFLOP/s); the step takes "
              f"{res[v]['x_matmuls_only']:.2f} x that", flush=True)
        if peaks[bf16]:
            peak = float(np.median(peaks[bf16]))
            res[v].update({"torch_gemm_gflops": round(peak, 1), "floor_ms": round(1000 * gflop / peak, 1),
                           "x_floor": round(res[v]["median_ms"] / (1000 * gflop / peak), 2)})
    rates = layer_rates(torch, m, list(shapes), autocast, [(v, kernel, bf16) for v, (bf16, kernel) in variants.items()],
                        device, clock)
    print("  GFLOP/s per layer shape (forward / backward), best of 5; the step's Linear calls, rows x in -> out:")
    print("    " + f"{'shape':>22} " + " ".join(f"{v:>17}" for v in variants))
    for r in rates:
        shape = f"{r['rows']} x {r['in']} -> {r['out']}" + ("" if r["input_grad"] else "*")
        print("    " + f"{shape:>22} " + " ".join(f"{r[v]['forward_gflops']:7.0f} / {r[v]['backward_gflops']:<7.0f}"
                                                   for v in variants))
    print("    (* no input gradient: the backward is the weight and bias gradients only)")
    fp32 = "fp32_" + chosen
    res["fp32_kernel_auto"] = chosen
    res["speedup_bf16"] = round(res[fp32]["median_ms"] / res["bf16"]["median_ms"], 2)
    res["bf16_over_fp32"] = round(res["bf16"]["median_ms"] / res[fp32]["median_ms"], 2)
    res["layer_gflops"] = rates
    res["rss_mb"], res["peak_rss_mb"] = rss_now, rss_peak
    if args.cuda:
        res["cuda_max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    picks = (f"--matmul auto picks {chosen} here ({', '.join(f'{k} {v:.0f}' for k, v in m.matmul_rates.items())} "
             f"GFLOP/s); " if onednn else "")
    print(f"  {picks}bf16 step / fp32 step ({chosen}) = {res['bf16_over_fp32']:.2f}; RSS {rss_now:.0f} MB now, peak "
          f"{rss_peak:.0f} MB (this process: every variant's networks, optimizers and products)"
          + (f"; GPU memory peak {res['cuda_max_memory_mb']:.0f} MB" if args.cuda else ""), flush=True)
    res["config"] = {"script": args.script, "threads": args.threads, "clock": "wall" if args.cuda else args.clock,
                     "device": torch.cuda.get_device_name() if args.cuda else "cpu", "tasks": T, "batch": B,
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
    gs.add_argument("--cuda", action="store_true", help="on the GPU (wall clock, synchronized); fp32 and bf16")
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
    vs = sub.add_parser("versus", help="the authors' PEARL beside pearl.py fp32 and --bf16: s/step, s/iteration, RSS")
    vs.add_argument("--oyster", required=True, help="the authors' checkout (benchmarks/oyster_reference.py)")
    vs.add_argument("--env", default="sparse-point-robot", choices=["sparse-point-robot", "point-robot"])
    vs.add_argument("--script", default="pearl.py")
    vs.add_argument("--steps", type=int, default=100, help="gradient steps per iteration of each run (default 100)")
    vs.add_argument("--rounds", type=int, default=1, help="rounds of the three runs, rotating their order")
    vs.add_argument("--append", action="store_true", help="add to the runs already in the results file")
    for q in (it, gs, co, vs):
        q.add_argument("--name", default=None, help="results/<name>.json (default speed_<env> / speed_grad_step / "
                                                    "cost_<script>_<env>)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    if args.mode == "iteration":
        res, name = iteration_split(args), args.name or f"speed_{args.env}"
    elif args.mode == "cost":
        res = paper_cost(args)
        name = args.name or f"cost_{os.path.splitext(os.path.basename(args.script))[0]}_{args.env}"
    elif args.mode == "versus":
        name = args.name or f"versus_{args.env}"
        args.out_json = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
        res = versus(args)
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
