"""Humanoid direction families (gymnasium's humanoid.xml, the gym Humanoid model: 17 motors, gear 100, ctrlrange
[-0.4, 0.4], RK4, timestep 0.003 s, frame_skip 5, dt 0.015 s).

Observation (378-D float32, both families):
    obs[0:2]     = centre of mass (x, y) of the whole body (mass-weighted body positions, data.xipos)
    obs[2:24]    = qpos[2:]   (torso height, torso quaternion (4), 17 joint angles); obs[2] is the height
    obs[24:47]   = qvel       (23)
    obs[47:187]  = cinert     (14 bodies x 10, body inertias in the centre-of-mass frame)
    obs[187:271] = cvel       (14 x 6, body velocities)
    obs[271:294] = qfrc_actuator (23)
    obs[294:378] = cfrc_ext   (14 x 6, external contact wrenches)
obs[2:378] is the authors' 376-D gym Humanoid observation (world body rows included); the centre of mass is
added in front so that the reward is a function of (obs, action, next_obs). Contact forces are computed (MuJoCo 3
needs mj_rnePostConstraint after stepping; the authors pinned mujoco-py 1.50 for this env (oyster commit
4de12a9: "humanoid will break if using a higher version of mujoco-py than 1.5"), whose MuJoCo filled cfrc_ext,
so their observation and impact cost had forces too). As in gym, the centre of mass, cinert, cvel and
cfrc_ext come from the last sub-step's forward pass.

The policy acts in [-1, 1]^17; ctrl = 0.4 a (the authors' NormalizedBoxEnv rescaled to the ctrlrange).
Reward pieces (v = (next_obs[0:2] - obs[0:2]) / dt, the centre-of-mass velocity; c = next_obs[294:378]):
    ctrl cost    0.1 |ctrl|^2 = 0.1 |0.4 a|^2
    impact cost  min(5e-7 |c|^2, 10)
    alive        5
    terminated   when the torso height next_obs[2] leaves [1, 2]

humanoid-dir (PEARL, Rakelly et al. 2019; katerakelly/oyster rlkit/envs/humanoid_dir.py, configs/humanoid-dir.json):
    r = 0.25 (dx, dy) . (cos t, sin t) / 0.003 - ctrl cost - impact cost + 5
    i.e. 1.25 v . (cos t, sin t): the authors divide the displacement over a 0.015 s step by the 0.003 s
    physics time step, as gym's Humanoid did. Task = (t,), the direction angle in radians; 130 angles
    U[0, 2 pi), the first 100 train and the last 30 test (n_tasks 130, 100 / 30). The authors drew them from
    numpy's unseeded global RNG (every run had other directions); ours are RandomState(1337)'s. Horizon 200.
    Reset: qpos, qvel += U(-0.01, 0.01).

humanoid-dir-sparse (Generalized Hindsight, Li et al. 2020, Sec. 5 and Fig. 2: "Ant and Humanoid require moving in
a target direction as fast as possible"). The released code has no humanoid, so the reward is GH's ant direction
reward (alexlioralexli/generalized-hindsight ant_direction_relabeler.py AntDirectionRelabelerNewSparse, our
ant-dir-sparse) on the humanoid with gym Humanoid's weights:
    r = 1.25 |v| 1[angle(v, (cos t, sin t)) < 15 deg] - ctrl cost - impact cost + 5
Task (t,) ~ U[-pi, pi] (GH's latent prior); 100 prior draws (seed 1337) as train tasks, GH's 25 evaluation
directions linspace(-pi, pi, 25, endpoint=False) + pi / 25 as test tasks. Horizon 1000 (GH's locomotion
episodes). GH stored per-step reward features (velocity, control and contact terms) to score any latent; here
they are in the observation, so `evaluate(obs, action, next_obs, tasks)` scores every latent for AIR. The reward
is not linear in the task, so the family has no `reward_features`.
"""

from __future__ import annotations

import numpy as np

from gymnasium.envs.mujoco.humanoid_v5 import DEFAULT_CAMERA_CONFIG

from envs.ant import GHDirectionTasks
from envs.locomotion import LocomotionEnv

CTRL_RANGE = 0.4
FORCES = slice(294, 378)


class HumanoidEnv(LocomotionEnv):
    xml = "humanoid.xml"
    frame_skip = 5
    obs_dim = 378
    reset_noise = 0.01
    velocity_noise_uniform = True
    needs_contact_forces = True
    varies = "reward"
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 67}  # dt 0.015 s
    camera_config = DEFAULT_CAMERA_CONFIG

    def __init__(self, **kw):
        super().__init__(**kw)
        self._action_mask = np.full(self.model.nu, CTRL_RANGE)  # ctrl = 0.4 a
        self._mass = self.model.body_mass[:, None].copy()
        self._total_mass = self._mass.sum()

    def _get_obs(self):
        d = self.data
        com = (self._mass * d.xipos).sum(0)[:2] / self._total_mass
        return np.concatenate((com, d.qpos[2:], d.qvel, d.cinert.ravel(), d.cvel.ravel(), d.qfrc_actuator,
                               d.cfrc_ext.ravel())).astype(np.float32)

    @staticmethod
    def costs(a, next_obs):
        """ctrl cost + impact cost, float64."""
        ctrl = CTRL_RANGE * a
        c = next_obs[..., FORCES].astype(np.float64)
        return 0.1 * (ctrl * ctrl).sum(-1) + np.minimum(5e-7 * (c * c).sum(-1), 10.0)

    @staticmethod
    def terminated(next_obs, reward):
        z = next_obs[..., 2]
        return np.broadcast_to((z < 1.0) | (z > 2.0), np.shape(reward)).copy()

    def _task_lists(self):
        raise NotImplementedError


class HumanoidDir(HumanoidEnv):
    name = "humanoid-dir"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster humanoid_dir.py"
    default_horizon = 200

    def _task_lists(self):
        t = np.random.RandomState(1337).uniform(0.0, 2 * np.pi, 130)
        return t[:100], t[100:]

    def sample_tasks(self, n, rng):
        return rng.uniform(0.0, 2 * np.pi, (n, 1))

    def _reward(self, obs, a, next_obs, task):
        t = task[..., 0]
        dx = np.subtract(next_obs[..., 0], obs[..., 0], dtype=np.float64)
        dy = np.subtract(next_obs[..., 1], obs[..., 1], dtype=np.float64)
        lin_vel = 0.25 * (dx * np.cos(t) + dy * np.sin(t)) / self.model.opt.timestep
        r = lin_vel - self.costs(a, next_obs) + 5.0
        return r, self.terminated(next_obs, r)


class HumanoidDirSparse(GHDirectionTasks, HumanoidEnv):
    name = "humanoid-dir-sparse"
    source = ("Generalized Hindsight (Li et al. 2020) humanoid direction: alexlioralexli/generalized-hindsight "
              "AntDirectionRelabelerNewSparse's reward on gym's humanoid")
    default_horizon = 1000

    def _reward(self, obs, a, next_obs, task):
        r = 1.25 * self.speed_in_cone(obs, next_obs, task) - self.costs(a, next_obs) + 5.0
        return r, self.terminated(next_obs, r)
