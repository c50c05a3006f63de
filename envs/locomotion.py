"""MuJoCo locomotion task families: the shared base over gymnasium's MuJoCo v5 models.

The robots live in `cheetah.py` (HalfCheetah), `ant.py` (Ant) and `hopper_walker.py` (Hopper, Walker2d); this
file holds what they share: `LocomotionEnv` (a `TaskEnv` that is also a gymnasium `MujocoEnv` on the v5 XML of
its robot, one `MjModel` per instance), the reward pieces the papers combine (forward velocity from positions,
control cost), the per-task physics writes, and the task-list helpers.

How a step works (all families):
    action a in [-1, 1]^nu  ->  clipped  ->  ctrl = action_mask * a   (mask = task for negated / crippled joints)
    mj_step(model, data, nstep=frame_skip)   (+ mj_rnePostConstraint where contact forces are observed)
    next_obs = float32 vector carrying everything the reward needs (torso x / xy / height are IN the obs)
    reward, terminated = self.evaluate(obs, a, next_obs, task)   on the very float32 arrays `step` returns
    truncated = (t == horizon)
Velocities are finite differences of the torso position over one control step, (x' - x) / dt, as in the authors'
rllab/gym envs, computed in float64 from the float32 observations (so a relabeler gets exactly the same number).
The float32 rounding of x costs < 1e-5 m, i.e. < 2e-4 m/s of velocity even 100 m from the origin.

Per-task physics (MCAT families) are written into the instance's model arrays from saved defaults, followed by
`mujoco.mj_setConst` (derived constants such as body_subtreemass, dof_invweight0 follow); restoring a task
rewrites the defaults, so rollouts are bit-identical again. Size changes (hopper-size) copy every array the
compiler derives from a geom's size (geom_size, geom_rbound, geom_aabb, bvh_aabb, body_mass, body_inertia,
body_ipos, body_iquat) from a model compiled once per size with `mujoco.MjSpec` (cached per process).

Speed: our layer must add at most 15% to the raw gymnasium step; `OMP_NUM_THREADS=1 python -m envs.locomotion
--bench` compares the two (`_bench` below). We skip mj_rnePostConstraint where no contact force is observed (v5
always calls it) and build no info dicts.
"""

from __future__ import annotations

import os
import time
from itertools import combinations

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from envs import TaskEnv

ASSETS = os.path.join(os.path.dirname(gym.envs.mujoco.__file__), "assets")


