"""Multi-seed benchmark runner for any of the six scripts.

Runs `python <script> --env ENV <common flags> <variant flags> --seed S --run-dir DIR` for every variant x seed,
in parallel worker processes (one torch / OpenMP thread each), then reads every run's eval.jsonl and writes
    benchmarks/results/<name>.json   every run's evaluations, per-variant mean +- std curves, final values, timings
    benchmarks/results/<name>.png    learning curves: mean +- std over seeds vs env steps, one panel per metric
Run directories (stdout.log, eval.jsonl, TensorBoard, checkpoint) go to benchmarks/runs/<name>/<variant>__seed<S>/.

Example (two variants, three seeds, two workers):
    python benchmarks/run.py pearl.py --env sparse-point-robot --name spr-fp32-vs-bf16 \\
        --common "--num-iterations 40 --net-size 64" --variant fp32= --variant bf16=--bf16 --seeds 1 2 3

The results file is rewritten each time a run ends, holding the runs ended so far, so an interrupted comparison
keeps its finished runs and `--reuse` goes on from them; with `--resume-unfinished` as well, a run that was cut off
continues from the checkpoint.pt in its run directory instead of starting over (runs longer than one sitting).
With `--reuse`, the finished runs the file holds at other seeds of the same variants and commands stay in it, so a
comparison can go seed by seed over sittings (`--seeds 1`, later `--seeds 2 3`) without losing any.
`--plot-only` rebuilds the JSON and PNG from the run directories of an earlier invocation (same arguments).
The scripts' shared conventions make this work for all of them: `--env`, `--seed`, `--run-dir`, and one JSON
line per evaluation in run_dir/eval.jsonl with "iteration", "env_steps", "eval/return" (+ "eval/success_rate").

`--backend ray` runs the same commands on a Ray cluster instead (`--ray-address HEAD_IP:6379` joins a running
one, `auto` the one this machine belongs to; without it a local Ray instance is started), one Ray task per
(variant, seed) run with `--cpus-per-run` CPUs (default 1, also the run's torch / OpenMP threads) and
`--gpus-per-run` GPUs. Every node needs the requirements installed, nothing else; no file system is shared:
  - the driver (this process) zips the repository's code (without run and result folders) and puts it into
    Ray's object store once; each node unpacks it once into <tmp>/meta-rl-benchmarks-<uid>/code/<hash>/;
  - a task runs the script with a node-local run directory, <tmp>/meta-rl-benchmarks-<uid>/runs/<run>/run/, and
    every SYNC_SECONDS (2 s) sends back what changed in it, as one item of a streaming generator: whole files
    where they were replaced (checkpoint.pt, which the scripts write with an atomic rename), only the appended
    bytes where a file grew (eval.jsonl, TensorBoard events, and the script's output, whole lines, with the
    node-local path replaced by the driver's, for stdout.log). The driver writes each item into the run's
    directory under benchmarks/runs/ at once, so that directory is a copy of the run as of at most SYNC_SECONDS
    ago, and --resume-unfinished can continue from it after the driver itself was stopped;
  - an item is consistent: checkpoint files are read first and the other files after them, and the driver
    writes the other files first and the checkpoint last, so the eval.jsonl beside a checkpoint always holds
    every row up to the checkpoint's iteration (the scripts write an iteration's row before its checkpoint; rows
    after it are written again by a resumed run, and read_evals keeps the later copy);
  - a run whose task died (its worker process killed, its node lost, out of memory) is retried once, with
    --resume where a checkpoint exists, and says so. The retry asks for the same node first (soft affinity),
    where the script, which gets SIGTERM when its task's process dies (PR_SET_PDEATHSIG), has left its last
    checkpoint in the node-local run directory: the retry continues from that one, so a killed worker process
    loses only the work since the script's last checkpoint. A file lock held by the task and by its script
    makes the retry wait until both are gone. A retry on another node (the first one is gone) continues from
    the copy sent back, losing at most the work since the last checkpoint that reached the driver (SYNC_SECONDS
    plus the time to send it). A finished task deletes its node-local run directory; <tmp>/meta-rl-benchmarks-*
    can be deleted on any node where no run is going.
Results JSON / PNG, stdout.log (each sitting's command line, then the script's output) and wall_s.txt are the
same as with the local backend; a retried run counts two segments, as a continued one does.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("script", help="one of the six scripts, e.g. pearl.py (relative to the repository root)")
    p.add_argument("--env", required=True, help="task family passed as --env")
    p.add_argument("--name", required=True, help="benchmark name: results/<name>.json, results/<name>.png")
    p.add_argument("--common", default="", help="flags given to every run (one quoted string)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                   help="a variant: label and its extra flags (repeatable; default: one variant 'default=')")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs in parallel (default 2), one thread each; --backend local only")
    p.add_argument("--metrics", nargs="+", default=["eval/return", "eval/success_rate"],
                   help="eval.jsonl keys to plot and summarize (missing keys are skipped)")
    p.add_argument("--timeout", type=float, default=None, help="kill a run after this many seconds")
    p.add_argument("--plot-only", action="store_true", help="do not run; rebuild JSON and PNG from the run dirs")
    p.add_argument("--reuse", action="store_true",
                   help="skip every run that results/<name>.json already holds as finished (exit 0) with the same\n"
                        "command, writing its eval.jsonl back from that file; run only the rest. A long comparison\n"
                        "can so be finished in parts (commit the JSON after each) on different machines")
    p.add_argument("--reuse-from", action="append", default=[], metavar="NAME",
                   help="also reuse finished runs that results/NAME.json holds under the same variant label and\n"
                        "command (repeatable; implies --reuse). E.g. an ablation whose baseline variant is a run\n"
                        "another comparison already made, flag for flag and seed for seed")
    p.add_argument("--resume-unfinished", action="store_true",
                   help="a run to be made whose run dir already holds a checkpoint.pt from the same command (an\n"
                        "earlier invocation was cut off) continues from it with the script's --resume, keeping its\n"
                        "eval.jsonl and stdout.log; without this flag such a run starts over")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks"), help="folder holding results/ and runs/")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: worker processes on this machine (default); ray: one Ray task per run, on a local\n"
                        "Ray instance or, with --ray-address, on a running cluster (see the module docstring)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="join this running Ray cluster (HEAD_IP:6379, or auto on one of its nodes) instead of\n"
                        "starting a local Ray instance")
    p.add_argument("--cpus-per-run", type=int, default=None, metavar="N",
                   help="CPUs Ray reserves for each run, also its torch / OpenMP threads (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="N",
                   help="GPUs Ray reserves for each run (default 0; give the script's GPU flag in --common)")
    args = p.parse_args(argv)
    args.reuse = args.reuse or bool(args.reuse_from)
    ray_only = [f for f, v in (("--ray-address", args.ray_address), ("--cpus-per-run", args.cpus_per_run),
                               ("--gpus-per-run", args.gpus_per_run)) if v is not None]
    if args.backend == "local" and ray_only:
        p.error(f"{', '.join(ray_only)}: only with --backend ray")
    if args.backend == "ray" and args.workers is not None:
        p.error("--workers: only with --backend local; on Ray the cluster's CPUs and --cpus-per-run decide how many "
                "runs go at a time")
    args.workers = 2 if args.workers is None else args.workers
    args.cpus_per_run = 1 if args.cpus_per_run is None else args.cpus_per_run
    args.gpus_per_run = 0.0 if args.gpus_per_run is None else args.gpus_per_run
    if args.cpus_per_run < 1:
        p.error(f"--cpus-per-run {args.cpus_per_run}: must be >= 1")
    if args.gpus_per_run < 0:
        p.error(f"--gpus-per-run {args.gpus_per_run:g}: must be >= 0")
    if args.workers <= 0 or not args.seeds:
        p.error("--workers must be positive and --seeds non-empty")
    variants = []
    for v in args.variant or ["default="]:
        label, sep, flags = v.partition("=")
        if not sep or not label or "/" in label:
            p.error(f"--variant must be LABEL=FLAGS with a plain label, got {v!r}")
        variants.append((label, flags))
    if len({label for label, _ in variants}) != len(variants):
        p.error("variant labels must be distinct")
    if not os.path.isfile(os.path.join(ROOT, args.script)):
        p.error(f"no script {args.script} in {ROOT}")
    args.variants = variants
    return args


def run_one(cmd: list[str], run_dir: str, timeout: float | None, resume: bool = False) -> dict:
    """Run one benchmark process with one thread; its stdout and stderr go to run_dir/stdout.log.
    With `resume` and a checkpoint.pt in run_dir, the run continues from it (`--resume`): stdout.log is appended
    to, and the wall time is the sum over the run's segments (kept in run_dir/wall_s.txt, one line per segment).
    A segment is written there as `open <start time>` while it runs, so that one whose runner was killed (not only
    one whose script died) still counts: it lasted until the last write to stdout.log."""
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    ckpt, seg_file = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "wall_s.txt")
    log_path = os.path.join(run_dir, "stdout.log")
    segments = read_segments(seg_file, log_path) if resume else []
    cmd = cmd + ["--resume", ckpt] if resume else cmd
    t0 = time.time()
    write_segments(seg_file, segments + [f"open {t0:.1f}"])
    with open(log_path, "a" if resume else "w") as log:
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    segments.append(round(time.time() - t0, 1))
    write_segments(seg_file, segments)
    r = {"rc": rc, "wall_s": round(sum(segments), 1)}
    return {**r, "segments": len(segments)} if len(segments) > 1 else r


def read_segments(seg_file: str, log_path: str) -> list[float]:
    """The durations in run_dir/wall_s.txt; a segment left `open` by a killed runner ends at its log's last write."""
    if not os.path.exists(seg_file):
        return []
    with open(seg_file) as f:
        lines = [line.split() for line in f if line.strip()]
    return [round(os.path.getmtime(log_path) - float(w[1]), 1) if w[0] == "open" else float(w[0]) for w in lines]


