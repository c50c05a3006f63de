"""Tests of visual-reacher beyond the generic protocol tests in test_envs.py: the observation contract (state
part + channel-first image in [0, 1]), the hidden target, the sparse reward, and what happens without OpenGL.
The image tests skip where no offscreen OpenGL exists, as the other render tests do; the reward tests run
everywhere on the same env with the image left blank (pixels=False)."""

import numpy as np
import pytest

import envs

needs_gl = pytest.mark.skipif(envs.NO_OPENGL, reason="no offscreen OpenGL here; apt-get install libosmesa6 "
                                                     "or set MUJOCO_GL=egl")


def rollout(env, n, seed=0):
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = {k: [] for k in ("obs", "act", "next_obs", "rew", "term", "qpos")}
    for _ in range(n):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        nxt, r, term, trunc, info = env.step(a)
        for k, v in zip(out, (obs, a, nxt, r, term, env.unwrapped.data.qpos.copy())):
            out[k].append(v)
        obs = nxt
        if term or trunc:
            break
    return {k: np.array(v) for k, v in out.items()}


def test_builds_without_opengl_and_refuses_to_reset_in_one_line(monkeypatch):
    monkeypatch.setattr(envs, "NO_OPENGL", True)
    env = envs.make("visual-reacher")
    assert env.observation_space.shape == (2 + 3 * 64 * 64,) and env.image_shape == (3, 64, 64)
    with pytest.raises(RuntimeError) as err:
        env.reset(seed=0)
    assert "\n" not in str(err.value) and "OpenGL" in str(err.value)
    blind = envs.make("visual-reacher", pixels=False)  # the state part alone needs no OpenGL
    obs, _ = blind.reset(seed=0)
    assert obs.shape == env.observation_space.shape and not obs[2:].any()


def test_sparse_reward_by_hand_and_success():
    env = envs.make("visual-reacher", pixels=False)
    u = env.unwrapped
    tip = u.model.body("fingertip").id
    d = rollout(env, 50)
    goal = env.task
    np.testing.assert_array_equal(d["rew"], np.where(d["term"], 0.0, -1.0))
    assert not d["term"][:-1].any()  # an episode ends at the goal
    # the goal the fingertip reached: reward 0 and termination, for each transition
    achieved = env.achieved_task(d["next_obs"], goal)
    r, term = env.evaluate(d["obs"], d["act"], d["next_obs"], achieved)
    assert (r == 0).all() and term.all()
    # a goal 4.9 cm / 5.1 cm away from the last fingertip position
    last = d["next_obs"][-1, :2].astype(np.float64)
    goals = np.array([last + [0.049, 0], last + [0.051, 0]])
    r, term = env.evaluate(d["obs"][-1], d["act"][-1], d["next_obs"][-1], goals)
    np.testing.assert_array_equal(r, [0.0, -1.0])
    np.testing.assert_array_equal(term, [True, False])
    np.testing.assert_allclose(d["next_obs"][-1, :2], u.data.xpos[tip][:2], rtol=1e-6)
    # the (hidden) target body sits on the goal
    np.testing.assert_array_equal(d["qpos"][0, 2:], goal)


def test_goals_in_the_reacher_disk():
    env = envs.make("visual-reacher", pixels=False)
    goals = np.r_[env.train_tasks, env.test_tasks]
    assert np.linalg.norm(goals, axis=1).max() <= 0.2 and len({tuple(g) for g in goals}) == 130


@needs_gl
def test_image_contract_and_hidden_target():
    env = envs.make("visual-reacher", render_mode="rgb_array", width=96, height=96, image_width=48,
                    image_height=40)
    assert env.image_shape == (3, 40, 48) and env.state_dim == 2
    d = rollout(env, 5)
    pix = d["next_obs"][:, 2:]
    np.testing.assert_array_equal(np.rint(pix * 255) / np.float32(255), pix)  # exactly k / 255
    assert 0 <= pix.min() and pix.max() <= 1
    img = env.image(d["next_obs"])
    assert img.shape == (5, 40, 48, 3) and img.dtype == np.uint8 and img.std() > 0
    assert not np.array_equal(img[0], img[-1])  # the arm moves
    # the target (red sphere) is drawn in videos but not in observations
    red = lambda im: ((im[..., 0] > 150) & (im[..., 1] < 80) & (im[..., 2] < 80)).sum()
    frame = env.render()
    assert frame.shape == (96, 96, 3) and red(frame) > 0
    assert red(img) == 0
    env.close()


@needs_gl
def test_pixels_follow_the_arm():
    """Two states with the arm at different angles give different images; the same state the same image."""
    env = envs.make("visual-reacher")
    env.reset(seed=0)
    u = env.unwrapped
    images = []
    for angle in (0.0, 1.5, 0.0):
        u.set_state(np.r_[angle, 0.0, env.task], np.zeros(4))
        images.append(u._get_obs()[2:])
    assert not np.array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[0], images[2])
    env.close()
