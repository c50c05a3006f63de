"""2-D point-mass task families: numpy only, the workhorses of the test suite.

    point-robot         PEARL's dense navigation (goal in [-1, 1]^2, reward -L2)
    sparse-point-robot  PEARL's sparse navigation (goal on the upper unit semicircle, radius 0.2)
    four-corners        HFR's didactic task (goals at the corners, trap squares, -1 / -3 / 0)
    point-reacher       Generalized Hindsight's PointReacher (goal, obstacle, energy; 6-D latent)
    point-trajectory    Generalized Hindsight's PointTrajectory (follow a sinusoid; 3-D latent)
    four-rooms          HIPI's 2-D navigation (FourRooms walls dilated x3, sparse -1 / 0)

Shared by every family here:
  * actions are Box(-1, 1) and rescaled to the family's physical step in `step`;
  * observations are float32 (the rounding of a float64 internal state) and start with the position (x, y);
  * reward and termination are scored on `next_obs`, the state the transition reached (and on the action
    where the reward has an energy term); `step` calls `evaluate` on the very arrays it returns. (HIPI and
    GH's PointTrajectory score the state before the step; those classes say why we do not.)
  * goal families (point-robot, sparse-point-robot, four-corners, four-rooms; and point-reacher for its goal
    part) offer `achieved_task(obs, task)` for HER-style relabeling;
  * the time limit `horizon` ends an episode with truncated=True only; nothing here terminates on time.
  * task lists are fixed by a reference seed, independent of the env seed; the env seed (constructor or
    `reset(seed=...)`) drives only start states and action noise.

Random-action steps per second of each family: `OMP_NUM_THREADS=1 python -m envs.point` (`_speed` below).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from envs import TaskEnv

PEARL_SEED = 1337  # PEARL (rlkit/envs/point_robot.py) seeds numpy's global RNG with 1337 for its goal lists
PRIOR_SEED = 1337  # our reference seed for families whose papers draw tasks from a continuous prior


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _dist(x, y, gx, gy) -> np.ndarray:
    """Euclidean distance written per component: elementwise ops give the same float in any batch shape,
    whereas a reduction over the last axis (np.linalg.norm) may sum in a shape-dependent order."""
    dx = x - gx
    dy = y - gy
    return np.sqrt(dx * dx + dy * dy)


def _col(a: np.ndarray, k: int):
    """Component k of the last axis. A single vector gives a numpy scalar, not a 0-d array: scalar
    arithmetic is ~10x cheaper per operation and rounds exactly like the array loops, which keeps one
    `step` fast and bit-identical to a batched `evaluate`. A batch gives a contiguous copy, so that exp, sin
    and log see the unit-stride input their vectorized loops are written for on every CPU."""
    return a[k] if a.ndim == 1 else np.ascontiguousarray(a[..., k])


def _where(cond, a, b):
    """np.where, with a scalar shortcut for the per-step call."""
    if np.ndim(cond) == 0:
        return np.float64(a if cond else b)
    return np.where(cond, a, b)


def _full(x, shape: tuple):
    """`x` broadcast to the leading shape of all of evaluate's inputs (a writable array, or a numpy
    scalar for a single transition)."""
    if shape == ():
        return x
    x = np.asarray(x)
    return x if x.shape == shape else np.broadcast_to(x, shape).copy()


def _leading(obs, action, next_obs, task) -> tuple:
    """The broadcast leading shape of evaluate's four inputs (the shape of its outputs)."""
    s = np.shape(obs)[:-1]
    if s == np.shape(action)[:-1] == np.shape(next_obs)[:-1] == np.shape(task)[:-1]:
        return s  # the common case, without np.broadcast_shapes' cost in the per-step call
    return np.broadcast_shapes(s, np.shape(action)[:-1], np.shape(next_obs)[:-1], np.shape(task)[:-1])


