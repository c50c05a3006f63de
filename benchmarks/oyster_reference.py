"""The authors' PEARL (katerakelly/oyster) as a reference beside pearl.py: run it, read its logs, compare.

pearl.py is compared with the authors' code run locally at the same config. Their code is not part of this
repository; this file only starts it and reads what it writes. Set-up (Python 3.11, one venv for their code):

    git clone https://github.com/katerakelly/oyster && cd oyster && git checkout 44e20fd
    python -m venv venv && venv/bin/pip install torch==2.13.0 numpy==1.23.5 gym==0.26.2 gtimer click \
        python-dateutil joblib

and these three import fixes, nothing else (numpy 1.23.5 keeps their `np.bool`; gym 0.26.2 keeps `gym.Env`):
  1. rlkit/envs/__init__.py imports only `point_robot` instead of every env module (the others need mujoco_py);
  2. rlkit/envs/wrappers.py imports `mujoco_py` inside `initialize_camera`, the one method that uses it, instead
     of at module level;
  3. rlkit/core/rl_algorithm.py, the two `np.stack(e['sparse_reward'] for e in p['env_infos'])`: a list instead
     of a generator (numpy >= 1.24 refuses generators; the same two lines fail on any recent numpy).

Their launcher sets no seed; `run` seeds python, numpy and torch with --seed when training starts (after the env
constructor has reseeded numpy with 1337 for its task list), runs one torch thread, on the CPU, and sets
`dump_eval_paths` so that every meta-test trajectory is saved and success can be read back. Flags after the
config are `key=value` overrides of their config (algo_params keys, or net_size):

    python benchmarks/oyster_reference.py run --oyster OYSTER_DIR --env sparse-point-robot --seed 1 \
        --out benchmarks/runs/oyster/sparse-point-robot/s1 net_size=64 meta_batch=8 ...

`summarize` reads the runs (progress.csv and the eval trajectory pickles) into the results format of
benchmarks/run.py, so benchmarks/compare.py can overlay them with pearl.py's curves:
    eval/return             AverageReturn_all_test_tasks: mean over test tasks of the mean over num_evals runs of
                            the LAST trajectory's return (sparse return on sparse-point-robot), as their log has it
    eval/return_train_tasks AverageReturn_all_train_tasks, the same protocol on as many sampled train tasks
    eval/success_rate       any success among the posterior trajectories (those after num_exp_traj_eval
                            exploration trajectories), per run, averaged over runs and test tasks (HFR's metric)
    eval/success_rate_last  success of the last trajectory, averaged the same way
  (success of a trajectory: some step inside the goal radius, i.e. a positive sparse reward).

    python benchmarks/oyster_reference.py summarize --env sparse-point-robot --name oyster-sparse-point-robot \
        --config "net_size=64 ..." benchmarks/runs/oyster/sparse-point-robot/s1 .../s2 .../s3

`table` prints, for two or more results files, each variant's metric averaged over the run and over its last
20 % per seed, with the mean and a 95 % confidence interval over seeds (Student t):

    python benchmarks/oyster_reference.py table benchmarks/results/oyster-sparse-point-robot.json \
        benchmarks/results/pearl-vs-oyster-sparse-point-robot.json --metric eval/success_rate
"""

import argparse
import csv
import glob
import importlib.util
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OYSTER_COMMIT = "44e20fd"