def write_segments(seg_file: str, segments: list) -> None:
    with open(seg_file + ".tmp", "w") as f:
        f.writelines(f"{x}\n" for x in segments)
    os.replace(seg_file + ".tmp", seg_file)


def can_continue(run_dir: str, cmd: list[str]) -> bool:
    """A cut-off run can continue when its run dir holds a checkpoint.pt written by this very command (the first
    line of its stdout.log); a checkpoint left by other flags is never continued from."""
    try:
        with open(os.path.join(run_dir, "stdout.log")) as f:
            first = f.readline()
    except OSError:
        return False
    return os.path.isfile(os.path.join(run_dir, "checkpoint.pt")) and shlex.split(first) == cmd


def without_run_dir(command: list[str]) -> list[str]:
    """A run's command without its --run-dir value (the folder differs between machines, the run does not)."""
    i = command.index("--run-dir")
    return command[:i] + command[i + 2:]


def reuse_finished(results_paths: list[str], jobs: list, restore: bool = True) -> dict:
    """Runs of `jobs` that earlier results files hold as finished with the same label and command: their status
    (rc 0, wall time, "reused") by (label, seed), and with `restore` their eval.jsonl written back into the run
    dir. Without `restore` (--plot-only, which only rebuilds the files) a run is marked "reused" only if it already
    was. The first file holding a run wins."""
    olds = []
    for path in results_paths:
        if os.path.isfile(path):
            with open(path) as f:
                olds.append(json.load(f))
    done = {}
    for label, seed, run_dir, cmd in jobs:
        for old in olds:
            prev = old.get("variants", {}).get(label, {}).get("seeds", {}).get(str(seed))
            if (prev and prev.get("rc") == 0 and prev.get("evals")
                    and without_run_dir(shlex.split(prev["command"])) == without_run_dir(cmd[1:])):
                break
        else:
            continue
        if restore:
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
                f.writelines(json.dumps(e) + "\n" for e in prev["evals"])
        done[(label, seed)] = {"rc": 0, "wall_s": prev.get("wall_s"),
                               **({"segments": prev["segments"]} if "segments" in prev else {}),
                               # with `restore` off (--plot-only) a run keeps the mark it had, if any
                               **({"reused": True} if restore or prev.get("reused") else {})}
    return done