class _PointMass(TaskEnv):
    """The step loop, seeding and `rgb_array` rendering shared by the point families.

    A family sets task_dim, horizon, train_tasks, test_tasks, observation_space and implements
    `_initial_state` (reset), `_advance(action)` (dynamics), `_observe` (float32 obs), `evaluate`,
    `sample_tasks`, and optionally `_info`."""

    varies = "reward"
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    view = (-1.5, 1.5)  # world square drawn by `render`

    def __init__(self, seed: int, horizon: int, render_mode: str | None):
        if not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"{type(self).__name__}: horizon must be a positive integer, got {horizon!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{type(self).__name__}: render_mode must be None or 'rgb_array', "
                             f"got {render_mode!r}")
        self.horizon = int(horizon)
        self.render_mode = render_mode
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._t = 0
        self._obs = None

    @staticmethod
    def _split(n_train: int, n_test: int, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First n_train / last n_test of one reference list (the papers' convention)."""
        return tasks[:n_train].copy(), tasks[n_train:n_train + n_test].copy()

    @staticmethod
    def _check_counts(name: str, n_train: int, n_test: int) -> None:
        if int(n_train) < 1 or int(n_test) < 1:
            raise ValueError(f"{name}: n_train_tasks and n_test_tasks must be >= 1, got {n_train}, {n_test}")

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._initial_state()
        self._obs = self._observe()
        return self._obs, {}

    def step(self, action):
        if self._obs is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        a = self.clip_action(action)
        obs = self._obs
        self._t += 1
        self._advance(a)
        next_obs = self._observe()
        r, term = self.evaluate(obs, a, next_obs, self._task)
        info = self._info(obs, a, next_obs, r, term)
        self._obs = next_obs
        return next_obs, float(r), bool(term), self._t >= self.horizon, info

    def _info(self, obs, action, next_obs, reward, terminated) -> dict:
        return {}

    # ---------------------------------------------------------------- rendering
    def render(self, size: int = 96):
        """`rgb_array`: the current task's reward over the plane (light = high), walls dark, agent red."""
        if self.render_mode != "rgb_array" or self._obs is None:
            return None
        lo, hi = self.view
        c = lo + (np.arange(size) + 0.5) * (hi - lo) / size
        xs, ys = np.meshgrid(c, c[::-1])  # image row 0 is the top of the world
        grid = np.broadcast_to(self._obs.astype(np.float64), (size, size, self._obs.shape[0])).copy()
        grid[..., 0], grid[..., 1] = xs, ys
        r, _ = self.evaluate(self._obs, np.zeros(2), grid, self._task)
        shade = (r - r.min()) / max(r.max() - r.min(), 1e-12)
        img = np.repeat((255 * (0.35 + 0.65 * shade))[..., None], 3, axis=2).astype(np.uint8)
        walls = self._wall_mask(xs, ys)
        if walls is not None:
            img[walls] = (40, 40, 40)
        agent = _dist(xs, ys, float(self._obs[0]), float(self._obs[1])) < 0.03 * (hi - lo)
        img[agent] = (220, 30, 30)
        return img

    def _wall_mask(self, xs, ys):
        return None


class _GoalFamily:
    """For families whose task is the goal position (x, y) itself."""

    def achieved_task(self, obs, task) -> np.ndarray:
        """The task whose goal is the position in `obs` (HER's achieved goal), shape (..., 2)."""
        obs, task = _f64(obs), _f64(task)
        return np.broadcast_to(obs[..., :2], np.broadcast_shapes(obs.shape[:-1], task.shape[:-1]) + (2,)).copy()


# ============================================================================================================
class PointRobot(_GoalFamily, _PointMass):
    """PEARL's dense 2-D navigation (Rakelly et al. 2019; oyster rlkit/envs/point_robot.py).

    obs       (x, y); never clipped, so within [-1 - 0.1 H, 1 + 0.1 H]^2
    action    a in [-1, 1]^2; the point moves by 0.1 * a (PEARL's Box(-0.1, 0.1) after NormalizedBoxEnv)
    reward    -||p' - g||, scored on the position p' reached; never terminates
    task      goal g = (gx, gy)
    start     uniform in [-1, 1]^2 (env RNG)
    horizon   20
    tasks     100 goals U[-1, 1]^2 drawn by numpy's legacy RandomState(1337) exactly as PEARL draws them:
              train = first 80, test = last 20 (n_train_tasks / n_test_tasks change the counts; the list
              is regenerated at the new length, so the first goals stay the same)
    """

    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster rlkit/envs/point_robot.py"
    task_dim = 2
    step_size = 0.1

    def __init__(self, seed=0, horizon=20, n_train_tasks=80, n_test_tasks=20, render_mode=None):
        super().__init__(seed, horizon, render_mode)
        self._check_counts(type(self).__name__, n_train_tasks, n_test_tasks)
        reach = 1.0 + self.step_size * self.horizon  # start in [-1, 1]^2, at most 0.1 per axis a step
        self.observation_space = gym.spaces.Box(-reach, reach, (2,), np.float32)
        self.train_tasks, self.test_tasks = self._split(
            n_train_tasks, n_test_tasks, self._reference_goals(n_train_tasks + n_test_tasks))
        self._pos = (0.0, 0.0)  # Python floats: scalar arithmetic is the cheapest per step

    @staticmethod
    def _reference_goals(n: int) -> np.ndarray:
        return np.random.RandomState(PEARL_SEED).uniform(-1.0, 1.0, size=(n, 2))

    def sample_tasks(self, n, rng):
        return rng.uniform(-1.0, 1.0, size=(n, 2))

    def _initial_state(self):
        self._pos = tuple(self.np_random.uniform(-1.0, 1.0, size=2).tolist())

    def _advance(self, a):
        (x, y), (ax, ay) = self._pos, a.tolist()
        self._pos = (x + self.step_size * ax, y + self.step_size * ay)

    def _observe(self):
        return np.array(self._pos, np.float32)

    def evaluate_dense(self, obs, action, next_obs, task):
        """-||p' - g||, PEARL's dense point-robot reward."""
        p, g = _f64(next_obs), _f64(task)
        return -_dist(_col(p, 0), _col(p, 1), _col(g, 0), _col(g, 1))

    def evaluate(self, obs, action, next_obs, task):
        next_obs, task = _f64(next_obs), _f64(task)
        shape = _leading(obs, action, next_obs, task)
        return _full(self.evaluate_dense(obs, action, next_obs, task), shape), np.zeros(shape, bool)


class SparsePointRobot(PointRobot):
    """PEARL's sparse 2-D navigation (Rakelly et al. 2019; oyster rlkit/envs/point_robot.py SparsePointEnv).

    obs       (x, y); never clipped
    action    a in [-1, 1]^2; the point moves by 0.1 * a
    reward    the SPARSE reward, PEARL's info['sparse_reward']: with d = ||p' - g||,
                  r = 1 - d   if d <= 0.2   (the dense reward plus a +1 offset inside the goal radius)
                  r = 0       otherwise
              never terminates. info["dense_reward"] = -d (what PEARL returns as the reward and trains its
              critic on; `evaluate_dense` recomputes it for any task), info["success"] = d <= 0.2.
    task      goal g on the upper unit semicircle
    start     the origin
    horizon   20
    tasks     100 goals at angles linspace(0, pi, 100), shuffled by RandomState(1337) as PEARL does;
              train = first 80, test = last 20
    """

    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster rlkit/envs/point_robot.py (SparsePointEnv)"
    has_success = True
    goal_radius = 0.2

    @staticmethod
    def _reference_goals(n: int) -> np.ndarray:
        angles = np.linspace(0.0, np.pi, n)
        goals = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        np.random.RandomState(PEARL_SEED).shuffle(goals)
        return goals

    def sample_tasks(self, n, rng):
        angles = rng.uniform(0.0, np.pi, size=n)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def _initial_state(self):
        self._pos = (0.0, 0.0)

    def evaluate(self, obs, action, next_obs, task):
        next_obs, task = _f64(next_obs), _f64(task)
        shape = _leading(obs, action, next_obs, task)
        dense = self.evaluate_dense(obs, action, next_obs, task)
        sparse = _where(dense >= -self.goal_radius, dense + 1.0, 0.0)
        return _full(sparse, shape), np.zeros(shape, bool)

    def _info(self, obs, action, next_obs, reward, terminated):
        dense = float(self.evaluate_dense(obs, action, next_obs, self._task))
        return {"dense_reward": dense, "success": dense >= -self.goal_radius}


class FourCorners(PointRobot):
    """HFR's didactic Four-Corners task (Wan et al. 2022, §3, Fig. 1; michaelwan11/hfr rlkit/envs/point_robot.py).

    obs       (x, y); never clipped
    action    a in [-1, 1]^2; the point moves by 0.1 * a
    reward    with d = ||p' - g|| and (x, y) = p':
                  0    and terminated       if d <= 0.2 (the goal is reached; info["success"] = True)
                  -3   inside the trap       0.1 < x*sign(gx) < 0.5 and 0.1 < y*sign(gy) < 0.5,
                                             the open square of the goal's own quadrant
                  -1   elsewhere
              (HFR writes the trap per corner; the sign form is the same for the four corners and extends
              to relabeled goals: the trap lies in the quadrant of whatever goal is scored.)
    task      goal g in {(-1, -1), (1, 1), (1, -1), (-1, 1)} (HFR's order)
    start     the origin
    horizon   20
    tasks     the same 4 goals for train and test
    """

    source = "HFR (Wan et al. 2022), michaelwan11/hfr rlkit/envs/point_robot.py (FourCorners)"
    has_success = True
    goal_radius = 0.2
    CORNERS = np.array([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    # The trap's edges as float32 numbers. A saturated policy (a = +-1) puts the point exactly on 0.1 or 0.5,
    # where HFR's float64 state is outside the open square; the float32 obs of 0.1 is 0.10000000149, which
    # is outside only when compared with the float32 edge.
    TRAP_LO, TRAP_HI = float(np.float32(0.1)), float(np.float32(0.5))

    def __init__(self, seed=0, horizon=20, render_mode=None):
        super().__init__(seed, horizon, render_mode=render_mode)
        self.train_tasks, self.test_tasks = self.CORNERS.copy(), self.CORNERS.copy()

    def sample_tasks(self, n, rng):
        return self.CORNERS[rng.integers(0, 4, size=n)]

    def _initial_state(self):
        self._pos = (0.0, 0.0)

    def evaluate(self, obs, action, next_obs, task):
        next_obs, task = _f64(next_obs), _f64(task)
        shape = _leading(obs, action, next_obs, task)
        x, y, gx, gy = _col(next_obs, 0), _col(next_obs, 1), _col(task, 0), _col(task, 1)
        at_goal = _dist(x, y, gx, gy) <= self.goal_radius
        u, v = x * np.sign(gx), y * np.sign(gy)  # coordinates mirrored into the goal's quadrant
        trap = (self.TRAP_LO < u) & (u < self.TRAP_HI) & (self.TRAP_LO < v) & (v < self.TRAP_HI)
        reward = _where(at_goal, 0.0, _where(trap, -3.0, -1.0))
        return _full(reward, shape), _full(at_goal, shape)

    def _info(self, obs, action, next_obs, reward, terminated):
        return {"success": bool(terminated)}


# ============================================================================================================
class PointReacher(_PointMass):
    """Generalized Hindsight's PointReacher with an obstacle (Li et al. 2020, Fig. 2b; alexlioralexli/
    generalized-hindsight rlkit/envs/point_reacher_env.py + gym_relabelers.ReacherRelabelerWithGoalAndObs).

    obs       (x, y, vx, vy, t/H): position, velocity, normalized time
    action    a in [-1, 1]^2; v <- clip(v + a/20, -0.25, 0.25), then p <- clip(p + v, -1, 1)
    task      z = (u, v, theta_g, r_g, theta_o, r_o), prior U[0, 0.25] x U[0.5, 1] x U[-pi, pi] x
              U[0.15, 0.3] x U[-pi, pi] x U[0.15, 0.3]; goal g = r_g (cos theta_g, sin theta_g), obstacle
              o likewise (the obstacle is imagined: it only enters the reward)
    weights   on the unit sphere, all >= 0 under the prior: theta = 2 pi u, phi = arccos(2v - 1),
              w = (cos theta sin phi, sin theta sin phi, cos phi) for (distance, energy, safety)
    reward    r = w_dist * f_dist + w_energy * f_energy + w_safety * f_safety, scored on the position p'
              reached and the action a:
                  f_dist   = 0.2 - ||p' - g||                      (dense, the default)
                           = s * exp(-||p' - g||^2 / 0.08^2)        (`sparse=s` > 0, GH's --sparse s)
                  f_energy = -||a||
                  f_safety = log10(||p' - o|| + 0.01) / 5
              never terminates
    start     the origin at rest
    horizon   20
    tasks     GH samples latents from the prior; here fixed lists from it: 125 draws of
              `sample_tasks(125, np.random.default_rng(1337))`, train = first 100, test = last 25
    """

    source = "Generalized Hindsight (Li et al. 2020), alexlioralexli/generalized-hindsight (pointreacherobs)"
    task_dim = 6
    view = (-1.0, 1.0)
    LOW = np.array([0.0, 0.5, -np.pi, 0.15, -np.pi, 0.15])
    HIGH = np.array([0.25, 1.0, np.pi, 0.3, np.pi, 0.3])

    def __init__(self, seed=0, horizon=20, n_train_tasks=100, n_test_tasks=25, sparse=0.0, render_mode=None):
        super().__init__(seed, horizon, render_mode)
        self._check_counts(type(self).__name__, n_train_tasks, n_test_tasks)
        if not np.isfinite(sparse) or sparse < 0:
            raise ValueError(f"PointReacher: sparse must be a scale >= 0 (0 = dense reward), got {sparse!r}")
        self.sparse = float(sparse)
        high = np.array([1.0, 1.0, 0.25, 0.25, 1.0], np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.train_tasks, self.test_tasks = self._split(
            n_train_tasks, n_test_tasks,
            self.sample_tasks(n_train_tasks + n_test_tasks, np.random.default_rng(PRIOR_SEED)))
        self._state = (0.0, 0.0, 0.0, 0.0)

    def sample_tasks(self, n, rng):
        return rng.uniform(self.LOW, self.HIGH, size=(n, 6))

    def _initial_state(self):
        self._state = (0.0, 0.0, 0.0, 0.0)  # x, y, vx, vy

    def _advance(self, a):
        (x, y, vx, vy), (ax, ay) = self._state, a.tolist()
        vx, vy = min(max(vx + ax / 20.0, -0.25), 0.25), min(max(vy + ay / 20.0, -0.25), 0.25)
        self._state = (min(max(x + vx, -1.0), 1.0), min(max(y + vy, -1.0), 1.0), vx, vy)

    def _observe(self):
        return np.array(self._state + (self._t / self.horizon,), np.float32)

    def achieved_task(self, obs, task) -> np.ndarray:
        """`task` with its goal (theta_g, r_g) moved to the position in `obs`; weights and obstacle kept
        (GH's HER baseline for this env, HERReacherRelabelerWithGoalAndObs)."""
        obs, task = _f64(obs), _f64(task)
        out = np.broadcast_to(task, np.broadcast_shapes(obs.shape[:-1], task.shape[:-1]) + (6,)).copy()
        x, y = obs[..., 0], obs[..., 1]
        out[..., 2], out[..., 3] = np.arctan2(y, x), np.sqrt(x * x + y * y)
        return out

    @staticmethod
    def _task_terms(task: np.ndarray) -> tuple:
        """(w_dist, w_energy, w_safety, gx, gy, ox, oy) of task vectors (..., 6)."""
        theta, phi = 2.0 * np.pi * _col(task, 0), np.arccos(2.0 * _col(task, 1) - 1.0)
        r_goal, r_obst = _col(task, 3), _col(task, 5)
        return (np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi),
                r_goal * np.cos(_col(task, 2)), r_goal * np.sin(_col(task, 2)),
                r_obst * np.cos(_col(task, 4)), r_obst * np.sin(_col(task, 4)))

    def _apply_task(self, task):
        self._terms = self._task_terms(task)  # `step` scores every transition under this task: compute once

    def evaluate(self, obs, action, next_obs, task):
        terms = self._terms if task is self._task else self._task_terms(_f64(task))
        action, next_obs, task = self.clip_action(action, batched=True), _f64(next_obs), _f64(task)
        shape = _leading(obs, action, next_obs, task)
        w_dist, w_energy, w_safety, gx, gy, ox, oy = terms
        x, y = _col(next_obs, 0), _col(next_obs, 1)
        d_goal, d_obst = _dist(x, y, gx, gy), _dist(x, y, ox, oy)
        if self.sparse > 0:
            f_dist = self.sparse * np.exp(-(d_goal * d_goal) / 0.08**2)
        else:
            f_dist = 0.2 - d_goal
        f_energy = -np.sqrt(_col(action, 0) * _col(action, 0) + _col(action, 1) * _col(action, 1))
        f_safety = np.log10(d_obst + 0.01) / 5.0
        reward = f_dist * w_dist + f_energy * w_energy + f_safety * w_safety
        return _full(reward, shape), np.zeros(shape, bool)


class PointTrajectory(_PointMass):
    """Generalized Hindsight's PointTrajectory (Li et al. 2020, Fig. 2a; alexlioralexli/generalized-hindsight
    rlkit/envs/point_robot_new.py + rlkit/torch/multitask/pointmass_rewards.py PointMassBestRandomRelabeler).

    obs       (x, y, t/H)
    action    a in [-1, 1]^2; p <- clip(p + a/10, -1, 1)
    task      z = (angle, d, amp), prior U[-pi, pi] x U[0.75, 1] x U[-0.25, 0.25]: follow the sinusoid of
              amplitude `amp` and half-period `d` that leaves the origin in direction -angle
    reward    GH's env returns 0 and the reward comes from the latent; here `step` returns the latent's
              reward (our protocol). It depends on the position p' = (x, y) reached and the latent only.
              Rotate p' by +angle: x' = cos(angle) x - sin(angle) y, y' = sin(angle) x + cos(angle) y;
              alpha = x' / d;
                  r = (alpha + 1e-12) * N(y' - amp * sin(pi x' / d); 0, 0.05)   if alpha >= 0
                  r = 0                                                        otherwise
              with N(e; 0, s) = exp(-e^2 / (2 s^2)) / (s sqrt(2 pi)) the Gaussian pdf (peak 7.98 at e = 0):
              progress along the direction times closeness to the curve. Never terminates.
              GH scores the position before the step (path['observations']); scoring the position reached
              (like every family here) shifts the reward by one step: the start at the origin (worth 8e-12)
              goes unscored and the final position counts.
    start     the origin
    horizon   15
    tasks     GH samples latents from the prior; here 125 draws of `sample_tasks(125,
              np.random.default_rng(1337))`: train = first 100, test = last 25
    """

    source = "Generalized Hindsight (Li et al. 2020), alexlioralexli/generalized-hindsight (pointmass2)"
    task_dim = 3
    view = (-1.0, 1.0)
    sigma = 0.05
    LOW = np.array([-np.pi, 0.75, -0.25])
    HIGH = np.array([np.pi, 1.0, 0.25])

    def __init__(self, seed=0, horizon=15, n_train_tasks=100, n_test_tasks=25, render_mode=None):
        super().__init__(seed, horizon, render_mode)
        self._check_counts(type(self).__name__, n_train_tasks, n_test_tasks)
        self.observation_space = gym.spaces.Box(np.array([-1, -1, 0], np.float32), np.ones(3, np.float32))
        self.train_tasks, self.test_tasks = self._split(
            n_train_tasks, n_test_tasks,
            self.sample_tasks(n_train_tasks + n_test_tasks, np.random.default_rng(PRIOR_SEED)))
        self._pos = (0.0, 0.0)

    def sample_tasks(self, n, rng):
        return rng.uniform(self.LOW, self.HIGH, size=(n, 3))

    def _initial_state(self):
        self._pos = (0.0, 0.0)

    def _advance(self, a):
        (x, y), (ax, ay) = self._pos, a.tolist()
        self._pos = (min(max(x + ax / 10.0, -1.0), 1.0), min(max(y + ay / 10.0, -1.0), 1.0))

    def _observe(self):
        return np.array(self._pos + (self._t / self.horizon,), np.float32)

    def evaluate(self, obs, action, next_obs, task):
        next_obs, task = _f64(next_obs), _f64(task)
        shape = _leading(obs, action, next_obs, task)
        x, y = _col(next_obs, 0), _col(next_obs, 1)
        angle, d, amp = _col(task, 0), _col(task, 1), _col(task, 2)
        c, s = np.cos(angle), np.sin(angle)
        xr, yr = c * x - s * y, s * x + c * y
        alpha = xr / d
        e = yr - amp * np.sin(np.pi * xr / d)
        pdf = np.exp(-(e * e) / (2.0 * self.sigma**2)) / (self.sigma * np.sqrt(2.0 * np.pi))
        reward = _where(alpha >= 0.0, (alpha + 1e-12) * pdf, 0.0)
        return _full(reward, shape), np.zeros(shape, bool)


# ============================================================================================================
# The classic FourRooms layout of "Search on the Replay Buffer" (Eysenbach et al. 2019) as HIPI uses it, one
# character per cell, '#' a wall; drawn with x to the right and y upward, so the start (0, 0) is the
# lower-left corner. Cell (x, y) here is cell [i=x, j=y] of that code's wall array.
FOUR_ROOMS = """
......#....
......#....
...........
......#....
......#....
##.######.#
.....#.....
.....#.....
.....#.....
...........
.....#.....
"""


class FourRooms(_GoalFamily, _PointMass):
    """HIPI's 2-D navigation (Eysenbach et al. 2020, App. C.7; google-research hipi/envs/point_env.py with the
    README's point_FourRooms_3 bindings).

    world     the 11 x 11 FourRooms layout above, each cell dilated to 3 x 3: the square [0, 33]^2 with
              walls; unit-size cells
    obs       (x, y) in [0, 33]^2
    action    a in [-1, 1]^2, plus HIPI's action noise: one scalar eps ~ N(0, action_noise^2) (default 1.0)
              added to both components, then clipped to [-1, 1]. The move is 10 sub-steps of 0.1 * a; in
              each sub-step x moves, then y, and a component move that would leave [0, 33]^2 or enter a wall
              cell is rejected (the point slides along walls, never passes through them)
    reward    r = 0 and terminated if ||p' - g|| < 0.3 (info["success"]), else r = -1, scored on the
              position p' reached. HIPI scores the position before the step, which delays the reward and
              the termination by one step; scoring the reached position (as every family here does) lets a
              goal relabeled to `achieved_task(next_obs)` give that very transition r = 0 and a terminal.
    task      goal g = (gx, gy); prior: a uniform free cell plus a U[0, 1)^2 offset, redrawn until
              ||g - start|| >= 15 (HIPI's min_goal_distance; per-axis moves are at most 1 a step, so every
              goal is at least 15 / sqrt(2) > 10 steps away in open space, and walls lengthen most paths)
    start     (0, 0), the lower-left corner
    horizon   75 (the README's max_episode_steps for this env)
    tasks     HIPI draws a goal per episode; here `sample_tasks(125, np.random.default_rng(1337))`:
              train = first 100, test = last 25
    """

    source = "HIPI (Eysenbach et al. 2020), google-research hipi/envs/point_env.py (point_FourRooms_3)"
    task_dim = 2
    has_success = True
    goal_radius = 0.3
    min_goal_distance = 15.0
    start = (0.0, 0.0)
    n_substeps = 10
    dilation = 3

    def __init__(self, seed=0, horizon=75, n_train_tasks=100, n_test_tasks=25, action_noise=1.0,
                 render_mode=None):
        super().__init__(seed, horizon, render_mode)
        self._check_counts(type(self).__name__, n_train_tasks, n_test_tasks)
        if not np.isfinite(action_noise) or action_noise < 0:
            raise ValueError(f"FourRooms: action_noise must be >= 0, got {action_noise!r}")
        self.action_noise = float(action_noise)
        rows = FOUR_ROOMS.split()
        cells = np.array([[c == "#" for c in row] for row in rows[::-1]]).T  # cells[x, y]
        self.walls = cells.repeat(self.dilation, axis=0).repeat(self.dilation, axis=1)  # walls[x, y], 33 x 33
        self.size = float(self.walls.shape[0])
        self.view = (0.0, self.size)
        self._wall_rows = self.walls.tolist()  # Python lists: a scalar lookup per sub-step is much faster
        self.observation_space = gym.spaces.Box(0.0, self.size, (2,), np.float32)
        self.train_tasks, self.test_tasks = self._split(
            n_train_tasks, n_test_tasks,
            self.sample_tasks(n_train_tasks + n_test_tasks, np.random.default_rng(PRIOR_SEED)))
        self._xy = self.start

    def blocked(self, x: float, y: float) -> bool:
        """Outside [0, size]^2 or inside a wall cell (the far edge belongs to the last cell)."""
        return self._box_blocked(x, x, y, y)

    def _box_blocked(self, x0: float, x1: float, y0: float, y1: float) -> bool:
        """Whether any point of the box [x0, x1] x [y0, y1] is blocked."""
        if not (0.0 <= x0 and x1 <= self.size and 0.0 <= y0 and y1 <= self.size):
            return True
        last = self.walls.shape[0] - 1
        rows = self._wall_rows
        for i in range(int(x0), min(int(x1), last) + 1):
            for j in range(int(y0), min(int(y1), last) + 1):
                if rows[i][j]:
                    return True
        return False

    def sample_tasks(self, n, rng):
        free = np.argwhere(~self.walls)
        goals = np.empty((0, 2))
        while len(goals) < n:
            g = free[rng.integers(0, len(free), size=2 * n)] + rng.uniform(size=(2 * n, 2))
            far = _dist(g[:, 0], g[:, 1], self.start[0], self.start[1]) >= self.min_goal_distance
            goals = np.concatenate([goals, g[far]])
        return goals[:n]

    def _initial_state(self):
        self._xy = self.start

    def _advance(self, a):
        ax, ay = a.tolist()
        if self.action_noise > 0:
            eps = float(self.np_random.normal(0.0, self.action_noise))
            ax, ay = min(max(ax + eps, -1.0), 1.0), min(max(ay + eps, -1.0), 1.0)
        dx, dy = 0.1 * ax, 0.1 * ay
        x, y = self._xy
        # Fast path: the sub-step positions are monotone in each axis, so when the box they span is free no
        # sub-move is rejected and the sums below are exactly what the sub-step loop would compute.
        x1, y1 = x, y
        for _ in range(self.n_substeps):
            x1 += dx
            y1 += dy
        if not self._box_blocked(min(x, x1), max(x, x1), min(y, y1), max(y, y1)):
            self._xy = (x1, y1)
            return
        for _ in range(self.n_substeps):
            if not self.blocked(x + dx, y):
                x += dx
            if not self.blocked(x, y + dy):
                y += dy
        self._xy = (x, y)

    def _observe(self):
        return np.array(self._xy, np.float32)

    def evaluate(self, obs, action, next_obs, task):
        next_obs, task = _f64(next_obs), _f64(task)
        shape = _leading(obs, action, next_obs, task)
        at_goal = _dist(_col(next_obs, 0), _col(next_obs, 1), _col(task, 0), _col(task, 1)) < self.goal_radius
        return _full(at_goal - 1.0, shape), _full(at_goal, shape)

    def _info(self, obs, action, next_obs, reward, terminated):
        return {"success": bool(terminated)}

    def _wall_mask(self, xs, ys):
        n = self.walls.shape[0]
        return self.walls[np.clip(xs.astype(int), 0, n - 1), np.clip(ys.astype(int), 0, n - 1)]


# ------------------------------------------------------------------------------------------------------------
def _speed(n_steps: int = 5_000, repeats: int = 5) -> None:
    """Random-action steps per CPU-second of each family, resets included: process time, best of `repeats`
    runs, so other jobs on a shared machine disturb the figure little."""
    import envs

    for name in ("point-robot", "sparse-point-robot", "four-corners", "point-reacher", "point-trajectory",
                 "four-rooms"):
        actions = np.random.default_rng(0).uniform(-1, 1, (n_steps, 2)).astype(np.float32)
        print(f"{name:20s} {envs.steps_per_second(envs.make(name, seed=0), actions, repeats):10,.0f} steps/s")


if __name__ == "__main__":
    _speed()
