"""Sawyer manipulation families of HFR (Wan et al. 2022) and HIPI (Eysenbach et al. 2020) in Meta-World v1's scene.

Names: sawyer-push, sawyer-push-dense, sawyer-reach, sawyer-reach-dense, sawyer-reach-margin.

Model. The scene HFR trained in: Meta-World v1's reach/push/pick-place scene (rlworkgroup/metaworld commit 2f228c2,
`sawyer_xyz/sawyer_reach_push_pick_and_place.xml` with its `shared_config.xml` and `sawyer_xyz_base.xml`), used by
michaelwan11/hfr's `rlkit/envs/sawyer_reach_push_pick_place.py`, written out for MuJoCo 3 in
`envs/data/sawyer_v1_reach_push.xml` (arm meshes from the installed metaworld package). HIPI's Sawyer reach
(google-research/hipi `envs/sawyer_env.py`) used the same Meta-World class and scene (Meta-World master of 2020,
mujoco-py 2.0), so sawyer-reach-margin runs in it too. The Sawyer arm is driven by a mocap body welded to the
hand; two position-controlled slide fingers (claw + pad) hang 4.5 cm below it; the table is a plane at z = 0 with
friction 2; the puck is v1's: a free cylinder of radius 0.03 m and height 0.03 m (half-height 0.015), 0.75 kg,
diagonal inertia 8.80012e-4 on all three axes, solref (0.01, 1), solimp (0.99, 0.99, 0.01), friction (1, 0.1,
0.002), condim 4, starting at (0, 0.6). (The previous version of this file called v1's puck a nested `block_cyl`
body with default inertia: that is metaworld 3.1.1's rewrite of the file, not v1's puck.) Solver options are v1's
(timestep 2.5 ms, Newton, 50 iterations, tolerance 1e-10, dense Jacobian, elliptic cones). Where MuJoCo 3 forces a
difference from the v1 files (details in the XML):
  * two pairs of the arm's own collision proxies (the base link's cylinder against right_l0 and right_l1_2) are
    excluded from contact. They overlap in every pose, by up to 19 cm; left in, they dominate the constraint solve
    and a puck resting on the table gets thrown at metres per second (measured in MuJoCo 3.3.0 and 2.2.0; MuJoCo
    2.0, which HFR used, cannot be run here, so whether HFR's runs had the same defect is unknown);
  * `coordinate="local"` is gone from the compiler (MuJoCo 3 has only local coordinates), and the mocap weld's
    identity relative pose is written in the XML instead of being set at run time by Meta-World's
    `reset_mocap_welds`;
  * contacts use MuJoCo 3.3's default convex collider (MuJoCo 2.0 used libccd's MPR); the two differ on how a
    claw that starts inside the puck is pushed out (see the start state below).

Control (HFR's `rotMode="fixed"`, Meta-World v1 `set_xyz_action`): action a in [-1, 1]^4. a[:3] / 100 moves the
mocap target (at most 1 cm per step and axis), which is clipped to the hand box (-0.5, 0.40, 0.05)..(0.5, 1.0,
0.5); the mocap quaternion is held at (1, 0, 1, 0); a[3] is the finger command, ctrl = (a[3], -a[3]) (+1 closes,
-1 opens). One step is 5 MuJoCo steps of 2.5 ms (frame_skip 5, dt 12.5 ms). Actions are clipped to [-1, 1]; an
action with a NaN or infinite entry is refused with a one-line ValueError before anything is simulated (clipping
cannot give NaN a meaning, and a NaN mocap target would corrupt the simulation).

Observation (float32, metres, world frame; unbounded Box like gymnasium's MuJoCo envs):
  sawyer-push, sawyer-push-dense     [hand xyz, puck xyz]                           6-D (HFR's obs_type "plain")
  sawyer-reach, -reach-dense, -margin [hand xyz, puck xyz, finger-centre xyz]       9-D
"hand" is the hand body's origin (Meta-World's end-effector position), "puck" the puck geom's centre (HFR's
objGeom), "finger centre" the midpoint of the two fingertip sites rightEndEffector / leftEndEffector (HFR's
fingerCOM). HFR scored reaching with fingerCOM but kept it out of the observation, so its reach reward could only
be recomputed from env infos; here it is in the observation, so every reward is a pure function of
(obs, action, next_obs, task). The goal is never in the observation (HFR: meta-RL infers it from context).
Positions are read after `mj_kinematics`, i.e. of the state the step ended in (mujoco-py's data after `sim.step`
are one substep older).

Start state (no randomness: HFR's random_init=False). Reset restores a state computed once in the constructor in
the order of HFR's `reset_model`: the hand is settled first, with the fingers OPEN (ctrl (-1, +1)), then the puck
is placed at (0, 0.6) on the table. Two resets give bit-identical states (MuJoCo's warm start is restored too);
`reset(seed=...)` seeds `self.np_random` (gymnasium's contract) but the start does not depend on it.
  * push: HFR holds the mocap at (0, 0.65, 0) for its settle. z = 0 is below the hand box's floor, and every
    action clips the target back to it: the first step moves the mocap to (a_x/100, 0.65 + a_y/100, 0.05)
    whatever a_z is. z = 0 is therefore never held during an episode; holding it presses the claws into the
    table, where friction stalls the hand about 6 cm short of its target (MuJoCo 3.3.0). We settle the hand at
    (0, 0.65, 0.05), the target the first action's clip gives. The open fingers then stand at y = hand -+ 0.05 and
    reach down to z = 0.005, so the rear claw (y 0.597..0.606) cuts through the puck placed at (0, 0.6): HFR's
    start has a claw inside the puck. We reproduce what MuJoCo 3.3 makes of it: the puck is placed after the hand
    settles, as HFR does, and the state is advanced 40 steps with the mocap held (the claw-in-puck contact resolves
    during them); the contact lifts the hand and the claw comes to rest pressed into the top of the puck, the puck
    still at (0, 0.6). Measured (tests/test_sawyer.py pins them): hand (0.000, 0.650, 0.066), fingers open
    (finger centre z 0.021), puck (0.000, 0.600, 0.014) at rest with the rear claw 8 mm into its top.
    (MuJoCo's libccd collider instead squeezes the puck out sideways to about (-0.04, 0.59).)
    HFR's reset_model run verbatim is not a start state but a collision: Meta-World's `reset` first puts the arm
    back at its zero pose (`sim.reset()`, hand at (1.14, 0.16, 0.32)), and its 10 x 5 settle steps end with the
    hand still swinging in, about 10 cm short of its target; the puck, placed in its path, is struck and thrown.
    Where it goes depends on the MuJoCo build (benchmarks/sawyer_exploration.py measures it); that throw is not
    reproduced here.
  * reach: HFR's hand start (0, 0.6, 0.2), fingers open: hand (0.000, 0.600, 0.200), finger centre 4.5 cm below;
    puck placed at (0, 0.6) afterwards, well clear of the fingers.

Tasks and rewards (d = distance after the step, i.e. measured on next_obs):
  sawyer-push (HFR): task = goal xy, 60 goals drawn with np.random.RandomState(3).uniform over HFR's sparse-push
    goal box x in [-0.1, 0.1], y in [0.8, 0.9], z in [0.05, 0.3], one draw of shape (60, 3): HFR seeds its goal
    Box's RandomState with 3 and samples it 60 times (whether the values equal theirs bit for bit depends on
    their gym's Box.sample; not verified). z is never used by the push reward, so the task keeps xy. First 50
    train, last 10 test. d = |puck_xy - goal_xy|; reward 0 and terminated when d <= 0.07, else -1; info["success"] = d <= 0.07.
    H = 150.
  sawyer-push-dense: same tasks; reward -d - 0.5 |hand - puck| (distance to the goal plus a term drawing the
    hand to the puck), never terminates, success as above. (HFR's dense push is Meta-World v1's shaped reward with
    1000x constants that depends on the episode's initial distance; its Sawyer experiments used the sparse one.)
  sawyer-reach (HFR): task = goal xyz, 60 goals from RandomState(3) over x in [-0.1, 0.1], y in [0.7, 0.8],
    z in [0.05, 0.3], 50 train / 10 test; d = |finger centre - goal|; reward 0 and terminated when d <= 0.05,
    else -1; success d <= 0.05. H = 150.
  sawyer-reach-dense: same tasks; reward -d, never terminates, success d <= 0.05.
  sawyer-reach-margin (HIPI's "tune" reach): task = (goal xyz, margin), goal uniform over Meta-World's reach goal
    box x in [-0.1, 0.1], y in [0.8, 0.9], z in [0.05, 0.3] and margin ~ U(0, 0.1); reward 1[d < margin] - 1,
    terminated when d < margin, success likewise. H = 100 (HIPI's max_episode_steps). HIPI samples tasks
    continuously; for the protocol's fixed lists we draw 60 from RandomState(3) (50 train / 10 test). Deviations:
    HIPI scored the hand body in the state BEFORE the step; we score the finger centre (as the other reach
    families) after the step, as every family here does.
A task whose goal lies off the table (x outside [-0.4, 0.4] or y outside [0.2, 1.0], the table top of the scene,
or a reach goal below the table, z < 0) or a negative margin is refused by `set_task` with a one-line ValueError.
`achieved_task(obs, task)`: the task whose goal part is what obs achieved (push: puck xy; reach: finger
centre; margin kept), for HER-style relabeling.

Rendering: render_mode="rgb_array" (camera "corner" unless camera_name says otherwise, or v1's "topview"); the
goal site is moved to the task's goal (push: on the table; reach-margin: its radius shows the margin).

Speed: one core, process CPU time: about 6,000 steps per second with a reset every 150 steps (the "after" row of
benchmarks/results/sawyer-exploration.json: 300,000 steps in 49 CPU s on a shared 2-core AMD EPYC, random actions
and the benchmark's own bookkeeping included). Construction takes about 1 s (scene compile and the settle).
Command for the bare step rate (PYTHONPATH at the repository root):
    OMP_NUM_THREADS=1 python -c "import time,numpy as np,envs; e=envs.make('sawyer-push'); e.reset(seed=0); \
    A=np.random.default_rng(0).uniform(-1,1,(30000,4)).astype(np.float32); t=time.process_time(); \
    [e.reset() if (i+1)%150==0 else e.step(a) for i,a in enumerate(A)]; print(len(A)/(time.process_time()-t))"
"""

