"""Tests of the MuJoCo locomotion families beyond the generic protocol tests in test_envs.py: rewards recomputed
by hand from the simulator state, the papers' task splits, per-task physics, DelayedReward, rendering."""

import json
import math

import mujoco
import numpy as np
import pytest

import envs
from envs.cheetah import STATS_FILE, make_highdim_stats
from envs.hopper_walker import SIZE_FIELDS, sized_hopper


def steps(env, n, seed=0, task=None):
    """n seeded random steps from reset(seed); returns obs, act, next_obs, rew and the qpos before/after."""
    if task is not None:
        env.set_task(task)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = {k: [] for k in ("obs", "act", "next_obs", "rew", "qpos0", "qpos1", "term")}
    for _ in range(n):
        a = rng.uniform(-1.2, 1.2, env.action_space.shape).astype(np.float32)  # some entries need clipping
        q0 = env.unwrapped.data.qpos.copy()
        next_obs, r, term, trunc, _ = env.step(a)
        for k, v in zip(out, (obs, a, next_obs, r, q0, env.unwrapped.data.qpos.copy(), term)):
            out[k].append(v)
        obs = next_obs
        if term or trunc:
            break
    return {k: np.array(v) for k, v in out.items()}


def f32(x):
    return np.float64(np.float32(x))


# ------------------------------------------------------------------------------------------ rewards by hand
def test_cheetah_vel_reward_by_hand():
    env = envs.make("cheetah-vel")
    d = steps(env, 30)
    v_goal = env.task[0]
    for t in range(30):
        assert d["obs"][t][0] == np.float32(d["qpos0"][t][0])  # obs[0] is the torso x
        v = (f32(d["qpos1"][t][0]) - f32(d["qpos0"][t][0])) / 0.05
        a = np.clip(d["act"][t].astype(np.float64), -1, 1)
        assert d["rew"][t] == pytest.approx(-abs(v - v_goal) - 0.05 * np.sum(a ** 2), rel=1e-12, abs=1e-12)


def test_ant_goal_reward_by_hand_with_contact_forces():
    env = envs.make("ant-goal")
    d = steps(env, 40)
    g = env.task
    contact_seen = False
    for t in range(40):
        x, y = f32(d["qpos1"][t][0]), f32(d["qpos1"][t][1])
        forces = np.float32(np.clip(d["next_obs"][t][29:], -1, 1)).astype(np.float64)
        contact_seen |= np.any(forces != 0)
        a = np.clip(d["act"][t].astype(np.float64), -1, 1)
        expect = -(abs(x - g[0]) + abs(y - g[1])) - 0.1 * np.sum(a ** 2) - 5e-4 * np.sum(forces ** 2)
        assert d["rew"][t] == pytest.approx(expect, rel=1e-12, abs=1e-12)
    assert contact_seen, "contact forces must be computed under mujoco 3 (not the authors' all-zero cfrc_ext)"
    assert not d["term"].any()


def test_ant_goal_sparse_branches_and_achieved_task():
    env = envs.make("ant-goal-sparse")
    d = steps(env, 10)
    g = env.task
    a = np.clip(d["act"].astype(np.float64), -1, 1)
    ctrl = 0.005 * np.sum(a ** 2, -1)
    contact = 5e-4 * np.sum(d["next_obs"][:, 29:].astype(np.float64) ** 2, -1)
    # far from the goal (the ant starts near the origin, goals are 2 m away): the constant value at the origin
    np.testing.assert_allclose(d["rew"], 4 - np.abs(g).sum() - ctrl - contact + 0.05, rtol=1e-12)
    # relabeled with the goal its torso reached: the dense branch with zero distance
    achieved = env.achieved_task(d["next_obs"], g)
    np.testing.assert_array_equal(achieved, d["next_obs"][:, :2].astype(np.float64))
    r, _ = env.evaluate(d["obs"], d["act"], d["next_obs"], achieved)
    np.testing.assert_allclose(r, 4 - ctrl - contact + 0.05, rtol=1e-12)


