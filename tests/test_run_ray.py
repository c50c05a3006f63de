"""benchmarks/run.py --backend ray: the same results as the local backend, and a run whose Ray task dies goes on
from its checkpoint. One local Ray instance (2 CPUs) serves every test here; stand-in scripts keep runs short."""

import importlib.util
import json
import os
import re

import pytest

ray = pytest.importorskip("ray")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)

# A stand-in for a training script with the scripts' conventions: one eval.jsonl row per iteration, then an atomic
# checkpoint; --resume drops the rows after the checkpoint's iteration and goes on from it. --kill-worker-at K
# kills the Ray worker process running its task right after writing row K, before checkpointing it (the worst
# moment); --lose-node-at K waits until row K and checkpoint K-1 are in --driver-dir (the driver's copy), kills the
# worker and deletes its node-local run dir, as if the node were gone. Neither acts in a resumed run.
STAND_IN = '''
import argparse, json, os, shutil, signal, sys, time
p = argparse.ArgumentParser()
p.add_argument("--env"); p.add_argument("--seed", type=int); p.add_argument("--run-dir"); p.add_argument("--resume")
p.add_argument("--scale", type=float, default=1.0); p.add_argument("--iterations", type=int, default=4)
p.add_argument("--kill-worker-at", type=int, default=0); p.add_argument("--lose-node-at", type=int, default=0)
p.add_argument("--driver-dir")
a = p.parse_args()
path = os.path.join(a.run_dir, "eval.jsonl")
start = 0
if a.resume:
    start = json.load(open(a.resume))["iteration"]
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\\n" for r in rows if r["iteration"] <= start)
    os.replace(path + ".tmp", path)
    print(f"resumed from {a.resume} at iteration {start}", flush=True)
for it in range(start + 1, a.iterations + 1):
    with open(path, "a") as f:
        f.write(json.dumps({"iteration": it, "env_steps": 10 * it, "eval/return": a.seed * a.scale + it,
                            "resumed": a.resume is not None}) + "\\n")
    print(f"iteration {it}/{a.iterations} in {a.run_dir}", flush=True)
    if not a.resume and it == a.kill_worker_at:
        os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker process running this run's task
        time.sleep(60)  # ended at once by the SIGTERM its parent's death sends
    if not a.resume and it == a.lose_node_at:
        for _ in range(300):  # until row `it` and the checkpoint before it are in the driver's copy
            try:
                if (json.load(open(os.path.join(a.driver_dir, "checkpoint.pt")))["iteration"] == it - 1
                        and len(open(os.path.join(a.driver_dir, "eval.jsonl")).readlines()) == it):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.kill(os.getppid(), signal.SIGKILL)
        shutil.rmtree(a.run_dir)  # and the node's disk is gone too
        os.remove(os.path.join(os.path.dirname(a.run_dir), "token"))
        sys.exit(143)
    with open(os.path.join(a.run_dir, "checkpoint.pt.tmp"), "w") as f:
        json.dump({"iteration": it}, f)
    os.replace(os.path.join(a.run_dir, "checkpoint.pt.tmp"), os.path.join(a.run_dir, "checkpoint.pt"))
print(f"done: eval.jsonl in {a.run_dir}", flush=True)
'''


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    (tmp_path / "fake.py").write_text(STAND_IN)
    monkeypatch.setattr(bench_run, "ROOT", str(tmp_path))
    return tmp_path


def results(out, name):
    with open(os.path.join(out, "results", f"{name}.json")) as f:
        return json.load(f)


def test_ray_backend_gives_the_local_backends_results(ray_instance, stand_in, capsys):
    pytest.importorskip("matplotlib")
    argv = ["fake.py", "--env", "e", "--name", "cmp", "--variant", "a=--scale 1", "--variant", "b=--scale 2",
            "--seeds", "1", "2"]
    local, on_ray = str(stand_in / "local"), str(stand_in / "ray")
    bench_run.main(argv + ["--out", local])
    bench_run.main(argv + ["--out", on_ray, "--backend", "ray"])
    printed = capsys.readouterr().out
    assert "4 runs on Ray" in printed and "4 of 4 runs finished" in printed
    assert re.search(r"^2 of 4 runs finished, ETA \d+:\d\d:\d\d$", printed, re.M)

    def same_form(res, out):  # the run dirs differ (--out) and so do the measured wall times
        for v in res["variants"].values():
            for s in v["seeds"].values():
                s["command"] = s["command"].replace(out, "OUT")
                del s["wall_s"]
        return res

    expected = same_form(results(local, "cmp"), local)
    assert same_form(results(on_ray, "cmp"), on_ray) == expected
    assert expected["variants"]["b"]["seeds"]["2"]["evals"][-1]["eval/return"] == 2 * 2 + 4
    assert os.path.isfile(os.path.join(on_ray, "results", "cmp.png"))
    for run in ("a__seed1", "b__seed2"):  # the same files in the run dir, stdout.log line for line
        here, there = os.path.join(local, "runs", "cmp", run), os.path.join(on_ray, "runs", "cmp", run)
        assert sorted(os.listdir(there)) == sorted(os.listdir(here))
        with open(os.path.join(here, "stdout.log")) as f, open(os.path.join(there, "stdout.log")) as g:
            assert g.read().replace(on_ray, "OUT") == f.read().replace(local, "OUT")
        with open(os.path.join(there, "checkpoint.pt")) as f:
            assert json.load(f) == {"iteration": 4}


