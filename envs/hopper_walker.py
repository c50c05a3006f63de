"""Hopper and Walker2d task families (gymnasium's MuJoCo models hopper.xml, walker2d.xml, walker2d_v5.xml).

hopper-size (MCAT). Observation 12-D float32:
    obs[0:6]  = qpos (rootx = torso x, rootz = torso height, rooty, thigh, leg, foot angles)
    obs[6:12] = clip(qvel, -10, 10)   (the authors' clipping)
Reward v_x + 1 - 1e-3|a|^2 with v_x = (next_obs[0] - obs[0]) / dt; NO early termination (the authors' hopper
never terminates), horizon 1000. The task is the torso / thigh capsule radius X (default 0.05); as in the authors'
hopper_size{X}.xml files the leg radius is 0.8 X and the foot radius 1.2 X (the default ratios), i.e. every body
capsule radius scales by X / 0.05 and masses / inertias follow from the geometry (density 1000). We compile the
scaled model once per size with mujoco.MjSpec and copy the size-derived arrays into the instance's model.
Train / test sizes: the appendix with MCAT's grid is not in our copy of the paper; we take the radii the authors
ship around the default, 0.02..0.06 for training and 0.01, 0.07 as unseen test sizes.
Reset: qpos, qvel += U(-5e-3, 5e-3) (as Hopper-v5).

walker-linear (HIPI). Observation 22-D float32:
    obs[0:9]   = qpos (rootx = torso x, rootz = torso height, rooty, right thigh/leg/foot, left thigh/leg/foot)
    obs[9:18]  = qvel
    obs[18:20] = left foot (x, z) relative to the torso (x, z)
    obs[20:22] = right foot (x, z) relative to the torso (x, z)
Reward w . f with f = [height - 0.5, v_x, left foot x, left foot z + 0.7, right foot x, right foot z + 0.7, |a|^2]
(from next_obs; HIPI's features with its offsets (0, -0.7)), w ~ U([-1]^6 x [-1, 0]) (control weight <= 0).
HIPI used dm_control's walker; on gymnasium's Walker2d the torso stands at 1.25 and the feet at about -1.15 below
it, so the constants keep their meaning only roughly. No termination, horizon 100 (HIPI's max_episode_steps).
Foot positions come from mj_kinematics on the final state of each step. reward_features returns f:
reward == (reward_features(obs, a, next_obs) * w).sum(-1) bit for bit; `@ w` agrees to rounding (BLAS order).

hopper-rand-params, walker-rand-params (PEARL, Rakelly et al. 2019; katerakelly/oyster
hopper_rand_params_wrapper.py / walker_rand_params_wrapper.py over dennisl88/rand_param_envs base.py RandomEnv,
hopper_rand_params.py, walker2d_rand_params.py). MIER (Mendonca et al. 2020) uses the same two families.
  Model: gymnasium's hopper.xml / walker2d.xml, which are rand_param_envs' models (same bodies, geoms, joints,
    gears, frictions, RK4; walker feet friction 0.9 / 1.9) except for the time step: rand_param_envs raised it
    from 0.002 to 0.004 s, so we set 0.004. frame_skip 4 (hopper, dt 0.016 s) and 5 (walker, dt 0.02 s), as
    the authors' classes.
  Observation, float32: qpos (rootx = torso x, rootz = height, rooty = torso angle, then the joint angles)
    followed by clip(qvel, -10, 10): hopper 12-D (6 + 6), walker 18-D (9 + 9).
  Reward: v_x + 1 - 1e-3|a|^2, v_x = (next_obs[0] - obs[0]) / dt.
  Termination (the authors' `done`), on next_obs: hopper unless all finite, |qpos[2:]| < 100, height > 0.7 and
    |angle| < 0.2; walker unless 0.8 < height < 2.0 and -1 < angle < 1. Horizon 200 (PEARL's max_path_length).
  Task: the multipliers of four model arrays, one per entry, concatenated in this order:
    body_mass (nbody), body_inertia (nbody x 3), dof_damping (nv), geom_friction (ngeom x 3);
    hopper 5 + 15 + 6 + 15 = 41 entries, walker 8 + 24 + 9 + 24 = 65. Each multiplier is b^u, u ~ U(-3, 3),
    with b = 1.5 for mass, inertia and friction and b = 1.3 for damping (RandomEnv.sample_tasks, log_scale_limit
    3.0: the damping base is 1.3 in the code, not 1.5). Entries of the world body (mass and inertia 0) are drawn
    too and change nothing. set_task writes default x multiplier into the instance's model, then mj_setConst.
  Tasks: 50 drawn, the first 40 train and the last 10 test (PEARL's config: n_tasks 50, 40 / 10). The authors
    drew them from numpy's unseeded global RNG, so every run of theirs had other tasks; ours are fixed by
    default_rng(1337).
  Reset: qpos, qvel += U(-5e-3, 5e-3).
  Deviations: (1) the observation keeps rootx (the authors' drops it) so that the reward is a function of
    (obs, next_obs); (2) the hopper's |qvel| < 100 test cannot be made on the observation's velocities,
    which are clipped to [-10, 10], and is left out (the height, angle and |qpos| tests are kept); (3) the authors
    ran MuJoCo 1.31 (mujoco-py 0.5), whose solver, contact model and handling of edited model arrays differ
    from MuJoCo 3.3: rand_param_envs writes the arrays and calls nothing after; we also refresh the constants that
    MuJoCo derives from them (mj_setConst: body_subtreemass, dof_invweight0, ...), so trajectories and returns
    are not comparable to the authors' to the digit.
"""