def test_ant_dir_sparse_cone():
    env = envs.make("ant-dir-sparse")
    obs = np.zeros((3, 107), np.float32)
    obs[:, 2] = 0.5
    nxt = obs.copy()
    # 1 m/s along 0 rad; 1 m/s along 0.3 rad (17 deg, outside the 15 deg cone); standing still
    nxt[:, 0:2] = [[0.05, 0.0], [0.05 * math.cos(0.3), 0.05 * math.sin(0.3)], [0.0, 0.0]]
    r, term = env.evaluate(obs, np.zeros((3, 8)), nxt, np.array([0.0]))
    speed = np.hypot(f32(0.05 * math.cos(0.3)), f32(0.05 * math.sin(0.3))) / 0.05
    assert r[0] == pytest.approx(f32(0.05) / 0.05 + 1) and r[1] == 1.0 and r[2] == 1.0
    r2, _ = env.evaluate(obs[1], np.zeros(8), nxt[1], np.array([0.3]))  # same motion, cone around 17 deg
    assert r2 == pytest.approx(speed + 1)
    assert not term.any()


def test_hopper_and_mcat_ant_rewards_by_hand():
    hopper = envs.make("hopper-size")
    d = steps(hopper, 20)
    v = (np.float32(d["qpos1"][:, 0]).astype(np.float64) - np.float32(d["qpos0"][:, 0])) / 0.008
    a = np.clip(d["act"].astype(np.float64), -1, 1)
    np.testing.assert_allclose(d["rew"], v + 1 - 1e-3 * np.sum(a ** 2, -1), rtol=1e-12)
    ant = envs.make("ant-cripple")
    d = steps(ant, 20)
    v = (np.float32(d["qpos1"][:, 0]).astype(np.float64) - np.float32(d["qpos0"][:, 0])) / 0.05
    np.testing.assert_allclose(d["rew"], v + 0.05, rtol=1e-12)
    # leg 0 (actuators 2, 3) gets no torque whatever the action
    assert np.all(ant.unwrapped.data.ctrl[[2, 3]] == 0) and np.any(ant.unwrapped.data.ctrl != 0)


@pytest.mark.parametrize("name", ["cheetah-multi-objective", "walker-linear"])
def test_linear_rewards_are_features_dot_task(name):
    env = envs.make(name)
    d = steps(env, 40)
    f = env.reward_features(d["obs"], d["act"], d["next_obs"])
    np.testing.assert_array_equal((f * env.task).sum(-1), d["rew"])  # exact: the computation step uses
    np.testing.assert_allclose(f @ env.task, d["rew"], rtol=1e-12, atol=1e-12)  # BLAS order: to rounding
    tasks = env.test_tasks[:4]
    fk = env.reward_features(d["obs"][None], d["act"][None], d["next_obs"][None])
    rk, _ = env.evaluate(d["obs"][None], d["act"][None], d["next_obs"][None], tasks[:, None])
    np.testing.assert_array_equal((fk * tasks[:, None]).sum(-1), rk)
    a = np.clip(d["act"].astype(np.float64), -1, 1)
    if name == "cheetah-multi-objective":
        v = (np.float32(d["qpos1"][:, 0]).astype(np.float64) - np.float32(d["qpos0"][:, 0])) / 0.05
        expect = np.stack([v, -0.1 * np.sum(a ** 2, -1), np.float32(d["qpos1"][:, 1]),
                           np.float32(d["next_obs"][:, 11])], -1)
    else:
        v = (np.float32(d["qpos1"][:, 0]).astype(np.float64) - np.float32(d["qpos0"][:, 0])) / 0.008
        feet = d["next_obs"][:, 18:22].astype(np.float64)
        expect = np.stack([d["next_obs"][:, 1] - 0.5, v, feet[:, 0], feet[:, 1] + 0.7,
                           feet[:, 2], feet[:, 3] + 0.7, np.sum(a ** 2, -1)], -1)
    np.testing.assert_allclose(f, expect, rtol=1e-12, atol=1e-12)


def test_walker_feet_are_the_real_feet():
    env = envs.make("walker-linear")
    steps(env, 5)
    m, dd = env.unwrapped.model, env.unwrapped.data
    obs = env.unwrapped._get_obs()
    torso, left, right = (dd.xpos[m.body(n).id][[0, 2]] for n in ("torso", "foot_left", "foot"))
    np.testing.assert_allclose(obs[18:22], np.r_[left - torso, right - torso], rtol=1e-6)


