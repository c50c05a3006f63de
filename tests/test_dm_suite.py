"""Tests of HIPI's dm_control goal-reaching families (envs/dm_suite.py) beyond the generic protocol tests in
test_envs.py: the models are dm_control's, the observations are what the reward reads, goals can be reached."""

import mujoco
import numpy as np
import pytest

import envs


def test_reacher_model_and_reward_by_hand():
    env = envs.make("dm-reacher")
    u = env.unwrapped
    assert u.model.opt.timestep == 0.02 and u.dt == 0.02
    assert u.model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT  # contacts off
    obs, _ = env.reset(seed=0)
    assert -np.pi <= obs[2] <= np.pi and abs(obs[3]) <= np.deg2rad(160) and not obs[4:].any()
    rng = np.random.default_rng(0)
    for _ in range(5):
        nxt, r, term, _, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        np.testing.assert_allclose(nxt[:2], u.data.geom_xpos[u.model.geom("finger").id][:2], rtol=1e-6)
    goal = env.task
    assert 0.05 <= np.linalg.norm(goal) <= 0.2
    # the arm's joint angles put the finger at (0.12 cos q1 + 0.12 cos(q1 + q2), ...): a goal on that point
    q = nxt[2:4].astype(np.float64)
    finger = 0.12 * np.array([np.cos(q[0]) + np.cos(q[0] + q[1]), np.sin(q[0]) + np.sin(q[0] + q[1])])
    np.testing.assert_allclose(nxt[:2], finger, atol=1e-6)
    r, term = env.evaluate(obs, np.zeros(2), nxt, np.array([finger + [0.009, 0], finger + [0.011, 0]]))
    np.testing.assert_array_equal(r, [0.0, -1.0])
    np.testing.assert_array_equal(term, [True, False])


def test_discrete_reacher_goals_and_one_hot_tasks():
    env = envs.make("dm-reacher-discrete")
    goals = env.unwrapped.GOALS
    assert goals.shape == (32, 2) and len({tuple(g) for g in goals}) == 32
    radius = np.linalg.norm(goals, axis=1)
    assert radius.min() >= 0.05 and radius.max() <= 0.2
    np.testing.assert_allclose(goals[0], np.random.RandomState(0).uniform(-0.2, 0.2, 2))  # first draw accepted
    np.testing.assert_array_equal(env.train_tasks, np.eye(32))
    # a transition that ends on goal 7 succeeds under task 7 only
    nxt = np.zeros(6, np.float32)
    nxt[:2] = goals[7]
    r, term = env.evaluate(nxt, np.zeros(2), nxt, np.eye(32))
    assert r[7] == 0.0 and term[7] and (r[np.arange(32) != 7] == -1).all()
    s = env.sample_tasks(100, np.random.default_rng(0))
    assert (s.sum(1) == 1).all() and set(np.unique(s)) == {0.0, 1.0}


def test_finger_tip_target_and_reaching():
    env = envs.make("dm-finger")
    u = env.unwrapped
    assert u.model.opt.timestep == 0.01 and u.dt == 0.02
    obs, _ = env.reset(seed=3)
    assert u.data.ncon == 0 and np.linalg.norm(obs[2:4]) == pytest.approx(0.13, abs=1e-5)
    targets = np.r_[env.train_tasks, env.test_tasks]
    np.testing.assert_allclose(np.linalg.norm(targets, axis=1), 0.13)
    # turning the spinner hinge to -t puts the tip on the target of angle t
    t = np.arctan2(env.task[0], env.task[1])
    q = u.data.qpos.copy()
    q[u.model.joint("hinge").qposadr[0]] = -t
    u.set_state(q, np.zeros(u.model.nv))
    on_target = u._get_obs()
    r, term = env.evaluate(obs, np.zeros(2), on_target, env.task)
    assert r == 0.0 and term
    rng = np.random.default_rng(0)
    for _ in range(20):
        nxt, r, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        assert (nxt[4:6] >= 0).all()  # log1p of touch forces


def test_margin_override_and_bad_margin():
    loose = envs.make("dm-reacher", margin=0.5)
    obs, _ = loose.reset(seed=0)
    _, r, term, _, info = loose.step(np.zeros(2, np.float32))
    assert r == 0.0 and term and info["success"]  # every point of the arena is within 0.5 m of the goal
    with pytest.raises(ValueError):
        envs.make("dm-finger", margin=0.0)


def test_quadruped_model_observation_and_goal():
    env = envs.make("dm-quadruped")
    u = env.unwrapped
    m = u.model
    names = {m.geom(i).name for i in range(m.ngeom)} | {m.body(i).name for i in range(m.nbody)}
    assert not names & {"wall_px", "terrain", "ball"} and m.nsensor == 12  # the run task's model
    assert m.opt.timestep == 0.005 and u.dt == 0.02 and env.horizon == 300
    obs, _ = env.reset(seed=0)
    assert obs[:2].tolist() == [0.0, 0.0] and obs[76] == 1.0  # upright at the origin
    np.testing.assert_array_equal(env.reset(seed=5)[0], obs)  # HIPI's start is deterministic
    env.step(np.ones(12, np.float32))
    np.testing.assert_allclose(u.data.ctrl, m.actuator_ctrlrange[:, 1])  # a = 1 -> the top of each ctrlrange
    env.step(-np.ones(12, np.float32))
    np.testing.assert_allclose(u.data.ctrl, m.actuator_ctrlrange[:, 0])
    nxt = u._get_obs()
    np.testing.assert_allclose(nxt[:2], u.data.xpos[m.body("torso").id][:2], rtol=1e-6)
    np.testing.assert_allclose(nxt[2:18], u.data.qpos[7:], rtol=1e-6)  # 16 hinge angles
    goals = np.r_[env.train_tasks, env.test_tasks]
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    at = np.array([nxt[:2] + [0.29, 0.0], nxt[:2] + [0.31, 0.0]], np.float64)
    r, term = env.evaluate(obs, np.zeros(12), nxt, at)
    np.testing.assert_array_equal(r, [0.0, -1.0])
    np.testing.assert_array_equal(term, [True, False])
    assert envs.make("dm-quadruped", goal_distance=3.0).train_tasks[0] @ [1, 1] != 0