from __future__ import annotations

import importlib.util
import os

import mujoco
import numpy as np
from gymnasium import spaces

from envs import TaskEnv

SCENE_XML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sawyer_v1_reach_push.xml")
FRAME_SKIP = 5
ACTION_SCALE = 1.0 / 100
MOCAP_LOW = np.array([-0.5, 0.40, 0.05])  # Meta-World v1 / HFR hand_low, hand_high (the mocap box)
MOCAP_HIGH = np.array([0.5, 1.0, 0.5])
MOCAP_QUAT = np.array([1.0, 0.0, 1.0, 0.0])  # fingers pointing down
FINGERS_OPEN = (-1.0, 1.0)  # HFR's _reset_hand: do_simulation([-1, 1])
PUCK_START_XY = np.array([0.0, 0.6])  # v1 obj_init_pos
PUCK_HALF_HEIGHT = 0.015  # v1 puck: resting centre height
PUCK_PARKED = (1.5, 1.5, PUCK_HALF_HEIGHT)  # on the table plane, out of the arm's reach, while the hand settles
SETTLE_STEPS = 100  # hand settle (x 5 MuJoCo steps); HFR's _reset_hand runs 10, from the arm's zero pose
PUCK_SETTLE_STEPS = 40  # after the puck is placed: the claw-in-puck contact resolves and comes to rest
TABLE_LOW, TABLE_HIGH = np.array([-0.4, 0.2]), np.array([0.4, 1.0])  # the v1 table top (plane at z = 0)
HFR_GOAL_SEED = 3
N_TRAIN, N_TEST = 50, 10