from __future__ import annotations

import os

import mujoco
import numpy as np

from gymnasium.envs.mujoco.hopper_v5 import DEFAULT_CAMERA_CONFIG as HOPPER_CAMERA
from gymnasium.envs.mujoco.walker2d_v5 import DEFAULT_CAMERA_CONFIG as WALKER_CAMERA

from envs.locomotion import ASSETS, LocomotionEnv, ModelArrayTasks

HOPPER_GEOMS = ("torso_geom", "thigh_geom", "leg_geom", "foot_geom")
SIZE_FIELDS = ("geom_size", "geom_rbound", "geom_aabb", "bvh_aabb",
               "body_mass", "body_inertia", "body_ipos", "body_iquat")
_SIZED_MODELS: dict[float, mujoco.MjModel] = {}


def sized_hopper(radius: float) -> mujoco.MjModel:
    """hopper.xml with the body capsule radii scaled by radius / 0.05, compiled (cached per radius)."""
    if radius not in _SIZED_MODELS:
        spec = mujoco.MjSpec.from_file(os.path.join(ASSETS, "hopper.xml"))
        if radius != 0.05:  # the XML's own size compiles unchanged (x / 0.05 * 0.05 can round)
            for name in HOPPER_GEOMS:
                g = spec.geom(name)
                g.size[0] = g.size[0] * radius / 0.05
        _SIZED_MODELS[radius] = spec.compile()
    return _SIZED_MODELS[radius]


class HopperSize(ModelArrayTasks, LocomotionEnv):
    name = "hopper-size"
    source = "MCAT (Guo et al. 2022), guoyijie/MCAT hopper_env.py size variants"
    xml = "hopper.xml"
    frame_skip = 4
    obs_dim = 12
    default_horizon = 1000
    reset_noise = 5e-3
    velocity_noise_uniform = True
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 125}
    camera_config = HOPPER_CAMERA
    fields = SIZE_FIELDS

    def _task_lists(self):
        return np.array([0.02, 0.03, 0.04, 0.05, 0.06]), np.array([0.01, 0.07])

    def _set_physics(self, value):
        sized = sized_hopper(value)
        for f in SIZE_FIELDS:
            getattr(self.model, f)[:] = getattr(sized, f)

    def _get_obs(self):
        return np.concatenate((self.data.qpos, np.clip(self.data.qvel, -10.0, 10.0))).astype(np.float32)

    def _reward(self, obs, a, next_obs, task):
        r = self.velocity(obs, next_obs, 0) + 1.0 - 1e-3 * self.ctrl_sq(a) + np.zeros(task.shape[:-1])
        return r, self.no_termination(r)


class WalkerLinear(LocomotionEnv):
    name = "walker-linear"
    source = "HIPI (Eysenbach et al. 2020), google-research hipi walker linear rewards"
    varies = "reward"
    xml = "walker2d_v5.xml"
    frame_skip = 4
    obs_dim = 22
    default_horizon = 100
    reset_noise = 5e-3
    velocity_noise_uniform = True
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 125}
    camera_config = WALKER_CAMERA
    n_train, n_test = 100, 25  # HIPI samples w continuously; fixed draws of its prior

    def __init__(self, **kw):
        super().__init__(**kw)
        self._bodies = [self.model.body(n).id for n in ("torso", "foot_left", "foot")]

    def _task_lists(self):
        w = self.sample_tasks(self.n_train + self.n_test, np.random.default_rng(1337))
        return w[: self.n_train], w[self.n_train:]

    def sample_tasks(self, n, rng):
        return rng.uniform(np.r_[-np.ones(6), -1.0], np.r_[np.ones(6), 0.0], (n, 7))

    def _get_obs(self):
        mujoco.mj_kinematics(self.model, self.data)  # body positions of the state after the step
        torso, left, right = (self.data.xpos[b][[0, 2]] for b in self._bodies)
        return np.concatenate((self.data.qpos, self.data.qvel, left - torso, right - torso)).astype(np.float32)

    def reward_features(self, obs, action, next_obs):
        a = self.clip_action(action, batched=True)
        next_obs = np.asarray(next_obs)
        f = next_obs[..., [1, 18, 19, 20, 21]].astype(np.float64) + np.array([-0.5, 0.0, 0.7, 0.0, 0.7])
        v = self.velocity(np.asarray(obs), next_obs, 0)
        ctrl = self.ctrl_sq(a)
        shape = np.broadcast_shapes(f.shape[:-1], v.shape, ctrl.shape)
        f = np.broadcast_to(f, shape + (5,))
        v, ctrl = np.broadcast_to(v, shape), np.broadcast_to(ctrl, shape)
        return np.concatenate((f[..., :1], v[..., None], f[..., 1:], ctrl[..., None]), axis=-1)

    def _reward(self, obs, a, next_obs, task):
        r = (self.reward_features(obs, a, next_obs) * task).sum(-1)
        return r, self.no_termination(r)


