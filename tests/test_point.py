"""Hand-computed cases for the 2-D point families (envs/point.py); the generic protocol tests live in
test_envs.py."""

import numpy as np
import pytest

import envs
from envs.point import FOUR_ROOMS

POINT_NAMES = ["point-robot", "sparse-point-robot", "four-corners", "point-reacher", "point-trajectory",
               "four-rooms"]
GOAL_NAMES = ["point-robot", "sparse-point-robot", "four-corners", "four-rooms"]
Z2 = np.zeros(2)


def score(env, next_obs, task, action=Z2, obs=None):
    """(reward, terminated) of one transition that reached `next_obs`, as Python scalars."""
    next_obs = np.asarray(next_obs, np.float64)
    r, d = env.evaluate(next_obs if obs is None else obs, action, next_obs, np.asarray(task, np.float64))
    return float(r), bool(d)


def run(env, actions, seed=0):
    env.reset(seed=seed)
    return [env.step(np.asarray(a, np.float32)) for a in actions]


# ------------------------------------------------------------------------------------------- point-robot
def test_point_robot_goals_are_pearls_list():
    env = envs.make("point-robot")
    legacy = np.random.RandomState(1337)  # PEARL draws each coordinate with a scalar call, x then y
    goals = np.array([[legacy.uniform(-1.0, 1.0), legacy.uniform(-1.0, 1.0)] for _ in range(100)])
    np.testing.assert_array_equal(env.train_tasks, goals[:80])
    np.testing.assert_array_equal(env.test_tasks, goals[80:])
    small = envs.make("point-robot", n_train_tasks=8, n_test_tasks=2)
    np.testing.assert_array_equal(small.train_tasks, goals[:8])


def test_point_robot_reward_and_motion():
    env = envs.make("point-robot")
    assert score(env, [0.0, 0.0], [0.3, 0.4]) == (-0.5, False)
    assert score(env, [1.0, -1.0], [1.0, -1.0]) == (-0.0, False)
    env.set_task([0.5, 0.5])
    obs, _ = env.reset(seed=3)
    assert np.all(np.abs(obs) <= 1)
    next_obs, r, term, trunc, _ = env.step(np.array([2.0, -0.5], np.float32))  # clipped to (1, -0.5)
    np.testing.assert_allclose(next_obs, obs + np.array([0.1, -0.05]), atol=1e-6)
    assert r == -np.hypot(next_obs[0] - 0.5, next_obs[1] - 0.5) and not term and not trunc


# ------------------------------------------------------------------------------------ sparse-point-robot
def test_sparse_point_robot_goals_on_upper_semicircle():
    env = envs.make("sparse-point-robot")
    goals = np.concatenate([env.train_tasks, env.test_tasks])
    np.testing.assert_allclose(np.hypot(goals[:, 0], goals[:, 1]), 1.0)
    angles = np.sort(np.arctan2(goals[:, 1], goals[:, 0]))
    np.testing.assert_allclose(angles, np.linspace(0, np.pi, 100), atol=1e-12)
    assert not np.array_equal(np.arctan2(goals[:, 1], goals[:, 0]), angles)  # shuffled


def test_sparse_point_robot_reward_offset_inside_radius():
    env = envs.make("sparse-point-robot")
    goal = [1.0, 0.0]
    r, _ = score(env, [0.9, 0.0], goal)  # d = 0.1 <= 0.2: dense -0.1 plus the +1 offset
    assert r == pytest.approx(0.9, abs=1e-15)
    assert score(env, [0.7, 0.0], goal) == (0.0, False)  # d = 0.3: nothing
    assert score(env, [-1.0, 0.0], goal) == (0.0, False)  # far outside: 0, not 1 - d
    assert float(env.evaluate_dense(Z2, Z2, np.array([0.7, 0.0]), goal)) == pytest.approx(-0.3)


def test_sparse_point_robot_step_info():
    env = envs.make("sparse-point-robot")
    env.set_task([0.0, 1.0])
    steps = run(env, [[0.0, 1.0]] * 20)
    rewards = [s[1] for s in steps]
    for next_obs, r, term, trunc, info in steps:
        d = np.hypot(next_obs[0], next_obs[1] - 1.0)
        assert info["dense_reward"] == -d and info["success"] == (d <= 0.2) and not term
        assert r == (1.0 - d if d <= 0.2 else 0.0)
    assert rewards[:7] == [0.0] * 7 and rewards[8] > 0.8 and steps[-1][3]  # (0, 0.9) onward inside


