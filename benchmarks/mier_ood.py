"""MIER vs MIER-wR on out-of-distribution test tasks (paper Fig. 3), from finished `mier.py --relabel` runs.

A `mier.py --relabel` run holds both methods: its `"phase": "meta-train"` rows of `eval.jsonl` are MIER-wR
(2 inner steps on the adaptation batch, one deterministic episode per test task), and its `"phase": "relabel"`
rows are MIER's Alg. 2 on the same test tasks (row 0: after the longer test-time adaptation, before any relabeled
training; row k: after k epochs of SAC on relabeled data). Same seed, same meta-training: the only difference is
Alg. 2. A run resumed from a `--no-relabel` checkpoint with `--relabel` into its own `--run-dir` holds the same rows
(the meta-train rows are carried over), so one meta-trained checkpoint can give MIER at several Alg. 2 sizes.
Writes `results/<name>.json` (mean ± std over runs; the paired per-run difference MIER − MIER-wR with a 95 %
t-interval) and `results/<name>.png` (left: MIER-wR's test return during meta-training; right: MIER-wR's final
return beside MIER after each Alg. 2 epoch). A run is read from its run directory or from the `benchmarks/run.py`
results file that holds it (that file keeps every run's evaluation rows), so runs of several invocations can be
joined after their run directories are gone:

    python benchmarks/mier_ood.py benchmarks/runs/mier-ood-hard/MIER__seed{1,2,3} --name mier-ood-hard-mier-vs-wr
    python benchmarks/mier_ood.py benchmarks/results/mier-ood-hard.json benchmarks/runs/mier-ood-hard-alg2/MIER__seed4
"""

import argparse
import json
import os
import sys

import numpy as np
import scipy.stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_rows(rows, where):
    """An eval.jsonl's rows -> (meta-train rows, relabel rows); a one-line error if either is missing."""
    train = [r for r in rows if r.get("phase") == "meta-train"]
    relabel = [r for r in rows if r.get("phase") == "relabel"]
    if not train or not relabel:
        raise SystemExit(f"error: {where} has no Alg. 2 rows; was it run with --relabel to the end?")
    return train, relabel


def read_runs(source):
    """[(name, meta-train rows, relabel rows)] of a run directory (its eval.jsonl), or of every finished run with
    Alg. 2 rows in a `benchmarks/run.py` results file (it keeps each run's evaluation rows; its run directories
    need not exist any more)."""
    if os.path.isdir(source):
        path = os.path.join(source, "eval.jsonl")
        if not os.path.isfile(path):
            raise SystemExit(f"error: no eval.jsonl in {source}")
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [(source, *split_rows(rows, source))]
    if not (os.path.isfile(source) and source.endswith(".json")):
        raise SystemExit(f"error: {source} is neither a run directory nor a run.py results file (.json)")
    with open(source) as f:
        variants = json.load(f).get("variants", {})
    runs = [(f"{source}:{label}:seed{seed}", *split_rows(run["evals"], f"{source} {label} seed {seed}"))
            for label, v in variants.items() for seed, run in v.get("seeds", {}).items()
            if run.get("rc") == 0 and any(r.get("phase") == "relabel" for r in run.get("evals", []))]
    if not runs:
        raise SystemExit(f"error: {source} holds no finished run with Alg. 2 rows")
    return runs


def mean_std(a):
    a = np.asarray(a, dtype=float)
    return a.mean(0).tolist(), a.std(0).tolist()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="finished mier.py --relabel run directories (one per seed), or "
                   "run.py results files (.json) holding such runs")
    p.add_argument("--name", default="mier-ood-hard-mier-vs-wr", help="results/<name>.json and .png")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for <name>.json and .png (default benchmarks/results)")
    args = p.parse_args()
    named = [run for source in args.sources for run in read_runs(source)]
    names, runs = [n for n, _, _ in named], [(t, r) for _, t, r in named]
    n_train = min(len(t) for t, _ in runs)
    n_rel = min(len(r) for _, r in runs)
    steps = np.mean([[row["env_steps"] for row in t[:n_train]] for t, _ in runs], 0).tolist()
    curve_mu, curve_sd = mean_std([[row["eval/return"] for row in t[:n_train]] for t, _ in runs])
    train_mu, _ = mean_std([[row["eval/return_train_tasks"] for row in t[:n_train]] for t, _ in runs])
    wr_final = [t[n_train - 1]["eval/return"] for t, _ in runs]
    mier = [[row["eval/return"] for row in r[:n_rel]] for _, r in runs]
    mier_mu, mier_sd = mean_std(mier)
    diff = np.array([m[-1] - w for m, w in zip(mier, wr_final)])
    n = len(diff)
    half = scipy.stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan  # paired t-interval
    result = {
        "command": " ".join(sys.argv),
        "n_runs": len(runs),
        "runs": names,
        "meta_train_curve": {"env_steps": steps, "mean": curve_mu, "std": curve_sd, "train_tasks_mean": train_mu},
        "mier_wr_final": {"mean": float(np.mean(wr_final)), "std": float(np.std(wr_final)), "per_run": wr_final},
        "mier_by_alg2_epoch": {"epoch": list(range(n_rel)), "mean": mier_mu, "std": mier_sd, "per_run": mier},
        "mier_final_minus_wr": {"mean": float(diff.mean()), "std": float(diff.std()), "per_run": diff.tolist(),
                                "ci95": [float(diff.mean() - half), float(diff.mean() + half)]},
    }
    out_dir = args.out_dir
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    x, mu, sd = np.array(steps), np.array(curve_mu), np.array(curve_sd)
    a0.plot(x, mu, color="C0", label=f"MIER-wR ({len(runs)} seeds)")
    a0.fill_between(x, mu - sd, mu + sd, color="C0", alpha=0.25)
    a0.plot(x, train_mu, ":", color="C0", label="same policy on train tasks (in distribution)")
    a0.set(xlabel="meta-training env steps", ylabel="return (solid: out-of-distribution test tasks)",
           title="meta-training (MIER-wR protocol)")
    a0.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:g}k"))  # no overlap
    a0.grid(alpha=0.3)
    a0.legend(fontsize=8)
    e, mu, sd = np.arange(n_rel), np.array(mier_mu), np.array(mier_sd)
    a1.plot(e, mu, "o-", color="C1", label="MIER (Alg. 2)")
    a1.fill_between(e, mu - sd, mu + sd, color="C1", alpha=0.25)
    w = result["mier_wr_final"]
    a1.axhline(w["mean"], color="C0", ls="--", label=f"MIER-wR final {w['mean']:.1f} ± {w['std']:.1f}")
    a1.axhspan(w["mean"] - w["std"], w["mean"] + w["std"], color="C0", alpha=0.15)
    a1.set(xlabel="Alg. 2 epochs of SAC on relabeled data (0: adapted only)", ylabel="test return",
           title="after meta-training: MIER vs MIER-wR")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{args.name}.png"), dpi=110)
    print(f"MIER-wR {w['mean']:.2f} ± {w['std']:.2f}   MIER after Alg. 2: {mier_mu[-1]:.2f} ± {mier_sd[-1]:.2f} "
          f"(adapted only: {mier_mu[0]:.2f} ± {mier_sd[0]:.2f})\n"
          f"MIER − MIER-wR per run {np.round(diff, 1).tolist()}, "
          f"95 % CI {np.round(result['mier_final_minus_wr']['ci95'], 1).tolist()}")


if __name__ == "__main__":
    main()