def _mesh_assets() -> dict[str, bytes]:
    """The arm's STL files from the installed metaworld package, keyed by the names the scene XML uses."""
    spec = importlib.util.find_spec("metaworld")
    if spec is None or spec.origin is None:
        raise ValueError("the Sawyer families need the metaworld package for the arm meshes (pip install metaworld==3.1.1)")
    folder = os.path.join(os.path.dirname(spec.origin), "assets", "objects", "meshes", "xyz_base")
    if not os.path.isdir(folder):
        raise ValueError(f"the Sawyer families need metaworld's arm meshes; not found at {folder}")
    return {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder) if f.endswith(".stl")}


class _Sawyer(TaskEnv):
    """Shared simulation: the subclasses below fix the start, observation and reward."""

    needs_opengl = True

    varies = "reward"
    has_success = True
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}
    source = "HFR (Wan et al. 2022), michaelwan11/hfr"

    # set by subclasses
    hand_start: tuple
    finger_centre_in_obs: bool
    goal_low: np.ndarray
    goal_high: np.ndarray
    default_horizon: int

    def __init__(self, seed: int = 0, horizon: int | None = None, n_train_tasks: int = N_TRAIN,
                 n_test_tasks: int = N_TEST, render_mode: str | None = None, width: int = 480,
                 height: int = 480, camera_name: str = "corner"):
        name = getattr(self, "name", "sawyer")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{name}: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if n_train_tasks < 1 or n_test_tasks < 1:
            raise ValueError(f"{name}: n_train_tasks and n_test_tasks must be >= 1")
        self.horizon = int(horizon if horizon is not None else self.default_horizon)
        if self.horizon < 1:
            raise ValueError(f"{name}: horizon must be >= 1, got {self.horizon}")
        self.render_mode = render_mode

        with open(SCENE_XML) as f:
            self._model = m = mujoco.MjModel.from_xml_string(f.read(), _mesh_assets())
        self._data = d = mujoco.MjData(m)
        self._hand = m.body("hand").id
        self._puck = m.geom("objGeom").id
        self._fingers = [m.site("rightEndEffector").id, m.site("leftEndEffector").id]
        self._goal_site = m.site("goal").id
        obj = m.joint("objjoint").id
        self._puck_q, self._puck_v = m.jnt_qposadr[obj], m.jnt_dofadr[obj]
        self._start = self._settle()
        if camera_name not in ("corner", "topview"):
            raise ValueError(f"{name}: camera_name must be 'corner' or 'topview', got {camera_name!r}")
        self._renderer = mujoco.Renderer(m, height, width) if render_mode else None
        self._camera = camera_name

        obs_dim = 9 if self.finger_centre_in_obs else 6
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        tasks = self._fixed_tasks(n_train_tasks + n_test_tasks)
        self.train_tasks, self.test_tasks = tasks[:n_train_tasks], tasks[n_train_tasks:]
        self.task_dim = tasks.shape[1]
        self._obs = None
        self._t = 0
        super().reset(seed=seed)  # seeds gymnasium's self.np_random
        self.action_space.seed(seed)

    # ---------------------------------------------------------------- tasks
    def _goal_draws(self, n: int) -> np.ndarray:
        """HFR's fixed goal list: n draws from the goal Box sampled with a RandomState seeded 3."""
        return np.random.RandomState(HFR_GOAL_SEED).uniform(self.goal_low, self.goal_high, (n, 3))

    def _fixed_tasks(self, n: int) -> np.ndarray:
        return self._goal_draws(n)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.goal_low, self.goal_high, (n, 3))

    def check_task(self, task) -> np.ndarray:
        task = super().check_task(task)
        xy = task[:2]
        if np.any(xy < TABLE_LOW) or np.any(xy > TABLE_HIGH):
            raise ValueError(f"{self.name}: goal ({', '.join(f'{v:g}' for v in task[:self._goal_len])}) is off the "
                             f"table: x must be in [{TABLE_LOW[0]:g}, {TABLE_HIGH[0]:g}], "
                             f"y in [{TABLE_LOW[1]:g}, {TABLE_HIGH[1]:g}]")
        if self._goal_len == 3 and task[2] < 0.0:
            raise ValueError(f"{self.name}: goal z {task[2]:g} is below the table top (z = 0)")
        return task

    def _apply_task(self, task: np.ndarray) -> None:
        self._model.site_pos[self._goal_site] = task[:3]  # drawing only

    # ---------------------------------------------------------------- simulation
    def _hold(self, target, n: int) -> None:
        """n env steps with the mocap held at `target` and the fingers commanded open."""
        d = self._data
        d.mocap_pos[0], d.mocap_quat[0], d.ctrl[:] = target, MOCAP_QUAT, FINGERS_OPEN
        mujoco.mj_step(self._model, d, nstep=n * FRAME_SKIP)

    def _settle(self) -> np.ndarray:
        """The start state in the order of HFR's reset_model: the hand settled with open fingers, then the puck
        placed at its start and the state advanced until the contacts have resolved (module docstring).
        Returned as MuJoCo's full integration state (incl. mocap, ctrl, warm start)."""
        m, d = self._model, self._data
        mujoco.mj_resetData(m, d)  # as Meta-World's reset: the arm at its zero pose
        q, v = self._puck_q, self._puck_v
        d.qpos[q:q + 7] = (*PUCK_PARKED, 1.0, 0.0, 0.0, 0.0)
        self._hold(self.hand_start, SETTLE_STEPS)
        d.qpos[q:q + 7] = (*PUCK_START_XY, PUCK_HALF_HEIGHT, 1.0, 0.0, 0.0, 0.0)
        d.qvel[v:v + 6] = 0.0
        self._hold(self.hand_start, PUCK_SETTLE_STEPS)
        d.time = 0.0
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(m, spec))
        mujoco.mj_getState(m, d, state, spec)
        return state

    def _observe(self) -> np.ndarray:
        d = self._data
        parts = [d.xpos[self._hand], d.geom_xpos[self._puck]]
        if self.finger_centre_in_obs:
            parts.append(0.5 * (d.site_xpos[self._fingers[0]] + d.site_xpos[self._fingers[1]]))
        return np.concatenate(parts).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._task is None:
            raise RuntimeError(f"{self.name}: no task set; call env.set_task(task) first")
        mujoco.mj_setState(self._model, self._data, self._start, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self._model, self._data)
        self._t = 0
        self._obs = self._observe()
        return self._obs.copy(), {}

    def step(self, action):
        if self._obs is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        a = self.clip_action(action)
        if not np.all(np.isfinite(np.asarray(action, np.float64))):
            raise ValueError(f"{self.name}: action has a NaN or infinite entry: {np.asarray(action).tolist()}")
        m, d = self._model, self._data
        target = d.mocap_pos[0]
        np.clip(target + a[:3] * ACTION_SCALE, MOCAP_LOW, MOCAP_HIGH, out=target)
        d.mocap_quat[0] = MOCAP_QUAT
        d.ctrl[0], d.ctrl[1] = a[3], -a[3]
        mujoco.mj_step(m, d, nstep=FRAME_SKIP)
        # mj_step leaves positions one substep old; positions of the new state are all we read.
        mujoco.mj_kinematics(m, d)
        obs, next_obs = self._obs, self._observe()
        reward, terminated = self.evaluate(obs, action, next_obs, self._task)
        self._obs = next_obs
        self._t += 1
        info = {"success": bool(self._success(next_obs, self._task))}
        return next_obs.copy(), float(reward), bool(terminated), self._t >= self.horizon, info

    def render(self):
        if self._renderer is None:
            return None
        self._renderer.update_scene(self._data, camera=self._camera)
        frame = self._renderer.render()
        # the "corner" camera is declared with the image's up axis pointing down: turn the frame upright
        return np.ascontiguousarray(frame[::-1, ::-1]) if self._camera == "corner" else frame

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---------------------------------------------------------------- reward helpers
    @staticmethod
    def _dist(x, y) -> np.ndarray:
        diff = np.asarray(x, np.float64) - np.asarray(y, np.float64)
        return np.sqrt(np.sum(diff * diff, axis=-1))


