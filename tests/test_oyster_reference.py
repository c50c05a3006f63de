import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "oyster_reference.py")


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("oyster_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_welch_interval_by_hand(ref):
    # a = (1, 2, 3): var 1, n 3; b = (2, 4): var 2, n 2 -> se^2 = 1/3 + 1 = 4/3,
    # dof = (4/3)^2 / ((1/3)^2 / 2 + 1^2 / 1) = (16/9) / (19/18) = 32/19
    diff, half = ref.welch([1.0, 2.0, 3.0], [2.0, 4.0])
    from scipy import stats

    assert diff == pytest.approx(-1.0)
    assert half == pytest.approx(stats.t.ppf(0.975, 32 / 19) * np.sqrt(4 / 3))


def test_table_prints_per_seed_averages_and_the_difference(ref, tmp_path, capsys):
    def results(name, per_seed):
        seeds = {str(s): {"evals": [{"eval/return": y} for y in ys]} for s, ys in per_seed.items()}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"script": name, "variants": {"v": {"seeds": seeds}}}))
        return str(path)

    # 10 evaluations per seed: the last 20 % are the last 2
    a = results("theirs", {1: [0.0] * 8 + [1.0, 1.0], 2: [1.0] * 10})
    b = results("ours", {1: [2.0] * 10, 2: [0.0] * 10, 3: [1.0] * 10})
    ref.table(type("A", (), {"results": [a, b], "metric": "eval/return"}))
    out = capsys.readouterr().out
    assert "theirs v: run 0.600" in out and "(0.200, 1.000)" in out and "last 20 % 1.000" in out
    assert "ours v: run 1.000" in out
    assert "difference, theirs v minus ours v (Welch 95 % CI): run -0.400" in out


def test_step_refuses_an_override_it_cannot_give_to_both_codes():
    r = subprocess.run([sys.executable, SCRIPT, "step", "--oyster", ROOT, "num_evals=3"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: step: overrides ['num_evals']")
