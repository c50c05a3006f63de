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
`--plot-only` rebuilds the JSON and PNG from the run directories of an earlier invocation (same arguments).
The scripts' shared conventions make this work for all of them: `--env`, `--seed`, `--run-dir`, and one JSON
line per evaluation in run_dir/eval.jsonl with "iteration", "env_steps", "eval/return" (+ "eval/success_rate").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
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
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (default 2), one thread each")
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
    args = p.parse_args(argv)
    args.reuse = args.reuse or bool(args.reuse_from)
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
        if not per_seed:
            continue
        runs = [s["evals"] for s in per_seed.values()]
        times = {k: float(np.mean([e[k] for r in runs for e in r if k in e])) for k in
                 ("time/collect", "time/update", "time/relabel", "time/eval") if any(k in e for r in runs for e in r)}
        metrics = args.metrics + [m + "_prior" for m in args.metrics]  # e.g. eval/return_prior where logged
        results[label] = {"flags": flags, "curves": {m: c for m in metrics if (c := curve(runs, m)) is not None},
                          "mean_seconds_per_iteration": times, "seeds": per_seed}
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump({"name": args.name, "script": args.script, "env": args.env, "common": args.common,
                   "seeds": args.seeds, "variants": results}, f, indent=1)
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
            per_run = [np.mean([e[m] for e in s["evals"]]) for s in v["seeds"].values()
                       if s["evals"] and all(m in e for e in s["evals"])]
            if per_run:
                print(f"    {m} averaged over the run {np.mean(per_run):.3f} (per seed "
                      + ", ".join(f"{x:.2f}" for x in per_run) + ")")


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
        print(f"{len(jobs_to_run)} runs, {args.workers} at a time; logs in {runs_root}/<variant>__seed<S>/stdout.log")
        t0 = time.time()

        lock = threading.Lock()

        def work(job):
            label, seed, run_dir, cmd = job
            r = run_one(cmd, run_dir, args.timeout, resume=job in resuming)
            print(f"  {label} seed {seed}: exit {r['rc']} after {r['wall_s']:.0f} s", flush=True)
            with lock:  # every finished run goes into the results file at once: an interruption keeps it
                status[(label, seed)] = r
                write_results(args, jobs, status, out, final=False)

        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(work, jobs_to_run))
        print(f"all runs finished in {time.time() - t0:.0f} s")

    write_results(args, jobs, status, out, final=True)
    failed = [k for k, r in status.items() if r["rc"] != 0]
    if failed:
        raise SystemExit(f"error: {len(failed)} run(s) failed: {failed}; see their stdout.log")


if __name__ == "__main__":
    main()