def other_seeds(out: str, args, runs_root: str) -> dict:
    """Finished runs that the results file at `out` holds for this invocation's variants but at seeds it does not
    run, made with the command this invocation would give them: kept in the file as they are, so that a sitting
    which runs `--seeds 1` of a comparison does not drop its seeds 2 and 3 (seed-major runs over several
    sittings). By label, then seed (str)."""
    if not os.path.isfile(out):
        return {}
    with open(out) as f:
        old = json.load(f).get("variants", {})
    kept = {}
    for label, flags in args.variants:
        for seed, run in old.get(label, {}).get("seeds", {}).items():
            if int(seed) in args.seeds or run.get("rc") != 0 or not run.get("evals"):
                continue
            cmd = ([args.script, "--env", args.env] + shlex.split(args.common) + shlex.split(flags)
                   + ["--seed", seed, "--run-dir", os.path.join(runs_root, f"{label}__seed{seed}")])
            if without_run_dir(shlex.split(run["command"])) == without_run_dir(cmd):
                kept.setdefault(label, {})[seed] = run
    return kept


def read_evals(run_dir: str) -> list[dict]:
    """The run's eval.jsonl rows. A run continued from a checkpoint repeats the iterations after that checkpoint,
    so where an iteration appears twice the later row (the one the finished run went on from) is kept."""
    path = os.path.join(run_dir, "eval.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    key = [("iteration", r["iteration"]) if "iteration" in r else ("row", i) for i, r in enumerate(rows)]
    last = {k: i for i, k in enumerate(key)}  # rows without an iteration are all kept
    return [r for i, r in enumerate(rows) if last[key[i]] == i]


def curve(runs: list[list[dict]], metric: str) -> dict | None:
    """Mean +- std over seeds at each evaluation index (runs share the eval schedule); x = mean env steps."""
    runs = [r for r in runs if r and all(metric in e for e in r)]
    if not runs:
        return None
    n = min(len(r) for r in runs)
    y = np.array([[e[metric] for e in r[:n]] for r in runs], dtype=float)
    x = np.array([[e["env_steps"] for e in r[:n]] for r in runs], dtype=float).mean(0)
    return {"env_steps": x.tolist(), "mean": y.mean(0).tolist(), "std": y.std(0).tolist(), "n_seeds": len(runs),
            "final_mean": float(y[:, -1].mean()), "final_std": float(y[:, -1].std())}


def plot(path: str, title: str, results: dict, metrics: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if any(m in v["curves"] for v in results.values())]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    one_point = all(len(c["env_steps"]) == 1 for v in results.values() for c in v["curves"].values())
    for ax, m in zip(axes[0], shown):
        if one_point:  # one evaluation per run (e.g. hipi.py --mode bc): bars of mean +- std over seeds
            bars = [(label, v["curves"][m]) for label, v in results.items() if m in v["curves"]]
            ax.bar(range(len(bars)), [c["mean"][0] for _, c in bars], yerr=[c["std"][0] for _, c in bars],
                   capsize=4, color=[f"C{i}" for i in range(len(bars))])
            ax.set_xticks(range(len(bars)), [f"{label}\n({c['n_seeds']} seeds)" for label, c in bars], fontsize=8)
            ax.set_ylabel(m)
            ax.grid(alpha=0.3, axis="y")
            continue
        for label, v in results.items():
            c = v["curves"].get(m)
            if c is None:
                continue
            x, mu, sd = np.array(c["env_steps"]), np.array(c["mean"]), np.array(c["std"])
            line, = ax.plot(x, mu, label=f"{label} ({c['n_seeds']} seeds)")
            ax.fill_between(x, mu - sd, mu + sd, alpha=0.25, color=line.get_color())
            p = v["curves"].get(m + "_prior")  # the level before adaptation (z from the prior), dashed
            if p is not None:
                ax.plot(p["env_steps"], p["mean"], "--", color=line.get_color(), label=f"{label}, z from the prior")
        ax.set_xlabel("env steps")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 60 * len(shown)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(args, jobs: list, status: dict, out: str, final: bool) -> None:
    """Write results/<name>.json and .png. Before the end (`final` False) only the runs that have ended so far
    (those in `status`), so that `--reuse` can go on from them after an interruption; at the end every run."""
    results = {}
    for label, flags in args.variants:
        per_seed = {}
        for lab, seed, run_dir, cmd in jobs:
            if lab == label and (final or (lab, seed) in status):
                per_seed[str(seed)] = {"command": " ".join(shlex.quote(c) for c in cmd[1:]),
                                       **status.get((lab, seed), {}), "evals": read_evals(run_dir)}
        per_seed.update(getattr(args, "kept", {}).get(label, {}))  # other seeds' finished runs from an earlier sitting
        if not per_seed:
            continue
        per_seed = dict(sorted(per_seed.items(), key=lambda kv: int(kv[0])))
        runs = [s["evals"] for s in per_seed.values()]
        times = {k: float(np.mean([e[k] for r in runs for e in r if k in e])) for k in
                 ("time/collect", "time/update", "time/relabel", "time/eval") if any(k in e for r in runs for e in r)}
        metrics = args.metrics + [m + "_prior" for m in args.metrics]  # e.g. eval/return_prior where logged
        results[label] = {"flags": flags, "curves": {m: c for m in metrics if (c := curve(runs, m)) is not None},
                          "mean_seconds_per_iteration": times, "seeds": per_seed}
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump({"name": args.name, "script": args.script, "env": args.env, "common": args.common,
                   "seeds": sorted(set(args.seeds) | {int(k) for v in getattr(args, "kept", {}).values() for k in v}),
                   "variants": results}, f, indent=1)
    os.replace(out + ".tmp", out)  # never a half-written results file
    png = os.path.join(args.out, "results", f"{args.name}.png")
    plot(png, f"{args.script} --env {args.env} {args.common}", results, args.metrics)
    if not final:
        return
    print(f"wrote {out} and {png}")
    for label, v in results.items():
        summary = ", ".join(f"{m} {c['final_mean']:.3f} +- {c['final_std']:.3f} (n={c['n_seeds']})"
                            for m, c in v["curves"].items() if c)
        print(f"  {label}: final {summary or 'no evaluations'}")
        for m in args.metrics:  # the average over all evaluations of a run: the docs' "averaged over the run"
            # over the evaluations that log m as a number (relabel/hit_rate is NaN where no decision informed
            # it), as benchmarks/table.py averages; a run with none is left out
            logged = [[e[m] for e in s["evals"] if isinstance(e.get(m), (int, float)) and not math.isnan(e[m])]
                      for s in v["seeds"].values()]
            per_run = [np.mean(ys) for ys in logged if ys]
            if per_run:
                print(f"    {m} averaged over the run {np.mean(per_run):.3f} (per seed "
                      + ", ".join(f"{x:.2f}" for x in per_run) + ")")


class Tally:
    """The runner's progress: one line per finished run and then `k of n runs finished, ETA h:mm:ss`. The ETA
    assumes that every run still to finish takes the mean time of the runs finished so far in this invocation,
    `parallel` at a time: the running ones for what is left of that mean, the waiting ones after them."""

    def __init__(self, n: int, parallel: int):
        self.n, self.parallel, self.k = n, parallel, 0
        self.durations, self.running = [], {}

    def started(self, key) -> None:
        self.running.setdefault(key, time.time())

    def finished(self, key, label: str, seed: int, r: dict) -> None:
        t0 = self.running.pop(key, None)
        if t0 is not None:
            self.durations.append(time.time() - t0)
        self.k += 1
        print(f"  {label} seed {seed}: exit {r['rc']} after {r['wall_s']:.0f} s", flush=True)
        left = self.eta()
        print(f"{self.k} of {self.n} runs finished" + (f", ETA {hms(left)}" if left is not None else ""), flush=True)

    def eta(self) -> float | None:
        if self.k >= self.n:
            return None
        if not self.durations:
            return None
        now = time.time()
        return eta_seconds(float(np.mean(self.durations)), [now - t for t in self.running.values()],
                           self.n - self.k - len(self.running), self.parallel)


def eta_seconds(mean_s: float, running_s: list[float], waiting: int, parallel: int) -> float:
    """Seconds until the last run ends when each takes `mean_s`: the running ones (run for `running_s` so far)
    end after what is left of it, and each waiting one starts in the first slot that frees up."""
    slots = sorted(max(mean_s - r, 0.0) for r in running_s)
    slots += [0.0] * max(parallel - len(slots), 0)
    for _ in range(waiting):
        i = int(np.argmin(slots))
        slots[i] += mean_s
    return max(slots, default=0.0)


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---- the Ray backend (see the module docstring); only `--backend ray` imports ray ----------------------------------

SYNC_SECONDS = 2.0  # how often a task sends back what changed in its run directory
NOT_SYNCED = ("stdout.log", "wall_s.txt")  # the driver's own files in a run dir, never sent to or from a task

# Started in front of the script, in the task: ask Linux to send the script SIGTERM when the task's process dies
# (PR_SET_PDEATHSIG, kept across exec), then become the script. The scripts stop on SIGTERM with their last
# checkpoint on disk; without it an orphaned script would run on beside its own retry.
PDEATHSIG_EXEC = """import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass  # not Linux: no parent-death signal
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)  # the task died before the signal was set up
os.execv(sys.argv[2], sys.argv[2:])
"""


def code_bundle(root: str, skip: list[str]) -> tuple[bytes, str]:
    """The repository as the scripts need it on a node: a zip of `root` without version control, virtual
    environments, caches, run folders and the folders in `skip`, and its hash. The zip is the same bytes for the
    same files (sorted, fixed dates), so a node unpacks it once however often the same code is sent."""
    skip = {os.path.abspath(d) for d in skip}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x not in ("__pycache__", "venv", "runs",
                             "videos") and os.path.abspath(os.path.join(d, x)) not in skip)
            for name in sorted(files):
                if name.endswith((".pyc", ".pt", ".tmp")):
                    continue
                path = os.path.join(d, name)
                info = zipfile.ZipInfo(os.path.relpath(path, root), date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as f:
                    z.writestr(info, f.read())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:16]


