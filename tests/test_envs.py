"""Generic tests of the TaskEnv protocol, run over every name in `envs.names()`.

A family added to the registry is covered automatically; it must also get a row in SPLITS below (the test
`test_every_family_has_a_split_row` fails otherwise), so the task counts the papers specify are pinned here.
Rollouts are short to keep the suite fast; the truncation test runs one full episode.
"""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (n_train, n_test) as the papers split them.
SPLITS = {
    "point-robot": (80, 20),
    "sparse-point-robot": (80, 20),
    "four-corners": (4, 4),
    "point-reacher": None,  # continuous latent prior; no fixed split in the paper (checked: both non-empty)
    "point-trajectory": None,
    "four-rooms": None,
    "cheetah-vel": (100, 30),
    "cheetah-dir": (2, 2),  # PEARL: the same two directions serve as train and test tasks
    "cheetah-vel-ood-medium": (100, 30),
    "cheetah-vel-ood-hard": (100, 30),
    "cheetah-vel-sparse": (100, 30),
    "cheetah-armature": (5, 6),  # MCAT families: train values / unseen test values (envs docstrings)
    "cheetah-mass": (5, 2),
    "hopper-size": (5, 2),
    "ant-damping": (5, 2),
    "ant-cripple": (3, 1),
    "ant-dir": (2, 2),  # PEARL: the same two directions serve as train and test tasks
    "ant-dir-ood": (100, 10),
    "ant-goal": (150, 30),
    "ant-goal-sparse": (100, 30),
    "ant-vel": (150, 30),
    "cheetah-negated-joints": (10, 10),
    "ant-negated-joints": (35, 15),
    "cheetah-multi-objective": None,  # GH samples latents from the prior; no fixed split
    "ant-dir-sparse": None,  # GH: prior samples for training, its 25 evaluation directions for testing
    "walker-linear": None,  # HIPI samples weights continuously
    "cheetah-highdim": (100, 30),
    "hopper-rand-params": (40, 10),  # PEARL: 50 tasks, the first 40 train, the last 10 test
    "walker-rand-params": (40, 10),
    "humanoid-dir": (100, 30),
    "humanoid-dir-sparse": None,  # GH: prior samples for training, its 25 evaluation directions for testing
    "visual-reacher": (100, 30),
    "dm-reacher": (100, 25),  # HIPI samples goals from dm_control's distribution; fixed draws of it
    "dm-reacher-discrete": (32, 32),  # HIPI: the 32 one-hot goals are all the tasks
    "dm-finger": (100, 25),
    "dm-quadruped": (100, 25),
    "fetch-reach": None,  # GH samples latents from the prior (its fixed evaluation list is not usable: envs/fetch.py)
    "sawyer-push": (50, 10),
    "sawyer-push-dense": (50, 10),
    "sawyer-reach": (50, 10),
    "sawyer-reach-dense": (50, 10),
    "sawyer-reach-margin": (50, 10),  # HIPI samples continuously; a fixed 50/10 draw like the HFR families
}

ALL = envs.names()
ROLLOUT = 40


