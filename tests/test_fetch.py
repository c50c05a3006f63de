"""Tests of fetch-reach (GH's Fetch reach on gymnasium-robotics' Fetch) beyond the generic protocol tests in
test_envs.py. gymnasium-robotics is not in requirements.txt: everything here skips without it."""

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

import envs  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = envs.make("fetch-reach", seed=0)
    yield e
    e.close()


def test_reward_by_hand_under_several_latents(env):
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    o, a, n = [], [], []
    for _ in range(10):
        act = rng.uniform(-1.2, 1.2, 4).astype(np.float32)
        nxt, *_ = env.step(act)
        o.append(obs), a.append(act), n.append(nxt)
        obs = nxt
    o, a, n = np.array(o), np.array(a), np.array(n)
    grip = env.unwrapped._fetch.data.site("robot0:grip").xpos
    np.testing.assert_allclose(n[-1, :3], grip, rtol=1e-6)
    tasks = env.test_tasks[:3]
    r, term = env.evaluate(o[None], a[None], n[None], tasks[:, None])
    assert r.shape == (3, 10) and not term.any()
    for k, z in enumerate(tasks):
        theta, phi = 2 * np.pi * z[0], np.arccos(2 * z[1] - 1)
        w = np.array([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])
        assert (w >= 0).all() and np.isclose(np.linalg.norm(w), 1)
        p = n[:, :3].astype(np.float64)
        d_goal, d_obst = np.linalg.norm(p - z[2:5], axis=1), np.linalg.norm(p - z[5:8], axis=1)
        energy = -np.linalg.norm(np.clip(a[:, :3].astype(np.float64), -1, 1), axis=1)
        f = np.stack([np.exp(-d_goal ** 2 / 0.08 ** 2), energy, np.log10(d_obst + 0.01) / 5], -1)
        np.testing.assert_allclose(r[k], f @ w, rtol=1e-12, atol=1e-12)


def test_a_greedy_controller_reaches_a_goal_and_the_indicator_branch_pays(env):
    """The gripper follows the mocap (0.05 m per unit action): heading for the goal reaches it within the
    horizon, so the distance term reaches its maximum; GH's indicator branch (sparse in (1.01, 2.01]) pays 1."""
    indicator = envs.make("fetch-reach", sparse=2.0)
    for e in (env, indicator):
        task = e.test_tasks[0].copy()
        e.set_task(task)
        obs, _ = e.reset(seed=1)
        best = np.inf
        for _ in range(e.horizon):
            step = np.clip((task[2:5] - obs[:3]) / 0.05, -1, 1)
            obs, r, *_ = e.step(np.r_[step, 0.0].astype(np.float32))
            best = min(best, np.linalg.norm(obs[:3] - task[2:5]))
        assert best < 0.02, best
    dist_only = np.array([0.0, 0.5, *obs[:3], *(obs[:3] + 10.0)])  # u = 0, v = 0.5: w = (1, 0, 0)
    r, _ = indicator.evaluate(obs, np.zeros(4), obs, dist_only)
    assert r == pytest.approx(1.0)
    indicator.close()


def test_tasks_are_goals_around_the_gripper(env):
    origin = env.unwrapped._origin
    tasks = np.r_[env.train_tasks, env.test_tasks]
    assert (np.abs(tasks[:, 2:5] - origin) <= 0.25).all() and (np.abs(tasks[:, 5:8] - origin) <= 0.25).all()
    assert (tasks[:, 0] >= 0).all() and (tasks[:, 0] <= 0.25).all() and (tasks[:, 1] >= 0.5).all()
    achieved = env.achieved_task(np.ones((2, 10), np.float32), tasks[0])
    np.testing.assert_array_equal(achieved[:, 2:5], 1.0)
    np.testing.assert_array_equal(achieved[:, [0, 1, 5, 6, 7]], np.broadcast_to(tasks[0][[0, 1, 5, 6, 7]], (2, 5)))
