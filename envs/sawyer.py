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

Start state (no randomness: HFR's random_init=False). Reset restores a state computed once in the constructor; two
resets give bit-identical states (MuJoCo's warm start is restored too); `reset(seed=...)` seeds `self.np_random`
(gymnasium's contract) but the start does not depend on it. The first observation of an episode is the state the
start ends in. The push families offer three starts, chosen with the constructor argument `start` (e.g.
`envs.make("sawyer-push", start="lodged")`); "arriving" is the default.
  * What HFR's reset does. michaelwan11/hfr's `reset_model`, through Meta-World 2f228c2's `MujocoEnv.reset`: the
    arm back at its zero pose (hand at (1.14, 0.16, 0.32)); 10 x 5 MuJoCo steps with the mocap at (0, 0.65, 0),
    quaternion (1, 0, 1, 0) and the fingers OPEN (ctrl (-1, +1)); then the puck's position set to (0, 0.6) at its
    current height, velocity zero; nothing settled. z = 0 is below the hand box's floor and every action clips
    the target back to it, so the first step moves the mocap to (a_x/100, 0.65 + a_y/100, 0.05) whatever a_z is.
    When reset returns, the hand is still swinging in (arm joints at up to 7.7 rad/s), about 11 cm short of its
    target, and sweeps into the puck. What follows depends on the MuJoCo build; HFR's MuJoCo 2.0 (mujoco-py)
    cannot run here, the oldest that can is MuJoCo 2.2.0 (PyPI). In MuJoCo 2.2.0 the open claws scoop the puck:
    with zero actions it comes to rest after about 40 steps tipped onto its rim between the claws, leaning on the
    front pad, hand at (0, 0.650, 0.050), fingers open; the same in every episode (the reset has no randomness;
    benchmarks/sawyer_exploration.py checks three resets bit for bit). In MuJoCo 3.3 the same reset throws the
    puck beyond the goals (y 0.6 -> 1.1 in 40 steps): its swing already differs when reset returns (hand z 0.049,
    2.2: 0.062), and the claw strikes the puck low. (MuJoCo 2.2's state at that moment, continued in 3.3, does
    not throw it: see "arriving".)
  * "lodged": MuJoCo 2.2.0's outcome of that reset. The arm, finger and puck joint positions 2.2.0
    reaches 200 zero-action steps after HFR's reset (LODGED_* constants; quaternion included) are written into
    the joints and held 40 steps in MuJoCo 3.3 with the mocap at (0, 0.65, 0.05), the target the first action's
    clip gives, and the fingers open. Measured (tests/test_sawyer.py pins them): hand (0.000, 0.650, 0.050), puck
    (-0.003, 0.664, 0.033) tipped 56 degrees from flat, fingers open; 2.2.0: hand (0.000, 0.650, 0.0495), puck
    the same to 0.1 mm. It stays there while the hand is held (150 steps: < 0.5 mm), the claws carry it forward
    and back with the hand, and a sideways or upward move leaves it behind, as in 2.2.0 (30 steps of one held
    action from this state: the puck ends within 3 cm of 2.2.0's for moves along y, x or z; a diagonal move
    differs more, up to 8 cm).
  * "arriving" (default): the state HFR's reset returns in MuJoCo 2.2.0, velocities included (ARRIVING_* constants): hand
    (0.005, 0.536, 0.062) swinging in, puck at (0, 0.6, 0.015), mocap at HFR's (0, 0.65, 0). The first
    observation is HFR's as MuJoCo 2.2.0 gives it and the episode's first steps carry the swing. MuJoCo 3.3
    continues it without a throw: with zero actions the claws sweep the puck in and it stands upright on its rim
    at (-0.006, 0.641, 0.030) after 40 steps; unlike 2.2.0's it does not stay: it rolls sideways out of the
    claws (5 cm in 400 steps of held hand).
  * "settled" (the default before "lodged" and "arriving"): HFR's order without the swing. The hand settles at (0, 0.65, 0.05)
    from the zero pose with the fingers open (100 steps, the puck parked off the arm's path), then the puck is
    placed at (0, 0.6), where the open rear claw (y 0.597..0.606, down to z 0.005) cuts through it, and 40 steps
    with the mocap held resolve the contact: hand lifted to (0.000, 0.650, 0.066), puck (0.000, 0.600, 0.014) at
    rest with the rear claw 8 mm into its top. (MuJoCo's libccd collider instead squeezes the puck out sideways
    to about (-0.04, 0.59).) The hand settles at z 0.05, not HFR's 0: z = 0 is never held in an episode (see
    above), and held it presses the claws into the table, where friction stalls the hand about 6 cm short.
  * reach (its only start, "settled"): HFR's hand start (0, 0.6, 0.2), fingers open: hand (0.000, 0.600, 0.200),
    finger centre 4.5 cm below; puck placed at (0, 0.6) afterwards, well clear of the fingers.
  Why "arriving" is the default: its first observation is the one HFR's reset returns (in MuJoCo 2.2.0, the
  closest that runs here), the first actions carry the swing that reset hands them, and with zero actions it ends
  where 2.2.0 ends, the puck between the open claws and the hand at (0, 0.65, 0.05). It is also the one start
  that is at least as explorable as HFR's reset in 2.2.0. benchmarks/results/sawyer-exploration.json measures how
  often held random actions bring the puck to a goal from each (2,000 episodes each, 95 % Wilson intervals):
  "arriving" 39.7 % [37.6, 41.9]; HFR's reset run verbatim in MuJoCo 2.2.0 29.7 % [27.7, 31.7]; "lodged"
  24.6 % [22.8, 26.5]; "settled" 3.2 % [2.5, 4.1]. "arriving" is 10 points MORE explorable than 2.2.0 (MuJoCo
  3.3 continues the swing differently); "lodged", at rest, is 5 points less, because it leaves out the swing: in
  2.2.0, starting the policy 10, 20, 40 zero-action steps after the reset gives 28.4 %, 25.4 %, 21.0 %, and the
  "lodged" state gives 21.3 %. "lodged" is the conservative choice for a result that should not lean on an
  easier start.

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

Speed: one core, process CPU time: about 8,000 steps per second with a reset every 150 steps (the "lodged" row of
benchmarks/results/sawyer-exploration.json: 300,000 steps in 37 CPU s on a shared 2-core AMD EPYC, random actions
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

import envs
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
# push start "lodged" (the default): the state MuJoCo 2.2.0 reaches with HFR's reset_model run verbatim followed by
# 200 zero-action steps (module docstring; benchmarks/sawyer_exploration.py --rows hfr-verbatim records it), as
# joint positions: the seven arm joints right_j0..right_j6, the two fingers r_close, l_close, and the puck's free
# joint (centre xyz, quaternion wxyz: the puck stands on its rim, tipped 56 degrees, leaning on the front pad).
LODGED_ARM_QPOS = (1.7411561, -0.499572, -0.6311071, 1.6160405, 0.8594089, 0.7530196, 2.4472815)
LODGED_FINGER_QPOS = (9.38e-05, 3e-07)
LODGED_PUCK_QPOS = (-0.0029275, 0.6638071, 0.0332331, 0.4679616, -0.883686, 0.0100092, 0.0033027)
LODGED_SETTLE_STEPS = 40  # held in MuJoCo 3.3 with the mocap at (0, 0.65, 0.05) before the episode starts
# push start "arriving": the state HFR's reset_model returns in MuJoCo 2.2.0 (joint positions as above, and the
# joint velocities of the arm still swinging in; the puck just placed, at rest), mocap at HFR's (0, 0.65, 0)
ARRIVING_ARM_QPOS = (1.99274, -0.370552, -0.928128, 1.845045, 1.125272, 0.819739, 2.290609)
ARRIVING_FINGER_QPOS = (-0.00017, -0.000571)
ARRIVING_PUCK_QPOS = (0.0, 0.6, 0.014928, 0.999978, -0.006554, 0.000516, -0.000347)
ARRIVING_ARM_QVEL = (-5.10518, -4.62605, 7.74982, -5.43887, -3.14945, -4.11647, 3.67897)
ARRIVING_FINGER_QVEL = (0.0, -0.29793)
HFR_PUSH_MOCAP = (0.0, 0.65, 0.0)  # HFR's hand_init_pos for push; the first step's clip lifts it to z 0.05
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
    starts: tuple  # the start states the family offers (constructor argument `start`), the default first
    hand_start: tuple
    finger_centre_in_obs: bool
    goal_low: np.ndarray
    goal_high: np.ndarray
    default_horizon: int

    def __init__(self, seed: int = 0, horizon: int | None = None, n_train_tasks: int = N_TRAIN,
                 n_test_tasks: int = N_TEST, render_mode: str | None = None, width: int = 480,
                 height: int = 480, camera_name: str = "corner", start: str | None = None):
        name = getattr(self, "name", "sawyer")
        self.start = self.starts[0] if start is None else start
        if self.start not in self.starts:
            raise ValueError(f"{name}: start must be one of {', '.join(map(repr, self.starts))}, got {start!r}")
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
        self._data = mujoco.MjData(m)
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
        """The start state (module docstring). "settled": in the order of HFR's reset_model, the hand settled with
        open fingers, then the puck placed at its start and the state advanced until the contacts have resolved.
        "lodged": MuJoCo 2.2.0's outcome of HFR's verbatim reset written into the joints, then held until at rest.
        Returned as MuJoCo's full integration state (incl. mocap, ctrl, warm start)."""
        m, d = self._model, self._data
        mujoco.mj_resetData(m, d)  # as Meta-World's reset: the arm at its zero pose
        q, v = self._puck_q, self._puck_v
        arm = [m.joint(f"right_j{i}").id for i in range(7)]
        fingers = [m.joint(j).id for j in ("r_close", "l_close")]
        if self.start == "lodged":
            d.qpos[m.jnt_qposadr[arm]], d.qpos[m.jnt_qposadr[fingers]] = LODGED_ARM_QPOS, LODGED_FINGER_QPOS
            d.qpos[q:q + 7] = LODGED_PUCK_QPOS
            self._hold(self.hand_start, LODGED_SETTLE_STEPS)
        elif self.start == "arriving":
            d.qpos[m.jnt_qposadr[arm]], d.qpos[m.jnt_qposadr[fingers]] = ARRIVING_ARM_QPOS, ARRIVING_FINGER_QPOS
            d.qvel[m.jnt_dofadr[arm]], d.qvel[m.jnt_dofadr[fingers]] = ARRIVING_ARM_QVEL, ARRIVING_FINGER_QVEL
            d.qpos[q:q + 7] = ARRIVING_PUCK_QPOS
            d.mocap_pos[0], d.mocap_quat[0], d.ctrl[:] = HFR_PUSH_MOCAP, MOCAP_QUAT, FINGERS_OPEN
            mujoco.mj_forward(m, d)
        else:
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

    starts = ("arriving", "lodged", "settled")  # the first is the default
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
        return envs.task_with_goal(obs, task, slice(3, 5), slice(0, 2))


class _ReachTasks:
    """Goal = finger-centre xyz. Mixed in before _Sawyer."""

    starts = ("settled",)
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
        return envs.task_with_goal(obs, task, slice(6, 9), slice(0, 3))


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