def load_runner():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args, overrides: list[str]) -> None:
    """Start their launcher on their config with the overrides and a seed (in their checkout, their venv)."""
    if not os.path.isfile(os.path.join(args.oyster, "launch_experiment.py")):
        raise SystemExit(f"error: --oyster {args.oyster}: no launch_experiment.py there (a checkout of oyster)")
    os.makedirs(args.out, exist_ok=True)
    python = args.python or os.path.join(args.oyster, "venv", "bin", "python")
    code = f"""
import json, random, sys
import numpy as np, torch
torch.set_num_threads(1)
import launch_experiment as le
from configs.default import default_config
variant = le.deep_update_dict(json.load(open({os.path.join('configs', args.env + '.json')!r})), default_config)
for kv in {overrides!r}:
    k, v = kv.split('=', 1)
    v = json.loads(v)
    (variant if k in ('net_size', 'latent_size') else variant['algo_params'])[k] = v
    if k == 'embedding_batch_size':
        variant['algo_params']['embedding_mini_batch_size'] = v
variant['algo_params']['dump_eval_paths'] = True
variant['util_params'].update(use_gpu=False, base_log_dir={os.path.abspath(args.out)!r})
class Seeded(le.PEARLSoftActorCritic):
    def train(self):
        random.seed({args.seed}); np.random.seed({args.seed}); torch.manual_seed({args.seed})
        return super().train()
le.PEARLSoftActorCritic = Seeded
le.experiment(variant)
"""
    with open(os.path.join(args.out, "command.json"), "w") as f:
        json.dump({"env": args.env, "seed": args.seed, "overrides": overrides, "oyster_commit": OYSTER_COMMIT}, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(os.path.join(args.out, "stdout.log"), "w") as log:
        rc = subprocess.run([python, "-c", code], cwd=args.oyster, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"error: their run exited with {rc}; see {args.out}/stdout.log")
    open(os.path.join(args.out, "DONE"), "w").close()


def read_run(run_dir: str, n_exp: int, n_test: int, n_tasks: int) -> list[dict]:
    """One run's evaluations as eval.jsonl-like rows (see the module docstring for each metric)."""
    logs = glob.glob(os.path.join(run_dir, "*", "*", "progress.csv"))
    if len(logs) != 1:
        raise SystemExit(f"error: {run_dir}: expected one <env>/<time>/progress.csv, found {len(logs)}")
    log_dir = os.path.dirname(logs[0])
    with open(logs[0]) as f:
        table = list(csv.DictReader(f))
    rows = []
    for epoch, rec in enumerate(table):
        row = {"iteration": epoch + 1, "env_steps": int(float(rec["Number of env steps total"])),
               "eval/return": float(rec["AverageReturn_all_test_tasks"]),
               "eval/return_train_tasks": float(rec["AverageReturn_all_train_tasks"])}
        last, post_any = [], []
        for task in range(n_tasks - n_test, n_tasks):  # their test tasks are the last n_test of the list
            for path in sorted(glob.glob(os.path.join(log_dir, "eval_trajectories", f"task{task}-epoch{epoch}-run*.pkl"))):
                with open(path, "rb") as f:
                    trajs = pickle.load(f)
                success = [bool(np.any(np.asarray([e["sparse_reward"] for e in t["env_infos"]]) > 0))
                           for t in trajs] if "sparse_reward" in trajs[0]["env_infos"][0] else None
                if success is not None:
                    last.append(success[-1])
                    post_any.append(any(success[n_exp:]))
        if last:
            row.update({"eval/success_rate": float(np.mean(post_any)), "eval/success_rate_last": float(np.mean(last))})
        rows.append(row)
    return rows


def summarize(args) -> None:
    runner = load_runner()
    config = json.load(open(os.path.join(args.oyster, "configs", args.env + ".json"))) if args.oyster else {}
    n_exp = args.num_exp_traj_eval
    seeds, runs = {}, []
    for run_dir in args.runs:
        with open(os.path.join(run_dir, "command.json")) as f:
            cmd = json.load(f)
        rows = read_run(run_dir, n_exp, args.num_test_tasks, args.num_tasks)
        seeds[str(cmd["seed"])] = {"command": cmd, "finished": os.path.exists(os.path.join(run_dir, "DONE")),
                                   "evals": rows}
        runs.append(rows)
    metrics = ["eval/return", "eval/success_rate", "eval/success_rate_last", "eval/return_train_tasks"]
    curves = {m: c for m in metrics if (c := runner.curve(runs, m)) is not None}
    out = os.path.join(ROOT, "benchmarks", "results", args.name + ".json")
    result = {"name": args.name, "script": f"oyster {OYSTER_COMMIT}", "env": args.env, "common": args.config,
              "seeds": [int(s) for s in seeds], "config_file": config,
              "variants": {"authors' PEARL": {"flags": args.config, "curves": curves, "seeds": seeds}}}
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    runner.plot(out[:-5] + ".png", f"katerakelly/oyster {OYSTER_COMMIT} --env {args.env} {args.config}",
                result["variants"], [m for m in metrics if m in curves])
    print(f"wrote {out} and {out[:-5]}.png")


def ci95(x: list[float]) -> float:
    """Half-width of the 95 % Student-t confidence interval of the mean of x."""
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    n = len(x)
    return float(t.get(n - 1, 1.96) * np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def table(args) -> None:
    print(f"{args.metric}: averaged over the run | over its last 20 % of evaluations (per seed; mean ± 95 % CI)")
    for path in args.results:
        with open(path) as f:
            res = json.load(f)
        for label, v in res["variants"].items():
            whole, tail = [], []
            for seed, s in sorted(v["seeds"].items()):
                ys = [e[args.metric] for e in s["evals"] if args.metric in e]
                if ys:
                    whole.append(float(np.mean(ys)))
                    tail.append(float(np.mean(ys[-max(1, len(ys) // 5):])))
            if not whole:
                continue
            print(f"  {res['script']} {label}: run {np.mean(whole):.3f} ± {ci95(whole):.3f} "
                  f"({', '.join(f'{w:.3f}' for w in whole)}) | last 20 % {np.mean(tail):.3f} ± {ci95(tail):.3f} "
                  f"({', '.join(f'{w:.3f}' for w in tail)})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run their PEARL once")
    r.add_argument("--oyster", required=True, help="their checkout, with the three import fixes")
    r.add_argument("--python", help="their venv's python (default OYSTER/venv/bin/python)")
    r.add_argument("--env", required=True, choices=["sparse-point-robot", "point-robot"])
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--out", required=True)
    s = sub.add_parser("summarize", help="their runs -> benchmarks/results/<name>.json (run.py's format)")
    s.add_argument("runs", nargs="+")
    s.add_argument("--env", required=True, choices=["sparse-point-robot", "point-robot"])
    s.add_argument("--name", required=True)
    s.add_argument("--config", default="", help="the overrides the runs used, recorded in the results")
    s.add_argument("--oyster", help="their checkout, to record its config file in the results")
    s.add_argument("--num-exp-traj-eval", type=int, default=None)
    s.add_argument("--num-test-tasks", type=int, default=20)
    s.add_argument("--num-tasks", type=int, default=100)
    t = sub.add_parser("table", help="per-seed run averages with 95 %% CIs of results files")
    t.add_argument("results", nargs="+")
    t.add_argument("--metric", default="eval/return")
    args, extra = p.parse_known_args()
    if args.cmd == "run":
        if any("=" not in kv for kv in extra):
            raise SystemExit(f"error: overrides are key=value, got {extra}")
        run(args, extra)
        return
    if extra:
        raise SystemExit(f"error: unrecognized arguments {extra}")
    if args.cmd == "summarize":
        if args.num_exp_traj_eval is None:  # their configs: 5 on sparse-point-robot, the default 1 elsewhere
            args.num_exp_traj_eval = 5 if args.env == "sparse-point-robot" else 1
        summarize(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
