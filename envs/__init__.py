"""Task distributions shared by the six algorithm scripts: the only code they share.

    import envs
    env = envs.make("sawyer-push", seed=0)      # a gymnasium.Env that is also a TaskEnv
    env.set_task(env.train_tasks[3])
    obs, info = env.reset()
    next_obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    r, d = env.evaluate(obs, action, next_obs, env.test_tasks)   # any task, vectorized

The TaskEnv protocol is the `TaskEnv` base class below. Every family in `point.py`, `locomotion.py` (and its
robot files), `visual_reacher.py`, `dm_suite.py`, `fetch.py` and `sawyer.py` subclasses it.

Each name is also registered with gymnasium as `metarl/<name>`, when this package is imported. Gymnasium 1.x
loads no plugins through package entry points, so with no `import envs` in your program name the module in the
id and gymnasium imports it for you (run from the repository root, or with it on PYTHONPATH):

    gymnasium.make("envs:metarl/point-robot")      # works in a fresh interpreter
    gymnasium.make("metarl/point-robot")           # works once `import envs` has run
"""

from __future__ import annotations

import ctypes.util
import importlib
import os

# Headless rendering: without a display MuJoCo needs a software OpenGL (OSMesa; Debian package libosmesa6).
# Set MUJOCO_GL yourself (e.g. "egl" on a GPU machine) to choose another backend. Only rendering needs OpenGL:
# asking for OSMesa when it is not installed would break every MuJoCo env at construction (PyOpenGL fails on
# import), so it is chosen only when its library is found, and `make` says what to install when asked to render.
if not os.environ.get("DISPLAY"):
    if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"
    if "MUJOCO_GL" in os.environ:
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
NO_OPENGL = not os.environ.get("DISPLAY") and "MUJOCO_GL" not in os.environ  # headless, no OpenGL backend found

import gymnasium as gym
import numpy as np

__all__ = ["TaskEnv", "make", "names", "family_module", "DelayedReward", "save_video", "MissingDependency"]

VARIES = ("reward", "dynamics", "reward+dynamics")


class MissingDependency(ValueError):
    """`make` of a family that needs a package requirements.txt does not install (the message names it)."""


