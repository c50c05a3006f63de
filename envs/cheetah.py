"""HalfCheetah task families (gymnasium HalfCheetah-v5 model: half_cheetah.xml, frame_skip 5, dt 0.05 s).

Observation (18-D float32, every cheetah family):
    obs[0:9]  = qpos   (rootx = torso x, rootz, rooty, bthigh, bshin, bfoot, fthigh, fshin, ffoot)
    obs[9:18] = qvel   (same order)
The authors' observation was qpos[1:] + qvel (+ torso xyz in PEARL's 20-D version, whose y is always 0 and whose
x, z repeat qpos up to one substep of staleness); we keep the torso x as obs[0] instead, so every velocity reward
is a function of (obs, next_obs): v_x = (next_obs[0] - obs[0]) / dt. Actions: 6 torques in [-1, 1] (gears
120/90/60/120/60/30). Reset: qpos += U(-0.1, 0.1), qvel += 0.1 N(0, 1) (as v5 and the authors' gym envs).

Families (reward per step; a = clipped action; no termination in any of them):
(H = horizon; 200 unless given)
    cheetah-vel               PEARL/HFR: -|v_x - v*| - 0.05|a|^2, v* ~ U[0, 3], seed 1337, 100 train / 30 test
    cheetah-dir               PEARL: d v_x - 0.05|a|^2, d in {-1, +1} (2 train = 2 test)
    cheetah-vel-ood-medium    MIER: as cheetah-vel, train v* ~ U[0, 2.5] (100), test U[2.5, 3] (30), seed 1337
    cheetah-vel-ood-hard      MIER: train U[0, 1.5] (100), test U[2.5, 3] (30), seed 1337
    cheetah-vel-sparse        HFR: (2 - |v_x - v*| if |v_x - v*| <= 0.3 else 0) - 0.05|a|^2, v* ~ U[0, 3], seed 1;
                              info["success"]: this step's velocity is inside the 0.3 band
    cheetah-highdim           HFR: w . (s' - mean) / std - 0.05|a|^2, w ~ U[-1, 1]^18 (seed 1), s' = next_obs
                              (qpos incl. x, qvel); mean/std: see below
    cheetah-multi-objective   GH: w . [v_x, -0.1|a|^2, height qpos[1], angular velocity qvel[2]] (of next_obs),
                              w a unit 4-vector with w_1, w_2 >= 0 (|N(0, I)| on those), H 1000
    cheetah-negated-joints    MIER: v_x - 0.1|a|^2, actions multiplied by a +-1 mask (the task): train = the
                              10 ways to negate 3 of the first 5 joints; test = 6th negated plus 2 of the first 5
    cheetah-armature          MCAT: v_x - 0.1|a|^2, armature of the 6 joints = task (default 0.1), H 1000
    cheetah-mass              MCAT: v_x - 0.1|a|^2, every body mass x task, H 1000

reward_features (cheetah-multi-objective): reward == (reward_features(obs, a, next_obs) * w).sum(-1) bit for bit
(the computation `step` uses); `reward_features(...) @ w` agrees to rounding only (BLAS sums in another order).
cheetah-highdim has no reward_features: its control cost is not linear in w.

cheetah-highdim normalization: HFR loads mean/std from a pickle ('HCstate-state.pkl') that was never
published. We ship our own, envs/data/cheetah_highdim_stats.json: mean and std of next_obs over 100 episodes of
200 steps of uniform random actions in [-1, 1] from `reset(seed=0)` (then unseeded resets of that RNG; actions
from numpy default_rng(0)), 20,000 states. Regenerate with `python -m envs.cheetah --make-stats`.
Because the x position of a random policy stays near the origin, its std is small and the normalized x of a
running cheetah is large: weights on x dominate those tasks, as they would with any stats taken near the start.

MCAT parameter grids: the appendix listing the train / unseen test values is not in our copy of the paper; the
values below come from the parameters the authors' code ships (armature XMLs 0.05..0.8) and a symmetric grid of
mass scales around the default, with the extremes held out as unseen test tasks.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from gymnasium.envs.mujoco.half_cheetah_v5 import DEFAULT_CAMERA_CONFIG

from envs.locomotion import ActionMaskTasks, LocomotionEnv, ModelArrayTasks, choose_from, negation_masks

STATS_FILE = os.path.join(os.path.dirname(__file__), "data", "cheetah_highdim_stats.json")
CTRL_PEARL = 0.05   # PEARL / HFR / MIER cheetah control weight (0.5 * 1e-1)
CTRL_GYM = 0.1      # HalfCheetah-v5 / MCAT / MIER negated-joints control weight


class CheetahEnv(LocomotionEnv):
    xml = "half_cheetah.xml"
    frame_skip = 5
    obs_dim = 18
    default_horizon = 200
    reset_noise = 0.1
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}
    camera_config = DEFAULT_CAMERA_CONFIG

    def _get_obs(self):
        return np.concatenate((self.data.qpos, self.data.qvel)).astype(np.float32)

    def forward_velocity(self, obs, next_obs):
        return self.velocity(obs, next_obs, 0)


# ------------------------------------------------------------------------------------ velocity / direction
class CheetahVel(CheetahEnv):
    """PEARL / HFR target velocity: -|v_x - v*| - 0.05|a|^2; task = (v*,)."""

    name = "cheetah-vel"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster half_cheetah_vel.py; HFR (Wan et al. 2022)"
    varies = "reward"
    low, high, seed, n_train, n_test = 0.0, 3.0, 1337, 100, 30

    def _task_lists(self):
        v = np.random.RandomState(self.seed).uniform(self.low, self.high, self.n_train + self.n_test)
        return v[: self.n_train], v[self.n_train:]

    def sample_tasks(self, n, rng):
        return rng.uniform(self.low, self.high, (n, 1))

    def _reward(self, obs, a, next_obs, task):
        r = -np.abs(self.forward_velocity(obs, next_obs) - task[..., 0]) - CTRL_PEARL * self.ctrl_sq(a)
        return r, self.no_termination(r)


class CheetahVelOODMedium(CheetahVel):
    """MIER out-of-distribution velocities: train v* ~ U[0, 2.5], test v* ~ U[2.5, 3] (one RNG, seed 1337)."""

    name = "cheetah-vel-ood-medium"
    source = "MIER (Mendonca et al. 2020), russellmendonca/mier_public half_cheetah_vel.py medium_OOD"
    high = 2.5
    test_low, test_high = 2.5, 3.0

    def _task_lists(self):
        rs = np.random.RandomState(self.seed)
        train = rs.uniform(self.low, self.high, self.n_train)
        return train, rs.uniform(self.test_low, self.test_high, self.n_test)


class CheetahVelOODHard(CheetahVelOODMedium):
    name = "cheetah-vel-ood-hard"
    source = "MIER (Mendonca et al. 2020), russellmendonca/mier_public half_cheetah_vel.py hard_OOD"
    high = 1.5


class CheetahVelSparse(CheetahVel):
    """HFR sparse velocity: 2 - |v_x - v*| inside a 0.3 m/s band around v*, else 0; minus 0.05|a|^2."""

    name = "cheetah-vel-sparse"
    source = "HFR (Wan et al. 2022), michaelwan11/hfr half_cheetah_vel_sparse"
    seed = 1
    radius = 0.3
    has_success = True

    def _reward(self, obs, a, next_obs, task):
        err = np.abs(self.forward_velocity(obs, next_obs) - task[..., 0])
        r = np.where(err <= self.radius, 2.0 - err, 0.0) - CTRL_PEARL * self.ctrl_sq(a)
        return r, self.no_termination(r)

    def step(self, action):
        obs = self._obs
        next_obs, reward, terminated, truncated, info = super().step(action)
        info["success"] = bool(abs(self.forward_velocity(obs, next_obs) - self._task[0]) <= self.radius)
        return next_obs, reward, terminated, truncated, info


class CheetahDir(CheetahEnv):
    """PEARL forward / backward: d v_x - 0.05|a|^2, task = (d,), d in {-1, +1}."""

    name = "cheetah-dir"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster half_cheetah_dir.py"
    varies = "reward"

    def _task_lists(self):
        d = np.array([-1.0, 1.0])
        return d, d.copy()  # PEARL's 2 tasks serve as both train and test tasks

    def sample_tasks(self, n, rng):
        return choose_from(self.train_tasks, n, rng)

    def _reward(self, obs, a, next_obs, task):
        r = task[..., 0] * self.forward_velocity(obs, next_obs) - CTRL_PEARL * self.ctrl_sq(a)
        return r, self.no_termination(r)


# ------------------------------------------------------------------------------------ linear-in-task rewards
class CheetahMultiObjective(CheetahEnv):
    """GH multi-objective: r = w . [v_x, -0.1|a|^2, height, angular velocity], w on the unit 4-sphere."""

    name = "cheetah-multi-objective"
    source = ("Generalized Hindsight (Li et al. 2020), alexlioralexli/generalized-hindsight "
              "HalfCheetahRelabelerMoreFeatures")
    varies = "reward"
    default_horizon = 1000
    n_train, n_test = 100, 25  # GH samples latents from the prior throughout; these are fixed draws of it

    def _task_lists(self):
        w = self.sample_tasks(self.n_train + self.n_test, np.random.default_rng(1337))
        return w[: self.n_train], w[self.n_train:]

    def sample_tasks(self, n, rng):
        w = rng.standard_normal((n, 4))
        w[:, 1:3] = np.abs(w[:, 1:3])  # control and height weights are non-negative
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    def reward_features(self, obs, action, next_obs):
        a = self.clip_action(action, batched=True)
        next_obs = np.asarray(next_obs)
        v = self.forward_velocity(np.asarray(obs), next_obs)
        ctrl = -CTRL_GYM * self.ctrl_sq(a)
        v, ctrl, h, w = np.broadcast_arrays(v, ctrl, next_obs[..., 1], next_obs[..., 11])
        return np.stack((v, ctrl, h.astype(np.float64), w.astype(np.float64)), axis=-1)

    def _reward(self, obs, a, next_obs, task):
        # (features * w).sum(-1): a contiguous last-axis reduction, bit-identical for every batch shape.
        r = (self.reward_features(obs, a, next_obs) * task).sum(-1)
        return r, self.no_termination(r)


class CheetahHighdim(CheetahEnv):
    """HFR high-dimensional task: r = w . (s' - mean) / std - 0.05|a|^2 with w ~ U[-1, 1]^18."""

    name = "cheetah-highdim"
    source = "HFR (Wan et al. 2022), michaelwan11/hfr half_cheetah_highdim (normalization stats: ours)"
    varies = "reward"
    n_train, n_test = 100, 30

    def __init__(self, **kw):
        super().__init__(**kw)
        with open(STATS_FILE) as f:
            stats = json.load(f)
        self.state_mean = np.array(stats["mean"], dtype=np.float64)
        self.state_std = np.array(stats["std"], dtype=np.float64)

    def _task_lists(self):
        w = np.random.RandomState(1).uniform(-1.0, 1.0, (self.n_train + self.n_test, 18))
        return w[: self.n_train], w[self.n_train:]

    def sample_tasks(self, n, rng):
        return rng.uniform(-1.0, 1.0, (n, 18))

    def _reward(self, obs, a, next_obs, task):
        z = (next_obs.astype(np.float64) - self.state_mean) / self.state_std
        r = (z * task).sum(-1) - CTRL_PEARL * self.ctrl_sq(a)
        return r, self.no_termination(r)


# ------------------------------------------------------------------------------------ dynamics families
class CheetahForward(CheetahEnv):
    """Forward running, v_x - 0.1|a|^2 (HalfCheetah-v5's reward), for the families whose dynamics vary."""

    def _reward(self, obs, a, next_obs, task):
        r = self.forward_velocity(obs, next_obs) - CTRL_GYM * self.ctrl_sq(a)
        r = r + np.zeros(task.shape[:-1])  # the task changes physics, not reward: broadcast over tasks
        return r, self.no_termination(r)


class CheetahNegatedJoints(ActionMaskTasks, CheetahForward):
    """MIER negated joints: the task is the +-1 mask multiplying the 6 actions before they reach the motors."""

    name = "cheetah-negated-joints"
    source = "MIER (Mendonca et al. 2020), russellmendonca/mier_public half_cheetah_negated_joints.py"

    def _task_lists(self):
        train = negation_masks(6, 5, 3)                       # C(5,3) = 10
        test = negation_masks(6, 5, 2, extra_negated=True)    # 6th negated + C(5,2) = 10
        return train, test


class CheetahArmature(ModelArrayTasks, CheetahForward):
    """MCAT armature: joint armature of the 6 actuated joints = task (the XML default is 0.1)."""

    name = "cheetah-armature"
    source = "MCAT (Guo et al. 2022), guoyijie/MCAT halfcheetah_env.py arma variants"
    default_horizon = 1000
    fields = ("dof_armature",)

    def _task_lists(self):
        return np.array([0.2, 0.3, 0.4, 0.5, 0.6]), np.array([0.05, 0.1, 0.65, 0.7, 0.75, 0.8])

    def _set_physics(self, value):
        self.model.dof_armature[3:] = value  # dofs 0-2 are the free root slides / hinge (armature 0)


class CheetahMass(ModelArrayTasks, CheetahForward):
    """MCAT mass: every body mass scaled by the task (inertia kept, as in the authors' env)."""

    name = "cheetah-mass"
    source = "MCAT (Guo et al. 2022), guoyijie/MCAT halfcheetah_env.py mass variants"
    default_horizon = 1000
    fields = ("body_mass",)

    def _task_lists(self):
        return np.array([0.5, 0.75, 1.0, 1.25, 1.5]), np.array([0.25, 2.0])

    def _set_physics(self, value):
        self.model.body_mass[:] = self._defaults["body_mass"] * value


# ------------------------------------------------------------------------------------ normalization stats
def make_highdim_stats(n_episodes: int = 100, episode_len: int = 200, path: str = STATS_FILE) -> dict:
    """Mean / std of next_obs under uniform random actions (the documented procedure above)."""
    env = CheetahVel(seed=0)
    env.set_task(env.train_tasks[0])
    rng = np.random.default_rng(0)
    states = []
    env.reset(seed=0)
    for _ in range(n_episodes):
        for _ in range(episode_len):
            states.append(env.step(rng.uniform(-1, 1, 6).astype(np.float32))[0])
        env.reset()
    s = np.array(states, dtype=np.float64)
    stats = {
        "procedure": f"next_obs (qpos incl. x, qvel) of {n_episodes} episodes x {episode_len} steps, uniform "
                     "random "
                     "actions from numpy default_rng(0), first reset seed 0; python -m envs.cheetah --make-stats",
        "n_states": len(s),
        "mean": s.mean(0).tolist(),
        "std": s.std(0).tolist(),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(stats, f, indent=1)
    return stats


if __name__ == "__main__":
    if "--make-stats" in sys.argv:
        out = make_highdim_stats()
        print(f"wrote {STATS_FILE} ({out['n_states']} states)")
    else:
        print("usage: python -m envs.cheetah --make-stats")
