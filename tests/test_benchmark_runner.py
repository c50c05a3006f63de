"""benchmarks/run.py: a comparison finished in parts reuses exactly the runs it already has, and nothing else."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)

EVALS = [{"iteration": 0, "env_steps": 100, "eval/return": -3.0}, {"iteration": 5, "env_steps": 600, "eval/return": -1.0}]


def write_results(path, label, seed, command, rc=0, evals=EVALS):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"variants": {label: {"seeds": {str(seed): {"command": command, "rc": rc, "wall_s": 12.0,
                                                              "evals": evals}}}}}, f)


def job(label, seed, flags, run_dir):
    cmd = [sys.executable, "hfr.py", "--env", "four-corners"] + shlex.split(flags) + ["--seed", str(seed),
                                                                                    "--run-dir", run_dir]
    return (label, seed, run_dir, cmd)


def test_reuse_matches_label_seed_and_command_from_any_file(tmp_path):
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    # a run made elsewhere: same flags, another run dir (the run dir is not part of the match)
    write_results(b, "hfr", 1, "hfr.py --env four-corners --relabel hfr --seed 1 --run-dir /elsewhere/hfr__seed1")
    jobs = [job("hfr", 1, "--relabel hfr", str(tmp_path / "r1")),        # held by b: reused
            job("hfr", 2, "--relabel hfr", str(tmp_path / "r2")),        # other seed: not reused
            job("hfr", 1, "--relabel hfr --bf16", str(tmp_path / "r3"))]  # other flags: not reused
    done = bench_run.reuse_finished([a, b], jobs[:1])
    assert done == {("hfr", 1): {"rc": 0, "wall_s": 12.0, "reused": True}}
    assert bench_run.read_evals(str(tmp_path / "r1")) == EVALS  # eval.jsonl written back
    assert bench_run.reuse_finished([a, b], jobs[1:]) == {}


def test_failed_runs_and_other_labels_are_not_reused(tmp_path):
    b = str(tmp_path / "b.json")
    write_results(b, "hfr", 1, "hfr.py --env four-corners --relabel hfr --seed 1 --run-dir x", rc=1)
    assert bench_run.reuse_finished([b], [job("hfr", 1, "--relabel hfr", str(tmp_path / "r"))]) == {}
    write_results(b, "none", 1, "hfr.py --env four-corners --relabel hfr --seed 1 --run-dir x")
    assert bench_run.reuse_finished([b], [job("hfr", 1, "--relabel hfr", str(tmp_path / "r"))]) == {}


def test_reuse_from_builds_a_comparison_without_running_and_prints_run_averages(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path)
    write_results(os.path.join(out, "results", "base.json"), "hfr", 1,
                  "hfr.py --env four-corners --relabel hfr --seed 1 --run-dir /elsewhere")
    bench_run.main(["hfr.py", "--env", "four-corners", "--name", "ablation", "--variant", "hfr=--relabel hfr",
                    "--seeds", "1", "--reuse-from", "base", "--out", out])
    printed = capsys.readouterr().out
    assert "0 runs" in printed
    # the final summary: each metric averaged over all evaluations of a run (the docs' "averaged over the run")
    assert "eval/return averaged over the run -2.000 (per seed -2.00)" in printed
    with open(os.path.join(out, "results", "ablation.json")) as f:
        res = json.load(f)
    seed1 = res["variants"]["hfr"]["seeds"]["1"]
    assert seed1["reused"] and seed1["rc"] == 0 and seed1["evals"] == EVALS
    assert res["variants"]["hfr"]["curves"]["eval/return"]["mean"] == [-3.0, -1.0]


def test_run_averages_skip_evaluations_that_log_nan(tmp_path, capsys):
    """relabel/hit_rate is NaN at an evaluation no relabeling decision informed: the run's average is over the
    others (benchmarks/table.py's rule), not NaN."""
    pytest.importorskip("matplotlib")
    out = str(tmp_path)
    evals = [dict(EVALS[0], **{"relabel/hit_rate": float("nan")}), dict(EVALS[1], **{"relabel/hit_rate": 0.5}),
             {"iteration": 10, "env_steps": 1100, "eval/return": 0.0, "relabel/hit_rate": 0.25}]
    write_results(os.path.join(out, "results", "base.json"), "hfr", 1,
                  "hfr.py --env four-corners --relabel hfr --seed 1 --run-dir /elsewhere", evals=evals)
    bench_run.main(["hfr.py", "--env", "four-corners", "--name", "nan", "--variant", "hfr=--relabel hfr",
                    "--seeds", "1", "--reuse-from", "base", "--out", out,
                    "--metrics", "eval/return", "relabel/hit_rate"])
    printed = capsys.readouterr().out
    assert "relabel/hit_rate averaged over the run 0.375 (per seed 0.38)" in printed
    assert "eval/return averaged over the run -1.333" in printed


def test_a_sitting_with_fewer_seeds_keeps_the_other_seeds_finished_runs(tmp_path, capsys):
    """Seed-major over sittings: `--seeds 1 --reuse` on a file that holds seeds 1-3 must not drop seeds 2 and 3;
    a run made with other flags, or one that failed, is not kept."""
    pytest.importorskip("matplotlib")
    out = str(tmp_path)
    cmd = "hfr.py --env four-corners --relabel hfr --seed {} --run-dir /elsewhere/hfr__seed{}"
    seeds = {"1": {"command": cmd.format(1, 1), "rc": 0, "wall_s": 1.0, "evals": EVALS},
             "2": {"command": cmd.format(2, 2), "rc": 0, "wall_s": 2.0, "evals": EVALS},
             "3": {"command": cmd.format(3, 3).replace("--relabel hfr", "--relabel hfr --bf16"), "rc": 0,
                   "evals": EVALS},
             "4": {"command": cmd.format(4, 4), "rc": 1, "evals": EVALS}}
    os.makedirs(os.path.join(out, "results"))
    path = os.path.join(out, "results", "cmp.json")
    with open(path, "w") as f:
        json.dump({"variants": {"hfr": {"seeds": seeds}}}, f)
    bench_run.main(["hfr.py", "--env", "four-corners", "--name", "cmp", "--variant", "hfr=--relabel hfr",
                    "--seeds", "1", "--reuse", "--out", out])
    assert "keeping 1 finished run(s) of other seeds" in capsys.readouterr().out
    with open(path) as f:
        res = json.load(f)
    assert sorted(res["variants"]["hfr"]["seeds"]) == ["1", "2"] and res["seeds"] == [1, 2]
    assert res["variants"]["hfr"]["seeds"]["2"]["wall_s"] == 2.0
    assert res["variants"]["hfr"]["curves"]["eval/return"]["n_seeds"] == 2


def test_reuse_from_a_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no results file"):
        bench_run.main(["hfr.py", "--env", "four-corners", "--name", "x", "--seeds", "1",
                        "--reuse-from", "nothing", "--out", str(tmp_path)])


def test_results_file_holds_every_ended_run_while_others_still_run(tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path)
    args = bench_run.parse_args(["hfr.py", "--env", "four-corners", "--name", "cmp", "--variant", "hfr=--relabel hfr",
                                 "--variant", "none=--relabel none", "--seeds", "1", "--out", out])
    jobs = [job("hfr", 1, "--relabel hfr", str(tmp_path / "hfr")), job("none", 1, "--relabel none", str(tmp_path / "none"))]
    for _, _, run_dir, _ in jobs:
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in EVALS)
    path = os.path.join(out, "results", "cmp.json")
    bench_run.write_results(args, jobs, {("hfr", 1): {"rc": 0, "wall_s": 3.0}}, path, final=False)
    with open(path) as f:
        res = json.load(f)
    assert list(res["variants"]) == ["hfr"]  # "none" is still running: not in the file yet
    # and a later --reuse takes the ended run from it
    assert bench_run.reuse_finished([path], jobs) == {("hfr", 1): {"rc": 0, "wall_s": 3.0, "reused": True}}
    bench_run.write_results(args, jobs, {("hfr", 1): {"rc": 0, "wall_s": 3.0}, ("none", 1): {"rc": 1, "wall_s": 1.0}},
                            path, final=True)
    with open(path) as f:
        res = json.load(f)
    assert list(res["variants"]) == ["hfr", "none"] and res["variants"]["none"]["seeds"]["1"]["rc"] == 1