class LocomotionEnv(TaskEnv, MujocoEnv):
    """A TaskEnv on one of gymnasium's MuJoCo v5 robots. Robot classes set the model, the observation and the
    reset; family classes set the task list, the reward (`_reward`) and what a task changes (`_apply_task`).

    Constructor overrides accepted by `envs.make`: horizon, n_train_tasks / n_test_tasks (keep the first n of
    the paper's lists), render_mode ("rgb_array"), width, height.
    """

    needs_opengl = True

    xml: str                  # file in gymnasium's mujoco assets
    frame_skip: int
    obs_dim: int
    default_horizon: int
    needs_contact_forces = False  # call mj_rnePostConstraint after stepping (cfrc_ext is observed)
    reset_noise = 0.1             # qpos += U(-n, n); qvel += n N(0, 1), or U(-n, n) if velocity_noise_uniform
    velocity_noise_uniform = False
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}
    camera_config: dict | None = None  # the v5 env's DEFAULT_CAMERA_CONFIG, so videos look like gymnasium's
    timestep: float | None = None      # overrides the XML's <option timestep> (the authors' model used another)

    def __init__(self, seed: int = 0, horizon: int | None = None, n_train_tasks: int | None = None,
                 n_test_tasks: int | None = None, render_mode: str | None = None, width: int = 480,
                 height: int = 480):
        obs_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        MujocoEnv.__init__(self, os.path.join(ASSETS, self.xml), self.frame_skip, obs_space,
                           render_mode=render_mode, width=width, height=height,
                           default_camera_config=self.camera_config)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.model.nu,), np.float32)
        self.horizon = int(horizon if horizon is not None else self.default_horizon)
        if self.horizon <= 0:
            raise ValueError(f"{self.name}: horizon must be positive, got {self.horizon}")
        self._dt = self.dt
        self._action_mask = None  # set by families whose task masks / negates actuators (or scales actions)
        self._ctrl_offset = None  # ctrl = a * mask + offset: families whose ctrlrange is not centred on 0
        train, test = self._task_lists()
        self.train_tasks = _first(train, n_train_tasks, "n_train_tasks", self.name)
        self.test_tasks = _first(test, n_test_tasks, "n_test_tasks", self.name)
        self.task_dim = self.train_tasks.shape[1]
        self._t = 0
        self._obs = None
        self.np_random, _ = gym.utils.seeding.np_random(seed)

    def _initialize_simulation(self):
        model, data = super()._initialize_simulation()
        if self.timestep is not None:
            model.opt.timestep = self.timestep
        return model, data

    # ------------------------------------------------------------------ what a family defines
    def _task_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """(train_tasks, test_tasks) as the paper lists them, float64 (n, task_dim)."""
        raise NotImplementedError

    def _reward(self, obs, action, next_obs, task):
        """(reward, terminated) on broadcastable float arrays; action already clipped, float64."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the protocol
    def clip_action(self, action, batched: bool = False) -> np.ndarray:
        # Same checks and result as TaskEnv.clip_action; min/max instead of np.clip (half the per-step cost).
        action = np.asarray(action, dtype=np.float64)
        shape = self.action_space.shape
        if (action.shape[-1:] != shape) if batched else (action.shape != shape):
            raise ValueError(f"{self.name}: action must have shape {shape}, got {action.shape}")
        return np.minimum(np.maximum(action, -1.0), 1.0)

    def evaluate(self, obs, action, next_obs, task):
        action = self.clip_action(action, batched=True)
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        task = np.asarray(task, dtype=np.float64)
        reward, terminated = self._reward(obs, action, next_obs, task)
        if np.shape(terminated) != np.shape(reward):
            terminated = np.broadcast_to(terminated, np.shape(reward)).copy()
        return reward, terminated

    def step(self, action):
        a = self.clip_action(action)
        obs = self._obs
        if obs is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        ctrl = a if self._action_mask is None else a * self._action_mask
        self.data.ctrl[:] = ctrl if self._ctrl_offset is None else ctrl + self._ctrl_offset
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        if self.needs_contact_forces:
            mujoco.mj_rnePostConstraint(self.model, self.data)
        next_obs = self._obs = self._get_obs()
        reward, terminated = self.evaluate(obs, a, next_obs, self._task)
        self._t += 1
        return next_obs, float(reward), bool(terminated), self._t >= self.horizon, self._info(next_obs)

    def _info(self, next_obs) -> dict:
        return {}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._task is None:
            raise RuntimeError(f"{self.name}: no task set; call env.set_task(task) first")
        obs, info = super().reset(seed=seed, options=options)
        self._t = 0
        return obs, info

    def reset_model(self):
        noise = self.reset_noise
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, self.model.nq)
        if self.velocity_noise_uniform:
            qvel = self.init_qvel + self.np_random.uniform(-noise, noise, self.model.nv)
        else:
            qvel = self.init_qvel + noise * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        if self.needs_contact_forces:
            mujoco.mj_rnePostConstraint(self.model, self.data)
        self._obs = self._get_obs()
        return self._obs

    def _get_reset_info(self):
        return {}

    # ------------------------------------------------------------------ shared reward pieces
    def velocity(self, obs, next_obs, i):
        """Finite-difference velocity of observation entry i over one control step, float64."""
        return np.subtract(next_obs[..., i], obs[..., i], dtype=np.float64) / self._dt

    @staticmethod
    def ctrl_sq(action):
        """|a|^2 over the last axis (a reduction along a contiguous last axis: same bits for any batch shape)."""
        return (action * action).sum(-1)

    @staticmethod
    def no_termination(reward):
        return np.zeros(np.shape(reward), dtype=bool)


def _first(tasks, n, what, name):
    tasks = np.asarray(tasks, dtype=np.float64)
    if tasks.ndim == 1:
        tasks = tasks[:, None]
    if n is None:
        return tasks
    if not 0 < n <= len(tasks):
        raise ValueError(f"{name}: {what} must be in 1..{len(tasks)}, got {n}")
    return tasks[:n].copy()


# ---------------------------------------------------------------------------------------------- task helpers
def choose_from(tasks: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n tasks drawn uniformly (with replacement) from a finite task list."""
    return np.asarray(tasks, np.float64)[rng.integers(len(tasks), size=n)]


