"""Sawyer families (envs/sawyer.py): start states, scripted successes, rewards against their definitions.

The generic protocol checks (evaluate == step, check_env, seeding, truncation) run in test_envs.py.
"""

import importlib.util
import os

import numpy as np
import pytest

import envs


def scripted_push(obs, goal, phase):
    """Rise clear of the puck with the fingers open (closing them on a puck between the claws flings it), move
    over a point 7 cm behind it (seen from the goal) with them closed, descend, push along the puck-goal line
    while steering the hand back onto that line. Returns (action, next phase)."""
    hand, puck = obs[:3].astype(np.float64), obs[3:6].astype(np.float64)
    u = (goal - puck[:2]) / np.linalg.norm(goal - puck[:2])
    behind = puck[:2] - 0.07 * u
    a = np.array([0.0, 0.0, 0.0, 1.0])  # fingers closed after the rise
    if phase == 0:
        a[2], a[3] = 1.0, -1.0
        phase += hand[2] > 0.12
    elif phase == 1:
        a[:2] = 50 * (behind - hand[:2])
        phase += np.linalg.norm(behind - hand[:2]) < 0.01
    elif phase == 2:
        a[:2], a[2] = 50 * (behind - hand[:2]), -1.0
        phase += hand[2] < 0.055
    else:
        off = hand[:2] - puck[:2]
        a[:2], a[2] = 0.5 * u - 20 * (off - (off @ u) * u), -1.0
    return np.clip(a, -1, 1).astype(np.float32), phase


def scripted_reach(obs, goal):
    a = np.zeros(4, np.float32)
    a[:3] = np.clip(50 * (goal[:3] - obs[6:9]), -1, 1)  # finger centre -> goal
    return a


def run_episode(env, task, policy):
    env.set_task(task)
    obs, _ = env.reset(seed=0)
    data = {k: [] for k in ("obs", "act", "next_obs", "rew", "term", "success")}
    phase = 0
    for _ in range(env.horizon):
        if policy == "push":
            act, phase = scripted_push(obs, task, phase)
        else:
            act = scripted_reach(obs, task)
        next_obs, r, term, trunc, info = env.step(act)
        for k, v in zip(data, (obs, act, next_obs, r, term, info["success"])):
            data[k].append(v)
        obs = next_obs
        if term or trunc:
            break
    return {k: np.array(v) for k, v in data.items()}


def check_success_episode(env, task, d):
    """Success exactly on the last step: reward 0, terminated, info["success"]; -1 and running before it."""
    assert d["term"][-1] and d["success"][-1] and d["rew"][-1] == 0.0
    assert len(d["rew"]) < env.horizon
    assert not d["term"][:-1].any() and not d["success"][:-1].any() and np.all(d["rew"][:-1] == -1.0)
    r, term = env.evaluate(d["obs"], d["act"], d["next_obs"], task)
    np.testing.assert_array_equal(r, d["rew"])
    np.testing.assert_array_equal(term, d["term"])
    # the same transitions scored under other tasks: not successful there (their goals are elsewhere)
    others = env.train_tasks[[i for i in range(10) if not np.allclose(env.train_tasks[i], task)][:3]]
    rk, _ = env.evaluate(d["obs"][None], d["act"][None], d["next_obs"][None], others[:, None])
    for k, t in enumerate(others):
        np.testing.assert_array_equal(rk[k], env.evaluate(d["obs"], d["act"], d["next_obs"], t)[0])


@pytest.fixture(scope="module")
def push():
    e = envs.make("sawyer-push")
    yield e
    e.close()


@pytest.fixture(scope="module")
def lodged():
    e = envs.make("sawyer-push", start="lodged")
    yield e
    e.close()


@pytest.fixture(scope="module")
def reach():
    e = envs.make("sawyer-reach")
    yield e
    e.close()


def puck_tilt_degrees(env) -> float:
    """Angle between the puck's axis and the vertical."""
    return float(np.degrees(np.arccos(env._data.xmat[env._model.body("obj").id][8])))


