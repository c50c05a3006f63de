"""benchmarks/mier_ood.py on hand-built runs: MIER-wR is a run's last meta-train row, MIER its last relabel row, and a
run reads the same from its run directory as from the run.py results file that holds it."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "mier_ood.py")


def rows(train, relabel):
    """eval.jsonl rows: meta-train returns (train-task return 0), then relabel returns."""
    out = [{"iteration": i + 1, "env_steps": 1000 * (i + 1), "phase": "meta-train", "eval/return": r,
            "eval/return_train_tasks": 0.0} for i, r in enumerate(train)]
    return out + [{"iteration": len(train), "env_steps": 1000 * len(train) + 10 * k, "phase": "relabel",
                   "eval/return": r} for k, r in enumerate(relabel)]


def run_dir(tmp_path, name, train, relabel):
    d = tmp_path / name
    d.mkdir()
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(train, relabel)))
    return str(d)


def results_file(tmp_path, runs):
    """A run.py results file: variant MIER, one seed per (train, relabel), plus a failed run and a run without
    Alg. 2 rows, which must both be left out."""
    seeds = {str(i + 1): {"command": "x", "rc": 0, "evals": rows(t, r)} for i, (t, r) in enumerate(runs)}
    seeds["8"] = {"command": "x", "rc": 1, "evals": rows([-1.0], [5.0])}
    path = tmp_path / "res.json"
    path.write_text(json.dumps({"variants": {"MIER": {"seeds": seeds},
                                             "wR": {"seeds": {"9": {"command": "x", "rc": 0,
                                                                    "evals": rows([-2.0], [])}}}}}))
    return str(path)


def mier_ood(tmp_path, *sources):
    p = subprocess.run([sys.executable, SCRIPT, *sources, "--name", "out", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    return p, (json.loads((tmp_path / "out.json").read_text()) if p.returncode == 0 else None)


def test_a_run_dir_and_a_results_file_join_and_give_the_hand_computed_difference(tmp_path):
    # run A: MIER-wR -300, MIER -250 -> +50; run B: -200 and -190 -> +10; mean 30, population std 20,
    # paired t-interval 30 +- t(0.975, 1) * 28.284 / sqrt(2) = 30 +- 12.706 * 20 = [-224.1, 284.1]
    a = run_dir(tmp_path, "A", [-400.0, -300.0], [-290.0, -250.0])
    res = results_file(tmp_path, [([-350.0, -200.0], [-210.0, -190.0])])
    p, out = mier_ood(tmp_path, a, res)
    assert p.returncode == 0, p.stderr
    assert out["runs"] == [a, f"{res}:MIER:seed1"]
    assert out["mier_wr_final"]["per_run"] == [-300.0, -200.0]
    assert out["mier_by_alg2_epoch"]["per_run"] == [[-290.0, -250.0], [-210.0, -190.0]]
    d = out["mier_final_minus_wr"]
    assert d["per_run"] == [50.0, 10.0] and d["mean"] == 30.0 and d["std"] == 20.0
    assert abs(d["ci95"][0] + 224.12) < 0.01 and abs(d["ci95"][1] - 284.12) < 0.01
    assert os.path.isfile(tmp_path / "out.png")


def test_the_same_run_reads_the_same_from_its_dir_and_from_a_results_file(tmp_path):
    train, relabel = [-500.0, -420.0, -380.0], [-370.0, -330.0, -300.0]
    p1, from_dir = mier_ood(tmp_path, run_dir(tmp_path, "A", train, relabel))
    p2, from_file = mier_ood(tmp_path, results_file(tmp_path, [(train, relabel)]))
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    for key in ("meta_train_curve", "mier_wr_final", "mier_by_alg2_epoch"):
        assert from_dir[key] == from_file[key]


def test_a_source_without_alg2_rows_is_a_one_line_error(tmp_path):
    p, _ = mier_ood(tmp_path, run_dir(tmp_path, "A", [-400.0], []))
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "no Alg. 2 rows" in p.stderr
    p, _ = mier_ood(tmp_path, str(tmp_path / "missing"))
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "neither a run directory" in p.stderr