# ------------------------------------------------------------------------------------ PEARL rand-params
class RandParams(LocomotionEnv):
    """rand_param_envs' RandomEnv: mass, inertia, damping and friction each scaled entry by entry by the task."""

    varies = "dynamics"
    timestep = 0.004   # rand_param_envs' hopper.xml / walker2d.xml; gymnasium's copies say 0.002
    default_horizon = 200
    reset_noise = 5e-3
    velocity_noise_uniform = True
    FIELDS = (("body_mass", 1.5), ("body_inertia", 1.5), ("dof_damping", 1.3), ("geom_friction", 1.5))
    LOG_SCALE_LIMIT = 3.0
    N_TASKS, N_TRAIN = 50, 40

    def _shapes(self):
        return [getattr(self.model, f).shape for f, _ in self.FIELDS]

    def _task_lists(self):
        tasks = self.sample_tasks(self.N_TASKS, np.random.default_rng(1337))
        return tasks[: self.N_TRAIN], tasks[self.N_TRAIN:]

    def sample_tasks(self, n, rng):
        bases = np.concatenate([np.full(int(np.prod(shape)), b) for shape, (_, b) in zip(self._shapes(), self.FIELDS)])
        u = rng.uniform(-self.LOG_SCALE_LIMIT, self.LOG_SCALE_LIMIT, (n, len(bases)))
        return bases ** u

    def _apply_task(self, task):
        if not hasattr(self, "_defaults"):
            self._defaults = {f: getattr(self.model, f).copy() for f, _ in self.FIELDS}
        i = 0
        for f, _ in self.FIELDS:
            default = self._defaults[f]
            getattr(self.model, f)[:] = default * task[i: i + default.size].reshape(default.shape)
            i += default.size
        mujoco.mj_setConst(self.model, self.data)

    def _get_obs(self):
        return np.concatenate((self.data.qpos, np.clip(self.data.qvel, -10.0, 10.0))).astype(np.float32)

    def _reward(self, obs, a, next_obs, task):
        r = self.velocity(obs, next_obs, 0) + 1.0 - 1e-3 * self.ctrl_sq(a) + np.zeros(task.shape[:-1])
        return r, self.terminated(next_obs, r)


class HopperRandParams(RandParams):
    name = "hopper-rand-params"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster + dennisl88/rand_param_envs hopper_rand_params.py"
    xml = "hopper.xml"
    frame_skip = 4
    obs_dim = 12
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 62}  # dt 0.016 s
    camera_config = HOPPER_CAMERA

    def terminated(self, next_obs, reward):
        rest = next_obs[..., 2:6]  # qpos[2:]: torso angle and the three joint angles
        ok = np.isfinite(next_obs).all(-1) & (np.abs(rest) < 100).all(-1)
        ok &= (next_obs[..., 1] > 0.7) & (np.abs(next_obs[..., 2]) < 0.2)
        return np.broadcast_to(~ok, np.shape(reward)).copy()


class WalkerRandParams(RandParams):
    name = "walker-rand-params"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster + dennisl88/rand_param_envs walker2d_rand_params.py"
    xml = "walker2d.xml"  # feet friction 0.9 / 1.9 like the authors' model (walker2d_v5.xml has 1.9 / 1.9)
    frame_skip = 5
    obs_dim = 18
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 50}  # dt 0.02 s
    camera_config = WALKER_CAMERA

    def terminated(self, next_obs, reward):
        height, angle = next_obs[..., 1], next_obs[..., 2]
        ok = (height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0)
        return np.broadcast_to(~ok, np.shape(reward)).copy()
