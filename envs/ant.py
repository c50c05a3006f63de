"""Ant task families (gymnasium Ant-v5 model: ant.xml, frame_skip 5, dt 0.05 s, 8 motors with gear 150).

Observation (107-D float32, every ant family):
    obs[0:15]   = qpos  (torso x, y, z, torso quaternion (4), 8 joint angles)
    obs[15:29]  = qvel  (torso linear (3) and angular (3) velocity, 8 joint velocities)
    obs[29:107] = clip(cfrc_ext[1:], -1, 1) flattened: external contact wrench of the 13 non-world bodies
The torso x, y are kept (Ant-v5 drops them) so that velocities (finite differences over one control step, as in
the authors' envs), goal distances and the height test are functions of (obs, next_obs).
Reset: qpos += U(-0.1, 0.1), qvel += 0.1 N(0, 1) (as Ant-v5 and the authors' gym Ant).

Contact forces. Where a cost or an observation uses them we compute them correctly: after stepping, MuJoCo 3
needs mj_rnePostConstraint for cfrc_ext (gymnasium v5 does the same). The authors ran MuJoCo 2.0 / mujoco-py 2.x,
where cfrc_ext stayed all zero (openai/gym #1541), so their contact cost was 0 and the contact part of their
observations was 0. With correct forces our contact cost, 5e-4 |clip(cfrc_ext, -1, 1)|^2, lies in [-0.039, 0] per
step (at most 7.8 per 200-step episode below the authors' numbers; in practice a fraction of that). Families
without contact cost (MCAT) still observe the forces, for one ant layout throughout.

Families (v = (next_obs[0:2] - obs[0:2]) / dt; z = next_obs[2]; c = |next_obs[29:]|^2; a = clipped action;
"healthy" = 0.2 <= z <= 1.0; families marked T terminate when unhealthy, as the authors' envs did):
    ant-dir             PEARL: v . (cos t, sin t) - 0.5|a|^2 - 5e-4 c + 1, t in {0, pi} (2 = 2 tasks), T, H 200
    ant-dir-ood         MIER: same reward; train t ~ U[0, 1.5 pi] (100, seed 42), test linspace(1.5pi, 2pi, 10), T
    ant-dir-sparse      GH: |v| 1[angle(v, (cos t, sin t)) < 15 deg] - 0.5|a|^2 - 5e-4 c + 1, t ~ U[-pi, pi],
                        test = GH's 25 evaluation directions, T, H 1000
    ant-goal            PEARL: -|xy' - g|_1 - 0.1|a|^2 - 5e-4 c, g uniform in the disk of radius 3 (seed 1337,
                        150 / 30), no termination, H 200
    ant-goal-sparse     HFR: g on the upper semicircle of radius 2 (130 angles linspace(0, pi), shuffled with
                        seed 1; 100 / 30); G = 4 - |xy' - g|_1 if |xy' - g|_2 <= 0.8 else 4 - |g|_1;
                        r = G - 0.005|a|^2 - 5e-4 c + 0.05, T, success = within 0.8
    ant-vel             HFR: 1 - |v_x - v*| - 0.005|a|^2 - 5e-4 c + 0.05, v* ~ U[0, 3] (seed 3, 150 / 30), T
    ant-negated-joints  MIER: v_x - 0.5|a|^2 - 5e-4 c + 1, actions times a +-1 mask (the task); train = the 35
                        ways to negate 4 of the first 7 actuators, test = 8th negated plus the first 15 of the
                        C(7,3) ways to negate 3 of the first 7, T. (The paper's 35 / 15 split; the released code
                        asserts 50 tasks while its config asks for 70, so it fails as released.)
    ant-damping         MCAT: v_x + 0.05 (no control or contact cost), every joint damping x task, no
                        termination, H 1000
    ant-cripple         MCAT: v_x + 0.05, the task is a 0/1 mask zeroing the two actuators of one leg (legs 0-2
                        train, leg 3 test, the authors' source/target legs); as in the released code only the
                        action mask applies (the leg's geometry is unchanged), no termination, H 1000

MCAT parameter grids: the appendix with the train / unseen test values is not in our copy of the paper; the
damping scales below are a symmetric grid around the default with the extremes held out.
"""

