"""How often undirected exploration brings the puck to a goal in sawyer-push: before / after / HFR's reset.

Policy: undirected, temporally correlated random actions: a ~ U[-1, 1]^4 held for k ~ U{10..30} steps, then a
new one, for a 150-step episode (HFR's horizon). An episode counts when the puck's centre comes within 0.07 m
(xy, HFR's success radius) of SOME train goal at any step. The share of such episodes is reported with a 95 %
Wilson interval, for three start states, each with the same action sequences (numpy seed 0):
  before      the sawyer-push of the committed envs/sawyer.py (`git show HEAD:envs/sawyer.py`, loaded at run time
              under another module name): Meta-World 3.1.1's push-v3 scene, fingers closed, hand 2 cm clear of
              the puck on the goal side;
  after       envs.make("sawyer-push") of the working tree: Meta-World v1's scene, HFR's hand start and order
              (module docstring of envs/sawyer.py);
  hfr-reset   HFR's reset_model run verbatim in the same v1 scene (michaelwan11/hfr
              rlkit/envs/sawyer_reach_push_pick_place.py, on Meta-World 2f228c2 `MujocoEnv.reset`): the arm
              back at its zero pose, 10 x (mocap (0, 0.65, 0), quaternion (1, 0, 1, 0), fingers open, 5 MuJoCo
              steps), the puck's free joint then set to (0, 0.6, its current height) with zero velocity, nothing
              settled afterwards; the episode then runs through the same `step` as "after".
Usage (from the repository root, one core):
    OMP_NUM_THREADS=1 python benchmarks/sawyer_exploration.py --episodes 2000
writes benchmarks/results/sawyer-exploration.json (command, CPU, date, rates, the start states).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import mujoco
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs  # noqa: E402

RADIUS, HORIZON, HOLD = 0.07, 150, (10, 30)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def committed_env():
    """sawyer-push as the committed envs/sawyer.py builds it, loaded as module envs._sawyer_committed."""
    source = subprocess.run(["git", "show", "HEAD:envs/sawyer.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    spec = importlib.util.spec_from_loader("envs._sawyer_committed", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, "HEAD:envs/sawyer.py", "exec"), module.__dict__)
    env = module.SawyerPush()
    env.name = "sawyer-push"
    env.set_task(env.train_tasks[0])
    return env


def hfr_reset(env) -> np.ndarray:
    """HFR's reset_model, verbatim, on the new scene's model and data (module docstring)."""
    m, d = env._model, env._data
    mujoco.mj_resetData(m, d)
    for _ in range(10):
        d.mocap_pos[0], d.mocap_quat[0], d.ctrl[:] = (0.0, 0.65, 0.0), (1.0, 0.0, 1.0, 0.0), (-1.0, 1.0)
        mujoco.mj_step(m, d, nstep=5)
    body, geom = m.body("obj").id, m.geom("objGeom").id
    offset = d.xpos[body][:2] - d.geom_xpos[geom][:2]  # HFR's adjust_initObjPos (zero for v1's puck)
    q, v = env._puck_q, env._puck_v
    d.qpos[q:q + 3] = (offset[0], 0.6 + offset[1], d.geom_xpos[geom][2])
    d.qvel[v:v + 6] = 0.0
    mujoco.mj_forward(m, d)
    env._t = 0
    env._obs = env._observe()
    return env._obs.copy()


def run(env, reset, goals: np.ndarray, episodes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    hits, unstable, t0 = 0, 0, time.process_time()
    data = getattr(env, "_data", None)
    bad = (lambda: data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number) if data is not None else (lambda: 0)
    first_obs = None
    for _ in range(episodes):
        obs = reset()
        first_obs = obs if first_obs is None else first_obs
        warnings, t, hit = bad(), 0, False
        while t < HORIZON:
            a = rng.uniform(-1, 1, 4).astype(np.float32)
            for _ in range(int(rng.integers(HOLD[0], HOLD[1] + 1))):
                if t >= HORIZON:
                    break
                obs, *_ = env.step(a)
                t += 1
                hit = hit or bool(np.min(np.linalg.norm(goals - obs[3:5].astype(np.float64), axis=1)) <= RADIUS)
        hits += hit
        unstable += bad() > warnings
    lo, hi = wilson(hits, episodes)
    return {"episodes": episodes, "hits": hits, "share": hits / episodes, "wilson95": [lo, hi],
            "episodes_with_mujoco_instability_warning": unstable,
            "first_observation": [round(float(x), 4) for x in first_obs],
            "cpu_seconds": round(time.process_time() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--rows", default="before,after,hfr-reset")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sawyer-exploration.json"))
    args = parser.parse_args()
    if args.episodes < 1:
        sys.exit("error: --episodes must be >= 1")
    new = envs.make("sawyer-push")
    goals = new.train_tasks.copy()
    rows = {}
    for row in args.rows.split(","):
        if row == "before":
            env = committed_env()
            np.testing.assert_array_equal(env.train_tasks, goals)
            rows[row] = run(env, lambda e=env: e.reset(seed=0)[0], goals, args.episodes)
            env.close()
        elif row == "after":
            rows[row] = run(new, lambda: new.reset(seed=0)[0], goals, args.episodes)
        elif row == "hfr-reset":
            emu = envs.make("sawyer-push")
            emu.reset(seed=0)
            rows[row] = run(emu, lambda: hfr_reset(emu), goals, args.episodes)
        else:
            sys.exit(f"error: --rows: unknown row {row!r}; choose from before, after, hfr-reset")
        r = rows[row]
        print(f"{row:10s} {r['hits']:5d}/{r['episodes']} = {r['share']:.4f}  95% CI [{r['wilson95'][0]:.4f}, "
              f"{r['wilson95'][1]:.4f}]  unstable {r['episodes_with_mujoco_instability_warning']}  "
              f"{r['cpu_seconds']} CPU s", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    result = {"command": "OMP_NUM_THREADS=1 python benchmarks/sawyer_exploration.py " + " ".join(sys.argv[1:]),
              "cpu": cpu, "date": datetime.date.today().isoformat(), "mujoco": mujoco.__version__,
              "policy": "a ~ U[-1,1]^4 held for U{10..30} steps, numpy default_rng(0), same sequence per row",
              "criterion": "puck centre within 0.07 m (xy) of any of the 50 train goals at any of 150 steps",
              "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
