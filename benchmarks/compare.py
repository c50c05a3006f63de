"""Overlay learning curves from several `run.py` results (e.g. two scripts run at equal env steps).

Reads `results/<name>.json` files written by `run.py`, draws every variant's mean ± std over seeds of one metric
against env steps in one plot, and prints each curve's first and final value. A curve is named by its script (and
variant); when one script comes from several files, by the comparison's name and variant instead. Writes
`results/<out>.png` and `results/<out>.json` (the curves it drew, with the source file of each).

    python benchmarks/compare.py benchmarks/results/mier-wr-cheetah-vel.json \
        benchmarks/results/pearl-cheetah-vel-vs-mier.json --out mier-wr-vs-pearl-cheetah-vel
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results/<name>.json files written by run.py")
    p.add_argument("--metric", default="eval/return", help="eval.jsonl key to draw (default eval/return)")
    p.add_argument("--out", required=True, help="results/<out>.png and .json")
    args = p.parse_args()
    if len({os.path.realpath(r) for r in args.results}) < len(args.results):
        raise SystemExit("error: a results file is given twice")
    files = []
    for path in args.results:
        if not os.path.isfile(path):
            raise SystemExit(f"error: no results file {path}")
        with open(path) as f:
            files.append((path, json.load(f)))
    scripts = [res["script"] for _, res in files]
    curves = {}
    for path, res in files:
        for label, v in res["variants"].items():
            c = v["curves"].get(args.metric)
            if c is None:
                raise SystemExit(f"error: {path} variant '{label}' has no curve for {args.metric}")
            if scripts.count(res["script"]) > 1:  # several comparisons of one script: name curves by comparison
                key = f"{res['name']} {label}"
            else:
                key = f"{res['script']} {label}" if len(res["variants"]) > 1 else res["script"]
            if key in curves:  # e.g. copies of one comparison from two machines
                raise SystemExit(f"error: two curves named '{key}' ({curves[key]['source']} and {path})")
            curves[key] = {**c, "source": path}
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    with open(os.path.join(out_dir, f"{args.out}.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "metric": args.metric, "curves": curves}, f)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves.items():
        x, mu, sd = np.array(c["env_steps"]), np.array(c["mean"]), np.array(c["std"])
        line, = ax.plot(x, mu, label=f"{label} ({c['n_seeds']} seeds)")
        ax.fill_between(x, mu - sd, mu + sd, alpha=0.25, color=line.get_color())
        print(f"{label:30s} first {mu[0]:9.2f}   final {c['final_mean']:9.2f} ± {c['final_std']:.2f}")
    ax.set(xlabel="env steps", ylabel=args.metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{args.out}.png"), dpi=110)


if __name__ == "__main__":
    main()