def file_sig(st) -> list:
    """What tells a file's versions apart: inode (a rename over it makes a new one), size, modification time."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def changes_since(run_dir: str, sent: dict) -> tuple[dict, list]:
    """What changed in run_dir since `sent` (name -> signature of what the driver has; updated here): a whole
    file for a new or replaced one, only the new bytes for one that grew in place, and the names of files gone.
    Checkpoint files (*.pt) are read first, so the logs read after them cover at least their iteration."""
    names = []
    for d, _, files in os.walk(run_dir):
        names += [os.path.relpath(os.path.join(d, f), run_dir) for f in files if not f.endswith(".tmp")]
    names = sorted((n for n in names if n not in NOT_SYNCED), key=lambda n: (not n.endswith(".pt"), n))
    files = {}
    for name in names:
        try:
            f = open(os.path.join(run_dir, name), "rb")
        except OSError:  # removed meanwhile
            continue
        with f:
            sig = file_sig(os.fstat(f.fileno()))
            old = sent.get(name)
            if old == sig:
                continue
            if old and old[0] == sig[0] and sig[1] > old[1] and not name.endswith(".pt"):
                f.seek(old[1])
                files[name] = ["append", old[1], f.read(sig[1] - old[1])]
            else:
                files[name] = ["write", f.read(sig[1])]
            sent[name] = sig
    present = set(names)
    gone = [n for n in sent if n not in present]
    for n in gone:
        del sent[n]
    return files, gone


def apply_changes(run_dir: str, files: dict, gone: list) -> None:
    """Write a task's changes into the driver's run dir: other files first, checkpoints last (each whole file by
    an atomic rename), so that a driver killed in between still has logs covering its checkpoint."""
    for name in gone:
        if os.path.exists(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))
    for name in sorted(files, key=lambda n: (n.endswith(".pt"), n)):
        path = os.path.join(run_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        change = files[name]
        if change[0] == "write":
            with open(path + ".tmp", "wb") as f:
                f.write(change[1])
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT)
            try:
                os.pwrite(fd, change[2], change[1])
                os.ftruncate(fd, change[1] + len(change[2]))
            finally:
                os.close(fd)


def run_dir_files(run_dir: str, names=None) -> dict:
    """The files of a run dir to start a task from (all but the driver's own and temporary ones, or `names`)."""
    out = {}
    for d, _, files in os.walk(run_dir):
        for f in files:
            name = os.path.relpath(os.path.join(d, f), run_dir)
            if name in NOT_SYNCED or f.endswith(".tmp") or (names is not None and name not in names):
                continue
            with open(os.path.join(run_dir, name), "rb") as fh:
                out[name] = fh.read()
    return out


def ray_task(code: bytes, code_hash: str, argv: list[str], key: str, token: str, mode: str, files: dict,
             sent: dict, stdout_from: int, threads: int, timeout: float | None, sync_seconds: float):
    """One run as a Ray task (a streaming generator). Yields first {"node", "host", "resume", "kept", "sent",
    "tail"}, then {"files", "gone", "sigs", "stdout", "stdout_read"} with what changed, every `sync_seconds`, and
    last {"rc", "seconds"}. `argv` is the script's command without the interpreter; its --run-dir value (the
    driver's run dir) is replaced by the node-local run dir, and back again in the output sent to the driver.
    `mode`: "fresh" (start from an empty run dir), "continue" (start from `files`, with --resume if they hold a
    checkpoint.pt) or "retry": like "continue", but where an earlier try of the same run (`token`) left its run
    dir on this node, keep it, since it is at least as new as `files` (the driver's copy, whose signatures there
    are `sent`); its output after the first `stdout_from` bytes, which never reached the driver, is the "tail"."""
    import fcntl

    base = os.path.join(tempfile.gettempdir(), f"meta-rl-benchmarks-{os.getuid()}")
    code_dir = os.path.join(base, "code", code_hash)
    if not os.path.isdir(code_dir):  # unpack once per node; of two tasks doing it at once, one wins the rename
        os.makedirs(os.path.dirname(code_dir), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(code_dir))
        zipfile.ZipFile(io.BytesIO(code)).extractall(tmp)
        try:
            os.rename(tmp, code_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    work = os.path.join(base, "runs", key)
    os.makedirs(work, exist_ok=True)
    lock = os.open(os.path.join(work, "lock"), os.O_CREAT | os.O_RDWR)
    # One try at a time in this run dir: the lock is held by this task and by its script (which inherits it), so a
    # retry waits here until both of an earlier try are gone, even when the script outlives its task.
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield from ray_try(work, lock, code_dir, argv, token, mode, files, sent, stdout_from, threads, timeout,
                           sync_seconds)
    finally:
        os.close(lock)


def ray_try(work: str, lock: int, code_dir: str, argv: list[str], token: str, mode: str, files: dict, sent: dict,
            stdout_from: int, threads: int, timeout: float | None, sync_seconds: float):
    """The part of `ray_task` that runs while holding the run's lock (see there)."""
    import ray

    run_dir, token_file, out_path = (os.path.join(work, n) for n in ("run", "token", "stdout.txt"))
    driver_dir = argv[argv.index("--run-dir") + 1]

    def as_driver(output: bytes) -> bytes:  # the script's output as a run in the driver's run dir prints it
        return output.replace(run_dir.encode(), driver_dir.encode())

    kept, tail = False, b""
    if mode == "retry" and os.path.isdir(run_dir) and os.path.isfile(token_file):
        with open(token_file) as f:
            kept = f.read() == token
    if kept and os.path.isfile(out_path):
        with open(out_path, "rb") as f:
            f.seek(stdout_from)
            tail = as_driver(f.read())
    if not kept:
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir)
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(run_dir, name)), exist_ok=True)
            with open(os.path.join(run_dir, name), "wb") as f:
                f.write(data)
        sent = {name: file_sig(os.stat(os.path.join(run_dir, name))) for name in files}
        with open(token_file, "w") as f:
            f.write(token)
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    resume = mode != "fresh" and os.path.isfile(ckpt)
    if not resume and os.listdir(run_dir):  # nothing to continue from: start over in an empty run dir
        shutil.rmtree(run_dir)
        os.makedirs(run_dir)
        sent = {}
    argv = list(argv)
    argv[argv.index("--run-dir") + 1] = run_dir
    argv += ["--resume", ckpt] if resume else []
    yield {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "resume": resume,
           "kept": kept, "sent": dict(sent), "tail": tail}

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0, rc, read = time.time(), None, 0
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", PDEATHSIG_EXEC, str(os.getpid()), sys.executable] + argv,
                                cwd=code_dir, env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock,))
    try:
        while rc is None:
            try:
                rc = proc.wait(timeout=sync_seconds)
            except subprocess.TimeoutExpired:
                if timeout is not None and time.time() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    rc = "timeout"
            changed, gone = changes_since(run_dir, sent)
            with open(out_path, "rb") as f:  # whole lines while the script runs (a path is never cut in two)
                f.seek(read)
                stdout = f.read()
            if rc is None:
                stdout = stdout[:stdout.rfind(b"\n") + 1]
            read += len(stdout)
            if changed or gone or stdout:
                yield {"files": changed, "gone": gone, "sigs": {n: sent[n] for n in changed},
                       "stdout": as_driver(stdout), "stdout_read": read}
    finally:  # this task failed or was cancelled while its script runs: the script must not run on without it
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    seconds = time.time() - t0
    shutil.rmtree(work, ignore_errors=True)  # everything is at the driver now; no other try can be in it (lock)
    yield {"rc": rc, "seconds": seconds}