def between_the_claws(obs) -> bool:
    """The puck's centre inside the open gripper: within the claws' 3 cm width and between the pads' faces."""
    dx, dy = np.abs(obs[..., 3:5].astype(np.float64) - obs[..., 0:2])
    return bool(dx < 0.03 and dy < 0.044)


def test_lodged_start_state(lodged):
    """start="lodged": where HFR's reset leaves hand, fingers and puck in MuJoCo 2.2.0 (the puck tipped onto its
    rim between the open claws, leaning on the front pad), held at rest in MuJoCo 3.3."""
    push = lodged
    obs, _ = push.reset(seed=0)
    assert obs.shape == (6,) and obs.dtype == np.float32
    # MuJoCo 2.2.0 after HFR's reset + 200 zero-action steps: hand (0, 0.6501, 0.0495), puck (-0.0029, 0.6638, 0.0332)
    np.testing.assert_allclose(obs[:3], [0.0, 0.650, 0.0497], atol=5e-4)
    np.testing.assert_allclose(obs[3:6], [-0.0029, 0.6639, 0.0332], atol=5e-4)
    assert puck_tilt_degrees(push) == pytest.approx(124.4, abs=1.0)  # on its rim, 56 degrees from lying flat
    d = push._data
    np.testing.assert_allclose(d.qpos[7:9], [0.0, 0.0], atol=5e-4)  # both fingers fully open
    np.testing.assert_allclose(d.mocap_pos[0], [0.0, 0.65, 0.05])  # the target the first action's clip gives
    assert between_the_claws(obs)
    # at rest: 150 steps holding still leave hand and puck where they are (no throw, no drift)
    for _ in range(150):
        obs2, *_ = push.step(np.zeros(4, np.float32))
    np.testing.assert_allclose(obs2, obs, atol=5e-4)


def test_lodged_puck_moves_with_the_hand_along_y(lodged):
    """As in MuJoCo 2.2: the claws carry the puck forward and back (it stays between them); a sideways or upward
    move leaves it behind."""
    push = lodged
    for a, hand_y in (([0.0, 1.0, 0.0, 0.0], 0.904), ([0.0, -1.0, 0.0, 0.0], 0.404), ([0.0, 1.0, 0.0, -1.0], 0.907)):
        push.reset(seed=0)
        for _ in range(30):
            obs, *_ = push.step(np.array(a, np.float32))
            assert between_the_claws(obs)
        assert obs[1] == pytest.approx(hand_y, abs=5e-3) and abs(obs[4] - obs[1]) < 0.02
    push.reset(seed=0)
    for _ in range(30):
        obs, *_ = push.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    assert obs[0] > 0.25 and abs(obs[3]) < 0.01  # the hand went sideways, the puck stayed


def test_settled_start_state():
    """start="settled": hand settled at (0, 0.65) with the fingers open, the puck placed after it at (0, 0.6),
    where the rear claw cuts through it; the claw ends pressed into the puck's top."""
    env = envs.make("sawyer-push", start="settled")
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[:3], [0.0, 0.650, 0.066], atol=1.5e-3)  # lifted 16 mm by the puck
    np.testing.assert_allclose(obs[3:6], [0.0, 0.600, 0.014], atol=1.5e-3)  # v1 puck: rests at z 0.015
    d = env._data
    np.testing.assert_allclose(d.qpos[7:9], [0.0, 0.0], atol=5e-4)
    np.testing.assert_allclose(d.mocap_pos[0], [0.0, 0.65, 0.05])
    fingertips = 0.5 * (d.site_xpos[env._fingers[0]] + d.site_xpos[env._fingers[1]])
    np.testing.assert_allclose(fingertips, [0.0, 0.646, 0.021], atol=1.5e-3)
    rear_claw = d.geom_xpos[env._model.geom("rightclaw_it").id]
    assert abs(rear_claw[1] - 0.6) < 0.004 and rear_claw[2] - 0.045 < obs[5] + 0.015  # claw in the puck's top
    for _ in range(30):
        obs2, *_ = env.step(np.array([0, 0, 0, -1], np.float32))
    np.testing.assert_allclose(obs2, obs, atol=1e-3)
    env.close()


