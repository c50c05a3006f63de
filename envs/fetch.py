"""fetch-reach: Generalized Hindsight's Fetch reach with a goal, an imagined obstacle and an energy term (Li et al.
2020, Sec. 5, Fig. 2c; alexlioralexli/generalized-hindsight rlkit/envs/fetch_reach.py and
rlkit/torch/multitask/fetch_reach_relabelers.py FetchReachRelabelerWithGoalAndObs; launch_gher.py 'fetchreach').

Simulator: gymnasium-robotics' MuJoCo Fetch (the model of gym's robotics FetchReach: a 7-DoF arm moved through a
mocap weld, fingers blocked) built as GH built it: n_substeps 100 (gym's FetchReach uses 20; 100 x 0.002 s =
0.2 s per step), target_range 0.25, gripper 0.2 m above the table, the authors' initial slide joints. The
package is not in requirements.txt: `pip install gymnasium-robotics==1.4.2` (it installs with mujoco 3.3.0
and the other pins unchanged); without it envs.make raises envs.MissingDependency, one line.

Observation (10-D float32, gym's Fetch 'observation'): gripper position (x, y, z) in world coordinates (obs[0:3],
what the reward reads), the two finger joint positions, gripper linear velocity x dt, finger velocities x dt.
Action: [-1, 1]^4, (dx, dy, dz) x 0.05 m moves the mocap target, the 4th entry does nothing (fingers blocked).
Task (8-D latent, GH's): z = (u, v, goal xyz, obstacle xyz), u ~ U[0, 0.25], v ~ U[0.5, 1]; goal and obstacle
each = initial gripper position + U(-0.25, 0.25)^3 (Fetch's _sample_goal with target_range 0.25).
Weights on the unit sphere (all >= 0 under the prior): theta = 2 pi u, phi = arccos(2v - 1),
w = (cos theta sin phi, sin theta sin phi, cos phi) for (distance, energy, safety).
Reward r = w . f on the gripper position p' the step reached and the clipped action a:
    f_dist   = s exp(-|p' - g|^2 / 0.08^2)   for 0 < s <= 1.01   (`sparse=s`, GH's --sparse; default 1)
             = 1[|p' - g| < 0.04]           for 1.01 < s <= 2.01
             = 0.2 - |p' - g|               for s > 2.01 (GH's dense branch)
    f_energy = -|a[0:3]|
    f_safety = log10(|p' - o| + 0.01) / 5
No termination; horizon 50; discount 0.98 in GH's launcher (the scripts' business).
Tasks: GH samples latents from the prior while training; here 100 prior draws (default_rng(1337)) are the train
tasks and 25 more the test tasks. GH evaluated on a fixed list of 25 latents (reference_latents.py
FETCH_REACH_GOAL_OBS_LATENT) whose goal and obstacle coordinates lie in [-0.15, 0.15]^3: that is the goal
range of its point-mass PointReacherEnv3D, about 1.4 m away from the Fetch gripper (world coordinates near
(1.34, 0.75, 0.53)), so under those latents the distance term is ~0 for every policy. We do not reuse them.
Deviation: the reward is scored with the gripper position of the observation the step returns (GH: of info
'end_effector_loc', the same vector).
"""

from __future__ import annotations

import os
import warnings

import gymnasium as gym
import numpy as np

import envs
from envs import TaskEnv

INITIAL_QPOS = {"robot0:slide0": 0.4049, "robot0:slide1": 0.48, "robot0:slide2": 0.0}


def _fetch_env_class():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import gymnasium_robotics
            from gymnasium_robotics.envs.fetch.fetch_env import MujocoFetchEnv
    except ImportError:
        raise envs.MissingDependency("fetch-reach needs gymnasium-robotics: pip install gymnasium-robotics==1.4.2 "
                                     "(not in requirements.txt)") from None
    return MujocoFetchEnv, os.path.join(os.path.dirname(gymnasium_robotics.__file__), "envs", "assets", "fetch",
                                        "reach.xml")