from __future__ import annotations

import numpy as np

from gymnasium.envs.mujoco.ant_v5 import DEFAULT_CAMERA_CONFIG

import envs
from envs.locomotion import ActionMaskTasks, LocomotionEnv, ModelArrayTasks, choose_from, negation_masks

CONTACT = 5e-4  # 0.5 * 1e-3, the gym Ant contact-cost weight
HEALTHY_Z = (0.2, 1.0)


class AntEnv(LocomotionEnv):
    xml = "ant.xml"
    frame_skip = 5
    obs_dim = 107
    default_horizon = 200
    reset_noise = 0.1
    needs_contact_forces = True
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}
    camera_config = DEFAULT_CAMERA_CONFIG
    terminate_when_unhealthy = True

    def _get_obs(self):
        forces = np.clip(self.data.cfrc_ext[1:].ravel(), -1.0, 1.0)
        return np.concatenate((self.data.qpos, self.data.qvel, forces)).astype(np.float32)

    @staticmethod
    def contact_sq(next_obs):
        c = next_obs[..., 29:].astype(np.float64)
        return (c * c).sum(-1)

    def terminated(self, next_obs, reward):
        if not self.terminate_when_unhealthy:
            return self.no_termination(reward)
        z = next_obs[..., 2]
        return ~((z >= HEALTHY_Z[0]) & (z <= HEALTHY_Z[1]))


# ------------------------------------------------------------------------------------ direction families
class AntDir(AntEnv):
    """PEARL running direction: v . (cos t, sin t) - 0.5|a|^2 - 5e-4 c + 1; task = (t,) in radians."""

    name = "ant-dir"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster ant_dir.py (forward_backward, 2 tasks)"
    varies = "reward"

    def _task_lists(self):
        t = np.array([0.0, np.pi])
        return t, t.copy()  # PEARL's ant-dir config: the same 2 directions for training and testing

    def sample_tasks(self, n, rng):
        return choose_from(self.train_tasks, n, rng)

    def _reward(self, obs, a, next_obs, task):
        t = task[..., 0]
        v_dir = self.velocity(obs, next_obs, 0) * np.cos(t) + self.velocity(obs, next_obs, 1) * np.sin(t)
        r = v_dir - 0.5 * self.ctrl_sq(a) - CONTACT * self.contact_sq(next_obs) + 1.0
        return r, self.terminated(next_obs, r)


class AntDirOOD(AntDir):
    """MIER out-of-distribution directions: train on 3/4 of the circle, test on the last quadrant."""

    name = "ant-dir-ood"
    source = "MIER (Mendonca et al. 2020), russellmendonca/mier_public ant_dir.py task_mode 'ood'"

    def _task_lists(self):
        train = np.random.RandomState(42).uniform(0.0, 1.5 * np.pi, 100)
        return train, np.linspace(1.5 * np.pi, 2 * np.pi, 10)

    def sample_tasks(self, n, rng):
        return rng.uniform(0.0, 1.5 * np.pi, (n, 1))


class GHDirectionTasks:
    """Generalized Hindsight's direction tasks (ant-dir-sparse, humanoid-dir-sparse): a direction t ~ U(-pi, pi),
    speed paid only while moving within 15 degrees of it; 100 train directions from the prior, GH's 25 evenly
    spaced evaluation directions."""

    cos_cone = np.cos(np.deg2rad(15.0))

    def _task_lists(self):
        train = self.sample_tasks(100, np.random.default_rng(1337))  # GH samples t from the prior throughout
        test = np.linspace(-np.pi, np.pi, 25, endpoint=False) + np.pi / 25  # GH's evaluation directions
        return train, test

    def sample_tasks(self, n, rng):
        return rng.uniform(-np.pi, np.pi, (n, 1))

    def speed_in_cone(self, obs, next_obs, task):
        """|v| in the xy plane where cos(angle(v, direction)) > cos 15deg, else 0 (written without dividing by |v|,
        which is 0 when standing still)."""
        vx, vy = self.velocity(obs, next_obs, 0), self.velocity(obs, next_obs, 1)
        t = task[..., 0]
        speed = np.sqrt(vx * vx + vy * vy)
        return np.where(vx * np.cos(t) + vy * np.sin(t) > self.cos_cone * speed, speed, 0.0)


