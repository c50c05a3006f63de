"""MCAT's Table-1 experiment (one source -> target pair) from finished `mcat.py --mode transfer` runs.

A `--mode transfer` run logs the source policy's TD3 learning curve on the source task (all rows but the last)
and then one row with the transfer result: `eval/source_on_source_return` (the source policy on its own task),
`eval/source_policy_return` (the same policy on the target task) and `eval/return` (the translated policy
H(s, pi(s), z_src, z_tgt) on the target task), with the standard errors of the last two over episodes; runs with
`--transfer-recipe authors` also log the mean return of their fixed data (`data/source_return`,
`data/target_return`: how mediocre the data policies were).
Writes `results/<name>.json` (per run, mean +- std, and the paired difference transferred - source on the
target with its 95 % t-interval, `benchmarks/table.py`'s) and `results/<name>.png` (left: the source policy's
learning curve; right: the three returns per run, with the standard error over episodes, and their mean +- std
over runs).

Run directories named `<label>__seed<S>` (as benchmarks/run.py names them) are grouped by label: with two or more
labels (e.g. the two recipes) the JSON holds one such summary per label under "groups", plus, for every other
label against the first, the per-seed difference of `eval/return` (runs of the same seed share their source
policy, so the difference is paired), and the figure shows the groups side by side.

    python benchmarks/mcat_transfer.py benchmarks/runs/mcat-transfer-cheetah-armature/pair_0.1_to_0.5__seed{1,2,3} \\
        --name mcat-transfer-cheetah-armature-table1
    python benchmarks/mcat_transfer.py \\
        benchmarks/runs/mcat-transfer-recipes-cheetah-armature/{ours,authors}__seed{1,2,3} \\
        --name mcat-transfer-recipes-cheetah-armature-table1
"""

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table import mean_ci  # noqa: E402  (the 95 % t-interval every benchmark table uses)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = [("eval/source_on_source_return", "source policy on source"),
        ("eval/source_policy_return", "source policy on target"),
        ("eval/return", "transferred policy on target")]
DATA_KEYS = ("data/source_return", "data/target_return")


def read_run(run_dir):
    path = os.path.join(run_dir, "eval.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no eval.jsonl in {run_dir}")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or "eval/source_policy_return" not in rows[-1]:
        raise SystemExit(f"error: {run_dir} has no transfer row; was it a finished mcat.py --mode transfer run?")
    return rows[:-1], rows[-1]


def label_and_seed(run_dir):
    """('<label>', '<seed>') from a run directory named <label>__seed<S>, else (None, the directory name)."""
    name = os.path.basename(os.path.normpath(run_dir))
    m = re.fullmatch(r"(.+)__seed(\d+)", name)
    return (m.group(1), m.group(2)) if m else (None, name)