def test_cheetah_highdim_uses_shipped_stats_and_they_regenerate(tmp_path):
    env = envs.make("cheetah-highdim")
    with open(STATS_FILE) as f:
        stats = json.load(f)
    assert len(stats["mean"]) == len(stats["std"]) == 18 and min(stats["std"]) > 0
    d = steps(env, 10)
    z = (d["next_obs"].astype(np.float64) - np.array(stats["mean"])) / np.array(stats["std"])
    a = np.clip(d["act"].astype(np.float64), -1, 1)
    np.testing.assert_allclose(d["rew"], z @ env.task - 0.05 * np.sum(a ** 2, -1), rtol=1e-12)
    regenerated = make_highdim_stats(path=str(tmp_path / "stats.json"))
    assert regenerated["mean"] == stats["mean"] and regenerated["std"] == stats["std"]


# ------------------------------------------------------------------------------------------ task splits
def test_velocity_and_direction_splits():
    for name, train_hi in [("cheetah-vel-ood-medium", 2.5), ("cheetah-vel-ood-hard", 1.5)]:
        e = envs.make(name)
        assert e.train_tasks.min() >= 0 and e.train_tasks.max() <= train_hi
        assert e.test_tasks.min() >= 2.5 and e.test_tasks.max() <= 3.0
        assert e.sample_tasks(1000, np.random.default_rng(0)).max() <= train_hi
    e = envs.make("cheetah-vel")
    assert 0 <= e.train_tasks.min() and e.test_tasks.max() <= 3
    e = envs.make("ant-dir-ood")
    assert e.train_tasks.max() <= 1.5 * np.pi
    np.testing.assert_allclose(e.test_tasks[:, 0], np.linspace(1.5 * np.pi, 2 * np.pi, 10))
    np.testing.assert_array_equal(envs.make("cheetah-dir").train_tasks[:, 0], [-1, 1])
    np.testing.assert_array_equal(envs.make("ant-dir").test_tasks[:, 0], [0, np.pi])
    goals = envs.make("ant-goal").train_tasks
    assert np.linalg.norm(goals, axis=1).max() <= 3
    goals = envs.make("ant-goal-sparse").train_tasks
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 2.0)
    assert goals[:, 1].min() >= -1e-12
    w = envs.make("cheetah-multi-objective").train_tasks
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0)
    assert (w[:, 1:3] >= 0).all()
    w = envs.make("walker-linear").train_tasks
    assert (w[:, 6] <= 0).all() and (np.abs(w) <= 1).all()


def test_negated_joint_masks():
    e = envs.make("cheetah-negated-joints")
    neg = e.train_tasks == -1
    assert (neg[:, :5].sum(1) == 3).all() and not neg[:, 5].any() and len({tuple(m) for m in e.train_tasks}) == 10
    neg = e.test_tasks == -1
    assert (neg[:, :5].sum(1) == 2).all() and neg[:, 5].all() and len({tuple(m) for m in e.test_tasks}) == 10
    e = envs.make("ant-negated-joints")
    neg = e.train_tasks == -1
    assert (neg[:, :7].sum(1) == 4).all() and not neg[:, 7].any() and len({tuple(m) for m in e.train_tasks}) == 35
    neg = e.test_tasks == -1
    assert (neg[:, :7].sum(1) == 3).all() and neg[:, 7].all() and len({tuple(m) for m in e.test_tasks}) == 15
    assert set(np.unique(np.r_[e.train_tasks, e.test_tasks])) == {-1.0, 1.0}


def test_mcat_splits_are_disjoint():
    for name in ("cheetah-armature", "cheetah-mass", "hopper-size", "ant-damping", "ant-cripple"):
        e = envs.make(name)
        assert not {tuple(t) for t in e.train_tasks} & {tuple(t) for t in e.test_tasks}, name
        assert e.varies == "dynamics" and e.horizon == 1000
    crip = envs.make("ant-cripple")
    np.testing.assert_array_equal(crip.test_tasks, [[0, 0, 1, 1, 1, 1, 1, 1]])  # leg 3 = actuators 0, 1
    assert ((crip.train_tasks == 0).sum(1) == 2).all()


# ------------------------------------------------------------------------------------------ physics per task
@pytest.mark.parametrize("name", ["cheetah-armature", "cheetah-mass", "hopper-size", "ant-damping",
                                  "cheetah-negated-joints", "ant-cripple"])