class AntDirSparse(GHDirectionTasks, AntDir):
    """GH sparse direction: speed paid only while moving within 15 degrees of the task direction."""

    name = "ant-dir-sparse"
    source = ("Generalized Hindsight (Li et al. 2020), alexlioralexli/generalized-hindsight "
              "AntDirectionRelabelerNewSparse")
    default_horizon = 1000

    def _reward(self, obs, a, next_obs, task):
        r = (self.speed_in_cone(obs, next_obs, task) - 0.5 * self.ctrl_sq(a) - CONTACT * self.contact_sq(next_obs)
             + 1.0)
        return r, self.terminated(next_obs, r)


# ------------------------------------------------------------------------------------ goal families
class AntGoal(AntEnv):
    """PEARL goal reaching: -|xy' - g|_1 - 0.1|a|^2 - 5e-4 c; task = goal (x, y)."""

    name = "ant-goal"
    source = "PEARL (Rakelly et al. 2019), katerakelly/oyster ant_goal.py"
    varies = "reward"
    terminate_when_unhealthy = False

    def _task_lists(self):
        rs = np.random.RandomState(1337)
        angle = rs.uniform(0.0, 2 * np.pi, 180)
        radius = 3.0 * np.sqrt(rs.uniform(0.0, 1.0, 180))
        g = np.stack((radius * np.cos(angle), radius * np.sin(angle)), axis=1)
        return g[:150], g[150:]

    def sample_tasks(self, n, rng):
        angle = rng.uniform(0.0, 2 * np.pi, n)
        radius = 3.0 * np.sqrt(rng.uniform(0.0, 1.0, n))
        return np.stack((radius * np.cos(angle), radius * np.sin(angle)), axis=1)

    def achieved_task(self, obs, task):
        """The goal the torso position of `obs` achieves (for HER-style relabeling)."""
        return envs.task_with_goal(obs, task, slice(0, 2), slice(0, 2))

    @staticmethod
    def goal_l1(next_obs, task):
        dx = next_obs[..., 0].astype(np.float64) - task[..., 0]
        dy = next_obs[..., 1].astype(np.float64) - task[..., 1]
        return np.abs(dx) + np.abs(dy), dx, dy

    def _reward(self, obs, a, next_obs, task):
        l1, _, _ = self.goal_l1(next_obs, task)
        r = -l1 - 0.1 * self.ctrl_sq(a) - CONTACT * self.contact_sq(next_obs)
        return r, self.terminated(next_obs, r)


class AntGoalSparse(AntGoal):
    """HFR sparse goals on a semicircle: the goal term is constant (its value at the origin) outside 0.8 m."""

    name = "ant-goal-sparse"
    source = "HFR (Wan et al. 2022), michaelwan11/hfr ant_goal (sparse)"
    terminate_when_unhealthy = True
    has_success = True
    radius = 0.8

    def _task_lists(self):
        angle = np.linspace(0.0, np.pi, 130)
        np.random.RandomState(1).shuffle(angle)
        g = 2.0 * np.stack((np.cos(angle), np.sin(angle)), axis=1)
        return g[:100], g[100:]

    def sample_tasks(self, n, rng):
        angle = rng.uniform(0.0, np.pi, n)
        return 2.0 * np.stack((np.cos(angle), np.sin(angle)), axis=1)

    def _reward(self, obs, a, next_obs, task):
        l1, dx, dy = self.goal_l1(next_obs, task)
        near = dx * dx + dy * dy <= self.radius ** 2
        goal_term = np.where(near, 4.0 - l1, 4.0 - (np.abs(task[..., 0]) + np.abs(task[..., 1])))
        r = goal_term - 0.005 * self.ctrl_sq(a) - CONTACT * self.contact_sq(next_obs) + 0.05
        return r, self.terminated(next_obs, r)

    def _info(self, next_obs):
        dx = np.float64(next_obs[0]) - self._task[0]
        dy = np.float64(next_obs[1]) - self._task[1]
        return {"success": bool(dx * dx + dy * dy <= self.radius ** 2)}