def summarize(run_dirs, runs):
    """Per run and mean +- std of the three returns (and of the data returns where logged), and the paired
    difference transferred - source policy on the target with the half-width of its 95 % t-interval."""
    finals = {key: [final[key] for _, final in runs] for key, _ in KEYS}
    gain = [t - s for t, s in zip(finals["eval/return"], finals["eval/source_policy_return"])]
    result = {
        "n_runs": len(runs),
        "pair": {"source_task": runs[0][1].get("source_task"), "target_task": runs[0][1].get("target_task")},
        "per_run": [{"run_dir": d, **{k: final[k] for k, _ in KEYS},
                     "transferred_stderr": final.get("eval/transferred_stderr"),
                     "source_stderr": final.get("eval/source_stderr"),
                     **{k: final[k] for k in DATA_KEYS if k in final}} for d, (_, final) in zip(run_dirs, runs)],
        "mean": {k: float(np.mean(v)) for k, v in finals.items()},
        "std": {k: float(np.std(v)) for k, v in finals.items()},
        "transferred_minus_source_on_target": {"per_run": gain, "mean": float(np.mean(gain)),
                                               "std": float(np.std(gain)), "ci95": mean_ci(gain)[1],
                                               "runs_above": int(sum(g > 0 for g in gain))},
    }
    for k in DATA_KEYS:
        if all(k in final for _, final in runs):
            result["mean"][k] = float(np.mean([final[k] for _, final in runs]))
            result["std"][k] = float(np.std([final[k] for _, final in runs]))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="finished mcat.py --mode transfer run directories (one per seed)")
    p.add_argument("--name", default="mcat-transfer-table1", help="results/<name>.json and .png")
    args = p.parse_args()
    groups = {}  # label -> [(run_dir, seed)], in the order given
    for d in args.run_dirs:
        label, seed = label_and_seed(d)
        groups.setdefault(label, []).append((d, seed))
    runs = {label: [read_run(d) for d, _ in members] for label, members in groups.items()}
    summaries = {label: summarize([d for d, _ in groups[label]], runs[label]) for label in groups}
    if len(groups) == 1:
        result = {"command": " ".join(sys.argv), **next(iter(summaries.values()))}
    else:
        first = next(iter(groups))
        paired = {}
        for label in list(groups)[1:]:
            base = {seed: final["eval/return"] for (_, seed), (_, final) in zip(groups[first], runs[first])}
            diff = {seed: final["eval/return"] - base[seed]
                    for (_, seed), (_, final) in zip(groups[label], runs[label]) if seed in base}
            paired[f"{label}_minus_{first}"] = {"per_seed": diff, "mean": float(np.mean(list(diff.values()))),
                                                "std": float(np.std(list(diff.values()))),
                                                "ci95": mean_ci(list(diff.values()))[1],
                                                "seeds_above": int(sum(v > 0 for v in diff.values()))}
        result = {"command": " ".join(sys.argv), "groups": summaries,
                  "transferred_return_paired_by_seed": paired}
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11 + 3 * (len(groups) - 1), 4),
                                 gridspec_kw={"width_ratios": [1, len(groups)]})
    first_runs = next(iter(runs.values()))  # runs of the same seed share their source policy: one group's curves
    for i, (curve, _) in enumerate(first_runs):
        a0.plot([r["env_steps"] for r in curve], [r["eval/return"] for r in curve], "o-", ms=3, label=f"run {i + 1}")
    a0.set(xlabel="source-task env steps", ylabel="return on the source task (dense reward)",
           title="source policy: TD3 on the source task")
    a0.grid(alpha=0.3)
    a0.legend(fontsize=8)
    width, ticks, names, offset = 0.8 / len(KEYS), [], [], 0
    for g, (label, summary) in enumerate(summaries.items()):
        n = summary["n_runs"]
        for j, (key, key_label) in enumerate(KEYS):
            x = offset + np.arange(n + 1) + (j - 1) * width
            vals = [r[key] for r in summary["per_run"]] + [summary["mean"][key]]
            stderr = {"eval/return": "transferred_stderr", "eval/source_policy_return": "source_stderr"}.get(key)
            err = [(r[stderr] or 0.0) if stderr else 0.0 for r in summary["per_run"]] + [summary["std"][key]]
            a1.bar(x, vals, width, yerr=err, capsize=3, color=f"C{j}", label=key_label if g == 0 else None)
        prefix = f"{label}\n" if label is not None and len(groups) > 1 else ""
        ticks += list(offset + np.arange(n + 1))
        names += [f"{prefix}run {i + 1}" for i in range(n)] + [f"{prefix}mean ± std"]
        offset += n + 1.5
    a1.set_xticks(ticks, names, fontsize=8 if len(groups) > 1 else None)
    a1.axhline(0, color="k", lw=0.5)
    pair = next(iter(summaries.values()))["pair"]
    a1.set(ylabel="episode return", title=f"transfer {pair['source_task']} -> {pair['target_task']} (Table 1)")
    a1.grid(alpha=0.3, axis="y")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{args.name}.png"), dpi=110)
    for label, summary in summaries.items():
        m = summary["mean"]
        data = (f"; fixed data: source {m['data/source_return']:.1f}, target {m['data/target_return']:.1f}"
                if "data/source_return" in m else "")
        gain = summary["transferred_minus_source_on_target"]
        print(f"{label + ': ' if len(groups) > 1 else ''}on the target: source policy "
              f"{m['eval/source_policy_return']:.1f}, transferred {m['eval/return']:.1f}; transferred - source "
              f"{gain['mean']:+.1f} ± {gain['ci95']:.1f} (95 % CI), above in {gain['runs_above']} of "
              f"{summary['n_runs']} runs; "
              f"source policy on source {m['eval/source_on_source_return']:.1f}{data}")
    for name, d in result.get("transferred_return_paired_by_seed", {}).items():
        print(f"{name} (transferred on the target, paired by seed): {d['mean']:+.1f} ± {d['ci95']:.1f} (95 % CI), "
              f"above in {d['seeds_above']} of {len(d['per_seed'])} seeds")


if __name__ == "__main__":
    main()