def test_every_dynamics_task_changes_the_rollout(name):
    env = envs.make(name)
    acts = np.random.default_rng(0).uniform(-1, 1, (15,) + env.action_space.shape).astype(np.float32)

    def final_obs(task):
        env.set_task(task)
        env.reset(seed=1)
        for a in acts:
            obs = env.step(a)[0]
        return obs

    tasks = np.r_[env.train_tasks[:3], env.test_tasks[:2]]
    finals = [final_obs(t) for t in tasks]
    for i in range(len(tasks)):
        for j in range(i):
            assert not np.array_equal(finals[i], finals[j]), (tasks[i], tasks[j])
    np.testing.assert_array_equal(final_obs(tasks[0]), finals[0])


def test_hopper_size_in_place_equals_compiled_model():
    env = envs.make("hopper-size")
    for radius in (0.07, 0.01, 0.05):
        env.set_task([radius])
        ref = sized_hopper(radius)
        for field in SIZE_FIELDS + ("body_subtreemass", "dof_invweight0", "body_invweight0"):
            np.testing.assert_array_equal(getattr(env.unwrapped.model, field), getattr(ref, field), err_msg=field)
    ref = mujoco.MjModel.from_xml_path(env.unwrapped.fullpath)  # 0.05 is the XML's own size
    np.testing.assert_array_equal(env.unwrapped.model.body_mass, ref.body_mass)


# ------------------------------------------------------------------------------------------ DelayedReward
def test_delayed_reward_pays_sums_every_delay_steps_and_at_the_end():
    env = envs.make("cheetah-armature", reward_delay=3, horizon=10)
    assert isinstance(env, envs.DelayedReward) and env.varies == "dynamics" and len(env.train_tasks) == 5
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    paid, dense = [], []
    for t in range(10):
        _, r, term, trunc, info = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
        paid.append(r)
        dense.append(info["dense_reward"])
    assert trunc and not term
    expect = [0, 0, sum(dense[0:3]), 0, 0, sum(dense[3:6]), 0, 0, sum(dense[6:9]), dense[9]]
    np.testing.assert_allclose(paid, expect, rtol=1e-12)
    assert paid[0] == 0.0 and paid[9] == dense[9]
    env.reset(seed=0)  # the running sum starts over
    _, r, *_ = env.step(np.zeros(6, np.float32))
    assert r == 0.0
    with pytest.raises(ValueError):
        envs.make("cheetah-mass", reward_delay=0)