class TaskEnv(gym.Env):
    """A gymnasium.Env over a distribution of tasks, each task a float vector of length `task_dim`.

    Subclasses set, in `__init__`:
      task_dim      length of a task vector (goal, target velocity, weights, physics scale, ...)
      varies        "reward", "dynamics" or "reward+dynamics": what differs between tasks
      horizon       episode length H; `step` returns truncated=True at step H (never terminated=True for it)
      train_tasks   (n_train, task_dim) float64 array, fixed by the family's reference seed
      test_tasks    (n_test, task_dim) float64 array (out-of-distribution where the paper says so)
      has_success   True when `info["success"]` is returned by every `step`
      source        the paper (and authors' code) the family follows, e.g. "PEARL (Rakelly et al. 2019)"
      action_space  Box(-1, 1); the family rescales to its physical range
      observation_space  float32 Box; the layout is documented in the family's docstring
      needs_opengl  True when `render` goes through MuJoCo's OpenGL renderer (class attribute, default False)
      renders_observations  True when the observations themselves are rendered images (they need OpenGL for
                    reset and step, not only for `render`; class attribute, default False)
    and implement `sample_tasks`, `evaluate`, `_apply_task`, `reset`, `step`.

    Rules that keep relabeling honest:
      * reward and termination are pure functions of (obs, action, next_obs, task): `step` computes them by
        calling `self.evaluate(obs, action, next_obs, self.task)` on the very arrays it returns, so the two
        agree to the last bit;
      * actions are clipped to [-1, 1] in `step` and in `evaluate` alike (`clip_action`).

    Optional members some families add (scripts test with `hasattr`):
      evaluate_dense(obs, action, next_obs, task) -> reward
          the dense reward a sparse family also reports in info["dense_reward"] (PEARL's sparse point robot)
      achieved_task(obs, task) -> tasks (..., task_dim)
          goal families: `task` with its goal part replaced by the goal that `obs` achieves (other parts, e.g.
          a margin, kept), for HER-style final/future-state relabeling
      reward_features(obs, action, next_obs) -> (..., n_features)
          families whose reward is linear in the task: reward == (reward_features(...) * task).sum(-1) exactly
          (that sum, not `@`, whose different summation order can differ in the last bit)
      image_shape, state_dim
          families whose observation ends with an image (visual-reacher): obs[..., state_dim:] is the image,
          channel-first `image_shape` = (C, H, W), flattened, values in [0, 1]; obs[..., :state_dim] is the
          proprioceptive part the reward reads, which an agent learning from pixels must not be given
    """

    needs_opengl = False
    renders_observations = False

    task_dim: int
    varies: str
    horizon: int
    has_success: bool = False
    train_tasks: np.ndarray
    test_tasks: np.ndarray
    name: str = "?"
    source: str = ""

    _task: np.ndarray | None = None

    # ---------------------------------------------------------------- the protocol
    def sample_tasks(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw `n` tasks from the family's task prior, shape (n, task_dim)."""
        raise NotImplementedError

    def evaluate(self, obs, action, next_obs, task) -> tuple[np.ndarray, np.ndarray]:
        """(reward, terminated) for transitions under `task`, broadcasting over leading dimensions.

        obs, next_obs: (..., obs_dim); action: (..., act_dim); task: (..., task_dim).
        Returns float64 rewards and bool terminations of the broadcast leading shape.
        """
        raise NotImplementedError

    def set_task(self, task) -> None:
        """Following episodes use `task` (its reward parameters, its physics, or both)."""
        task = self.check_task(task)
        self._task = task
        self._apply_task(task)

    @property
    def task(self) -> np.ndarray:
        """The current task vector (a copy)."""
        if self._task is None:
            raise RuntimeError(f"{self.name}: no task set; call env.set_task(task) first")
        return self._task.copy()

    def _apply_task(self, task: np.ndarray) -> None:
        """Hook for families whose physics depend on the task (write the model arrays here)."""

    # ---------------------------------------------------------------- input checks (one-line errors)
    def check_task(self, task) -> np.ndarray:
        task = np.asarray(task, dtype=np.float64)
        if task.shape != (self.task_dim,):
            raise ValueError(f"{self.name}: a task is a vector of length {self.task_dim}, got shape {task.shape}")
        if not np.all(np.isfinite(task)):
            raise ValueError(f"{self.name}: task has non-finite entries: {task}")
        return task.copy()

    def clip_action(self, action, batched: bool = False) -> np.ndarray:
        """Validate an action's shape and clip it to [-1, 1] (float64). `batched` allows leading dims."""
        action = np.asarray(action, dtype=np.float64)
        shape = self.action_space.shape
        ok = action.shape[-len(shape):] == shape if batched else action.shape == shape
        if not ok or (not batched and action.ndim != len(shape)):
            raise ValueError(f"{self.name}: action must have shape {shape}, got {action.shape}")
        return np.minimum(np.maximum(action, -1.0), 1.0)  # np.clip costs twice as much on tiny arrays


# ------------------------------------------------------------------------------------------------------------
# The registry: name -> "module:factory". Modules are imported only when one of their names is made, so
# `import envs` stays cheap and the point families never import MuJoCo or Meta-World.
_FAMILIES: dict[str, str] = {
    # point.py: 2-D point-mass families (issue: foundation)
    "point-robot": "envs.point:PointRobot",
    "sparse-point-robot": "envs.point:SparsePointRobot",
    "four-corners": "envs.point:FourCorners",
    "point-reacher": "envs.point:PointReacher",
    "point-trajectory": "envs.point:PointTrajectory",
    "four-rooms": "envs.point:FourRooms",
    # MuJoCo locomotion families (gymnasium MuJoCo v5 models)
    "cheetah-vel": "envs.cheetah:CheetahVel",
    "cheetah-dir": "envs.cheetah:CheetahDir",
    "cheetah-vel-ood-medium": "envs.cheetah:CheetahVelOODMedium",
    "cheetah-vel-ood-hard": "envs.cheetah:CheetahVelOODHard",
    "cheetah-vel-sparse": "envs.cheetah:CheetahVelSparse",
    "cheetah-armature": "envs.cheetah:CheetahArmature",
    "cheetah-mass": "envs.cheetah:CheetahMass",
    "hopper-size": "envs.hopper_walker:HopperSize",
    "ant-damping": "envs.ant:AntDamping",
    "ant-cripple": "envs.ant:AntCripple",
    "ant-dir": "envs.ant:AntDir",
    "ant-dir-ood": "envs.ant:AntDirOOD",
    "ant-goal": "envs.ant:AntGoal",
    "ant-goal-sparse": "envs.ant:AntGoalSparse",
    "ant-vel": "envs.ant:AntVel",
    "cheetah-negated-joints": "envs.cheetah:CheetahNegatedJoints",
    "ant-negated-joints": "envs.ant:AntNegatedJoints",
    "cheetah-multi-objective": "envs.cheetah:CheetahMultiObjective",
    "ant-dir-sparse": "envs.ant:AntDirSparse",
    "walker-linear": "envs.hopper_walker:WalkerLinear",
    "cheetah-highdim": "envs.cheetah:CheetahHighdim",
    "hopper-rand-params": "envs.hopper_walker:HopperRandParams",
    "walker-rand-params": "envs.hopper_walker:WalkerRandParams",
    "humanoid-dir": "envs.humanoid:HumanoidDir",
    "humanoid-dir-sparse": "envs.humanoid:HumanoidDirSparse",
    # image observations (MuJoCo Reacher rendered offscreen)
    "visual-reacher": "envs.visual_reacher:VisualReacher",
    # HIPI's dm_control goal-reaching tasks (dm_control's suite models on plain MuJoCo)
    "dm-reacher": "envs.dm_suite:DMReacher",
    "dm-reacher-discrete": "envs.dm_suite:DMReacherDiscrete",
    "dm-finger": "envs.dm_suite:DMFinger",
    "dm-quadruped": "envs.dm_suite:DMQuadruped",
    # Fetch reach (gymnasium-robotics' Fetch model; needs gymnasium-robotics, not in requirements.txt)
    "fetch-reach": "envs.fetch:FetchReach",
    # Sawyer manipulation families (Meta-World's Sawyer model)
    "sawyer-push": "envs.sawyer:SawyerPush",
    "sawyer-push-dense": "envs.sawyer:SawyerPushDense",
    "sawyer-reach": "envs.sawyer:SawyerReach",
    "sawyer-reach-dense": "envs.sawyer:SawyerReachDense",
    "sawyer-reach-margin": "envs.sawyer:SawyerReachMargin",
}

# Overrides that `make` handles itself rather than passing to the family's constructor.
_WRAPPER_OVERRIDES = ("reward_delay",)


def names() -> list[str]:
    """All registered family names, in registry order."""
    return list(_FAMILIES)


def family_module(name: str) -> str:
    """The module that defines family `name` (e.g. 'envs.point')."""
    _check_name(name)
    return _FAMILIES[name].split(":")[0]


def _check_name(name: str) -> None:
    if name not in _FAMILIES:
        raise ValueError(f"unknown env '{name}'; valid names: {', '.join(_FAMILIES)}")


def make(name: str, seed: int = 0, **overrides) -> TaskEnv:
    """Build family `name`, its RNG seeded with `seed`. `overrides` go to the family's constructor
    (e.g. `horizon=50`, `n_train_tasks=10`, `render_mode="rgb_array"`); `reward_delay=D` wraps the env in
    `DelayedReward(env, D)`. The first task of `train_tasks` is set. A family over a package that
    requirements.txt does not install (fetch-reach: gymnasium-robotics) raises `MissingDependency` (a
    ValueError, one line) when the package is missing."""
    _check_name(name)
    module, factory = _FAMILIES[name].split(":")
    cls = getattr(importlib.import_module(module), factory)
    if overrides.get("render_mode") and cls.needs_opengl and NO_OPENGL:
        raise ValueError(f"{name}: rendering without a display needs OSMesa (apt-get install libosmesa6), "
                         "or MUJOCO_GL set to another OpenGL backend (e.g. egl on a GPU machine)")
    delay = overrides.pop("reward_delay", None)
    try:
        env = cls(seed=seed, **overrides)
    except TypeError as e:  # an override the family does not know
        raise ValueError(f"{name}: bad override ({e})") from None
    env.name = name
    env.set_task(env.train_tasks[0])
    if delay is not None and delay != 1:
        env = importlib.import_module("envs.wrappers").DelayedReward(env, delay)
    return env


def save_video(frames, path: str, fps: int = 20) -> str:
    """Write `frames` (a list of HxWx3 uint8 arrays from `env.render()`) as an animated GIF at `path`, each frame
    shown 1000 / fps milliseconds, looping.

    GIF needs no video codec (Pillow writes it; it comes with gymnasium[mujoco]), so `--capture-video` works on
    any machine; the scripts call this instead of importing a video library. Pillow is called directly because
    the meaning of imageio's `duration` changed in imageio 2.28 from seconds to milliseconds (given seconds,
    every frame was 0 ms). GIF stores durations in hundredths of a second: 30 fps gives 30 ms frames."""
    from PIL import Image

    if not path.endswith(".gif"):
        path += ".gif"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    if not images:
        raise ValueError("save_video: no frames to write")
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def task_with_goal(obs, task, obs_slice: slice, goal_slice: slice) -> np.ndarray:
    """HER's achieved goal as a task: `task` (float64) broadcast against the leading shape of `obs`, its entries
    `goal_slice` replaced by obs[..., obs_slice], the rest (weights, obstacles) kept."""
    obs, task = np.asarray(obs), np.asarray(task, dtype=np.float64)
    out = np.broadcast_to(task, np.broadcast_shapes(obs.shape[:-1], task.shape[:-1]) + task.shape[-1:]).copy()
    out[..., goal_slice] = obs[..., obs_slice]
    return out


def steps_per_second(env: gym.Env, actions: np.ndarray, repeats: int, clock=None) -> float:
    """How fast `env` steps: `actions` played from `reset(seed=0)`, resetting at each episode end; the best of
    `repeats` runs timed on `clock` (default `time.process_time`, CPU time, little disturbed by other jobs)."""
    import time

    clock = clock or time.process_time
    best = np.inf
    for _ in range(repeats):
        env.reset(seed=0)
        t0 = clock()
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        best = min(best, clock() - t0)
    return len(actions) / best


def __getattr__(attr):  # lazy export of DelayedReward (lives with the locomotion families)
    if attr == "DelayedReward":
        return importlib.import_module("envs.wrappers").DelayedReward
    raise AttributeError(f"module 'envs' has no attribute '{attr}'")


def _register_with_gymnasium() -> None:
    for name in _FAMILIES:
        env_id = f"metarl/{name}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=lambda _n=name, **kw: make(_n, **kw))


_register_with_gymnasium()