def test_arriving_start_state(push):
    """The default push start ("arriving"): the state HFR's reset returns in MuJoCo 2.2.0, the arm still swinging
    in; with zero actions MuJoCo 3.3 sweeps the puck into the gripper (not thrown, as HFR's reset run in MuJoCo 3.3
    does)."""
    env = push
    assert env.start == "arriving" and envs.make("sawyer-push-dense").start == "arriving"
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0.0051, 0.5357, 0.0622, 0.0, 0.6, 0.0149], atol=1e-4)  # MuJoCo 2.2.0's
    np.testing.assert_allclose(env._data.mocap_pos[0], [0.0, 0.65, 0.0])  # HFR's; the first step lifts it to 0.05
    assert np.abs(env._data.qvel[:7]).max() > 7.0  # the arm arrives at up to 7.7 rad/s
    for _ in range(40):
        obs, *_ = env.step(np.zeros(4, np.float32))
    np.testing.assert_allclose(obs[:3], [0.0, 0.650, 0.0497], atol=1e-3)
    assert between_the_claws(obs) and obs[4] == pytest.approx(0.641, abs=5e-3)


@pytest.mark.parametrize("name, start", [("sawyer-push", "thrown"), ("sawyer-push-dense", ""),
                                         ("sawyer-reach", "lodged")])
def test_unknown_start_is_a_one_line_error(name, start):
    with pytest.raises(ValueError) as e:
        envs.make(name, start=start)
    assert "\n" not in str(e.value) and "start must be one of" in str(e.value)