# ------------------------------------------------------------------------------------------ rendering
def test_rgb_array_render():
    if envs.NO_OPENGL:  # no display and no OSMesa: envs.make refuses with a one-line error (tests/test_envs.py)
        pytest.skip("no offscreen OpenGL here; apt-get install libosmesa6")
    env = envs.make("ant-goal", render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    img = env.render()
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    env.close()


# ------------------------------------------------------------------------------------------ PEARL rand-params
@pytest.mark.parametrize("name, xml, frame_skip", [("hopper-rand-params", "hopper.xml", 4),
                                                    ("walker-rand-params", "walker2d.xml", 5)])
def test_rand_params_scale_the_authors_four_arrays(name, xml, frame_skip):
    env = envs.make(name)
    m = env.unwrapped.model
    ref = mujoco.MjModel.from_xml_path(env.unwrapped.fullpath)
    assert env.unwrapped.fullpath.endswith(xml) and m.opt.timestep == 0.004 and env.unwrapped.dt == 0.004 * frame_skip
    fields = [("body_mass", 1.5), ("body_inertia", 1.5), ("dof_damping", 1.3), ("geom_friction", 1.5)]
    assert env.task_dim == sum(getattr(ref, f).size for f, _ in fields)
    for task in (env.train_tasks[3], env.test_tasks[0]):
        env.set_task(task)
        i = 0
        for f, base in fields:
            default = getattr(ref, f)
            mult = task[i: i + default.size].reshape(default.shape)
            i += default.size
            np.testing.assert_array_equal(getattr(m, f), default * mult, err_msg=f)
            assert (mult >= base ** -3 - 1e-12).all() and (mult <= base ** 3 + 1e-12).all(), f
    tasks = np.r_[env.train_tasks, env.test_tasks]
    assert len({tuple(t) for t in tasks}) == 50
    # the multipliers of one field spread over the whole range (log-uniform draws)
    u = np.log(tasks[:, : ref.nbody]) / np.log(1.5)
    assert u.min() < -2.5 and u.max() > 2.5


def test_rand_params_rewards_and_terminations_by_hand():
    hopper = envs.make("hopper-rand-params")
    d = steps(hopper, 30)
    v = (np.float32(d["qpos1"][:, 0]).astype(np.float64) - np.float32(d["qpos0"][:, 0])) / 0.016
    a = np.clip(d["act"].astype(np.float64), -1, 1)
    np.testing.assert_allclose(d["rew"], v + 1 - 1e-3 * np.sum(a ** 2, -1), rtol=1e-12)
    assert d["term"][-1] and not d["term"][:-1].any()  # random actions topple it within 30 steps
    obs = np.zeros((5, 12), np.float32)
    obs[:, 1] = 1.25
    obs[1, 1] = 0.69          # too low
    obs[2, 2] = 0.21          # torso tilted
    obs[3, 4] = 150.0         # a joint angle out of bounds
    obs[4, 8] = 10.0          # velocities are clipped: no termination
    _, term = hopper.evaluate(obs, np.zeros((5, 3)), obs, hopper.task)
    np.testing.assert_array_equal(term, [False, True, True, True, False])
    walker = envs.make("walker-rand-params")
    obs = np.zeros((5, 18), np.float32)
    obs[:, 1] = 1.25
    obs[1, 1], obs[2, 1], obs[3, 2], obs[4, 2] = 0.79, 2.01, 1.01, -0.99
    _, term = walker.evaluate(obs, np.zeros((5, 6)), obs, walker.task)
    np.testing.assert_array_equal(term, [False, True, True, True, False])


# ------------------------------------------------------------------------------------------ humanoid direction
def test_humanoid_dir_reward_by_hand():
    env = envs.make("humanoid-dir")
    u = env.unwrapped
    mass = u.model.body_mass[:, None]
    d = steps(env, 15, seed=2)
    obs, nxt = d["obs"].astype(np.float64), d["next_obs"].astype(np.float64)
    t = env.task[0]
    assert np.array_equal(u.data.ctrl, 0.4 * np.clip(d["act"][-1].astype(np.float64), -1, 1))
    a = np.clip(d["act"].astype(np.float64), -1, 1)
    lin = 0.25 * ((nxt[:, 0] - obs[:, 0]) * np.cos(t) + (nxt[:, 1] - obs[:, 1]) * np.sin(t)) / 0.003
    impact = np.minimum(5e-7 * np.sum(nxt[:, 294:] ** 2, -1), 10)
    np.testing.assert_allclose(d["rew"], lin - 0.1 * np.sum((0.4 * a) ** 2, -1) - impact + 5, rtol=1e-12)
    assert (nxt[:, 294:] != 0).any(), "contact forces must be computed"
    com = (mass * u.data.xipos).sum(0)[:2] / mass.sum()
    np.testing.assert_allclose(d["next_obs"][-1, :2], com, rtol=1e-6)
    np.testing.assert_array_equal(d["term"], (nxt[:, 2] < 1) | (nxt[:, 2] > 2))


def test_humanoid_dir_sparse_cone():
    env = envs.make("humanoid-dir-sparse")
    obs = np.zeros((3, 378), np.float32)
    obs[:, 2] = 1.4
    nxt = obs.copy()
    # 1 m/s along 0 rad; along 0.3 rad (17 deg, outside the 15 deg cone); standing still
    nxt[:, 0:2] = [[0.015, 0.0], [0.015 * math.cos(0.3), 0.015 * math.sin(0.3)], [0.0, 0.0]]
    r, term = env.evaluate(obs, np.zeros((3, 17)), nxt, np.array([0.0]))
    assert r[0] == pytest.approx(1.25 * f32(0.015) / 0.015 + 5) and r[1] == 5.0 and r[2] == 5.0
    assert not term.any()
    np.testing.assert_allclose(env.test_tasks[:, 0], np.linspace(-np.pi, np.pi, 25, endpoint=False) + np.pi / 25)
