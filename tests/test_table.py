"""benchmarks/table.py: per-seed averages, 95 % t-intervals and paired verdicts, computed by hand."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "table.py")
spec = importlib.util.spec_from_file_location("bench_table", SCRIPT)
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def results(per_variant):
    """run.py's layout: variants -> seeds -> evals, one metric 'm'."""
    return {"name": "x", "variants": {label: {"seeds": {str(s): {"evals": [{"m": y} for y in ys]}
                                                        for s, ys in seeds.items()}}
                                      for label, seeds in per_variant.items()}}


# 5 evaluations per run: the last 20 % is the last one
RES = results({"a": {1: [0, 0, 0, 1, 4], 2: [0, 0, 0, 2, 3], 3: [1, 1, 1, 1, 1]},
               "b": {1: [0, 0, 0, 0, 0], 2: [0, 0, 0, 0, 1], 3: [1, 1, 1, 1, 1], 4: [9, 9, 9, 9, 9]}})


def test_per_seed_averages_over_the_run_and_the_last_fraction():
    seeds = table.per_seed(RES, "m", 0.2)
    assert seeds["a"] == {"1": (1.0, 4.0), "2": (1.0, 3.0), "3": (1.0, 1.0)}
    assert seeds["b"]["2"] == (0.2, 1.0)
    # 40 %: ceil(0.4 * 5) = 2 last evaluations
    assert table.per_seed(RES, "m", 0.4)["a"]["1"] == (1.0, 2.5)


def test_mean_and_t_interval_by_hand():
    # (4, 3, 1): mean 8/3, sample std sqrt(7/3), t(0.975, 2) = 4.303
    m, h = table.mean_ci([4.0, 3.0, 1.0])
    assert m == pytest.approx(8 / 3)
    assert h == pytest.approx(4.302653 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-5)
    assert math.isnan(table.mean_ci([1.0])[1])


def test_paired_claim_uses_common_seeds_only_and_its_verdict():
    t = table.build(RES, ["m"], 0.2, [("a", "b")])
    c = t["metrics"]["m"]["claims"][0]
    assert c["seeds"] == ["1", "2", "3"]  # b's seed 4 has no partner
    # over the run: a - b = (1, 0.8, 0); last 20 %: (4, 2, 0)
    assert c["run"]["per_seed"] == pytest.approx([1.0, 0.8, 0.0])
    assert c["last"]["per_seed"] == pytest.approx([4.0, 2.0, 0.0])
    m, h = table.mean_ci([1.0, 0.8, 0.0])
    assert (c["run"]["mean"], c["run"]["ci95"]) == pytest.approx((m, h))
    # mean 0.6, sample std sqrt(0.28), half-width 4.303 * 0.529 / sqrt(3) = 1.31: the interval contains 0
    assert c["run"]["verdict"] == "not settled"
    assert table.verdict(0.1, 0.5) == "holds" and table.verdict(-0.5, -0.1) == "reversed"
    assert table.verdict(-0.1, 0.5) == "not settled" and table.verdict(math.nan, math.nan) == "n/a"
    assert table.verdict(0.0, 0.0) == "equal"
    # the variant rows keep every seed a variant ran
    assert t["metrics"]["m"]["variants"]["b"]["seeds"] == ["1", "2", "3", "4"]


def test_command_line_writes_json_and_markdown_and_refuses_a_bad_claim(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RES))
    bad = subprocess.run([sys.executable, SCRIPT, str(path), "--metric", "m", "--above", "a", "c"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == "error: --above: a c; must name two different variants of " \
                                                         "r.json: a, b"
    ok = subprocess.run([sys.executable, SCRIPT, str(path), "--metric", "m", "--above", "a", "b", "--digits", "2"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "| a | 3 | 1.00 ± 0.00 (1.00, 1.00, 1.00) | 2.67 ±" in ok.stdout
    assert "| a above b | 3 |" in ok.stdout


def test_blocks_and_first_evaluation_at_a_level():
    run = {"evals": [{"m": y, "env_steps": 100 * (i + 1)} for i, y in enumerate([0, 1, 2, 3, 4])]}
    # np.array_split of 5 into 2: (0, 1, 2) and (3, 4)
    assert table.blocks(run, "m", 2) == [1.0, 3.5]
    assert table.blocks(run, "m", 6) == []  # fewer evaluations than blocks
    assert table.first_at(run, "m", 2.5) == 400 and table.first_at(run, "m", 9) is None
    res = results({"a": {1: [0, 0, 1, 1], 2: [1, 1, 1, 1]}})
    row = table.build(res, ["m"], 0.2, [], n_blocks=2, level=1)["metrics"]["m"]["variants"]["a"]
    assert row["blocks"] == [0.5, 1.0]  # seed 1: (0, 1); seed 2: (1, 1); mean over seeds
    assert row["first_at"] == [None, None]  # the hand-built rows carry no env_steps


def test_output_cut_short_by_a_closed_pipe_ends_without_a_traceback(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RES))
    # `table.py r.json | head -1`: the reader goes away after the first line
    many = ["--above", "a", "b"] * 3000  # far more output than a pipe holds
    p = subprocess.Popen([sys.executable, SCRIPT, str(path), "--metric", "m"] + many,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err