# ------------------------------------------------------------------------------------------ four-corners
def test_four_corners_rewards_by_hand():
    env = envs.make("four-corners")
    np.testing.assert_array_equal(env.train_tasks, [[-1, -1], [1, 1], [1, -1], [-1, 1]])
    np.testing.assert_array_equal(env.train_tasks, env.test_tasks)
    assert score(env, [0.3, 0.3], [1, 1]) == (-3.0, False)  # the trap of the goal's own quadrant
    assert score(env, [0.3, 0.3], [-1, -1]) == (-1.0, False)  # another goal's trap is harmless
    assert score(env, [-0.3, 0.3], [-1, 1]) == (-3.0, False)
    assert score(env, [0.3, -0.3], [1, -1]) == (-3.0, False)
    assert score(env, [-0.4, -0.2], [-1, -1]) == (-3.0, False)
    assert score(env, [0.05, 0.3], [1, 1]) == (-1.0, False)  # 0.1 < |x| fails
    assert score(env, [0.6, 0.3], [1, 1]) == (-1.0, False)  # |x| < 0.5 fails
    assert score(env, [0.9, 0.9], [1, 1]) == (0.0, True)  # d = 0.141 <= 0.2: goal, terminal
    assert score(env, [1.0, 0.8], [1, 1]) == (0.0, True)  # d = 0.2 exactly counts (HFR's >= -radius)
    assert score(env, [0.85, 0.85], [1, 1]) == (-1.0, False)  # d = 0.212


def test_four_corners_episode_reaches_goal():
    env = envs.make("four-corners")
    env.set_task([1.0, 1.0])
    steps = run(env, [[1.0, 1.0]] * 20)
    rewards = [s[1] for s in steps]
    # (0.1, 0.1) and (0.5, 0.5) lie on the trap's edges, outside the open square, as in HFR's float64 run
    assert rewards[:9] == [-1.0, -3.0, -3.0, -3.0, -1.0, -1.0, -1.0, -1.0, 0.0]
    assert rewards[8] == 0.0 and steps[8][2] and steps[8][4]["success"]  # (0.9, 0.9): done
    assert not any(s[2] for s in steps[:8]) and not any(s[4]["success"] for s in steps[:8])


# ----------------------------------------------------------------------------------------- point-reacher
def test_point_reacher_reward_terms_by_hand():
    env = envs.make("point-reacher")
    # u = 0, v = 0.5: weights (1, 0, 0) up to cos(pi/2) ~ 6e-17 -> the distance term alone
    task = [0.0, 0.5, 0.0, 0.2, np.pi, 0.2]  # goal (0.2, 0), obstacle (-0.2, 0)
    assert score(env, [0.2, 0.0, 0, 0, 0.05], task)[0] == pytest.approx(0.2, abs=1e-12)
    assert score(env, [0.2, 0.3, 0, 0, 0.05], task)[0] == pytest.approx(-0.1, abs=1e-12)
    sparse = envs.make("point-reacher", sparse=2.0)
    assert score(sparse, [0.2, 0.0, 0, 0, 0.05], task)[0] == pytest.approx(2.0, abs=1e-12)
    assert score(sparse, [0.28, 0.0, 0, 0, 0.05], task)[0] == pytest.approx(2.0 * np.exp(-1.0), abs=1e-12)
    # u = 0.25, v = 0.5: energy weight 1: -||a||, with the action clipped to [-1, 1]
    energy = [0.25, 0.5, 0.0, 0.2, np.pi, 0.2]
    assert score(env, [0.5, 0.5, 0, 0, 0.05], energy, action=[0.6, 0.8])[0] == pytest.approx(-1.0, abs=1e-12)
    assert score(env, [0.5, 0.5, 0, 0, 0.05], energy, action=[3.0, -4.0])[0] == pytest.approx(-np.sqrt(2))
    # v = 1: safety weight 1: log10(0.09 + 0.01) / 5 = -0.2 at distance 0.09 from the obstacle (0.2, 0)
    safety = [0.1, 1.0, 0.0, 0.2, 0.0, 0.2]
    assert score(env, [0.2, 0.09, 0, 0, 0.05], safety)[0] == pytest.approx(-0.2, abs=1e-12)
    # weights on the unit sphere, all >= 0 under the prior
    u, v = env.train_tasks[:, 0], env.train_tasks[:, 1]
    phi = np.arccos(2 * v - 1)
    w = np.stack([np.cos(2 * np.pi * u) * np.sin(phi), np.sin(2 * np.pi * u) * np.sin(phi), np.cos(phi)], 1)
    assert np.all(w >= 0) and np.allclose(np.linalg.norm(w, axis=1), 1)


