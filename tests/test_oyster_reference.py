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


def fake_oyster_run(run_dir, seed, overrides, returns, successes, done=True):
    """A run dir as `run` leaves it: command.json, their progress.csv and one saved meta-test run per epoch of the
    one test task (task 1 of 2), each of 3 trajectories whose sparse rewards say `successes[epoch]`."""
    import pickle

    log_dir = run_dir / "point-robot" / "2026_12_07"
    (log_dir / "eval_trajectories").mkdir(parents=True)
    (run_dir / "command.json").write_text(json.dumps({"env": "sparse-point-robot", "seed": seed,
                                                      "overrides": overrides, "oyster_commit": "44e20fd"}))
    lines = ["Number of env steps total,AverageReturn_all_test_tasks,AverageReturn_all_train_tasks"]
    for epoch, (ret, succ) in enumerate(zip(returns, successes)):
        lines.append(f"{1000 * (epoch + 1)},{ret},0.0")
        trajs = [{"env_infos": [{"sparse_reward": float(s)}, {"sparse_reward": 0.0}]} for s in succ]
        with open(log_dir / "eval_trajectories" / f"task1-epoch{epoch}-run0.pkl", "wb") as f:
            pickle.dump(trajs, f)
    (log_dir / "progress.csv").write_text("\n".join(lines) + "\n")
    if done:
        (run_dir / "DONE").write_text("")
    return str(run_dir)


def test_summarize_reads_their_logs_and_reuse_keeps_the_finished_seeds_of_an_earlier_sitting(tmp_path):
    cfg = ["net_size=64", "meta_batch=8"]
    summarize = [sys.executable, SCRIPT, "summarize", "--env", "sparse-point-robot", "--name", "t", "--out",
                 str(tmp_path), "--num-exp-traj-eval", "1", "--num-test-tasks", "1", "--num-tasks", "2",
                 "--config", " ".join(cfg)]
    # sitting 1: seed 1. Epoch 0: a success in the exploration trajectory only -> success_rate (posterior) 0,
    # success of the last 0; epoch 1: the middle one -> 1 and 0
    s1 = fake_oyster_run(tmp_path / "s1", 1, cfg, [0.5, 1.5], [[1, 0, 0], [0, 1, 0]])
    r = subprocess.run([*summarize, s1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    seeds = json.loads((tmp_path / "results" / "t.json").read_text())["variants"]["authors' PEARL"]["seeds"]
    assert [(e["eval/return"], e["eval/success_rate"], e["eval/success_rate_last"]) for e in seeds["1"]["evals"]] \
        == [(0.5, 0.0, 0.0), (1.5, 1.0, 0.0)]
    # sitting 2: seed 2 only, its run dir alone; --reuse keeps seed 1 from the results file
    s2 = fake_oyster_run(tmp_path / "s2", 2, cfg, [1.0, 2.5], [[0, 0, 1], [0, 0, 0]])
    r = subprocess.run([*summarize, "--reuse", s2], capture_output=True, text=True)
    assert r.returncode == 0 and "kept seed 1" in r.stdout, r.stderr
    result = json.loads((tmp_path / "results" / "t.json").read_text())
    assert result["seeds"] == [1, 2]
    curve = result["variants"]["authors' PEARL"]["curves"]["eval/return"]
    assert curve["n_seeds"] == 2 and curve["mean"] == [0.75, 2.0]
    # without --reuse the file holds only the runs given; a run at other overrides is refused in one line
    s3 = fake_oyster_run(tmp_path / "s3", 3, ["net_size=300"], [0.0, 0.0], [[0, 0, 0], [0, 0, 0]])
    r = subprocess.run([*summarize, s2, s3], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: seed 3 ran --env sparse-point-robot with 'net_size=300', not --env sparse-point-robot --config "
        "'net_size=64 meta_batch=8'"]
    assert subprocess.run([*summarize, s2], capture_output=True).returncode == 0
    assert json.loads((tmp_path / "results" / "t.json").read_text())["seeds"] == [2]
