"""HIPI's dm_control goal-reaching tasks (Eysenbach et al. 2020, Sec. 6 and Appendix C.4, C.5; google-research
hipi/envs/dm_env.py, hipi/README.md), on dm_control's models loaded on plain MuJoCo.

dm_control: release 1.0.28 is the one that installs with mujoco==3.3.0 (later releases require newer MuJoCo),
but under the pinned numpy 2.4.6 its quadruped observations fail (dm_control calls np.in1d, removed in numpy
2.4). We need none of its Python: the suite's model files (reacher.xml, finger.xml and their common/ includes,
Apache 2.0, from dm_control 1.0.28) are in envs/data/dm_control/ with dm_control's LICENSE, and we step them with
plain MuJoCo as dm_control does (same time steps, control steps and episode initialisation).

dm-reacher (HIPI "2D Reacher"; dm_control reacher, physics and control step 0.02 s, contacts off):
    obs (6-D float32) = finger (x, y), joint angles (shoulder, wrist), joint velocities
    task = goal (x, y): angle ~ U(0, 2 pi), radius ~ U(0.05, 0.2), goal = radius (sin angle, cos angle)
           (dm_control's target sampling, which HIPI's ReacherTaskDistribution repeats)
    r = 0 and terminated when |finger - goal| < margin, else -1; margin 0.01 (HIPI's README), an override
    horizon 1000 (HIPI: 20 s of 0.02 s steps; the paper resets after 1000 steps)
    reset: shoulder ~ U(-pi, pi), wrist ~ U(-160, 160) degrees, velocities 0 (dm_control's randomizer)
    tasks: HIPI samples goals from that distribution; 100 train / 25 test draws from default_rng(1337)
dm-reacher-discrete (HIPI "2D Reacher: Discrete Tasks", ReacherDiscreteTaskDistribution, linear=False):
    the same arm; 32 goals drawn uniformly in the annulus 0.05 <= |g| <= 0.2 by rejection from
    U(-0.2, 0.2)^2 with numpy's RandomState(0), as HIPI's np.random.seed(0) + sample_circle gives them;
    task = a one-hot vector over the 32 goals (train = test = the 32); d = sum_k task_k |finger - g_k|,
    r = 0 and terminated when d < 0.01, else -1
dm-finger (HIPI "Finger", FingerTaskDistribution; dm_control finger turn_hard, physics 0.01 s, control 0.02 s):
    obs (9-D float32) = proximal and distal joint angles, spinner tip (x, z) relative to the hinge,
                        log1p of the two fingertip touch sensors, proximal, distal and hinge velocities
                        (HIPI's observation: dm_control's 'position', 'touch', 'velocity')
    task = target (x, z) relative to the hinge: 0.13 (sin t, cos t), t ~ U(-pi, pi) (dm_control's Turn task)
    r = 0 and terminated when |tip - target| < margin, else -1; margin 0.01 (HIPI's README); horizon 1000
    reset: every joint uniform in its range (the spinner hinge in [-pi, pi]) until nothing is in contact
    (dm_control's _set_random_joint_angles), velocities 0; hinge damping 0.03 (set by dm_control's task)
    tasks: 100 train / 25 test draws from default_rng(1337)
dm-quadruped (HIPI "DM Quadruped" goal reaching; dm_control quadruped as its run task builds it: floor 100 m,
no walls / ball / terrain / rangefinders; physics 0.005 s, control 0.02 s):
    obs (80-D float32) = torso (x, y), then dm_control's observations in HIPI's (sorted) order:
        egocentric_state (44: 16 hinge angles, 16 hinge velocities, 12 actuator activations),
        force_torque (24: arcsinh of the 4 toe force and 4 toe torque sensors), imu (6: accelerometer, gyro),
        torso_upright (1), torso_velocity (3: velocimeter)
    action [-1, 1]^12 rescaled to each actuator's ctrlrange (yaw [-1, 1], lift [-1, 1.1], extend [-0.8, 0.8])
    task = goal (x, y) on the circle of radius goal_distance = 1 ("tasks were sampled uniformly from the unit
           circle", Appendix C.3; HIPI's code samples radius 3.0 unless its gin binding changes it; override)
    r = 0 and terminated when |torso xy - goal| < 0.3 (README goal_radius), else -1; horizon 300 (the paper
    resets after 300 steps; HIPI's sparse code never terminates, the paper does at the goal: we follow the paper)
    reset: upright at the origin at the lowest height without ground contact, joints at their defaults,
    velocities 0 (HIPI's start, deterministic); 100 train / 25 test goals from default_rng(1337)
    Observations are taken after mj_forward on the state the step reached (dm_control refreshes them with
    mj_step1, which leaves the acceleration-stage sensors, accelerometer / force / torque, one step behind).

Deviations from HIPI's released code, each where the code disagrees with the paper (we follow the paper):
  * its reacher reward compares obs['position'], which in dm_control's reacher is the two JOINT ANGLES, with
    the goal's (x, y) in metres; the paper (Appendix C.5) scores the end effector's XY position, as we do;
  * its reacher observation keeps dm_control's 'to_target', the vector to dm_control's own randomly placed
    target geom, which is not HIPI's goal (HIPI samples the goal separately); we leave it out;
  * its utils.get_py_env has no "reacher" or "reacher-discrete" branch (the README's commands raise
    NotImplementedError as released);
  * HIPI appended the episode's done flag to every observation; our protocol reports it as `terminated`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import mujoco
import numpy as np

import envs
from envs.locomotion import LocomotionEnv

MODELS = os.path.join(os.path.dirname(__file__), "data", "dm_control")


def annulus_goals(n: int, seed: int = 0, r_min: float = 0.05, r_max: float = 0.2) -> np.ndarray:
    """n points uniform in the annulus r_min <= |g| <= r_max by rejection from U(-r_max, r_max)^2, drawn with
    numpy's RandomState(seed) (HIPI's discrete reacher goals for seed 0)."""
    rs = np.random.RandomState(seed)
    goals = []
    while len(goals) < n:
        x, y = rs.uniform(-r_max, r_max, 2)
        if r_min <= np.sqrt(x * x + y * y) <= r_max:
            goals.append((x, y))
    return np.array(goals)


class DMSuiteEnv(LocomotionEnv):
    """A dm_control suite model stepped with plain MuJoCo: sparse goal reaching, terminated at the goal."""

    varies = "reward"
    has_success = True
    default_horizon = 1000
    N_TRAIN, N_TEST = 100, 25
    goal_slice = slice(0, 2)  # where in the observation the reaching point is

    def __init__(self, seed: int = 0, margin: float = 0.01, **kw):
        if not np.isfinite(margin) or margin <= 0:
            raise ValueError(f"{self.name}: margin must be > 0, got {margin!r}")
        self.margin = float(margin)
        super().__init__(seed=seed, **kw)

    def _task_lists(self):
        tasks = self.sample_tasks(self.N_TRAIN + self.N_TEST, np.random.default_rng(1337))
        return tasks[: self.N_TRAIN], tasks[self.N_TRAIN:]

    def _distance(self, next_obs, task):
        p = next_obs[..., self.goal_slice].astype(np.float64)
        dx, dy = p[..., 0] - task[..., 0], p[..., 1] - task[..., 1]
        return np.sqrt(dx * dx + dy * dy)

    def _reward(self, obs, a, next_obs, task):
        reached = self._distance(next_obs, task) < self.margin
        shape = np.broadcast_shapes(reached.shape, np.shape(obs)[:-1], np.shape(a)[:-1])
        reached = np.broadcast_to(reached, shape).copy()
        return reached - 1.0, reached

    def _info(self, next_obs):
        return {"success": bool(self._distance(next_obs, self._task) < self.margin)}

    def achieved_task(self, obs, task):
        """The goal the reaching point of `obs` achieves (HER-style relabeling)."""
        return envs.task_with_goal(obs, task, self.goal_slice, slice(0, 2))

    def _random_joint_angles(self):
        """dm_control's randomize_limited_and_rotational_joints for hinge joints: limited ones uniform in
        their range, unlimited ones uniform in [-pi, pi]."""
        qpos = self.data.qpos.copy()
        for j in range(self.model.njnt):
            lo, hi = self.model.jnt_range[j] if self.model.jnt_limited[j] else (-np.pi, np.pi)
            qpos[self.model.jnt_qposadr[j]] = self.np_random.uniform(lo, hi)
        return qpos


class DMReacher(DMSuiteEnv):
    name = "dm-reacher"
    source = "HIPI (Eysenbach et al. 2020), google-research hipi dm_env.py reacher; dm_control reacher model"
    xml = os.path.join(MODELS, "reacher.xml")
    frame_skip = 1
    obs_dim = 6
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 50}
    camera_config = {"distance": 0.9, "elevation": -90.0, "azimuth": 90.0, "lookat": np.zeros(3)}

    def __init__(self, **kw):
        super().__init__(**kw)
        self._finger = self.model.geom("finger").id
        self._target = self.model.geom("target").id

    def sample_tasks(self, n, rng):
        angle = rng.uniform(0.0, 2 * np.pi, n)
        radius = rng.uniform(0.05, 0.20, n)
        return np.stack((radius * np.sin(angle), radius * np.cos(angle)), axis=1)

    def _goal_xy(self):
        return self._task

    def _get_obs(self):
        mujoco.mj_kinematics(self.model, self.data)
        finger = self.data.geom_xpos[self._finger][:2]
        return np.concatenate((finger, self.data.qpos, self.data.qvel)).astype(np.float32)

    def reset_model(self):
        self.model.geom_pos[self._target][:2] = self._goal_xy()  # drawn in videos only (contacts are off)
        self.set_state(self._random_joint_angles(), np.zeros(self.model.nv))
        self._obs = self._get_obs()
        return self._obs


class DMReacherDiscrete(DMReacher):
    name = "dm-reacher-discrete"
    source = ("HIPI (Eysenbach et al. 2020), google-research hipi dm_env.py ReacherDiscreteTaskDistribution; "
              "dm_control reacher model")
    GOALS = annulus_goals(32, seed=0)

    def _task_lists(self):
        eye = np.eye(len(self.GOALS))
        return eye, eye.copy()

    def sample_tasks(self, n, rng):
        return np.eye(len(self.GOALS))[rng.integers(len(self.GOALS), size=n)]

    def _goal_xy(self):
        return self._task @ self.GOALS

    def _distance(self, next_obs, task):
        p = next_obs[..., 0:2].astype(np.float64)[..., None, :]           # (..., 1, 2)
        d = np.sqrt(((p - self.GOALS) ** 2).sum(-1))                      # (..., 32)
        return (d * task).sum(-1)

    def achieved_task(self, obs, task):
        raise NotImplementedError("dm-reacher-discrete: tasks are one-hot goals; a reached point is not one")


class DMFinger(DMSuiteEnv):
    name = "dm-finger"
    source = "HIPI (Eysenbach et al. 2020), google-research hipi dm_env.py finger; dm_control finger turn_hard"
    xml = os.path.join(MODELS, "finger.xml")
    frame_skip = 2
    obs_dim = 9
    goal_slice = slice(2, 4)
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 50}
    camera_config = {"distance": 1.3, "elevation": 0.0, "azimuth": 90.0, "lookat": np.array([0.0, 0.0, 0.35])}
    RADIUS = 0.13  # hinge to spinner tip: geom_size of cap1 summed (0.04 + 0.09), dm_control's Turn radius

    def __init__(self, **kw):
        super().__init__(**kw)
        m = self.model
        m.dof_damping[m.joint("hinge").dofadr[0]] = 0.03  # dm_control's Finger task sets it at every episode
        self._sensors = {n: slice(m.sensor(n).adr[0], m.sensor(n).adr[0] + m.sensor(n).dim[0])
                         for n in ("proximal", "distal", "proximal_velocity", "distal_velocity", "hinge_velocity",
                                   "tip", "target", "spinner", "touchtop", "touchbottom")}
        self._target_site = m.site("target").id
        self._hinge_anchor = None

    def sample_tasks(self, n, rng):
        t = rng.uniform(-np.pi, np.pi, n)
        return self.RADIUS * np.stack((np.sin(t), np.cos(t)), axis=1)

    def _s(self, name):
        return self.data.sensordata[self._sensors[name]]

    def _get_obs(self):
        tip = self._s("tip")[[0, 2]] - self._s("spinner")[[0, 2]]
        touch = np.log1p(np.r_[self._s("touchtop"), self._s("touchbottom")])
        vel = np.r_[self._s("proximal_velocity"), self._s("distal_velocity"), self._s("hinge_velocity")]
        return np.concatenate((self._s("proximal"), self._s("distal"), tip, touch, vel)).astype(np.float32)

    def reset_model(self):
        if self._hinge_anchor is None:
            mujoco.mj_forward(self.model, self.data)
            self._hinge_anchor = self.data.xanchor[self.model.joint("hinge").id][[0, 2]].copy()
        self.model.site_pos[self._target_site][[0, 2]] = self._hinge_anchor + self._task  # videos only
        for _ in range(1000):  # a collision-free random start, as dm_control's _set_random_joint_angles
            self.set_state(self._random_joint_angles(), np.zeros(self.model.nv))
            if self.data.ncon == 0:
                break
        else:
            raise RuntimeError(f"{self.name}: no collision-free start found in 1000 draws")
        self._obs = self._get_obs()
        return self._obs


# ---------------------------------------------------------------------------------------------- quadruped
def quadruped_xml(floor_size: float = 100.0) -> str:
    """dm_control's quadruped.xml as its make_model(floor_size) builds it for the run / walk tasks: without the
    walls, the ball, the target site, the terrain heightfield geom and the rangefinder sensors."""
    root = ET.parse(os.path.join(MODELS, "quadruped.xml")).getroot()
    parent = {child: p for p in root.iter() for child in p}
    for el in list(root.iter()):
        name = el.get("name")
        if ((el.tag == "geom" and name in ("wall_px", "wall_py", "wall_nx", "wall_ny", "terrain"))
                or (el.tag == "body" and name == "ball") or (el.tag == "site" and name == "target")
                or el.tag == "rangefinder"):
            parent[el].remove(el)
        elif el.tag == "geom" and name == "floor":
            el.set("size", f"{floor_size} {floor_size} .5")
    return ET.tostring(root, encoding="unicode")


def common_assets() -> dict:
    folder = os.path.join(MODELS, "common")
    return {f"./common/{f}": open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


class DMQuadruped(DMSuiteEnv):
    name = "dm-quadruped"
    source = ("HIPI (Eysenbach et al. 2020), google-research hipi dm_env.py quadruped goals; dm_control quadruped "
              "model (run task)")
    xml = os.path.join(MODELS, "quadruped.xml")
    frame_skip = 4   # physics 0.005 s, control 0.02 s
    obs_dim = 80
    default_horizon = 300
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 50}
    camera_config = {"trackbodyid": 1, "distance": 4.0, "elevation": -25.0}

    def __init__(self, goal_distance: float = 1.0, margin: float = 0.3, **kw):
        if not np.isfinite(goal_distance) or goal_distance <= 0:
            raise ValueError(f"{self.name}: goal_distance must be > 0, got {goal_distance!r}")
        self.goal_distance = float(goal_distance)
        super().__init__(margin=margin, **kw)
        m = self.model
        lo, hi = m.actuator_ctrlrange.T
        self._action_mask, self._ctrl_offset = (hi - lo) / 2, (hi + lo) / 2  # a in [-1, 1] -> ctrlrange
        self._torso = m.body("torso").id
        hinges = np.flatnonzero(m.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
        self._hinge_qpos, self._hinge_qvel = m.jnt_qposadr[hinges], m.jnt_dofadr[hinges]

        def sensors(*types):
            ids = [i for i in range(m.nsensor) if m.sensor_type[i] in types]  # in id order, as dm_control
            return np.concatenate([np.arange(m.sensor_adr[i], m.sensor_adr[i] + m.sensor_dim[i]) for i in ids])

        S = mujoco.mjtSensor
        self._force_torque = sensors(S.mjSENS_FORCE, S.mjSENS_TORQUE)
        self._imu = sensors(S.mjSENS_GYRO, S.mjSENS_ACCELEROMETER)
        self._velocimeter = sensors(S.mjSENS_VELOCIMETER)
        self._start = None

    def _initialize_simulation(self):
        model = mujoco.MjModel.from_xml_string(quadruped_xml(), common_assets())
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def sample_tasks(self, n, rng):
        theta = rng.uniform(0.0, 2 * np.pi, n)
        return self.goal_distance * np.stack((np.cos(theta), np.sin(theta)), axis=1)

    def _get_obs(self):
        mujoco.mj_forward(self.model, self.data)  # observations of the state the step reached (as dm_control)
        d = self.data
        ego = np.concatenate((d.qpos[self._hinge_qpos], d.qvel[self._hinge_qvel], d.act))
        upright = d.xmat[self._torso][8:9]  # torso z-axis . world z
        return np.concatenate((d.xpos[self._torso][:2], ego, np.arcsinh(d.sensordata[self._force_torque]),
                               d.sensordata[self._imu], upright, d.sensordata[self._velocimeter])).astype(np.float32)

    def _lowest_start(self) -> np.ndarray:
        """Upright at the origin at the lowest height (1 cm steps) without ground contact (HIPI's start), found
        on a scratch MjData so that every reset runs the same calls from mj_resetData on (bit-identical)."""
        data = mujoco.MjData(self.model)
        qpos = self.init_qpos.copy()
        qpos[3:7] = (1.0, 0.0, 0.0, 0.0)
        z = 0.0
        while True:
            qpos[2] = z
            data.qpos[:] = qpos
            mujoco.mj_forward(self.model, data)
            if data.ncon == 0:
                return qpos
            z += 0.01

    def reset_model(self):
        if self._start is None:
            self._start = self._lowest_start()
        self.set_state(self._start, np.zeros(self.model.nv))
        self._obs = self._get_obs()
        return self._obs