def test_point_reacher_dynamics():
    env = envs.make("point-reacher")
    steps = run(env, [[1.0, -1.0]] * 20)
    obs = np.array([s[0] for s in steps])
    np.testing.assert_allclose(obs[:5, 2], [0.05, 0.1, 0.15, 0.2, 0.25], atol=1e-7)  # v += a/20, capped 0.25
    np.testing.assert_allclose(obs[:, 3], -np.minimum(0.05 * np.arange(1, 21), 0.25), atol=1e-7)
    np.testing.assert_allclose(obs[:3, 0], [0.05, 0.15, 0.3], atol=1e-7)  # then p += v
    assert obs[-1, 0] == 1.0 and obs[-1, 1] == -1.0  # clipped to the square
    np.testing.assert_allclose(obs[:, 4], np.arange(1, 21) / 20, atol=1e-7)
    assert steps[-1][3] and not any(s[3] for s in steps[:-1]) and not any(s[2] for s in steps)


def test_point_reacher_achieved_task_moves_only_the_goal():
    env = envs.make("point-reacher", sparse=1.0)
    obs = np.array([[0.1, -0.2, 0, 0, 0.1], [-0.3, 0.05, 0, 0, 0.2]], np.float32)
    tasks = env.train_tasks[:3]
    achieved = env.achieved_task(obs[None], tasks[:, None])
    assert achieved.shape == (3, 2, 6)
    kept = [0, 1, 4, 5]  # weights and obstacle
    np.testing.assert_array_equal(achieved[..., kept], np.broadcast_to(tasks[:, None, kept], (3, 2, 4)))
    goal = achieved[..., 3:4] * np.stack([np.cos(achieved[..., 2]), np.sin(achieved[..., 2])], -1)
    np.testing.assert_allclose(goal, np.broadcast_to(obs[None, :, :2], (3, 2, 2)), atol=1e-7)


# -------------------------------------------------------------------------------------- point-trajectory
def test_point_trajectory_gaussian_reward_by_hand():
    env = envs.make("point-trajectory")
    peak = 1.0 / (0.05 * np.sqrt(2 * np.pi))  # the N(0, 0.05) pdf at 0, 7.9788...
    straight = [0.0, 1.0, 0.0]  # angle 0, d = 1, amplitude 0: follow the +x axis
    assert score(env, [0.5, 0.0, 0.1], straight)[0] == pytest.approx((0.5 + 1e-12) * peak, rel=1e-12)
    assert score(env, [0.5, 0.05, 0.1], straight)[0] == pytest.approx(0.5 * peak * np.exp(-0.5), rel=1e-9)
    assert score(env, [-0.5, 0.0, 0.1], straight) == (0.0, False)  # behind the start: alpha < 0
    wave = [0.0, 1.0, 0.25]  # y = 0.25 sin(pi x)
    assert score(env, [0.5, 0.25, 0.1], wave)[0] == pytest.approx(0.5 * peak, rel=1e-9)
    assert score(env, [0.5, 0.0, 0.1], wave)[0] == pytest.approx(0.5 * peak * np.exp(-12.5), rel=1e-9)
    turned = [np.pi / 2, 1.0, 0.0]  # positions are rotated by +angle: the path heads along -angle
    assert score(env, [0.0, -0.5, 0.1], turned)[0] == pytest.approx(0.5 * peak, rel=1e-9)
    assert score(env, [0.0, 0.5, 0.1], turned)[0] == 0.0