def negation_masks(n_dims: int, n_first: int, k: int, extra_negated: bool = False) -> np.ndarray:
    """Masks of +-1 over n_dims actuators negating every k-subset of the first n_first (MIER's negated
    joints), lexicographic order; `extra_negated` also negates the last actuator."""
    masks = []
    for idx in combinations(range(n_first), k):
        m = np.ones(n_dims)
        m[list(idx)] = -1.0
        if extra_negated:
            m[-1] = -1.0
        masks.append(m)
    return np.array(masks)


class ActionMaskTasks:
    """Mixin for families whose task IS a per-actuator multiplier (negated joints: +-1; crippled leg: 0/1)."""

    varies = "dynamics"

    def _apply_task(self, task):
        self._action_mask = task.copy()

    def sample_tasks(self, n, rng):
        return choose_from(self.train_tasks, n, rng)


class ModelArrayTasks:
    """Mixin for families whose task is one scalar written into model arrays (MCAT physics parameters).

    `_set_physics(value)` writes the arrays from `self._defaults` (saved copies), then mj_setConst runs."""

    varies = "dynamics"
    fields: tuple[str, ...] = ()

    def _apply_task(self, task):
        if not hasattr(self, "_defaults"):
            self._defaults = {f: getattr(self.model, f).copy() for f in self.fields}
        for f in self.fields:
            getattr(self.model, f)[:] = self._defaults[f]
        self._set_physics(float(task[0]))
        mujoco.mj_setConst(self.model, self.data)

    def _set_physics(self, value: float) -> None:
        raise NotImplementedError

    def sample_tasks(self, n, rng):
        return choose_from(self.train_tasks, n, rng)


# ---------------------------------------------------------------------------------------------- speed check
def _bench(n_steps: int = 20_000, repeats: int = 5) -> None:
    """Time `step` alone (resets every 100 steps or at termination, outside the timed loops) of the raw
    gymnasium env against our family; random actions; the best of `repeats` interleaved runs."""
    import envs

    def per_step(env, acts):
        env.reset(seed=0)
        total, done = 0.0, 0
        while done < len(acts):
            chunk = acts[done: done + 100]
            t0 = time.perf_counter()
            for i, a in enumerate(chunk):
                _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    break
            total += time.perf_counter() - t0
            done += i + 1
            env.reset()
        return total / done * 1e6

    for raw_id, ours in [("HalfCheetah-v5", "cheetah-vel"), ("Ant-v5", "ant-goal"), ("Hopper-v5", "hopper-size")]:
        raw_env, our_env = gym.make(raw_id), envs.make(ours)
        if ours == "hopper-size":
            our_env.set_task([0.05])  # the XML's own size, as in Hopper-v5
        acts = np.random.default_rng(0).uniform(-1, 1, (n_steps,) + our_env.action_space.shape).astype(np.float32)
        raw = mine = np.inf
        for _ in range(repeats):
            raw, mine = min(raw, per_step(raw_env, acts)), min(mine, per_step(our_env, acts))
        change = 100 * (mine / raw - 1)
        print(f"{raw_id} gym.make {raw:6.1f} us/step   {ours} {mine:6.1f} us/step  ({change:+.0f}%)")


if __name__ == "__main__":
    import sys

    if "--bench" in sys.argv:
        _bench()
    else:
        print("usage: python -m envs.locomotion --bench")
