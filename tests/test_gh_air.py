"""Tests of gh_air.py: the relabelers on hand-built cases, insertion of both copies, and each mode end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import envs
import gh_air

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hand-built example: 4 cached trajectories (rows) scored under 3 candidate latents (columns).
REFERENCE = np.array([[1.0, 5.0, 0.0],
                      [2.0, 5.0, 10.0],
                      [3.0, 5.0, 20.0],
                      [4.0, 5.0, 30.0]])
NEW = np.array([[4.0, 5.0, 25.0]])     # the new trajectory's returns under the 3 candidates
VALUES = np.array([[3.5, 6.0, 0.0]])   # V(s0, v_k)


def test_percentile_hand_computed():
    # candidate 0: 4 >= 1,2,3,4 -> 4/4; candidate 1: 5 >= 5 (ties count, Eq. 3 uses >=) -> 4/4;
    # candidate 2: 25 >= 0,10,20 but not 30 -> 3/4
    np.testing.assert_array_equal(gh_air.percentile(NEW, REFERENCE), [[1.0, 1.0, 0.75]])


def test_advantage_score_is_return_minus_value():
    np.testing.assert_array_equal(gh_air.advantage(NEW, VALUES), [[0.5, -1.0, 25.0]])


def test_air_breaks_percentile_ties_by_advantage():
    pct, adv = gh_air.percentile(NEW, REFERENCE), gh_air.advantage(NEW, VALUES)
    # candidates 0 and 1 tie at the top percentile; 0 has the higher advantage (0.5 > -1). Candidate 2 has by
    # far the highest return and advantage but a lower percentile, so AIR must not pick it.
    assert gh_air.air_choice(pct, adv, 1).tolist() == [[0]]
    assert gh_air.air_choice(pct, adv, 3).tolist() == [[0, 1, 2]]
    # the tie-break really decides: flip the advantages of the tied pair and the choice flips
    assert gh_air.air_choice(pct, adv[:, [1, 0, 2]], 1).tolist() == [[1]]


def test_advantage_relabeling_takes_highest_advantage():
    adv = gh_air.advantage(NEW, VALUES)
    assert gh_air.advantage_choice(adv, 1).tolist() == [[2]]
    assert gh_air.advantage_choice(adv, 2).tolist() == [[2, 0]]


def test_percentile_batch_is_rowwise():
    new = np.concatenate([NEW, [[0.0, 4.0, 30.0]]])
    np.testing.assert_array_equal(gh_air.percentile(new, REFERENCE), [[1.0, 1.0, 0.75], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def reacher():
    return envs.make("point-reacher", seed=0)


def collect(env, n, seed=0):
    torch.manual_seed(seed)
    actor = gh_air.Actor(env.observation_space.shape[0], env.action_space.shape[0], env.task_dim, (8, 8))
    env_list = [envs.make("point-reacher", seed=i) for i in range(n)]
    tasks = env.sample_tasks(n, np.random.default_rng(seed))
    return gh_air.rollout(env_list, tasks, actor, "cpu", deterministic=False), actor


def test_trajectory_returns_match_a_loop_over_env_evaluate(reacher):
    (traj, ep_ret, _), _ = collect(reacher, 3)
    cands = reacher.sample_tasks(4, np.random.default_rng(1))
    gamma = 0.9
    got = gh_air.trajectory_returns(reacher, traj, None, cands, gamma, max_elements=50)  # forces chunking
    for i in range(3):
        for k in range(4):
            r, _ = reacher.evaluate(traj["obs"][i], traj["act"][i], traj["next_obs"][i], cands[k])
            disc = gamma ** np.arange(len(r)) * traj["mask"][i]
            assert got[i, k] == pytest.approx((r * disc).sum(), rel=1e-12, abs=1e-12)
    # under its own latent and gamma = 1, the return is what env.step paid
    own = gh_air.trajectory_returns(reacher, traj, None, traj["task"], 1.0)
    np.testing.assert_allclose(np.diag(own), ep_ret, rtol=1e-12)


def test_reward_features_give_the_same_returns():
    if "cheetah-multi-objective" not in envs.names():
        pytest.skip("cheetah-multi-objective not registered")
    env = envs.make("cheetah-multi-objective", seed=0, horizon=30)
    torch.manual_seed(0)
    actor = gh_air.Actor(env.observation_space.shape[0], env.action_space.shape[0], env.task_dim, (8, 8))
    tasks = env.sample_tasks(2, np.random.default_rng(0))
    traj, _, _ = gh_air.rollout([env, envs.make("cheetah-multi-objective", seed=1, horizon=30)], tasks, actor,
                                "cpu", False)
    cands = env.sample_tasks(5, np.random.default_rng(1))
    phi = gh_air.discounted_feature_sums(env, traj, 0.99)
    np.testing.assert_allclose(gh_air.trajectory_returns(env, traj, phi, cands, 0.99),
                               gh_air.trajectory_returns(env, traj, None, cands, 0.99), rtol=1e-9, atol=1e-9)


def test_state_value_is_min_q_at_the_mean_action(reacher):
    torch.manual_seed(0)
    od, ad, td = reacher.observation_space.shape[0], reacher.action_space.shape[0], reacher.task_dim
    actor, q1, q2 = gh_air.Actor(od, ad, td, (8, 8)), gh_air.SoftQNetwork(od, ad, td, (8,)), \
        gh_air.SoftQNetwork(od, ad, td, (8,))
    obs0 = np.random.default_rng(0).normal(size=(2, od)).astype(np.float32)
    cands = reacher.sample_tasks(3, np.random.default_rng(0))
    v = gh_air.state_value(actor, q1, q2, obs0, cands, "cpu")
    assert v.shape == (2, 3)
    with torch.no_grad():
        for b in range(2):
            for k in range(3):
                s, z = torch.tensor(obs0[b:b + 1]), torch.tensor(cands[k:k + 1], dtype=torch.float32)
                mean, _ = actor(s, z)
                a = torch.tanh(mean)
                assert v[b, k] == pytest.approx(min(q1(s, a, z).item(), q2(s, a, z).item()), rel=1e-5)


def test_both_copies_inserted_with_rewards_of_env_evaluate(reacher):
    (traj, ep_ret, _), _ = collect(reacher, 2)
    h = reacher.horizon
    buf = gh_air.ReplayBuffer(100, reacher.observation_space.shape[0], reacher.action_space.shape[0],
                              reacher.task_dim)
    relabels = reacher.sample_tasks(2, np.random.default_rng(5))[:, None]  # (B=2, m=1, d)
    relabels[1, 0] = traj["task"][1]  # trajectory 1 "relabeled" with its own latent: stored once only
    frac = gh_air.insert(buf, reacher, traj, relabels)
    assert frac == 0.5 and buf.size == 3 * h
    stored = [(0, traj["task"][0]), (0, relabels[0, 0]), (1, traj["task"][1])]  # (trajectory, latent) per copy
    for c, (i, z) in enumerate(stored):
        rows = slice(c * h, (c + 1) * h)
        r, d = reacher.evaluate(traj["obs"][i], traj["act"][i], traj["next_obs"][i], z)
        np.testing.assert_array_equal(buf.obs[rows], traj["obs"][i])
        np.testing.assert_array_equal(buf.act[rows], traj["act"][i])
        np.testing.assert_allclose(buf.rew[rows], r.astype(np.float32))
        np.testing.assert_array_equal(buf.done[rows], d)
        np.testing.assert_allclose(buf.task[rows], np.broadcast_to(z, (h, len(z))).astype(np.float32))
    # the original copies carry exactly what env.step paid
    assert buf.rew[:h].sum() == pytest.approx(ep_ret[0], rel=1e-5)
    assert not np.allclose(buf.rew[h:2 * h], buf.rew[:h])  # the relabeled copy really has other rewards


def test_candidates_contain_the_batch_latents(reacher):
    own = reacher.sample_tasks(3, np.random.default_rng(0))
    cands = gh_air.sample_candidates(reacher, own, 10, np.random.default_rng(1))
    assert cands.shape == (10, reacher.task_dim)
    np.testing.assert_array_equal(cands[-3:], own)


TINY = ["--total-timesteps", "120", "--learning-starts", "40", "--grad-steps", "3", "--batch-size", "16",
        "--hidden", "16", "16", "--num-candidates", "10", "--cache-size", "8", "--eval-every", "2",
        "--num-eval-tasks", "2"]


def run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "gh_air.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, **kw)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("relabel", ["air", "advantage", "random", "none"])
def test_end_to_end_train_and_resume(relabel, tmp_path):
    d = str(tmp_path / relabel)
    p = run(["--env", "point-reacher", "--relabel", relabel, "--run-dir", d, "--seed", "3", *TINY])
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_jsonl(os.path.join(d, "eval.jsonl"))
    last = rows[-1]
    assert last["env_steps"] == 120 and last["grad_updates"] > 0
    for k in ("iteration", "wall_time", "eval/return", "time/collect", "time/update", "time/relabel",
              "time/eval"):
        assert np.isfinite(last[k]), k
    frac = last["relabel/fraction_relabeled"]
    assert frac == {"none": 0.0, "random": 1.0}.get(relabel, frac) and 0 <= frac <= 1
    if relabel == "air":
        assert "relabel/chosen_percentile" in last
    assert os.path.isfile(os.path.join(d, "checkpoint.pt")) and os.path.isfile(os.path.join(d, "args.json"))
    if relabel == "random":  # same seed, same run: identical evaluations and relabeling statistics
        d2 = str(tmp_path / "again")
        p = run(["--env", "point-reacher", "--relabel", relabel, "--run-dir", d2, "--seed", "3", *TINY])
        assert p.returncode == 0, p.stderr[-2000:]
        drop = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "wall"))}
        assert [drop(r) for r in read_jsonl(os.path.join(d2, "eval.jsonl"))] == [drop(r) for r in rows]
    p = run(["--env", "point-reacher", "--relabel", relabel, "--resume", os.path.join(d, "checkpoint.pt"),
             *TINY[2:], "--total-timesteps", "160"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed" in p.stdout
    rows = read_jsonl(os.path.join(d, "eval.jsonl"))
    assert rows[-1]["env_steps"] == 160 and rows[-1]["iteration"] == last["iteration"] + 2
    assert rows[-1]["grad_updates"] == last["grad_updates"] + 2 * 3
    if relabel == "air":  # the trained checkpoint also serves the fidelity analysis (paper Fig. 6)
        p = run(["--env", "point-reacher", "--mode", "fidelity", "--resume", os.path.join(d, "checkpoint.pt"),
                 "--fidelity-tasks", "30", "--num-candidates", "10", "--num-eval-tasks", "4"])
        assert p.returncode == 0, p.stderr[-2000:]
        with open(os.path.join(d, "fidelity.json")) as f:
            out = json.load(f)
        assert set(out) == {"true", "air", "advantage", "reward"} and all(len(v) == 20 for v in out.values())
        assert all(0 <= w <= 1 for v in out.values() for w in v)  # energy weights are >= 0 under the prior


@pytest.mark.parametrize("kw", [
    dict(env="no-such-env"),
    dict(env="point-robot"),  # a family whose tasks are not latent reward weights GH was written for
    dict(relabel="bogus"),
    dict(num_candidates=0),
    dict(num_candidates=1, relabel="air"),  # K must exceed the batch, whose own latents are candidates
    dict(cache_size=-3),
    dict(gamma=1.5),
    dict(resume="/no/such/checkpoint.pt"),
    dict(resume=__file__),  # a file that is not a checkpoint
    dict(mode="fidelity"),  # needs a checkpoint
])
def test_bad_input_is_a_one_line_error(kw):
    with pytest.raises(SystemExit) as e:
        gh_air.resolve_args(gh_air.Args(**kw))
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg


def test_bad_input_from_the_command_line_has_no_traceback():
    p = run(["--env", "point-robot"])
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "point-reacher" in p.stderr