@pytest.mark.parametrize("how", ["kill-worker", "lose-node"])
def test_a_run_whose_task_died_goes_on_from_its_checkpoint(ray_instance, stand_in, capsys, monkeypatch, how):
    pytest.importorskip("matplotlib")
    out = str(stand_in / "bench")
    run_dir = os.path.join(out, "runs", "died", "x__seed1")
    if how == "lose-node":  # its retry has only what was sent back: send it back often
        monkeypatch.setattr(bench_run, "SYNC_SECONDS", 0.2)
    flags = "--kill-worker-at 3" if how == "kill-worker" else f"--lose-node-at 3 --driver-dir {run_dir}"
    bench_run.main(["fake.py", "--env", "e", "--name", "died", "--variant", f"x={flags}", "--seeds", "1",
                    "--out", out, "--backend", "ray"])
    printed = capsys.readouterr().out
    assert "x seed 1: its Ray task died (WorkerCrashedError); retrying once from its last checkpoint" in printed
    # killed at once, no checkpoint had come back (first sync after 2 s): the retry on the same node goes on from
    # the checkpoint the killed try left there; with the node gone, from the copy sent back to the driver
    assert ("from the checkpoint its first try left on that node" if how == "kill-worker"
            else "from the checkpoint sent back") in printed
    seed1 = results(out, "died")["variants"]["x"]["seeds"]["1"]
    assert seed1["rc"] == 0 and seed1["segments"] == 2
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    # rows 1-2 from the killed try, 3 (written again after the checkpoint of 2) and 4 from the retry; no row lost
    # or doubled in the file itself
    assert [(r["iteration"], r["resumed"]) for r in rows] == [(1, False), (2, False), (3, True), (4, True)]
    with open(os.path.join(run_dir, "stdout.log")) as f:
        log = f.read()
    assert f"--resume {run_dir}/checkpoint.pt" in log and "died (WorkerCrashedError)" in log
    assert f"done: eval.jsonl in {run_dir}" in log and "meta-rl-benchmarks" not in log  # driver paths only


def test_resume_unfinished_and_reuse_work_on_ray(ray_instance, stand_in, capsys):
    pytest.importorskip("matplotlib")
    out = str(stand_in / "bench")
    run_dir = os.path.join(out, "runs", "cut", "default__seed1")
    os.makedirs(run_dir)  # what a sitting cut off after iteration 2 leaves: its command line, rows, checkpoint
    with open(os.path.join(run_dir, "stdout.log"), "w") as f:
        f.write(f"{bench_run.sys.executable} fake.py --env e --seed 1 --run-dir {run_dir}\n")
    with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
        f.writelines(json.dumps({"iteration": i, "env_steps": 10 * i, "eval/return": 1.0 + i, "resumed": False})
                     + "\n" for i in (1, 2, 3))
    with open(os.path.join(run_dir, "checkpoint.pt"), "w") as f:
        json.dump({"iteration": 2}, f)
    argv = ["fake.py", "--env", "e", "--name", "cut", "--seeds", "1", "--out", out, "--backend", "ray"]
    bench_run.main(argv + ["--resume-unfinished"])
    assert "continuing 1 cut-off run(s)" in capsys.readouterr().out
    seed1 = results(out, "cut")["variants"]["default"]["seeds"]["1"]
    assert [(e["iteration"], e["resumed"]) for e in seed1["evals"]] == [(1, False), (2, False), (3, True), (4, True)]
    assert seed1["rc"] == 0 and "--resume" not in seed1["command"]
    bench_run.main(argv + ["--reuse"])  # finished: nothing left to run, so Ray is not even asked
    assert "0 runs" in capsys.readouterr().out