def test_benchmark_scene_steps_as_the_env(lodged):
    """benchmarks/sawyer_exploration.py's numpy-and-mujoco-only copy of the scene (it runs the verbatim reset in
    MuJoCo 2.2) gives sawyer-push's lodged start and steps bit for bit."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "sawyer_exploration.py")
    spec = importlib.util.spec_from_file_location("sawyer_exploration", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    scene = bench.V1Scene(bench.default_mesh_dir())
    scene.lodged_start()
    np.testing.assert_array_equal(scene.restore(), lodged.reset(seed=0)[0])
    rng = np.random.default_rng(2)
    for _ in range(40):
        a = rng.uniform(-1.2, 1.2, 4).astype(np.float32)
        np.testing.assert_array_equal(scene.step(a), lodged.step(a)[0])
    np.testing.assert_array_equal(bench.train_goals(), lodged.train_tasks)


def test_reach_start_state(reach):
    obs, _ = reach.reset(seed=0)
    assert obs.shape == (9,)
    np.testing.assert_allclose(obs[:3], [0.0, 0.6, 0.2], atol=1e-3)  # HFR's hand_init_pos (0, 0.6, 0.2)
    np.testing.assert_allclose(obs[3:6], [0.0, 0.6, 0.015], atol=1e-3)
    np.testing.assert_allclose(obs[6:9] - obs[:3], [0.0, 0.0, -0.045], atol=1.5e-3)  # fingertips below the hand


def test_v1_puck_as_v1_defines_it(push):
    m = push._model
    g, b = m.geom("objGeom").id, m.body("obj").id
    np.testing.assert_allclose(m.geom_size[g][:2], [0.03, 0.015])  # radius, half-height
    assert m.body_mass[b] == pytest.approx(0.75)
    np.testing.assert_allclose(m.body_inertia[b], [8.80012e-4] * 3)
    np.testing.assert_allclose(m.geom_friction[g], [1.0, 0.1, 0.002])


def test_reset_restores_the_start_bit_for_bit(push):
    first, _ = push.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        push.step(rng.uniform(-1, 1, 4).astype(np.float32))
    again, _ = push.reset(seed=123)  # the seed does not change the start (there is no randomness in it)
    np.testing.assert_array_equal(first, again)


def test_goal_lists_follow_hfr_seed():
    draws = np.random.RandomState(3).uniform([-0.1, 0.8, 0.05], [0.1, 0.9, 0.3], (60, 3))
    for name in ("sawyer-push", "sawyer-push-dense"):
        e = envs.make(name)
        np.testing.assert_array_equal(e.train_tasks, draws[:50, :2])
        np.testing.assert_array_equal(e.test_tasks, draws[50:, :2])
        e.close()
    e = envs.make("sawyer-reach")
    draws = np.random.RandomState(3).uniform([-0.1, 0.7, 0.05], [0.1, 0.8, 0.3], (60, 3))
    np.testing.assert_array_equal(np.concatenate([e.train_tasks, e.test_tasks]), draws)
    e.close()
    e = envs.make("sawyer-reach-margin")
    tasks = np.concatenate([e.train_tasks, e.test_tasks])
    assert np.all((tasks[:, 3] >= 0) & (tasks[:, 3] <= 0.1)) and np.all(tasks[:, 1] >= 0.8)
    e.close()


@pytest.mark.parametrize("which", [("train", 0), ("test", 0)])
def test_scripted_push_reaches_the_goal(push, which):
    task = getattr(push, f"{which[0]}_tasks")[which[1]]
    d = run_episode(push, task, "push")
    check_success_episode(push, task, d)
    assert np.linalg.norm(d["next_obs"][-1, 3:5] - task) <= 0.07
    # hindsight: the task the final state achieved gives reward 0 to that transition
    achieved = push.achieved_task(d["next_obs"][-1], task)
    np.testing.assert_allclose(achieved, d["next_obs"][-1, 3:5].astype(np.float64))
    assert push.evaluate(d["obs"][-1], d["act"][-1], d["next_obs"][-1], achieved)[0] == 0.0


@pytest.mark.parametrize("family", ["push", "reach"])
def test_scripted_controller_solves_train_and_test_goals(family, push, reach):
    """A scripted controller solves >= 90 % of the 50 train and of the 10 test goals within 150 steps."""
    env = push if family == "push" else reach
    for split in ("train_tasks", "test_tasks"):
        tasks = getattr(env, split)
        solved = [bool(run_episode(env, t, family)["success"][-1]) for t in tasks]
        assert np.mean(solved) >= 0.9, f"{family} {split}: solved {sum(solved)}/{len(tasks)}"


@pytest.mark.parametrize("name", ["sawyer-push", "sawyer-reach"])
def test_evaluate_equals_step_on_random_rollouts(name, push, reach):
    env = push if name == "sawyer-push" else reach
    rng = np.random.default_rng(1)
    for task in (env.train_tasks[4], env.test_tasks[2]):
        env.set_task(task)
        obs, _ = env.reset(seed=0)
        O, A, N, R, T = [], [], [], [], []
        for t in range(120):
            if t % 15 == 0:
                a = rng.uniform(-1.5, 1.5, 4).astype(np.float32)  # out-of-range entries are clipped alike
            nxt, r, term, trunc, _ = env.step(a)
            O.append(obs), A.append(a), N.append(nxt), R.append(r), T.append(term)
            obs = nxt
            if term:
                obs, _ = env.reset()
        r, term = env.evaluate(np.array(O), np.array(A), np.array(N), task)
        np.testing.assert_array_equal(r, R)
        np.testing.assert_array_equal(term, T)
    env.set_task(env.train_tasks[0])


def test_scripted_reach_margin():
    env = envs.make("sawyer-reach-margin")
    assert env.horizon == 100 and env.task_dim == 4
    task = env.train_tasks[0].copy()
    task[3] = 0.02
    d = run_episode(env, task, "reach")
    check_success_episode(env, task, d)
    # achieved_task keeps the margin, broadcasting obs (B,) against tasks (K, 1)
    ach = env.achieved_task(d["next_obs"][None], env.train_tasks[:4, None])
    assert ach.shape == (4, len(d["rew"]), 4)
    np.testing.assert_allclose(ach[2, -1, :3], d["next_obs"][-1, 6:9])
    np.testing.assert_array_equal(ach[:, :, 3], np.broadcast_to(env.train_tasks[:4, 3:4], ach.shape[:2]))
    env.close()


def test_reach_margin_reward_by_hand():
    env = envs.make("sawyer-reach-margin")
    obs = np.zeros((3, 9), np.float32)
    obs[:, 6:9] = [[0.0, 0.8, 0.1], [0.0, 0.85, 0.1], [0.0, 0.9, 0.1]]  # 0, 0.05, 0.1 from the goal
    task = np.array([0.0, 0.8, 0.1, 0.06])
    r, term = env.evaluate(obs, np.zeros((3, 4)), obs, task)
    np.testing.assert_array_equal(r, [0.0, 0.0, -1.0])  # 1[d < margin] - 1
    np.testing.assert_array_equal(term, [True, True, False])
    r, _ = env.evaluate(obs, np.zeros((3, 4)), obs, np.array([[0.0, 0.8, 0.1, 0.01], [0.0, 0.8, 0.1, 0.2]])[:, None])
    np.testing.assert_array_equal(r, [[0.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    env.close()


@pytest.mark.parametrize("name", ["sawyer-push-dense", "sawyer-reach-dense"])
def test_dense_rewards_match_their_definition(name):
    env = envs.make(name)
    task = env.train_tasks[0]
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, r, term, _, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        o = obs.astype(np.float64)
        if name == "sawyer-push-dense":
            goal_dist = np.linalg.norm(o[3:5] - task)
            expected = -goal_dist - 0.5 * np.linalg.norm(o[:3] - o[3:6])
            assert info["success"] == (goal_dist <= 0.07)
        else:
            goal_dist = np.linalg.norm(o[6:9] - task)
            expected = -goal_dist
            assert info["success"] == (goal_dist <= 0.05)
        assert r == pytest.approx(expected, abs=1e-12) and not term
    env.close()


def test_render_rgb_array():
    try:
        env = envs.make("sawyer-push", render_mode="rgb_array", width=64, height=48)
        env.reset(seed=0)
        img = env.render()
    except Exception as e:  # no OpenGL backend on this machine (MUJOCO_GL)
        pytest.skip(f"no offscreen rendering here: {e}")
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    env.close()
    assert envs.make("sawyer-push").render() is None


@pytest.mark.parametrize("task", [[0.0, 1.2], [0.5, 0.8], [0.0, 0.1], [-0.41, 0.5]])
def test_goal_off_the_table_is_a_one_line_error(push, task):
    before = push.task
    with pytest.raises(ValueError) as e:
        push.set_task(task)
    assert "\n" not in str(e.value) and "off the table" in str(e.value)
    np.testing.assert_array_equal(push.task, before)  # the env keeps its task


def test_reach_goal_below_the_table_and_negative_margin_are_one_line_errors(reach):
    with pytest.raises(ValueError) as e:
        reach.set_task([0.0, 0.7, -0.01])
    assert "\n" not in str(e.value) and "below the table" in str(e.value)
    env = envs.make("sawyer-reach-margin")
    with pytest.raises(ValueError) as e:
        env.set_task([0.0, 0.8, 0.1, -0.01])
    assert "\n" not in str(e.value) and "margin" in str(e.value)
    env.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_refused_and_changes_nothing(push, bad):
    push.set_task(push.train_tasks[0])
    obs, _ = push.reset(seed=0)
    push.step(np.array([0.3, 0.5, 0.0, -1.0], np.float32))
    state = push._data.qpos.copy(), push._data.mocap_pos.copy(), push._t
    with pytest.raises(ValueError) as e:
        push.step(np.array([0.0, bad, 0.0, 0.0], np.float32))
    assert "\n" not in str(e.value) and ("NaN" in str(e.value) or "infinite" in str(e.value))
    np.testing.assert_array_equal(push._data.qpos, state[0])
    np.testing.assert_array_equal(push._data.mocap_pos, state[1])
    assert push._t == state[2]
    nxt, *_ = push.step(np.zeros(4, np.float32))  # the episode goes on
    assert np.all(np.isfinite(nxt))
