"""Per-seed numbers, mean ± 95 % CI and paired comparisons from a `run.py` results file: the table each benchmark
page reports, and whether each of the paper's orderings holds.

For every variant and metric: each seed's metric averaged over all its evaluations ("over the run") and over the
last --last fraction of them ("last 20 %"), then the mean over seeds with a 95 % t-interval. For each claim
`--above A B` (variant A above variant B, as the paper orders them): the paired difference A − B over the seeds
both ran, mean with its 95 % t-interval, and a verdict:
"holds" (interval above 0), "reversed" (below 0), "not settled" (it contains 0), "equal" (no difference in any
paired seed), "n/a" (fewer than 2 paired seeds).

    python benchmarks/table.py benchmarks/results/hipi-sparse-point-robot-v2.json --metric eval/success_rate \\
        --above hipi none --above hipi random --above hipi her-final --out hipi-sparse-point-robot-v2-table

Prints a Markdown table; with --out also writes benchmarks/results/<out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def t975(dof: int) -> float:
    """The 97.5 % point of Student's t with `dof` degrees of freedom (scipy's, where installed)."""
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, dof))
    except ImportError:  # pragma: no cover - scipy comes with the requirements
        return {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}.get(dof, 1.96)


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (nan with one value)."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    return float(x.mean()), t975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))


def logged(run: dict, metric: str) -> list[dict]:
    """The run's evaluations that log `metric` (not None, not NaN)."""
    return [e for e in run.get("evals", []) if e.get(metric) is not None
            and not (isinstance(e[metric], float) and math.isnan(e[metric]))]


def per_seed(results: dict, metric: str, last: float) -> dict:
    """{variant: {seed: (over the run, last fraction)}} for the seeds whose evaluations log `metric`."""
    out = {}
    for label, v in results["variants"].items():
        for seed, run in v["seeds"].items():
            ys = [e[metric] for e in logged(run, metric)]
            if ys:
                k = max(1, math.ceil(last * len(ys)))
                out.setdefault(label, {})[seed] = (float(np.mean(ys)), float(np.mean(ys[-k:])))
    return out


def blocks(run: dict, metric: str, n: int) -> list[float]:
    """The metric averaged over n consecutive, equal-as-possible blocks of the run's evaluations (np.array_split)."""
    ys = [e[metric] for e in logged(run, metric)]
    return [float(np.mean(b)) for b in np.array_split(np.asarray(ys, float), n)] if len(ys) >= n else []


def first_at(run: dict, metric: str, level: float):
    """env_steps of the first evaluation with metric >= level; None if it never got there."""
    return next((e.get("env_steps") for e in logged(run, metric) if e[metric] >= level), None)