class _PushTasks:
    """Goal = puck xy. Mixed in before _Sawyer."""

    hand_start = (0.0, 0.65, 0.05)  # HFR's (0, 0.65, 0) as the first action's clip leaves it (docstring)
    finger_centre_in_obs = False
    _goal_len = 2
    goal_low = np.array([-0.1, 0.8, 0.05])  # HFR sparse push goal Box; z unused
    goal_high = np.array([0.1, 0.9, 0.3])
    default_horizon = 150
    radius = 0.07

    def _fixed_tasks(self, n):
        return self._goal_draws(n)[:, :2]

    def sample_tasks(self, n, rng):
        return rng.uniform(self.goal_low[:2], self.goal_high[:2], (n, 2))

    def _apply_task(self, task):
        self._model.site_pos[self._goal_site] = (task[0], task[1], 0.02)

    def _goal_dist(self, next_obs, task):
        return self._dist(np.asarray(next_obs)[..., 3:5], np.asarray(task)[..., :2])

    def _success(self, next_obs, task):
        return self._goal_dist(next_obs, task) <= self.radius

    def achieved_task(self, obs, task):
        return _replace_goal(obs, task, slice(3, 5), 2)


class _ReachTasks:
    """Goal = finger-centre xyz. Mixed in before _Sawyer."""

    hand_start = (0.0, 0.6, 0.2)  # HFR's / Meta-World v1's hand_init_pos
    finger_centre_in_obs = True
    _goal_len = 3
    goal_low = np.array([-0.1, 0.7, 0.05])  # HFR sparse reach goal Box
    goal_high = np.array([0.1, 0.8, 0.3])
    default_horizon = 150
    radius = 0.05

    def _goal_dist(self, next_obs, task):
        return self._dist(np.asarray(next_obs)[..., 6:9], np.asarray(task)[..., :3])

    def _success(self, next_obs, task):
        return self._goal_dist(next_obs, task) <= self.radius

    def achieved_task(self, obs, task):
        return _replace_goal(obs, task, slice(6, 9), 3)


