"""What reward signal a finished `pearl.py` / `hfr.py` run ever saw: its replay buffers, read from checkpoint.pt.

Meant for the sparse-reward families (stored reward 0 on reaching the goal, -1 otherwise, as sawyer-push). There a
run whose evaluations stay at the no-success level either never met the reward or met it and failed to learn from
it; this tells the two apart. For every run directory it reports:
  - the stored transitions and the fraction whose stored reward is above the run's lowest stored reward
    (on the sparse families: transitions that reached their task's goal, after relabeling);
  - the fraction that would be above that level under at least one train task, per `env.evaluate`
    (what any relabeling, HFR's included, could have handed the critic).
Writes results/<name>.json.

    python benchmarks/buffer_rewards.py benchmarks/runs/hfr-sawyer-push/*__seed* --name hfr-sawyer-push-buffers
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs  # noqa: E402


def run_stats(run_dir: str, chunk: int = 4096) -> dict:
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no checkpoint.pt in {run_dir}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "rl_buffer" not in ck or ck.get("script", "pearl.py") not in ("pearl.py", "hfr.py"):  # older: no "script"
        raise SystemExit(f"error: {path} is not a pearl.py / hfr.py checkpoint")
    env_name = ck["args"]["env"]
    env = envs.make(env_name)
    o, a = env.observation_space.shape[0], env.action_space.shape[0]
    # one buffer row = obs, action, reward, next_obs, done (pearl.py / hfr.py `pack`); "rows" holds each task's
    # stored rows, as `TaskReplayBuffers.state_dict` writes them (the same layout before and after the buffers grew)
    rows = np.concatenate([r for r in ck["rl_buffer"]["rows"] if len(r)])
    obs, act, rew, next_obs = rows[:, :o], rows[:, o:o + a], rows[:, o + a], rows[:, o + a + 1:2 * o + a + 1]
    floor = float(rew.min())
    any_task = np.zeros(len(rows), bool)
    for j in range(len(env.train_tasks)):  # every train task's reward for every stored transition
        for s in range(0, len(rows), chunk):
            sl = slice(s, s + chunk)
            r_j, _ = env.evaluate(obs[sl], act[sl], next_obs[sl], env.train_tasks[j])
            any_task[sl] |= np.asarray(r_j) > floor
    return {"run_dir": os.path.relpath(run_dir, ROOT), "env": env_name, "iteration": int(ck["iteration"]),
            "transitions": int(len(rows)), "lowest_reward": floor,
            "fraction_stored_above_lowest": float((rew > floor).mean()),
            "fraction_above_lowest_under_some_train_task": float(any_task.mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="run directories holding a checkpoint.pt")
    p.add_argument("--name", required=True, help="writes benchmarks/results/<name>.json")
    args = p.parse_args(argv)
    stats = [run_stats(d) for d in args.run_dirs]
    for s in stats:
        print(f"{s['run_dir']}: {s['transitions']} transitions (iteration {s['iteration']}), lowest reward "
              f"{s['lowest_reward']:g}; above it: {s['fraction_stored_above_lowest']:.4f} as stored, "
              f"{s['fraction_above_lowest_under_some_train_task']:.4f} under some train task")
    out = os.path.join(ROOT, "benchmarks", "results", f"{args.name}.json")
    with open(out, "w") as f:
        json.dump({"name": args.name, "runs": stats}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