def verdict(lo: float, hi: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "n/a"
    if lo == hi == 0:
        return "equal"  # the same value in every paired seed (e.g. both at success 1)
    return "holds" if lo > 0 else "reversed" if hi < 0 else "not settled"


def compare(seeds: dict, a: str, b: str) -> dict:
    """Paired A − B over their common seeds, over the run and over the last fraction."""
    common = sorted(set(seeds.get(a, {})) & set(seeds.get(b, {})), key=int)
    row = {"claim": f"{a} above {b}", "seeds": common}
    for i, part in enumerate(("run", "last")):
        d = [seeds[a][s][i] - seeds[b][s][i] for s in common]
        m, h = mean_ci(d)
        row[part] = {"per_seed": d, "mean": m, "ci95": h, "verdict": verdict(m - h, m + h)}
    return row


def build(results: dict, metrics: list[str], last: float, claims: list[tuple[str, str]], n_blocks: int = 0,
          level: float | None = None) -> dict:
    table = {"name": results.get("name"), "script": results.get("script"), "env": results.get("env"),
             "common": results.get("common"), "last_fraction": last, "metrics": {}}
    for metric in metrics:
        seeds = per_seed(results, metric, last)
        rows = {}
        for label, by_seed in seeds.items():
            order = sorted(by_seed, key=int)
            run_m, run_h = mean_ci([by_seed[s][0] for s in order])
            last_m, last_h = mean_ci([by_seed[s][1] for s in order])
            rows[label] = {"seeds": order, "run_per_seed": [by_seed[s][0] for s in order],
                           "last_per_seed": [by_seed[s][1] for s in order],
                           "run": [run_m, run_h], "last": [last_m, last_h]}
            runs = [results["variants"][label]["seeds"][s] for s in order]
            if n_blocks:  # mean over seeds of each block's average
                per = [blocks(r, metric, n_blocks) for r in runs]
                rows[label]["blocks"] = [float(np.mean(b)) for b in zip(*per)] if all(per) else []
            if level is not None:
                rows[label]["first_at"] = [first_at(r, metric, level) for r in runs]
        table["metrics"][metric] = {"variants": rows, "claims": [compare(seeds, a, b) for a, b in claims]}
    return table


def fmt(x: float, digits: int) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def markdown(table: dict, digits: int, n_blocks: int = 0, level: float | None = None) -> str:
    pct = f"{round(100 * table['last_fraction'])} %"
    lines = []
    for metric, t in table["metrics"].items():
        if n_blocks:
            lines += [f"{metric} in {n_blocks} consecutive blocks of each run's evaluations (mean over seeds):", "",
                      "| variant | " + " | ".join(f"block {i + 1}" for i in range(n_blocks)) + " |",
                      "|---" * (n_blocks + 1) + "|"]
            lines += [f"| {label} | " + " | ".join(fmt(x, digits) for x in r["blocks"]) + " |"
                      for label, r in t["variants"].items() if r.get("blocks")]
            lines.append("")
        if level is not None:
            lines += [f"env steps of the first evaluation with {metric} >= {level} (per seed):", "",
                      "| variant | per seed |", "|---|---|"]
            lines += [f"| {label} | " + ", ".join("never" if x is None else f"{x:,}" for x in r["first_at"]) + " |"
                      for label, r in t["variants"].items()]
            lines.append("")
        lines += [f"{metric}, averaged over each run and over its last {pct} of evaluations (mean ± 95 % CI over "
                  "seeds; per seed in brackets):", "",
                  f"| variant | seeds | over the run | last {pct} |", "|---|---|---|---|"]
        for label, r in t["variants"].items():
            per = lambda xs: ", ".join(fmt(x, digits) for x in xs)  # noqa: E731
            lines.append(f"| {label} | {len(r['seeds'])} | {fmt(r['run'][0], digits)} ± {fmt(r['run'][1], digits)} "
                         f"({per(r['run_per_seed'])}) | {fmt(r['last'][0], digits)} ± {fmt(r['last'][1], digits)} "
                         f"({per(r['last_per_seed'])}) |")
        if t["claims"]:
            lines += ["", f"| claim ({metric}, paired over seeds) | seeds | A − B over the run | verdict | "
                          f"A − B, last {pct} | verdict |", "|---|---|---|---|---|---|"]
            for c in t["claims"]:
                r, l = c["run"], c["last"]
                lines.append(f"| {c['claim']} | {len(c['seeds'])} | {fmt(r['mean'], digits)} ± {fmt(r['ci95'], digits)}"
                             f" | {r['verdict']} | {fmt(l['mean'], digits)} ± {fmt(l['ci95'], digits)} | "
                             f"{l['verdict']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a results/<name>.json written by run.py")
    p.add_argument("--metric", action="append", default=None, help="eval.jsonl key (repeatable; default eval/return)")
    p.add_argument("--last", type=float, default=0.2, help="fraction of each run's last evaluations (default 0.2)")
    p.add_argument("--above", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="an ordering to test: variant A above variant B (repeatable)")
    p.add_argument("--digits", type=int, default=3, help="decimals printed (default 3)")
    p.add_argument("--blocks", type=int, default=0, help="also the metric over this many consecutive blocks of "
                                                         "each run's evaluations")
    p.add_argument("--first-at", type=float, default=None, metavar="LEVEL",
                   help="also the env steps of each seed's first evaluation with the metric >= LEVEL")
    p.add_argument("--out", default=None, help="write benchmarks/results/<out>.json and <out>.md")
    a = p.parse_args(argv)
    if not os.path.isfile(a.results):
        raise SystemExit(f"error: results: no file {a.results}")
    if not 0 < a.last <= 1:
        raise SystemExit(f"error: --last: {a.last}; must be in (0, 1]")
    with open(a.results) as f:
        results = json.load(f)
    labels = set(results.get("variants", {}))
    for pair in a.above:
        if not set(pair) <= labels or pair[0] == pair[1]:
            raise SystemExit(f"error: --above: {' '.join(pair)}; must name two different variants of "
                             f"{os.path.basename(a.results)}: {', '.join(sorted(labels))}")
    if a.blocks < 0:
        raise SystemExit(f"error: --blocks: {a.blocks}; must be >= 0")
    table = build(results, a.metric or ["eval/return"], a.last, [tuple(x) for x in a.above], a.blocks, a.first_at)
    text = markdown(table, a.digits, a.blocks, a.first_at)
    print(text)
    if a.out:
        base = os.path.join(ROOT, "benchmarks", "results", a.out)
        with open(base + ".json", "w") as f:
            json.dump(table, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(text)
        print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `table.py ... | head` ends quietly, as other command-line tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
