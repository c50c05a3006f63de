"""benchmarks/mcat_transfer.py: Table 1's numbers from hand-built transfer runs, checked against hand arithmetic."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "mcat_transfer.py")
T975_DOF2 = 4.302653  # Student's t, 97.5 % point, 2 degrees of freedom


def transfer_run(root, name, source_on_target, transferred):
    """A run directory as `mcat.py --mode transfer` leaves it: learning-curve rows, then the transfer row."""
    d = root / name
    d.mkdir()
    rows = [{"env_steps": 1000, "eval/return": 10.0}, {"env_steps": 2000, "eval/return": 20.0},
            {"env_steps": 2000, "eval/return": transferred, "eval/source_policy_return": source_on_target,
             "eval/source_on_source_return": 3000.0, "eval/transferred_stderr": 5.0, "eval/source_stderr": 4.0,
             "source_task": 0.1, "target_task": 0.5}]
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d)


def run(tmp_path, dirs, name):
    proc = subprocess.run([sys.executable, SCRIPT, *dirs, "--name", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=120)
    return proc, (json.loads((tmp_path / f"{name}.json").read_text()) if proc.returncode == 0 else None)


def test_gain_and_paired_difference_with_their_95_percent_intervals(tmp_path):
    # ours: transferred - source = +100, +200, +600 -> mean 300, sample sd sqrt(70000)
    dirs = [transfer_run(tmp_path, "ours__seed1", 1000.0, 1100.0),
            transfer_run(tmp_path, "ours__seed2", 1000.0, 1200.0),
            transfer_run(tmp_path, "ours__seed3", 1000.0, 1600.0),
            transfer_run(tmp_path, "authors__seed1", 900.0, 1150.0),
            transfer_run(tmp_path, "authors__seed2", 900.0, 1150.0),
            transfer_run(tmp_path, "authors__seed3", 900.0, 1450.0)]
    proc, out = run(tmp_path, dirs, "t")
    assert proc.returncode == 0, proc.stderr
    ours = out["groups"]["ours"]["transferred_minus_source_on_target"]
    assert ours["per_run"] == [100.0, 200.0, 600.0]
    assert ours["mean"] == pytest.approx(300.0)
    assert ours["ci95"] == pytest.approx(T975_DOF2 * math.sqrt(70000.0) / math.sqrt(3), rel=1e-5)
    assert ours["runs_above"] == 3
    # authors - ours on the transferred return, by seed: +50, -50, -150 -> mean -50, sample sd 100
    paired = out["transferred_return_paired_by_seed"]["authors_minus_ours"]
    assert paired["per_seed"] == {"1": 50.0, "2": -50.0, "3": -150.0}
    assert paired["mean"] == pytest.approx(-50.0)
    assert paired["ci95"] == pytest.approx(T975_DOF2 * 100.0 / math.sqrt(3), rel=1e-5)
    assert paired["seeds_above"] == 1
    assert "(95 % CI)" in proc.stdout
    assert (tmp_path / "t.png").is_file()


def test_one_run_has_no_interval(tmp_path):
    proc, out = run(tmp_path, [transfer_run(tmp_path, "pair__seed1", 1000.0, 1100.0)], "one")
    assert proc.returncode == 0, proc.stderr
    assert math.isnan(out["transferred_minus_source_on_target"]["ci95"])


def test_a_run_without_its_transfer_row_is_one_line_error(tmp_path):
    d = tmp_path / "cut__seed1"
    d.mkdir()
    (d / "eval.jsonl").write_text(json.dumps({"env_steps": 1000, "eval/return": 1.0}) + "\n")
    proc, _ = run(tmp_path, [str(d)], "cut")
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "no transfer row" in proc.stderr
