r"""How often undirected exploration brings the puck to a goal in sawyer-push, from each start state.

Policy: undirected, temporally correlated random actions: a ~ U[-1, 1]^4 held for k ~ U{10..30} steps, then a
new one, for a 150-step episode (HFR's horizon). An episode counts when the puck's centre comes within 0.07 m
(xy, HFR's success radius) of SOME train goal at any step. The share of such episodes is reported with a 95 %
Wilson interval, for each start state below, each with the same action sequences (numpy default_rng(0)):
  old-scene     sawyer-push as envs/sawyer.py built it before it moved to the v1 scene (the file at the parent of
                the first commit whose envs/sawyer.py names sawyer_v1_reach_push.xml, loaded at run time under
                another module name): Meta-World 3.1.1's push-v3 scene, fingers closed, hand 2 cm clear of the puck;
  settled       envs.make("sawyer-push", start="settled"): v1 scene, hand settled at HFR's (0, 0.65) with the
                fingers open, puck placed at (0, 0.6) afterwards, the rear claw ending in the puck's top;
  lodged        envs.make("sawyer-push", start="lodged"): MuJoCo 2.2.0's outcome of HFR's reset, the puck
                tipped onto its rim between the open claws, at rest (envs/sawyer.py's docstring);
  arriving      envs.make("sawyer-push") (the default start): the state HFR's reset returns in MuJoCo 2.2.0, the
                arm still swinging in, continued in MuJoCo 3;
  hfr-verbatim  HFR's reset_model run verbatim in the v1 scene (michaelwan11/hfr
                rlkit/envs/sawyer_reach_push_pick_place.py, on Meta-World 2f228c2 `MujocoEnv.reset`): the arm
                back at its zero pose, 10 x (mocap (0, 0.65, 0), quaternion (1, 0, 1, 0), fingers open, 5 MuJoCo
                steps), the puck's free joint then set to (0, 0.6, its current height) with zero velocity, nothing
                settled afterwards; each episode then steps as envs/sawyer.py's `step` does. It also records where
                the reset leaves hand, fingers and puck after k zero-action steps, and whether that is the same in
                every episode;
  lodged-standalone  the "lodged" start built from envs/sawyer.py's constants by this file's own copy of the
                scene, to run it in another MuJoCo (in MuJoCo 3 it equals "lodged" bit for bit: a test checks).
The last two rows need only numpy and mujoco (no envs, gymnasium or metaworld import), so they run under any
MuJoCo that loads the scene; their keys in the results name the MuJoCo version that ran them, and with
--zero-steps K the policy starts K zero-action steps after the reset (key "+K-zero-steps"). Every row also
records where the puck is after 20 steps of the policy: the share of episodes with the puck between the open
claws (|dx| < 0.03, |dy| < 0.044 from the hand: inside the claws' 3 cm width and between the pads' inner faces).

Usage (from the repository root, one core; each row of 2,000 episodes takes 35-45 CPU s):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sawyer_exploration.py \
        --rows old-scene,settled,lodged,arriving,hfr-verbatim
and, for MuJoCo 2.2.0 (the oldest MuJoCo on PyPI; HFR used 2.0 through mujoco-py), in a Python 3.8 venv holding
only that MuJoCo and numpy, with the arm meshes of the main venv's metaworld package:
    python3.8 -m venv /tmp/mj22 && /tmp/mj22/bin/pip install mujoco==2.2.0 numpy
    MESHES=$(.venv/bin/python -c "import importlib.util as u, os; print(os.path.join(os.path.dirname(
        u.find_spec('metaworld').origin), 'assets', 'objects', 'meshes', 'xyz_base'))")
    OMP_NUM_THREADS=1 /tmp/mj22/bin/python benchmarks/sawyer_exploration.py --rows hfr-verbatim,lodged-standalone \
        --mesh-dir "$MESHES"
    for k in 10 20 40; do OMP_NUM_THREADS=1 /tmp/mj22/bin/python benchmarks/sawyer_exploration.py \
        --rows hfr-verbatim --zero-steps $k --mesh-dir "$MESHES"; done
Rows are merged into benchmarks/results/sawyer-exploration.json (a row of the same key is replaced), each with
its command, MuJoCo and Python versions, CPU, date and CPU seconds.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time

import mujoco
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE_XML = os.path.join(ROOT, "envs", "data", "sawyer_v1_reach_push.xml")
RADIUS, HORIZON, HOLD = 0.07, 150, (10, 30)
CHECK_STEP = 20  # where the puck is after this many policy steps (in the gripper or not)
ZERO_ACTION_STEPS = (0, 10, 20, 40, 200)
# as envs/sawyer.py (repeated here so that the hfr-verbatim row runs without the envs package)
FRAME_SKIP, ACTION_SCALE = 5, 1.0 / 100
MOCAP_LOW, MOCAP_HIGH = np.array([-0.5, 0.40, 0.05]), np.array([0.5, 1.0, 0.5])
MOCAP_QUAT = np.array([1.0, 0.0, 1.0, 0.0])
HFR_GOAL_SEED, N_TRAIN = 3, 50


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def train_goals() -> np.ndarray:
    """sawyer-push's 50 train goals (envs/sawyer.py: RandomState(3) over HFR's goal box, xy kept)."""
    return np.random.RandomState(HFR_GOAL_SEED).uniform([-0.1, 0.8, 0.05], [0.1, 0.9, 0.3], (60, 3))[:N_TRAIN, :2]


def sawyer_constants() -> dict:
    """The module-level constants of envs/sawyer.py (read with ast: this file must run without the envs package)."""
    with open(os.path.join(ROOT, "envs", "sawyer.py")) as f:
        tree = ast.parse(f.read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:  # not a literal (e.g. an np.array(...) call)
                pass
    return out


def default_mesh_dir() -> str | None:
    spec = importlib.util.find_spec("metaworld")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "assets", "objects", "meshes", "xyz_base")


class V1Scene:
    """The v1 scene (envs/data/sawyer_v1_reach_push.xml) with envs/sawyer.py's step, on numpy and mujoco alone
    (MuJoCo 2.2 and 3.x). Its observations equal sawyer-push's bit for bit in the same MuJoCo (a test checks)."""

    def __init__(self, mesh_dir: str):
        with open(SCENE_XML) as f:
            xml = f.read()
        assets = {f: open(os.path.join(mesh_dir, f), "rb").read() for f in os.listdir(mesh_dir) if f.endswith(".stl")}
        self.model = m = mujoco.MjModel.from_xml_string(xml, assets)
        self.data = mujoco.MjData(m)
        self.hand = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "hand")
        self.obj = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "obj")
        self.puck = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "objGeom")
        joint = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "objjoint")
        self.puck_q, self.puck_v = m.jnt_qposadr[joint], m.jnt_dofadr[joint]
        self.fingers_q = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)]
                          for j in ("r_close", "l_close")]

    def observe(self) -> np.ndarray:
        d = self.data
        return np.concatenate([d.xpos[self.hand], d.geom_xpos[self.puck]]).astype(np.float32)

    def hfr_reset(self) -> np.ndarray:
        """HFR's reset_model, verbatim (module docstring)."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        for _ in range(10):
            d.mocap_pos[0], d.mocap_quat[0], d.ctrl[:] = (0.0, 0.65, 0.0), (1.0, 0.0, 1.0, 0.0), (-1.0, 1.0)
            for _ in range(5):
                mujoco.mj_step(m, d)
        offset = d.xpos[self.obj][:2] - d.geom_xpos[self.puck][:2]  # HFR's adjust_initObjPos (zero for v1's puck)
        q, v = self.puck_q, self.puck_v
        d.qpos[q:q + 3] = (offset[0], 0.6 + offset[1], d.geom_xpos[self.puck][2])
        d.qvel[v:v + 6] = 0.0
        mujoco.mj_forward(m, d)
        return self.observe()

    def lodged_start(self) -> None:
        """sawyer-push's "lodged" start as envs/sawyer.py builds it (its constants), in whichever MuJoCo runs this;
        `restore()` then returns to it."""
        c, m, d = sawyer_constants(), self.model, self.data
        mujoco.mj_resetData(m, d)
        arm = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"right_j{i}") for i in range(7)]
        d.qpos[m.jnt_qposadr[arm]], d.qpos[self.fingers_q] = c["LODGED_ARM_QPOS"], c["LODGED_FINGER_QPOS"]
        d.qpos[self.puck_q:self.puck_q + 7] = c["LODGED_PUCK_QPOS"]
        d.mocap_pos[0], d.mocap_quat[0], d.ctrl[:] = (0.0, 0.65, 0.05), MOCAP_QUAT, c["FINGERS_OPEN"]
        for _ in range(c["LODGED_SETTLE_STEPS"] * FRAME_SKIP):
            mujoco.mj_step(m, d)
        self.saved = [a.copy() for a in (d.qpos, d.qvel, d.act, d.qacc_warmstart, d.mocap_pos, d.mocap_quat, d.ctrl)]

    def restore(self) -> np.ndarray:
        d = self.data
        for dst, src in zip((d.qpos, d.qvel, d.act, d.qacc_warmstart, d.mocap_pos, d.mocap_quat, d.ctrl), self.saved):
            dst[:] = src
        d.time = 0.0
        mujoco.mj_forward(self.model, d)
        return self.observe()

    def step(self, action) -> np.ndarray:
        """envs/sawyer.py's step: clip, move the mocap target (clipped to the hand box), finger command,
        5 MuJoCo steps, positions of the new state."""
        m, d = self.model, self.data
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)  # float64, as TaskEnv.clip_action
        target = d.mocap_pos[0]
        np.clip(target + a[:3] * ACTION_SCALE, MOCAP_LOW, MOCAP_HIGH, out=target)
        d.mocap_quat[0] = MOCAP_QUAT
        d.ctrl[0], d.ctrl[1] = a[3], -a[3]
        for _ in range(FRAME_SKIP):
            mujoco.mj_step(m, d)
        mujoco.mj_kinematics(m, d)
        return self.observe()

    def snapshot(self) -> dict:
        d, q = self.data, self.puck_q
        return {"hand": [round(float(x), 4) for x in d.xpos[self.hand]],
                "fingers_qpos": [round(float(d.qpos[i]), 5) for i in self.fingers_q],
                "puck": [round(float(x), 4) for x in d.geom_xpos[self.puck]],
                "puck_quat": [round(float(x), 4) for x in d.qpos[q + 3:q + 7]],
                "max_abs_qvel": round(float(np.max(np.abs(d.qvel))), 4)}


def zero_action_outcome(scene: V1Scene) -> dict:
    """Where HFR's verbatim reset leaves hand, fingers and puck after k zero-action steps, and whether three
    resets give the same states bit for bit (the reset has no randomness; the check makes it a measurement)."""
    runs = []
    for _ in range(3):
        scene.hfr_reset()
        states, snaps = [], {}
        for t in range(max(ZERO_ACTION_STEPS) + 1):
            if t in ZERO_ACTION_STEPS:
                snaps[f"after {t} steps"] = scene.snapshot()
                states.append(np.concatenate([scene.data.qpos, scene.data.qvel]))
            if t < max(ZERO_ACTION_STEPS):
                scene.step(np.zeros(4))
        runs.append((snaps, np.array(states)))
    same = all(np.array_equal(runs[0][1], r[1]) for r in runs[1:])
    return {"zero_action_states": runs[0][0], "same_in_three_resets_bit_for_bit": bool(same)}


def run(reset, step, data, goals: np.ndarray, episodes: int, seed: int = 0) -> dict:
    """The exploration measurement; `reset()` and `step(a)` return 6-D observations [hand xyz, puck xyz]."""
    rng = np.random.default_rng(seed)
    hits, unstable, in_gripper, t0 = 0, 0, 0, time.process_time()
    bad = lambda: data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number  # noqa: E731
    first_obs, puck_at_check = None, []
    for _ in range(episodes):
        obs = reset()
        first_obs = obs if first_obs is None else first_obs
        warnings, t, hit = bad(), 0, False
        while t < HORIZON:
            a = rng.uniform(-1, 1, 4).astype(np.float32)
            for _ in range(int(rng.integers(HOLD[0], HOLD[1] + 1))):
                if t >= HORIZON:
                    break
                obs = step(a)
                t += 1
                hit = hit or bool(np.min(np.linalg.norm(goals - obs[3:5].astype(np.float64), axis=1)) <= RADIUS)
                if t == CHECK_STEP:
                    dx, dy = np.abs(obs[3:5].astype(np.float64) - obs[0:2])
                    in_gripper += bool(dx < 0.03 and dy < 0.044)
                    puck_at_check.append(obs[3:6].astype(np.float64))
        hits += hit
        unstable += bad() > warnings
    lo, hi = wilson(hits, episodes)
    p = np.array(puck_at_check)
    return {"episodes": episodes, "hits": hits, "share": hits / episodes, "wilson95": [lo, hi],
            "episodes_with_mujoco_instability_warning": unstable,
            "first_observation": [round(float(x), 4) for x in first_obs],
            f"share_with_puck_between_the_claws_after_{CHECK_STEP}_steps": in_gripper / episodes,
            f"puck_xyz_after_{CHECK_STEP}_steps_quartiles":
                np.round(np.percentile(p, [25, 50, 75], axis=0), 3).tolist(),
            "cpu_seconds": round(time.process_time() - t0, 1)}


def env_row(env, goals, episodes: int) -> dict:
    np.testing.assert_array_equal(env.train_tasks, goals)
    env.set_task(goals[0])
    return run(lambda: env.reset(seed=0)[0], lambda a: env.step(a)[0], env._data, goals, episodes)


def old_scene_env():
    """sawyer-push as envs/sawyer.py built it before the v1 scene, loaded as module envs._sawyer_old_scene."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, check=True, capture_output=True, text=True).stdout

    first_v1 = git("log", "--reverse", "-S", "sawyer_v1_reach_push", "--format=%H", "--", "envs/sawyer.py").split()[0]
    source = git("show", f"{first_v1}^:envs/sawyer.py")
    spec = importlib.util.spec_from_loader("envs._sawyer_old_scene", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{first_v1[:7]}^:envs/sawyer.py", "exec"), module.__dict__)
    env = module.SawyerPush()
    env.name = "sawyer-push"
    return env, f"{first_v1[:7]}^"


ENV_ROWS = ("old-scene", "settled", "lodged", "arriving")  # need the envs package (MuJoCo 3)
STANDALONE_ROWS = ("hfr-verbatim", "lodged-standalone")  # numpy and mujoco only, any MuJoCo version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--rows", default="old-scene,settled,lodged,arriving,hfr-verbatim")
    parser.add_argument("--zero-steps", type=int, default=0,
                        help="standalone rows: zero-action steps after the reset before the policy starts")
    parser.add_argument("--mesh-dir", default=None, help="the arm's STL files (default: the metaworld package's)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sawyer-exploration.json"))
    args = parser.parse_args()
    rows = args.rows.split(",")
    if args.episodes < 1:
        sys.exit(f"error: --episodes {args.episodes}: must be >= 1")
    if args.zero_steps < 0:
        sys.exit(f"error: --zero-steps {args.zero_steps}: must be >= 0")
    for row in rows:
        if row not in ENV_ROWS + STANDALONE_ROWS:
            sys.exit(f"error: --rows: unknown row {row!r}; choose from {', '.join(ENV_ROWS + STANDALONE_ROWS)}")
        if row in ENV_ROWS and args.zero_steps:
            sys.exit(f"error: --zero-steps {args.zero_steps}: only for the rows {', '.join(STANDALONE_ROWS)}")
    mesh_dir = args.mesh_dir or default_mesh_dir()
    if any(r in STANDALONE_ROWS for r in rows) and (mesh_dir is None or not os.path.isdir(mesh_dir)):
        sys.exit(f"error: --mesh-dir {mesh_dir}: not a folder; pass the arm's STL folder (metaworld's "
                 "assets/objects/meshes/xyz_base)")
    goals = train_goals()
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT + os.sep) else sys.executable
    command = f"OMP_NUM_THREADS=1 {python} benchmarks/sawyer_exploration.py {' '.join(sys.argv[1:])}"
    results = {}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            results = json.load(f)
    results.update({
        "policy": "a ~ U[-1,1]^4 held for U{10..30} steps, numpy default_rng(0), same sequence per row",
        "criterion": "puck centre within 0.07 m (xy) of any of the 50 train goals at any of 150 steps",
        "usage": "benchmarks/sawyer_exploration.py's docstring (the MuJoCo 2.2.0 venv included)"})
    results.setdefault("rows", {})
    for row in rows:
        key, extra = row, {}
        if row in ENV_ROWS:
            sys.path.insert(0, ROOT)
            import envs  # noqa: E402 (only these rows need the package)
            if row == "old-scene":
                env, extra["source"] = old_scene_env()
            else:
                env = envs.make("sawyer-push", start=row)
            r = env_row(env, goals, args.episodes)
            env.close()
        else:
            scene = V1Scene(mesh_dir)
            if row == "hfr-verbatim":
                extra = zero_action_outcome(scene)
                start = scene.hfr_reset
            else:
                scene.lodged_start()
                start = scene.restore
            if args.zero_steps:
                key += f"+{args.zero_steps}-zero-steps"

            def reset(start=start, k=args.zero_steps):
                obs = start()
                for _ in range(k):
                    obs = scene.step(np.zeros(4))
                return obs

            key += f"-mujoco-{mujoco.__version__}"
            r = run(reset, scene.step, scene.data, goals, args.episodes)
        r = {"mujoco": mujoco.__version__, "python": platform.python_version(), "command": command, "cpu": cpu,
             "date": datetime.date.today().isoformat(), **r, **extra}
        results["rows"][key] = r
        print(f"{key:36s} {r['hits']:5d}/{r['episodes']} = {r['share']:.4f}  95% CI [{r['wilson95'][0]:.4f}, "
              f"{r['wilson95'][1]:.4f}]  between claws at step {CHECK_STEP}: "
              f"{r[f'share_with_puck_between_the_claws_after_{CHECK_STEP}_steps']:.3f}  unstable "
              f"{r['episodes_with_mujoco_instability_warning']}  {r['cpu_seconds']} CPU s", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