class AntVel(AntEnv):
    """HFR target velocity: 1 - |v_x - v*| - 0.005|a|^2 - 5e-4 c + 0.05; task = (v*,)."""

    name = "ant-vel"
    source = "HFR (Wan et al. 2022), michaelwan11/hfr ant_vel"
    varies = "reward"

    def _task_lists(self):
        v = np.random.RandomState(3).uniform(0.0, 3.0, 180)
        return v[:150], v[150:]

    def sample_tasks(self, n, rng):
        return rng.uniform(0.0, 3.0, (n, 1))

    def _reward(self, obs, a, next_obs, task):
        err = np.abs(self.velocity(obs, next_obs, 0) - task[..., 0])
        r = 1.0 - err - 0.005 * self.ctrl_sq(a) - CONTACT * self.contact_sq(next_obs) + 0.05
        return r, self.terminated(next_obs, r)


# ------------------------------------------------------------------------------------ dynamics families
class AntNegatedJoints(ActionMaskTasks, AntEnv):
    """MIER negated joints: the task is the +-1 mask multiplying the 8 actions."""

    name = "ant-negated-joints"
    source = "MIER (Mendonca et al. 2020), russellmendonca/mier_public ant_negated_joints (35 / 15 as the paper)"

    def _task_lists(self):
        train = negation_masks(8, 7, 4)                              # C(7,4) = 35
        test = negation_masks(8, 7, 3, extra_negated=True)[:15]      # 8th negated + first 15 of C(7,3)
        return train, test

    def _reward(self, obs, a, next_obs, task):
        r = self.velocity(obs, next_obs, 0) - 0.5 * self.ctrl_sq(a) - CONTACT * self.contact_sq(next_obs) + 1.0
        r = r + np.zeros(task.shape[:-1])  # physics, not reward, depend on the task
        return r, self.terminated(next_obs, r)


class AntMCAT(AntEnv):
    """MCAT's ant: v_x + 0.05, no control / contact cost, no termination, 1000 steps."""

    default_horizon = 1000
    terminate_when_unhealthy = False

    def _reward(self, obs, a, next_obs, task):
        r = self.velocity(obs, next_obs, 0) + 0.05 + np.zeros(task.shape[:-1])
        return r, self.no_termination(r)


class AntDamping(ModelArrayTasks, AntMCAT):
    """MCAT damping: every joint damping scaled by the task (the XML default is 1 on the 8 hinges)."""

    name = "ant-damping"
    source = "MCAT (Guo et al. 2022), guoyijie/MCAT ant env damping variants"
    fields = ("dof_damping",)

    def _task_lists(self):
        return np.array([0.5, 1.0, 1.5, 2.0, 2.5]), np.array([0.25, 3.0])

    def _set_physics(self, value):
        self.model.dof_damping[:] = self._defaults["dof_damping"] * value


class AntCripple(ActionMaskTasks, AntMCAT):
    """MCAT crippled leg: the task is the 0/1 actuator mask of the crippled leg."""

    name = "ant-cripple"
    source = "MCAT (Guo et al. 2022), guoyijie/MCAT ant_cripple_env.py"
    # actuator order hip_4, ankle_4, hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3; the authors' leg k zeroes
    LEG_ACTUATORS = ((2, 3), (4, 5), (6, 7), (0, 1))

    def _task_lists(self):
        masks = np.ones((4, 8))
        for k, dims in enumerate(self.LEG_ACTUATORS):
            masks[k, list(dims)] = 0.0
        return masks[:3], masks[3:]