def run_on_ray(args, jobs_to_run: list, resuming: list, tally: Tally, finished, lock, runs_root: str) -> None:
    """Run every job as a Ray task (see the module docstring); `finished(job, status)` as each one ends, `lock`
    held while printing."""
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        raise SystemExit("error: --backend ray: the ray package is not installed (pip install -r requirements.txt)")

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=args.ray_address or "local", log_to_driver=False,
                     **({} if args.ray_address else {"include_dashboard": False}))
        except (ConnectionError, ray.exceptions.RayError) as e:
            raise SystemExit(f"error: --ray-address {args.ray_address}: cannot connect ({type(e).__name__}); a "
                             "cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token and its "
                             "token here (~/.ray/auth_token or RAY_AUTH_TOKEN), or --ray-address auto on one of its "
                             "nodes")
    module = sys.modules.get(ray_task.__module__)
    if module is not None and ray_task.__module__ != "__main__":  # workers cannot import this file by name
        ray.cloudpickle.register_pickle_by_value(module)
    code, code_hash = code_bundle(ROOT, [os.path.join(d, sub) for d in (args.out, os.path.join(ROOT, "benchmarks"))
                                         for sub in ("runs", "results")])
    code_ref = ray.put(code)
    task = ray.remote(ray_task)
    resources = {"num_cpus": args.cpus_per_run, "num_gpus": args.gpus_per_run, "max_retries": 0}  # retried here
    cluster = ray.cluster_resources()
    parallel = int(cluster.get("CPU", 0) // args.cpus_per_run)
    if args.gpus_per_run > 0:
        parallel = min(parallel, int(cluster.get("GPU", 0) // args.gpus_per_run))
    print(f"{len(jobs_to_run)} runs on Ray ({cluster.get('CPU', 0):.0f} CPUs, {cluster.get('GPU', 0):.0f} GPUs: "
          f"{parallel} at a time with {args.cpus_per_run} CPU(s)"
          + (f" and {args.gpus_per_run:g} GPU(s)" if args.gpus_per_run else "")
          + f" per run); logs in {runs_root}/<variant>__seed<S>/stdout.log", flush=True)
    if parallel == 0:
        print("warning: no node of the cluster has the CPUs / GPUs one run asks for: the runs wait until one joins",
              flush=True)
    tally.parallel, generators = max(parallel, 1), {}

    def say(text):
        with lock:
            print(text, flush=True)

    def work_or_fail(job):
        try:
            work(job)
        except Exception as e:  # a fault of this runner, not of the run: report it and go on with the others
            say(f"  {job[0]} seed {job[1]}: runner error {type(e).__name__}: {e}")
            finished(job, {"rc": f"runner error ({type(e).__name__})", "wall_s": 0.0})

    def work(job):
        label, seed, run_dir, cmd = job
        os.makedirs(run_dir, exist_ok=True)
        seg_file, log_path = os.path.join(run_dir, "wall_s.txt"), os.path.join(run_dir, "stdout.log")
        mode = "continue" if job in resuming else "fresh"
        segments = read_segments(seg_file, log_path) if mode == "continue" else []
        key = f"{args.name}__{label}__seed{seed}-" + hashlib.sha256(
            f"{socket.gethostname()}:{os.path.abspath(run_dir)}".encode()).hexdigest()[:12]
        token, sent, node, tries, stdout_read, died = uuid.uuid4().hex, {}, None, 0, 0, ""
        files = run_dir_files(run_dir) if mode == "continue" else {}
        while True:
            options = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)} if node else {}
            options.update(resources)
            sent_before = dict(sent)
            gen = task.options(**options).remote(code_ref, code_hash, cmd[1:], key, token, mode, files, sent,
                                                 stdout_read, args.cpus_per_run, args.timeout, SYNC_SECONDS)
            generators[(label, seed)] = gen
            t0 = t_last = None
            result = None
            try:
                for ref in gen:
                    item = ray.get(ref)
                    t_last = time.time()
                    if "node" in item:  # the task has started on a node
                        t0, node, sent = t_last, item["node"], item["sent"]
                        tally.started((label, seed))
                        if tries and not item["resume"]:  # the retry starts over: so does the run dir
                            for name in set(sent_before) - set(sent):
                                if os.path.exists(os.path.join(run_dir, name)):
                                    os.remove(os.path.join(run_dir, name))
                        header = cmd + ["--resume", os.path.join(run_dir, "checkpoint.pt")] if item["resume"] else cmd
                        with open(log_path, "w" if mode == "fresh" else "a") as log:
                            log.write(item["tail"].decode(errors="replace") + died
                                      + " ".join(shlex.quote(c) for c in header) + "\n")
                        died, stdout_read = "", 0
                        write_segments(seg_file, segments + [f"open {t0:.1f}"])
                        if tries:
                            say(f"  {label} seed {seed}: retry started on {item['host']}, "
                                + ("from the checkpoint its first try left on that node" if item["kept"] else
                                   "from the checkpoint sent back" if item["resume"] else "from the start"))
                    elif "rc" in item:
                        result = item
                    else:
                        apply_changes(run_dir, item["files"], item["gone"])
                        for name in item["gone"]:
                            sent.pop(name, None)
                        sent.update(item["sigs"])  # the task's view of what the driver has, for a retry there
                        if item["stdout"]:
                            with open(log_path, "ab") as log:
                                log.write(item["stdout"])
                        stdout_read = item["stdout_read"]
            except ray.exceptions.RayError as e:
                error = type(e).__name__
            else:
                error = None if result is not None else "no result"
            if t0 is not None:
                segments.append(round((result["seconds"] if result else t_last - t0), 1))
                write_segments(seg_file, segments)
            if error is None:
                r = {"rc": result["rc"], "wall_s": round(sum(segments), 1)}
                break
            died += f"[benchmarks/run.py] the Ray task running this died ({error})\n"
            if tries == 1:
                say(f"  {label} seed {seed}: its Ray task died again ({error}); giving up on this run")
                with open(log_path, "a") as log:
                    log.write(died)
                r = {"rc": f"task died ({error})", "wall_s": round(sum(segments), 1)}
                break
            tries = 1
            if t0 is not None:
                mode = "retry"
            has_ckpt = os.path.isfile(os.path.join(run_dir, "checkpoint.pt")) and (
                mode == "continue" or "checkpoint.pt" in sent)
            say(f"  {label} seed {seed}: its Ray task died ({error}); retrying once from its last checkpoint"
                + ("" if has_ckpt else " (none has come back yet: from the start unless the node kept one)"))
            files = run_dir_files(run_dir, None if mode == "continue" else set(sent))
        if len(segments) > 1:
            r["segments"] = len(segments)
        finished(job, r)

    threads = [threading.Thread(target=work_or_fail, args=(job,), daemon=True) for job in jobs_to_run]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=1.0)
    except KeyboardInterrupt:  # stop the tasks; the run dirs keep what was sent back, for --resume-unfinished
        for gen in generators.values():
            try:
                ray.cancel(gen, force=True)
            except Exception:
                pass
        raise
    finally:
        if started_here:
            ray.shutdown()