def test_point_trajectory_dynamics_and_horizon():
    env = envs.make("point-trajectory")
    assert env.horizon == 15
    steps = run(env, [[1.0, 0.5]] * 15)
    obs = np.array([s[0] for s in steps])
    np.testing.assert_allclose(obs[:, 0], np.minimum(0.1 * np.arange(1, 16), 1.0), atol=1e-6)
    np.testing.assert_allclose(obs[:, 1], 0.05 * np.arange(1, 16), atol=1e-6)
    np.testing.assert_allclose(obs[:, 2], np.arange(1, 16) / 15, atol=1e-7)
    assert steps[-1][3] and not steps[-2][3]


# ------------------------------------------------------------------------------------------- four-rooms
def place(env, x, y):
    env.reset(seed=0)
    env._xy = (x, y)
    env._obs = env._observe()


def test_four_rooms_layout():
    env = envs.make("four-rooms")
    assert env.walls.shape == (33, 33) and env.horizon == 75
    rows = FOUR_ROOMS.split()
    assert len(rows) == 11 and all(len(r) == 11 for r in rows)
    assert not env.blocked(0.0, 0.0) and env.blocked(16.0, 1.0)  # cell (5, 0) dilated to [15, 18) x [0, 3)
    assert not env.blocked(16.0, 4.0)  # the doorway of the lower-left room: cell (5, 1)
    assert env.blocked(-0.01, 1.0) and env.blocked(1.0, 33.01) and not env.blocked(33.0, 33.0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])  # the lower-left corner


def test_four_rooms_walls_block_motion():
    env = envs.make("four-rooms", action_noise=0.0)
    place(env, 14.5, 1.5)
    obs, *_ = env.step(np.array([1.0, 0.0], np.float32))  # into the wall at x = 15
    assert 14.9 < env._xy[0] < 15.0 and obs[0] <= 15.0 and obs[1] == 1.5  # obs rounds to float32
    place(env, 14.5, 4.5)
    obs, *_ = env.step(np.array([1.0, 0.0], np.float32))  # through the doorway
    assert obs[0] == pytest.approx(15.5) and obs[1] == 4.5
    place(env, 14.45, 2.45)
    obs, *_ = env.step(np.array([1.0, 1.0], np.float32))  # the 6th x sub-move hits the wall's corner,
    np.testing.assert_allclose(obs, [15.35, 3.45], atol=1e-5)  # the next pass once y is in the doorway
    place(env, 0.05, 0.5)
    obs, *_ = env.step(np.array([-1.0, -1.0], np.float32))  # the outer boundary
    assert 0.0 <= obs[0] < 0.1 and 0.0 <= obs[1] < 0.1
    for a in np.random.default_rng(0).uniform(-1, 1, (300, 2)):  # no position is ever inside a wall
        obs, _, term, trunc, _ = env.step(a.astype(np.float32))
        assert not env.blocked(*env._xy)
        if term or trunc:
            env.reset()


def test_four_rooms_fast_path_equals_sub_steps():
    """A move whose swept box is free skips the per-sub-step wall checks; it must land where the plain
    sub-step loop (x then y, each rejected when blocked) lands, to the last bit."""
    env = envs.make("four-rooms", action_noise=0.0)
    rng = np.random.default_rng(0)
    free = np.argwhere(~env.walls)
    for cell, a in zip(free[rng.integers(0, len(free), 2000)], rng.uniform(-1, 1, (2000, 2))):
        x, y = (cell + rng.uniform(size=2)).tolist()
        env._xy = (x, y)
        env._advance(a)
        dx, dy = 0.1 * a[0], 0.1 * a[1]
        for _ in range(10):
            x = x + dx if not env.blocked(x + dx, y) else x
            y = y + dy if not env.blocked(x, y + dy) else y
        assert env._xy == (x, y)


def test_four_rooms_noise_is_one_scalar_on_both_axes():
    env = envs.make("four-rooms", action_noise=1.0)
    place(env, 24.0, 24.0)  # open space in the upper-right room
    obs, *_ = env.step(np.zeros(2, np.float32))
    assert obs[0] - 24.0 == pytest.approx(obs[1] - 24.0) and obs[0] != 24.0


