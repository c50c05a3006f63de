"""MCAT's Table-1 experiment (one source -> target pair) from finished `mcat.py --mode transfer` runs.

A `--mode transfer` run logs the source policy's TD3 learning curve on the source task (all rows but the last)
and then one row with the transfer result: `eval/source_on_source_return` (the source policy on its own task),
`eval/source_policy_return` (the same policy on the target task) and `eval/return` (the translated policy
H(s, pi(s), z_src, z_tgt) on the target task), with the standard errors of the last two over episodes.
Writes `results/<name>.json` (per run and mean +- std, and the paired difference transferred - source on the
target) and `results/<name>.png` (left: the source policy's learning curve; right: the three returns per run, with the
standard error over episodes, and their mean +- std over runs).

    python benchmarks/mcat_transfer.py benchmarks/runs/mcat-transfer-cheetah-armature/pair_0.1_to_0.5__seed{1,2,3} \\
        --name mcat-transfer-cheetah-armature-table1
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = [("eval/source_on_source_return", "source policy on source"),
        ("eval/source_policy_return", "source policy on target"),
        ("eval/return", "transferred policy on target")]


def read_run(run_dir):
    path = os.path.join(run_dir, "eval.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no eval.jsonl in {run_dir}")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or "eval/source_policy_return" not in rows[-1]:
        raise SystemExit(f"error: {run_dir} has no transfer row; was it a finished mcat.py --mode transfer run?")
    return rows[:-1], rows[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="finished mcat.py --mode transfer run directories (one per seed)")
    p.add_argument("--name", default="mcat-transfer-table1", help="results/<name>.json and .png")
    args = p.parse_args()
    runs = [read_run(d) for d in args.run_dirs]
    finals = {key: [final[key] for _, final in runs] for key, _ in KEYS}
    gain = [t - s for t, s in zip(finals["eval/return"], finals["eval/source_policy_return"])]
    result = {
        "command": " ".join(sys.argv),
        "n_runs": len(runs),
        "pair": {"source_task": runs[0][1].get("source_task"), "target_task": runs[0][1].get("target_task")},
        "per_run": [{"run_dir": d, **{k: final[k] for k, _ in KEYS},
                     "transferred_stderr": final.get("eval/transferred_stderr"),
                     "source_stderr": final.get("eval/source_stderr")} for d, (_, final) in zip(args.run_dirs, runs)],
        "mean": {k: float(np.mean(v)) for k, v in finals.items()},
        "std": {k: float(np.std(v)) for k, v in finals.items()},
        "transferred_minus_source_on_target": {"per_run": gain, "mean": float(np.mean(gain)),
                                               "std": float(np.std(gain)),
                                               "runs_above": int(sum(g > 0 for g in gain))},
    }
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (curve, _) in enumerate(runs):
        a0.plot([r["env_steps"] for r in curve], [r["eval/return"] for r in curve], "o-", ms=3, label=f"run {i + 1}")
    a0.set(xlabel="source-task env steps", ylabel="return on the source task (dense reward)",
           title="source policy: TD3 on the source task")
    a0.grid(alpha=0.3)
    a0.legend(fontsize=8)
    width = 0.8 / len(KEYS)
    for j, (key, label) in enumerate(KEYS):
        x = np.arange(len(runs) + 1) + (j - 1) * width
        vals = finals[key] + [result["mean"][key]]
        stderr = {"eval/return": "transferred_stderr", "eval/source_policy_return": "source_stderr"}.get(key)
        err = [(r[stderr] or 0.0) if stderr else 0.0 for r in result["per_run"]] + [result["std"][key]]
        a1.bar(x, vals, width, yerr=err, capsize=3, color=f"C{j}", label=label)
    a1.set_xticks(np.arange(len(runs) + 1), [f"run {i + 1}" for i in range(len(runs))] + ["mean ± std"])
    a1.axhline(0, color="k", lw=0.5)
    src, tgt = result["pair"]["source_task"], result["pair"]["target_task"]
    a1.set(ylabel="episode return", title=f"transfer {src} -> {tgt} (Table 1)")
    a1.grid(alpha=0.3, axis="y")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{args.name}.png"), dpi=110)
    m = result["mean"]
    print(f"on the target: source policy {m['eval/source_policy_return']:.1f}, transferred {m['eval/return']:.1f} "
          f"(above in {result['transferred_minus_source_on_target']['runs_above']} of {len(runs)} runs); "
          f"source policy on source {m['eval/source_on_source_return']:.1f}")


if __name__ == "__main__":
    main()
