"""Relabeling fidelity of Generalized Hindsight (paper Fig. 6) from trained `gh_air.py` point-reacher checkpoints.

For every checkpoint given, runs `gh_air.py --mode fidelity` (the policy rolled out on latents z from the prior;
AIR, Advantage and reward-only relabeling each pick one of K fresh prior latents for every trajectory), then
writes `results/<name>.json` (per checkpoint: the energy weight of the true and of each chosen latent, and the
correlation and mean absolute error between them; mean ± std over checkpoints) and `results/<name>.png`
(chosen vs true energy weight, one panel per relabeler, all checkpoints pooled, with y = x).

    python benchmarks/gh_air_fidelity.py benchmarks/runs/gh-air-point-reacher/air__seed{1,2,3}
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELABELERS = ("air", "advantage", "reward")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="gh_air.py point-reacher run directories holding checkpoint.pt")
    p.add_argument("--name", default="gh-air-fidelity", help="results/<name>.json and .png")
    p.add_argument("--fidelity-tasks", type=int, default=1000, help="rollouts per checkpoint (Fig. 6: 1000)")
    args = p.parse_args()
    per_run = {}
    for run_dir in args.run_dirs:
        ckpt = os.path.join(run_dir, "checkpoint.pt")
        if not os.path.isfile(ckpt):
            raise SystemExit(f"error: no checkpoint.pt in {run_dir}")
        subprocess.run([sys.executable, "gh_air.py", "--env", "point-reacher", "--mode", "fidelity", "--resume", ckpt,
                        "--fidelity-tasks", str(args.fidelity_tasks)], cwd=ROOT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        with open(os.path.join(run_dir, "fidelity.json")) as f:
            d = {k: np.asarray(v) for k, v in json.load(f).items()}
        per_run[run_dir] = {"true": d["true"].tolist(), **{
            k: {"chosen": d[k].tolist(), "corr": float(np.corrcoef(d["true"], d[k])[0, 1]),
                "mean_abs_error": float(np.abs(d["true"] - d[k]).mean())} for k in RELABELERS}}
    summary = {k: {m: [float(np.mean(v)), float(np.std(v))] for m, v in
                   (("corr", [r[k]["corr"] for r in per_run.values()]),
                    ("mean_abs_error", [r[k]["mean_abs_error"] for r in per_run.values()]))} for k in RELABELERS}
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{args.name}.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "summary_mean_std_over_checkpoints": summary, "runs": per_run}, f)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    for ax, k in zip(axes, RELABELERS):
        true = np.concatenate([r["true"] for r in per_run.values()])
        chosen = np.concatenate([r[k]["chosen"] for r in per_run.values()])
        ax.scatter(true, chosen, s=3, alpha=0.3)
        ax.plot([0, 1], [0, 1], "k--", lw=1)  # the prior puts every energy weight in [0, 1]
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
        c, s = summary[k]["corr"]
        ax.set(title=f"{k}: corr {c:.2f} ± {s:.2f}", xlabel="energy weight of the rollout's latent z")
    axes[0].set_ylabel("energy weight of the relabeled latent")
    fig.suptitle(f"relabeling fidelity on point-reacher ({len(per_run)} checkpoints × {args.fidelity_tasks} rollouts)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{args.name}.png"), dpi=110)
    for k in RELABELERS:
        print(f"{k:10s} corr {summary[k]['corr'][0]:.3f} ± {summary[k]['corr'][1]:.3f}   "
              f"|error| {summary[k]['mean_abs_error'][0]:.3f} ± {summary[k]['mean_abs_error'][1]:.3f}")


if __name__ == "__main__":
    main()
