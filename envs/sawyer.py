"""Sawyer manipulation families of HFR (Wan et al. 2022) and HIPI (Eysenbach et al. 2020) on Meta-World's Sawyer.

Names: sawyer-push, sawyer-push-dense, sawyer-reach, sawyer-reach-dense, sawyer-reach-margin.

Model. Meta-World 3.1.1's push-v3 scene (`sawyer_xyz/sawyer_push_v3.xml`, loaded by constructing
`metaworld.envs.SawyerPushEnvV3`): the Sawyer arm driven by a mocap body welded to the hand, two position-
controlled fingers, a free puck (cylinder, radius 0.02 m, height 0.04 m, 0.75 kg) on the table. HFR used the
Meta-World v1 reach-push-pick-place scene (commit 2f228c2, MuJoCo 2.0). A descendant of that file still ships in
Meta-World 3.1.1's assets (`sawyer_reach_push_pick_and_place.xml`) but no environment class uses it any more;
its puck is the nested `block_cyl` body (geom 2 cm above the body frame, default inertia) that the v3 scene
replaced with a single cylinder geom with explicit inertia, citing "friction and inertia issues". So we use the
maintained v3 scene: same arm, table, hand box and puck start, a better-behaved puck, MuJoCo 3.3.0 contacts.
Every family here, reach included, uses this one scene, as HFR used one scene for push and reach.

Control (as HFR's `rotMode="fixed"`): action a in [-1, 1]^4. a[:3] / 100 moves the mocap target (at most 1 cm
per step and axis), which is clipped to Meta-World's hand box (-0.5, 0.40, 0.05)..(0.5, 1.0, 0.5); the gripper
orientation stays fixed (mocap quaternion (1, 0, 1, 0)); a[3] is the finger effort, ctrl = (a[3], -a[3])
(+1 closes). One step is 5 MuJoCo steps of 2.5 ms (frame_skip 5, dt 12.5 ms).

Observation (float32, metres, world frame; unbounded Box like gymnasium's MuJoCo envs):
  sawyer-push, sawyer-push-dense     [hand xyz, puck xyz]                           6-D (HFR's obs_type "plain")
  sawyer-reach, -reach-dense, -margin [hand xyz, puck xyz, finger-centre xyz]       9-D
"hand" is the hand body's origin (Meta-World's end-effector position), "puck" the puck geom's centre (HFR's
objGeom), "finger centre" the midpoint of the two fingertip sites rightEndEffector / leftEndEffector (HFR's
fingerCOM, Meta-World's tcp_center). HFR scored reaching with fingerCOM but kept it out of the observation, so
its reach reward could only be recomputed from env infos; here it is in the observation, so every reward is a
pure function of (obs, action, next_obs, task). With the fixed orientation the finger centre sits about 4.5 cm
below the hand. The goal is never in the observation (HFR: meta-RL infers it from context).

Start state (no randomness: HFR's random_init=False). Reset restores a state computed once in the constructor
the way Meta-World's `_reset_hand` does: hold the mocap at the hand start for 50 steps (HFR's v1 code: 10),
with the puck parked out of the arm's way, then put the puck at (0, 0.6) on the table and let it come to rest. `reset(seed=...)` seeds `self.np_random` (gymnasium's contract) but the start
state does not depend on it; two resets give bit-identical states (MuJoCo's solver warm start is restored too).
  * push: HFR held the mocap at (0, 0.65, 0) with the fingers open. z = 0 is below the action's mocap floor
    (0.05), which the first action snaps back to, and in this model the open fingers span y = hand +- 0.047,
    so the rear finger pad would sit inside the puck at (0, 0.6) and kick it away. We hold the mocap at
    (0, 0.65, 0.05) with the fingers CLOSED: the hand settles at about (0.001, 0.651, 0.046), fingertips 1 mm
    above the table, the closed fingers about 2 cm beyond the puck on the goal side, the puck untouched at
    (0, 0.6, 0.0194). (tests/test_sawyer.py pins these numbers.)
  * reach: HFR's hand start (0, 0.6, 0.2), fingers open: hand about (0.001, 0.600, 0.194), finger centre about
    (0.001, 0.600, 0.149); puck at (0, 0.6) as above.

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
`achieved_task(obs, task)`: the task whose goal part is what obs achieved (push: puck xy; reach: finger
centre; margin kept), for HER-style relabeling.

Rendering: render_mode="rgb_array" (camera "corner" unless camera_name says otherwise); the goal site is moved
to the task's goal (push: on the table; reach-margin: its radius shows the margin).

Traps of Meta-World 3.1.1 avoided here: its `reset` loops forever when puck and goal are closer than 0.15 m
(we never call it: our goal is only a task vector, and the goal site is only drawn); its declared observation
space is stale (we declare our own); its `reset(seed)` ignores the seed (our start state has no randomness);
its constructor fails on mujoco >= 3.17 (`make` says so in one line; the project pins 3.3.0).

Speed: Meta-World's own step builds a 39-D observation in Python (with scipy Rotation); ours reads positions
straight from mjData after `mj_kinematics`. One core, random actions, a reset every 150 steps, steps per second
of process CPU time (the 2-vCPU machine was shared, so wall-clock numbers were 3-4x lower than CPU time):
sawyer-push 8,000, sawyer-reach 8,900; Meta-World's push-v3 step measured the same way at the same time 1,150
(about 2,000 on an idle machine). Command (PYTHONPATH at the repository root):
    OMP_NUM_THREADS=1 python -c "import time,numpy as np,envs; e=envs.make('sawyer-push'); e.reset(seed=0); \
    A=np.random.default_rng(0).uniform(-1,1,(30000,4)).astype(np.float32); t=time.process_time(); \
    [e.reset() if (i+1)%150==0 else e.step(a) for i,a in enumerate(A)]; print(len(A)/(time.process_time()-t))"
"""