def test_four_rooms_goals_far_and_free():
    env = envs.make("four-rooms")
    goals = np.concatenate([env.train_tasks, env.test_tasks, env.sample_tasks(500, np.random.default_rng(1))])
    assert np.all(np.hypot(goals[:, 0], goals[:, 1]) >= 15.0)  # HIPI's min_goal_distance from the start
    assert np.all((goals >= 0) & (goals <= 33))
    assert not any(env.blocked(x, y) for x, y in goals)
    assert len(np.unique(env.train_tasks, axis=0)) == len(env.train_tasks)


def test_four_rooms_reward_and_termination():
    env = envs.make("four-rooms")
    goal = [20.0, 20.0]
    assert score(env, [20.2, 20.0], goal) == (0.0, True)  # d = 0.2 < 0.3
    assert score(env, [20.4, 20.0], goal) == (-1.0, False)
    assert score(env, [20.0, 20.0], goal, obs=np.array([5.0, 5.0])) == (0.0, True)  # scored on next_obs
    env2 = envs.make("four-rooms", action_noise=0.0)
    env2.set_task([1.5, 3.0])  # near the start: (0.5, 1), (1, 2), then (1.5, 3) reaches it
    steps = run(env2, [[0.5, 1.0]] * 4)
    assert [s[1] for s in steps[:2]] == [-1.0, -1.0] and steps[2][1] == 0.0
    assert steps[2][2] and steps[2][4]["success"] and not steps[1][4]["success"]


# ------------------------------------------------------------------------------------------- shared
@pytest.mark.parametrize("name", GOAL_NAMES)
def test_achieved_task_scores_as_reached(name):
    env = envs.make(name)
    steps = run(env, np.random.default_rng(0).uniform(-1, 1, (10, 2)))
    next_obs = np.array([s[0] for s in steps])
    tasks = env.train_tasks[:3]
    achieved = env.achieved_task(next_obs[None], tasks[:, None])
    assert achieved.shape == (3, 10, 2)
    np.testing.assert_array_equal(achieved, np.broadcast_to(next_obs[None], (3, 10, 2)))
    r, d = env.evaluate(next_obs, np.zeros((10, 2)), next_obs, env.achieved_task(next_obs, tasks[0]))
    best = {"point-robot": 0.0, "sparse-point-robot": 1.0, "four-corners": 0.0, "four-rooms": 0.0}[name]
    np.testing.assert_array_equal(r, best)
    if env.has_success and name != "sparse-point-robot":
        assert np.all(d)


@pytest.mark.parametrize("name", POINT_NAMES)
def test_single_transitions_equal_the_batch_bit_for_bit(name):
    """One transition is scored with numpy scalars, a batch with arrays: the floats must be identical."""
    env = envs.make(name, **({"sparse": 1.0} if name == "point-reacher" else {}))
    rng = np.random.default_rng(0)
    low, high = np.maximum(env.observation_space.low, -2), np.minimum(env.observation_space.high, 40)
    obs = rng.uniform(low, high, (150, len(low))).astype(np.float32)
    next_obs = rng.uniform(low, high, (150, len(low))).astype(np.float32)
    act = rng.uniform(-1.5, 1.5, (150, 2)).astype(np.float32)
    tasks = np.concatenate([env.train_tasks[:2], env.sample_tasks(2, rng)])
    r, d = env.evaluate(obs[None], act[None], next_obs[None], tasks[:, None])
    for k, task in enumerate(tasks):
        for i in range(150):
            ri, di = env.evaluate(obs[i], act[i], next_obs[i], task)
            assert float(ri) == r[k, i] and bool(di) == d[k, i]


@pytest.mark.parametrize("name", POINT_NAMES)
def test_rgb_array_render(name):
    env = envs.make(name, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(np.ones(2, np.float32))
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 0


@pytest.mark.parametrize("name", ["point-robot", "point-reacher", "point-trajectory", "four-rooms"])
def test_bad_overrides_are_one_line_errors(name):
    for bad in ({"n_train_tasks": 0}, {"horizon": 0}, {"no_such_option": 1}):
        with pytest.raises(ValueError) as e:
            envs.make(name, **bad)
        assert "\n" not in str(e.value)


def test_step_before_reset_is_a_clear_error():
    env = envs.make("point-robot")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))