class FetchReach(TaskEnv):
    name = "fetch-reach"
    source = ("Generalized Hindsight (Li et al. 2020), alexlioralexli/generalized-hindsight fetch_reach.py "
              "(fetchreach), on gymnasium-robotics' Fetch")
    varies = "reward"
    task_dim = 8
    needs_opengl = True
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}
    LOW_W, HIGH_W = np.array([0.0, 0.5]), np.array([0.25, 1.0])
    TARGET_RANGE = 0.25

    def __init__(self, seed: int = 0, horizon: int = 50, n_train_tasks: int = 100, n_test_tasks: int = 25,
                 sparse: float = 1.0, render_mode: str | None = None, width: int = 480, height: int = 480):
        if not np.isfinite(sparse) or sparse <= 0:
            raise ValueError(f"fetch-reach: sparse must be > 0 (GH's --sparse; > 2.01 = dense), got {sparse!r}")
        if horizon <= 0:
            raise ValueError(f"fetch-reach: horizon must be positive, got {horizon}")
        cls, path = _fetch_env_class()
        cls = type("FetchReach100Substeps", (cls,), {"metadata": {**cls.metadata, "render_fps": 5}})  # 0.2 s steps
        self._fetch = cls(model_path=path, has_object=False, block_gripper=True, n_substeps=100,
                          gripper_extra_height=0.2, target_in_the_air=True, target_offset=0.0, obj_range=0.15,
                          target_range=self.TARGET_RANGE, distance_threshold=0.05, initial_qpos=INITIAL_QPOS,
                          reward_type="sparse", render_mode=render_mode, width=width, height=height)
        self.render_mode = render_mode
        self.sparse = float(sparse)
        self.horizon = int(horizon)
        self.action_space = self._fetch.action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (10,), np.float32)
        self._origin = self._fetch.initial_gripper_xpos[:3].copy()
        tasks = self.sample_tasks(125, np.random.default_rng(1337))
        for n, what in ((n_train_tasks, "n_train_tasks"), (n_test_tasks, "n_test_tasks")):
            if not 0 < n <= (100 if what == "n_train_tasks" else 25):
                raise ValueError(f"fetch-reach: {what} must be in 1..{100 if what == 'n_train_tasks' else 25}")
        self.train_tasks, self.test_tasks = tasks[:n_train_tasks], tasks[100:100 + n_test_tasks]
        self._fetch.reset(seed=seed)  # seeds the simulator's RNG (it only draws the unused built-in goal)
        self._t = 0
        self._obs = None

    # ------------------------------------------------------------------ tasks
    def sample_tasks(self, n, rng):
        w = rng.uniform(self.LOW_W, self.HIGH_W, (n, 2))
        goal = self._origin + rng.uniform(-self.TARGET_RANGE, self.TARGET_RANGE, (n, 3))
        obstacle = self._origin + rng.uniform(-self.TARGET_RANGE, self.TARGET_RANGE, (n, 3))
        return np.concatenate((w, goal, obstacle), axis=1)

    def achieved_task(self, obs, task):
        """`task` with its goal moved to the gripper position of `obs` (weights and obstacle kept)."""
        return envs.task_with_goal(obs, task, slice(0, 3), slice(2, 5))

    # ------------------------------------------------------------------ reward
    @staticmethod
    def weights(task):
        theta, phi = 2.0 * np.pi * task[..., 0], np.arccos(2.0 * task[..., 1] - 1.0)
        return np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)

    def evaluate(self, obs, action, next_obs, task):
        a = self.clip_action(action, batched=True)
        p = np.asarray(next_obs)[..., 0:3].astype(np.float64)
        task = np.asarray(task, dtype=np.float64)
        dg, do = p - task[..., 2:5], p - task[..., 5:8]
        d_goal = np.sqrt((dg * dg).sum(-1))
        d_obst = np.sqrt((do * do).sum(-1))
        if self.sparse <= 1.01:
            f_dist = self.sparse * np.exp(-(d_goal * d_goal) / 0.08 ** 2)
        elif self.sparse <= 2.01:
            f_dist = (d_goal < 0.04).astype(np.float64)
        else:
            f_dist = 0.2 - d_goal
        f_energy = -np.sqrt((a[..., :3] * a[..., :3]).sum(-1))
        f_safety = np.log10(d_obst + 0.01) / 5.0
        w_dist, w_energy, w_safety = self.weights(task)
        reward = f_dist * w_dist + f_energy * w_energy + f_safety * w_safety
        shape = np.broadcast_shapes(np.shape(reward), np.shape(obs)[:-1])
        reward = np.broadcast_to(reward, shape).copy()
        return reward, np.zeros(shape, bool)

    # ------------------------------------------------------------------ simulation
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._task is None:
            raise RuntimeError(f"{self.name}: no task set; call env.set_task(task) first")
        super().reset(seed=seed)
        obs, _ = self._fetch.reset(seed=seed)
        self._fetch.goal = self._task[2:5].copy()  # the goal drawn in videos
        self._t = 0
        self._obs = obs["observation"].astype(np.float32)
        return self._obs, {}

    def step(self, action):
        a = self.clip_action(action)
        if self._obs is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        obs = self._obs
        out, *_ = self._fetch.step(a.astype(np.float32))
        next_obs = self._obs = out["observation"].astype(np.float32)
        reward, terminated = self.evaluate(obs, a, next_obs, self._task)
        self._t += 1
        return next_obs, float(reward), bool(terminated), self._t >= self.horizon, {}

    def render(self):
        return self._fetch.render()

    def close(self):
        self._fetch.close()