def _replace_goal(obs, task, obs_slice, n_goal):
    """`task` broadcast against obs's leading shape, its first n_goal entries replaced by obs[..., obs_slice]."""
    obs, task = np.asarray(obs, np.float64), np.asarray(task, np.float64)
    lead = np.broadcast_shapes(obs.shape[:-1], task.shape[:-1])
    out = np.array(np.broadcast_to(task, lead + task.shape[-1:]))
    out[..., :n_goal] = obs[..., obs_slice]
    return out


class SawyerPush(_PushTasks, _Sawyer):
    """HFR's sparse Sawyer push: reward 0 and termination once the puck is within 0.07 m (xy) of the goal."""

    name = "sawyer-push"

    def evaluate(self, obs, action, next_obs, task):
        success = self._success(next_obs, task)
        return success - 1.0, success


class SawyerPushDense(_PushTasks, _Sawyer):
    """Sawyer push with the shaped reward -|puck_xy - goal| - 0.5 |hand - puck|; no termination."""

    name = "sawyer-push-dense"
    source = "HFR tasks (Wan et al. 2022); shaped reward defined here"

    def evaluate(self, obs, action, next_obs, task):
        next_obs = np.asarray(next_obs)
        reach = self._dist(next_obs[..., 0:3], next_obs[..., 3:6])
        reward = -self._goal_dist(next_obs, task) - 0.5 * reach
        return reward, np.zeros(reward.shape, bool)