# A stand-in for a training script with the scripts' conventions: one eval.jsonl row per iteration, then
# checkpoint.pt; --resume continues after the checkpoint's iteration. With CRASH_AT=k in the environment and no
# --resume it dies after writing row k but before checkpointing it (the worst moment for an interruption).
FAKE_SCRIPT = '''
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--env"); p.add_argument("--seed", type=int); p.add_argument("--run-dir"); p.add_argument("--resume")
a = p.parse_args()
start = json.load(open(a.resume))["iteration"] if a.resume else 0
for it in range(start + 1, 5):
    with open(os.path.join(a.run_dir, "eval.jsonl"), "a") as f:
        f.write(json.dumps({"iteration": it, "env_steps": 10 * it, "eval/return": float(it),
                            "resumed": a.resume is not None}) + "\\n")
    if not a.resume and os.environ.get("CRASH_AT") == str(it):
        sys.exit(3)
    with open(os.path.join(a.run_dir, "checkpoint.pt"), "w") as f:
        json.dump({"iteration": it}, f)
'''


def test_resume_unfinished_continues_a_cut_off_run_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "fake.py").write_text(FAKE_SCRIPT)
    monkeypatch.setattr(bench_run, "ROOT", str(tmp_path))
    out = str(tmp_path / "bench")
    argv = ["fake.py", "--env", "e", "--name", "cut", "--seeds", "1", "--out", out]
    monkeypatch.setenv("CRASH_AT", "3")
    with pytest.raises(SystemExit, match="1 run"):  # the first sitting ends with the run cut off after row 3
        bench_run.main(argv)
    run_dir = os.path.join(out, "runs", "cut", "default__seed1")
    with open(os.path.join(run_dir, "checkpoint.pt")) as f:
        assert json.load(f) == {"iteration": 2}
    monkeypatch.delenv("CRASH_AT")
    bench_run.main(argv + ["--reuse", "--resume-unfinished"])
    assert "continuing 1 cut-off run(s)" in capsys.readouterr().out
    with open(os.path.join(out, "results", "cut.json")) as f:
        seed1 = json.load(f)["variants"]["default"]["seeds"]["1"]
    # iterations 1-2 from the first sitting, 3 (written twice) and 4 from the continued one; no row lost or doubled
    assert [(e["iteration"], e["resumed"]) for e in seed1["evals"]] == [(1, False), (2, False), (3, True), (4, True)]
    assert seed1["rc"] == 0 and seed1["segments"] == 2 and "--resume" not in seed1["command"]
    with open(os.path.join(run_dir, "stdout.log")) as f:
        assert len(f.readlines()) == 2  # both sittings' command lines are kept