from __future__ import annotations

import mujoco
import numpy as np
from gymnasium import spaces

from envs import TaskEnv

try:
    from metaworld.envs import SawyerPushEnvV3
except ImportError as e:  # reported by the constructor as a one-line error
    SawyerPushEnvV3, _IMPORT_ERROR = None, e

FRAME_SKIP = 5
ACTION_SCALE = 1.0 / 100
MOCAP_LOW = np.array([-0.5, 0.40, 0.05])  # Meta-World / HFR hand_low, hand_high
MOCAP_HIGH = np.array([0.5, 1.0, 0.5])
MOCAP_QUAT = np.array([1.0, 0.0, 1.0, 0.0])  # fingers pointing down
PUCK_START_XY = np.array([0.0, 0.6])
SETTLE_STEPS = 50  # Meta-World's _reset_hand
PUCK_SETTLE_STEPS = 10
PUCK_HALF_HEIGHT = 0.02
HFR_GOAL_SEED = 3
N_TRAIN, N_TEST = 50, 10


class _Sawyer(TaskEnv):
    """Shared simulation: the subclasses below fix the start, observation and reward."""

    needs_opengl = True

    varies = "reward"
    has_success = True
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}
    source = "HFR (Wan et al. 2022), michaelwan11/hfr"

    # set by subclasses
    hand_start: tuple
    close_fingers_at_start: bool
    finger_centre_in_obs: bool
    goal_low: np.ndarray
    goal_high: np.ndarray
    default_horizon: int

    def __init__(self, seed: int = 0, horizon: int | None = None, n_train_tasks: int = N_TRAIN,
                 n_test_tasks: int = N_TEST, render_mode: str | None = None, width: int = 480,
                 height: int = 480, camera_name: str = "corner"):
        name = getattr(self, "name", "sawyer")
        if SawyerPushEnvV3 is None:
            raise ValueError(f"{name} needs the metaworld package (metaworld==3.1.1): {_IMPORT_ERROR}")
        if tuple(int(v) for v in mujoco.__version__.split(".")[:2]) >= (3, 17):
            raise ValueError(f"{name}: metaworld 3.1.1 does not run on mujoco {mujoco.__version__} "
                             "(its mocap weld setup breaks from 3.17 on); install mujoco==3.3.0")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{name}: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if n_train_tasks < 1 or n_test_tasks < 1:
            raise ValueError(f"{name}: n_train_tasks and n_test_tasks must be >= 1")
        self.horizon = int(horizon if horizon is not None else self.default_horizon)
        if self.horizon < 1:
            raise ValueError(f"{name}: horizon must be >= 1, got {self.horizon}")
        self.render_mode = render_mode

        # Meta-World builds the model, its mocap weld and (when asked) the offscreen renderer; we never call its
        # reset or step.
        self._mw = SawyerPushEnvV3(render_mode=render_mode, camera_name=camera_name if render_mode else None,
                                   width=width, height=height)
        self._model, self._data = m, d = self._mw.model, self._mw.data
        self._hand = m.body("hand").id
        self._puck = m.geom("objGeom").id
        self._fingers = [m.site("rightEndEffector").id, m.site("leftEndEffector").id]
        self._goal_site = m.site("goal").id
        self._start = self._settle()

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

    def _apply_task(self, task: np.ndarray) -> None:
        self._model.site_pos[self._goal_site] = task[:3]  # drawing only

    # ---------------------------------------------------------------- simulation
    def _settle(self) -> np.ndarray:
        """The start state: Meta-World's _reset_hand (mocap held at the start for 50 steps), then the puck placed
        at rest at its start. Returned as MuJoCo's full integration state (incl. mocap, ctrl, warm start)."""
        m, d = self._model, self._data
        mujoco.mj_resetData(m, d)
        qadr, vadr = m.jnt_qposadr[m.joint("objjoint").id], m.jnt_dofadr[m.joint("objjoint").id]
        # The arm swings in from its zero pose and would strike the puck on the way down; park the puck
        # far below the table meanwhile.
        d.qpos[qadr:qadr + 3] = (0.0, 0.0, -10.0)
        d.mocap_pos[0] = self.hand_start
        d.mocap_quat[0] = MOCAP_QUAT
        d.ctrl[:] = (1.0, -1.0) if self.close_fingers_at_start else (-1.0, 1.0)
        mujoco.mj_step(m, d, nstep=SETTLE_STEPS * FRAME_SKIP)
        d.qpos[qadr:qadr + 7] = (*PUCK_START_XY, PUCK_HALF_HEIGHT, 1.0, 0.0, 0.0, 0.0)
        d.qvel[vadr:vadr + 6] = 0.0
        mujoco.mj_step(m, d, nstep=PUCK_SETTLE_STEPS * FRAME_SKIP)  # let the puck sink into its contact
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
        m, d = self._model, self._data
        target = d.mocap_pos[0]
        np.clip(target + a[:3] * ACTION_SCALE, MOCAP_LOW, MOCAP_HIGH, out=target)
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
        if self.render_mode is None:
            return None
        # Meta-World's cameras are declared with the image's up axis pointing down: turn the frame upright.
        return np.ascontiguousarray(self._mw.render()[::-1, ::-1])

    def close(self):
        self._mw.close()

    # ---------------------------------------------------------------- reward helpers
    @staticmethod
    def _dist(x, y) -> np.ndarray:
        diff = np.asarray(x, np.float64) - np.asarray(y, np.float64)
        return np.sqrt(np.sum(diff * diff, axis=-1))


class _PushTasks:
    """Goal = puck xy. Mixed in before _Sawyer."""

    hand_start = (0.0, 0.65, 0.05)
    close_fingers_at_start = True
    finger_centre_in_obs = False
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

    hand_start = (0.0, 0.6, 0.2)
    close_fingers_at_start = False
    finger_centre_in_obs = True
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