class SawyerReach(_ReachTasks, _Sawyer):
    """HFR's sparse Sawyer reach: reward 0 and termination once the finger centre is within 0.05 m of the goal."""

    name = "sawyer-reach"

    def evaluate(self, obs, action, next_obs, task):
        success = self._success(next_obs, task)
        return success - 1.0, success


class SawyerReachDense(_ReachTasks, _Sawyer):
    """Sawyer reach with the shaped reward -|finger centre - goal|; no termination."""

    name = "sawyer-reach-dense"
    source = "HFR tasks (Wan et al. 2022); shaped reward defined here"

    def evaluate(self, obs, action, next_obs, task):
        reward = -self._goal_dist(next_obs, task)
        return reward, np.zeros(reward.shape, bool)


class SawyerReachMargin(_ReachTasks, _Sawyer):
    """HIPI's Sawyer reach with a tunable margin: task (goal xyz, margin), reward 1[d < margin] - 1."""

    name = "sawyer-reach-margin"
    source = "HIPI (Eysenbach et al. 2020), google-research/hipi"
    goal_low = np.array([-0.1, 0.8, 0.05])  # Meta-World's reach goal Box, which HIPI sampled from
    goal_high = np.array([0.1, 0.9, 0.3])
    max_margin = 0.1
    default_horizon = 100

    def _fixed_tasks(self, n):
        return self.sample_tasks(n, np.random.RandomState(HFR_GOAL_SEED))

    def check_task(self, task):
        task = super().check_task(task)
        if task[3] < 0.0:
            raise ValueError(f"{self.name}: margin {task[3]:g} is negative")
        return task

    def sample_tasks(self, n, rng):
        goals = rng.uniform(self.goal_low, self.goal_high, (n, 3))
        return np.concatenate([goals, rng.uniform(0.0, self.max_margin, (n, 1))], axis=1)

    def _apply_task(self, task):
        self._model.site_pos[self._goal_site] = task[:3]
        self._model.site_size[self._goal_site, 0] = max(task[3], 0.005)

    def _success(self, next_obs, task):
        return self._goal_dist(next_obs, task) < np.asarray(task, np.float64)[..., 3]

    def evaluate(self, obs, action, next_obs, task):
        success = self._success(next_obs, task)
        return success - 1.0, success