def rollout(env, n, seed, actions=None):
    """Reset with `seed`, take `n` steps (seeded random actions unless given), resetting at episode ends."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    data = {k: [] for k in ("obs", "act", "next_obs", "rew", "term", "info")}
    for t in range(n):
        a = actions[t] if actions is not None else rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        next_obs, r, term, trunc, info = env.step(a)
        for k, v in zip(data, (obs, a, next_obs, r, term, info)):
            data[k].append(v)
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset()
    return {k: (np.array(v) if k != "info" else v) for k, v in data.items()}


@pytest.fixture(scope="module", params=ALL)
def env(request):
    try:
        e = envs.make(request.param, seed=0)
    except envs.MissingDependency as err:  # a family over a package requirements.txt does not install
        pytest.skip(str(err))
    yield e
    e.close()


@pytest.fixture(autouse=True)
def _pixel_observations_need_opengl(request):
    """Families whose observations are rendered images build without OpenGL but cannot reset or step."""
    if "env" not in request.fixturenames or request.node.originalname == "test_protocol_members":
        return
    e = request.getfixturevalue("env")
    if getattr(e, "renders_observations", False) and envs.NO_OPENGL:
        pytest.skip("image observations need offscreen OpenGL; apt-get install libosmesa6 or set MUJOCO_GL=egl")


def test_every_family_has_a_split_row():
    assert set(ALL) <= set(SPLITS), f"add rows to SPLITS for {sorted(set(ALL) - set(SPLITS))}"


def test_missing_package_is_a_one_line_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_robotics(name, *args, **kw):
        if name.startswith("gymnasium_robotics"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_robotics)
    with pytest.raises(envs.MissingDependency) as e:
        envs.make("fetch-reach")
    assert "\n" not in str(e.value) and "pip install gymnasium-robotics" in str(e.value)


def test_unknown_name_is_a_one_line_value_error():
    with pytest.raises(ValueError) as e:
        envs.make("no-such-env")
    msg = str(e.value)
    assert "\n" not in msg and "valid names" in msg and "point-robot" in msg


def test_without_opengl_only_rendering_is_refused(monkeypatch):
    """Headless with no OpenGL library: MuJoCo envs still build and step, asking one to render is a one-line
    error that says what to install, and the pure-numpy point envs render anyway."""
    monkeypatch.setattr(envs, "NO_OPENGL", True)
    e = envs.make("cheetah-vel")
    e.reset(seed=0)
    e.step(np.zeros(e.action_space.shape, np.float32))
    with pytest.raises(ValueError) as err:
        envs.make("cheetah-vel", render_mode="rgb_array")
    assert "\n" not in str(err.value) and "libosmesa6" in str(err.value)
    p = envs.make("point-robot", render_mode="rgb_array")
    p.reset(seed=0)
    assert p.render().ndim == 3


def test_osmesa_is_chosen_only_when_its_library_is_found():
    """Choosing OSMesa when it is missing breaks every MuJoCo env at construction (PyOpenGL fails on import)."""
    code = ("import ctypes.util, os; ctypes.util.find_library = lambda name: None; import envs; "
            "print(envs.NO_OPENGL, os.environ.get('MUJOCO_GL')); e = envs.make('cheetah-vel'); e.reset(seed=0)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "None"]


def test_registered_with_gymnasium():
    e = gym.make("metarl/point-robot")
    assert isinstance(e.unwrapped, envs.TaskEnv)
    e.close()


def test_gymnasium_make_without_importing_envs_first():
    """gymnasium 1.x has no entry-point plugins: "envs:metarl/<name>" makes gymnasium import the package itself."""
    code = ("import sys, gymnasium as gym; assert 'envs' not in sys.modules; "
            "e = gym.make('envs:metarl/point-robot'); e.reset(seed=0); print(type(e.unwrapped).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PointRobot"]


def test_save_video_frame_duration_in_milliseconds(tmp_path):
    from PIL import Image

    frames = [np.full((8, 8, 3), 40 * k, np.uint8) for k in range(4)]
    for fps, ms in ((20, 50), (10, 100)):
        path = envs.save_video(frames, str(tmp_path / f"clip{fps}"), fps=fps)
        assert path.endswith(".gif")
        with Image.open(path) as gif:
            durations = []
            for i in range(gif.n_frames):
                gif.seek(i)
                durations.append(gif.info["duration"])
        assert durations == [ms] * len(frames), (fps, durations)


def test_protocol_members(env):
    assert env.varies in envs.VARIES
    assert env.train_tasks.ndim == 2 and env.train_tasks.shape[1] == env.task_dim
    assert env.test_tasks.ndim == 2 and env.test_tasks.shape[1] == env.task_dim
    assert env.train_tasks.dtype == np.float64 and env.test_tasks.dtype == np.float64
    split = SPLITS.get(env.name)
    if split is not None:
        assert (len(env.train_tasks), len(env.test_tasks)) == split
    else:
        assert len(env.train_tasks) > 0 and len(env.test_tasks) > 0
    assert isinstance(env.action_space, gym.spaces.Box)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert env.observation_space.dtype == np.float32
    assert isinstance(env.horizon, int) and env.horizon > 0
    tasks = env.sample_tasks(5, np.random.default_rng(0))
    assert tasks.shape == (5, env.task_dim)
    np.testing.assert_array_equal(tasks, env.sample_tasks(5, np.random.default_rng(0)))


def test_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("which", [0, 1])
def test_evaluate_equals_step_exactly(env, which):
    task = env.train_tasks[which % len(env.train_tasks)]
    env.set_task(task)
    d = rollout(env, ROLLOUT, seed=which)
    assert d["obs"].dtype == np.float32 and d["next_obs"].dtype == np.float32
    r, term = env.evaluate(d["obs"], d["act"], d["next_obs"], task)
    assert r.shape == (ROLLOUT,) and term.shape == (ROLLOUT,)
    np.testing.assert_array_equal(r, d["rew"])  # exact: same float, not approximately
    np.testing.assert_array_equal(term, d["term"])
    # one transition at a time agrees with the batch
    r0, t0 = env.evaluate(d["obs"][3], d["act"][3], d["next_obs"][3], task)
    assert np.shape(r0) == () and float(r0) == d["rew"][3] and bool(t0) == d["term"][3]
    # K tasks x B transitions in one call, row k equal to scoring under task k alone
    tasks = np.concatenate([env.train_tasks[:3], env.test_tasks[:2]])
    rk, tk = env.evaluate(d["obs"][None], d["act"][None], d["next_obs"][None], tasks[:, None])
    assert rk.shape == (len(tasks), ROLLOUT) and tk.shape == (len(tasks), ROLLOUT)
    for k, t in enumerate(tasks):
        rr, tt = env.evaluate(d["obs"], d["act"], d["next_obs"], t)
        np.testing.assert_array_equal(rk[k], rr)
        np.testing.assert_array_equal(tk[k], tt)
    env.set_task(env.train_tasks[0])


def test_success_declared(env):
    d = rollout(env, 5, seed=0)
    for info in d["info"]:
        assert ("success" in info) == env.has_success


def test_same_seed_same_everything(env):
    other = envs.make(env.name, seed=0)
    np.testing.assert_array_equal(env.train_tasks, other.train_tasks)
    np.testing.assert_array_equal(env.test_tasks, other.test_tasks)
    env.set_task(env.train_tasks[0])
    a, b = rollout(env, 20, seed=7), rollout(other, 20, seed=7)
    np.testing.assert_array_equal(a["next_obs"], b["next_obs"])
    np.testing.assert_array_equal(a["rew"], b["rew"])
    other.close()


def test_truncation_at_horizon_not_termination(env):
    env.set_task(env.train_tasks[0])
    env.reset(seed=0)
    for t in range(1, env.horizon + 1):
        _, _, term, trunc, _ = env.step(np.zeros(env.action_space.shape, np.float32))
        if term:
            return  # reached a terminal state first: nothing to check about the time limit
        assert trunc == (t == env.horizon), f"truncated={trunc} at step {t} of {env.horizon}"


def test_bad_task_and_bad_action_are_one_line_errors(env):
    with pytest.raises(ValueError) as e:
        env.set_task(np.zeros(env.task_dim + 1))
    assert "\n" not in str(e.value)
    env.set_task(env.train_tasks[0])
    env.reset(seed=0)
    with pytest.raises(ValueError) as e:
        env.step(np.zeros(env.action_space.shape[0] + 1, np.float32))
    assert "\n" not in str(e.value)


def test_dynamics_families_really_change_dynamics(env):
    if "dynamics" not in env.varies:
        pytest.skip("reward-only family")
    acts = np.random.default_rng(0).uniform(-1, 1, (30,) + env.action_space.shape).astype(np.float32)
    env.set_task(env.train_tasks[0])
    a = rollout(env, 30, seed=1, actions=acts)
    env.set_task(env.train_tasks[1])
    b = rollout(env, 30, seed=1, actions=acts)
    assert not np.array_equal(a["next_obs"], b["next_obs"])
    env.set_task(env.train_tasks[0])  # restoring a task restores bit-identical rollouts
    c = rollout(env, 30, seed=1, actions=acts)
    np.testing.assert_array_equal(a["next_obs"], c["next_obs"])


def test_renders_rgb_array(env):
    if env.needs_opengl and envs.NO_OPENGL:
        pytest.skip("no offscreen OpenGL here; apt-get install libosmesa6")
    e = envs.make(env.name, render_mode="rgb_array")
    e.reset(seed=0)
    e.step(np.zeros(e.action_space.shape, np.float32))
    try:
        img = e.render()
    except Exception as err:  # MuJoCo without an OpenGL library: README says how to install one (OSMesa)
        if "OpenGL" in str(err) or "GL" in type(err).__name__:
            pytest.skip(f"no offscreen OpenGL here ({type(err).__name__}); apt-get install libosmesa6")
        raise
    assert isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert img.std() > 0, "blank frame"
    e.close()


def test_make_seed_seeds_the_first_reset(env):
    """envs.make(name, seed) alone fixes the episodes: a reset() without a seed repeats under the same seed."""
    a, b = envs.make(env.name, seed=5), envs.make(env.name, seed=5)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    a.close(), b.close()