def left_run_dir(tmp_path, monkeypatch, env, iteration):
    """A run directory as a cut-off sitting of `fake.py --env <env>` leaves it: its command line and a checkpoint."""
    (tmp_path / "fake.py").write_text(FAKE_SCRIPT)
    monkeypatch.setattr(bench_run, "ROOT", str(tmp_path))
    out = str(tmp_path / "bench")
    run_dir = os.path.join(out, "runs", "cut", "default__seed1")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "stdout.log"), "w") as f:
        f.write(f"{sys.executable} fake.py --env {env} --seed 1 --run-dir {run_dir}\n")
    with open(os.path.join(run_dir, "checkpoint.pt"), "w") as f:
        json.dump({"iteration": iteration}, f)
    return out, run_dir


def test_a_segment_whose_runner_was_killed_still_counts_in_the_wall_time(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out, run_dir = left_run_dir(tmp_path, monkeypatch, "e", 2)
    # what a runner killed with its run leaves behind: the segment still `open`, started 100 s before the
    # run's last log line
    os.utime(os.path.join(run_dir, "stdout.log"), (1100.0, 1100.0))
    with open(os.path.join(run_dir, "wall_s.txt"), "w") as f:
        f.write("open 1000.0\n")
    bench_run.main(["fake.py", "--env", "e", "--name", "cut", "--seeds", "1", "--out", out, "--resume-unfinished"])
    with open(os.path.join(out, "results", "cut.json")) as f:
        seed1 = json.load(f)["variants"]["default"]["seeds"]["1"]
    assert seed1["segments"] == 2 and 100.0 <= seed1["wall_s"] < 130.0
    assert [(e["iteration"], e["resumed"]) for e in seed1["evals"]] == [(3, True), (4, True)]  # continued
    with open(os.path.join(run_dir, "wall_s.txt")) as f:
        first, second = f.read().split()
    assert float(first) == 100.0 and 0.0 <= float(second) < 30.0


def test_resume_unfinished_never_continues_a_checkpoint_of_other_flags(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out, run_dir = left_run_dir(tmp_path, monkeypatch, "other", 3)  # another env's run
    bench_run.main(["fake.py", "--env", "e", "--name", "cut", "--seeds", "1", "--out", out, "--resume-unfinished"])
    assert [e["resumed"] for e in bench_run.read_evals(run_dir)] == [False] * 4  # started over


def test_plot_only_keeps_each_runs_status_as_the_results_file_has_it(tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path)
    path = os.path.join(out, "results", "cmp.json")
    run_dir = os.path.join(out, "runs", "cmp", "hfr__seed1")
    cmd = f"hfr.py --env four-corners --relabel hfr --seed 1 --run-dir {run_dir}"
    write_results(path, "hfr", 1, cmd)  # a run made by that comparison itself, not reused: no "reused" mark
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in EVALS)
    bench_run.main(["hfr.py", "--env", "four-corners", "--name", "cmp", "--variant", "hfr=--relabel hfr",
                    "--seeds", "1", "--plot-only", "--out", out])
    with open(path) as f:
        seed1 = json.load(f)["variants"]["hfr"]["seeds"]["1"]
    assert seed1["rc"] == 0 and seed1["wall_s"] == 12.0 and "reused" not in seed1 and seed1["evals"] == EVALS


def test_each_finished_run_prints_a_line_and_k_of_n_with_an_eta(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "fake.py").write_text(FAKE_SCRIPT)
    monkeypatch.setattr(bench_run, "ROOT", str(tmp_path))
    bench_run.main(["fake.py", "--env", "e", "--name", "p", "--seeds", "1", "2", "3", "--out", str(tmp_path / "b")])
    lines = capsys.readouterr().out.splitlines()
    assert sum(bool(re.fullmatch(r"  default seed \d: exit 0 after \d+ s", x)) for x in lines) == 3
    assert sum(bool(re.fullmatch(r"[12] of 3 runs finished, ETA \d+:\d\d:\d\d", x)) for x in lines) == 2
    assert "3 of 3 runs finished" in lines


def test_eta_runs_the_waiting_runs_in_the_first_free_slots():
    # mean 100 s, 2 at a time: one run 50 s in (ends in 50 s), one slot free; two runs wait: 0-100 and 50-150
    assert bench_run.eta_seconds(100.0, [50.0], 2, 2) == 150.0
    assert bench_run.eta_seconds(100.0, [130.0, 10.0], 0, 2) == 90.0  # over the mean: "any moment now"
    assert bench_run.eta_seconds(100.0, [], 5, 2) == 300.0


@pytest.mark.parametrize("flags, message", [
    (["--ray-address", "auto"], "--ray-address: only with --backend ray"),
    (["--cpus-per-run", "2", "--gpus-per-run", "1"], "--cpus-per-run, --gpus-per-run: only with --backend ray"),
    (["--backend", "ray", "--workers", "4"], "--workers: only with --backend local"),
    (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run 0: must be >= 1"),
    (["--backend", "ray", "--gpus-per-run", "-1"], "--gpus-per-run -1: must be >= 0"),
])
def test_backend_flags_that_do_not_fit_are_one_line_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_run.parse_args(["hfr.py", "--env", "four-corners", "--name", "x"] + flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_local_backend_never_imports_ray(tmp_path):
    (tmp_path / "fake.py").write_text(FAKE_SCRIPT)
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('r', {bench_run.__file__!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.ROOT = sys.argv[1]; "
            "m.plot = lambda *a: None; m.main(['fake.py', '--env', 'e', '--name', 'n', '--seeds', '1', '--out', "
            "sys.argv[1]]); assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