def main(argv=None):
    args = parse_args(argv)
    runs_root = os.path.join(args.out, "runs", args.name)
    jobs = []
    for label, flags in args.variants:
        for seed in args.seeds:
            run_dir = os.path.join(runs_root, f"{label}__seed{seed}")
            cmd = ([sys.executable, args.script, "--env", args.env] + shlex.split(args.common) + shlex.split(flags)
                   + ["--seed", str(seed), "--run-dir", run_dir])
            jobs.append((label, seed, run_dir, cmd))
    out = os.path.join(args.out, "results", f"{args.name}.json")
    # --plot-only keeps the exit codes and wall times the results file already holds for the same commands
    sources = [out] + [os.path.join(args.out, "results", f"{n}.json") for n in args.reuse_from]
    for path in sources[1:]:
        if not os.path.isfile(path):
            raise SystemExit(f"error: --reuse-from: no results file {path}")
    status = reuse_finished(sources, jobs, restore=not args.plot_only) if args.reuse or args.plot_only else {}
    args.kept = other_seeds(out, args, runs_root) if args.reuse or args.plot_only else {}
    if args.kept:
        print(f"keeping {sum(map(len, args.kept.values()))} finished run(s) of other seeds from {out}: "
              + ", ".join(f"{l} seed {s}" for l, v in args.kept.items() for s in v))
    if status and not args.plot_only:
        print(f"reusing {len(status)} finished run(s) from {', '.join(sources)}: "
              + ", ".join(f"{l} seed {s}" for l, s in status))
    if not args.plot_only:
        jobs_to_run = [j for j in jobs if (j[0], j[1]) not in status]
        resuming = [j for j in jobs_to_run if args.resume_unfinished and can_continue(j[2], j[3])]
        for _, _, run_dir, _ in jobs_to_run:  # fresh eval.jsonl (the scripts append to it) unless the run continues
            if os.path.exists(os.path.join(run_dir, "eval.jsonl")) and not any(run_dir == j[2] for j in resuming):
                os.remove(os.path.join(run_dir, "eval.jsonl"))
        if resuming:
            print(f"continuing {len(resuming)} cut-off run(s) from their checkpoint: "
                  + ", ".join(f"{l} seed {s}" for l, s, _, _ in resuming))
        t0 = time.time()
        tally, lock = Tally(len(jobs_to_run), args.workers), threading.Lock()

        def finished(job, r):
            label, seed = job[0], job[1]
            with lock:  # every finished run goes into the results file at once: an interruption keeps it
                status[(label, seed)] = r
                tally.finished((label, seed), label, seed, r)
                write_results(args, jobs, status, out, final=False)

        if args.backend == "ray" and jobs_to_run:
            run_on_ray(args, jobs_to_run, resuming, tally, finished, lock, runs_root)
        else:
            print(f"{len(jobs_to_run)} runs, {args.workers} at a time; "
                  f"logs in {runs_root}/<variant>__seed<S>/stdout.log")

            def work(job):
                tally.started((job[0], job[1]))
                finished(job, run_one(job[3], job[2], args.timeout, resume=job in resuming))

            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(work, jobs_to_run))
        print(f"all runs finished in {time.time() - t0:.0f} s")

    write_results(args, jobs, status, out, final=True)
    failed = [k for k, r in status.items() if r["rc"] != 0]
    if failed:
        raise SystemExit(f"error: {len(failed)} run(s) failed: {failed}; see their stdout.log")


if __name__ == "__main__":
    main()
