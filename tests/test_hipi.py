"""Tests of hipi.py: the relabeler against hand-computed cases (Eq. 8's logits, log Z, the authors' candidate
semantics, HER's copies), the SAC temperature update, every bad input as one line (in-process), and end to end
through the command line: SIGTERM, exact resume, HIPI-BC and a learning check (tiny flags, seconds)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import envs
import hipi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Args:
    """The fields of hipi.Args that relabel() reads."""

    def __init__(self, relabel_fraction=0.5, gamma=0.5, no_partition=False, candidates="tasks", num_candidates=None):
        self.relabel_fraction, self.gamma, self.no_partition = relabel_fraction, gamma, no_partition
        self.candidates, self.num_candidates = candidates, num_candidates


class StubActor:
    """pi(. | s, psi) = tanh N(s * psi, 1), so for the stored action a = 0: -log pi(0 | s, psi) = (s psi)^2 / 2 + C
    with C = log(2 pi) / 2 (1-D obs, tasks and actions)."""

    def __call__(self, obs, task):
        return obs * task, torch.zeros_like(obs)


C = 0.5 * math.log(2 * math.pi)


def stub_q(obs, task, act):
    """Q1(s', a', psi) = s' + psi."""
    return obs[:, 0] + task[:, 0]


class LineEnv:
    """A hand-built 1-D goal family: r = 0 and terminal within `radius` of the goal, else r = `miss`."""

    def __init__(self, radius=0.5, miss=-1.0):
        self.radius, self.miss = radius, miss

    def evaluate(self, obs, action, next_obs, task):
        at = np.abs(np.asarray(next_obs, float)[..., 0] - np.asarray(task, float)[..., 0]) < self.radius
        shape = np.broadcast_shapes(np.shape(obs)[:-1], np.shape(next_obs)[:-1], np.shape(task)[:-1])
        return np.broadcast_to(np.where(at, 0.0, self.miss), shape).copy(), np.broadcast_to(at, shape).copy()

    def achieved_task(self, obs, task):
        obs, task = np.asarray(obs, float), np.asarray(task, float)
        return np.broadcast_to(obs[..., :1], np.broadcast_shapes(obs.shape[:-1], task.shape[:-1]) + (1,)).copy()


# 3 transitions x 3 tasks, gamma = 0.5, stored actions 0; by hand,
# L[i, j] = r_ij + (s_i psi_j)^2 / 2 + C + 0.5 (1 - d_ij) (s'_i + psi_j):
S, S2, PSI = [1.0, 2.0, 3.0], [0.0, 1.0, -1.0], [0.0, 1.0, 2.0]
R = [[0, -1, -1], [-1, 0, -1], [-1, -1, 0]]
D = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
L_HAND = np.array([[0.0, 0.0, 2.0],     # row 0: 0 | -1 + 0.5 + 0.5 * 1 | -1 + 2 + 0.5 * 2
                   [-0.5, 2.0, 8.5],    # row 1: -1 + 0 + 0.5 * 1 | 0 + 2 | -1 + 8 + 0.5 * 3
                   [-1.5, 3.5, 18.0]]) + C  # row 2: -1 + 0 - 0.5 | -1 + 4.5 + 0 | 0 + 18
# log Z_j - C = log sum_i exp(L[i, j] - C): log(1 + e^-0.5 + e^-1.5), log(1 + e^2 + e^3.5), log(e^2 + e^8.5 + e^18)
LOGZ_HAND = np.array([0.604131, 3.725802, 18.000075]) + C


def hand_logits():
    t = lambda x: torch.tensor(x, dtype=torch.float32)
    col = lambda x: t(x)[:, None]
    return hipi.relabel_logits(StubActor(), stub_q, col(S), torch.zeros(3, 1), col(S2), col(PSI), t(R), t(D), 0.5)


def test_logit_matrix_and_log_partition_3x3():
    L = hand_logits()
    np.testing.assert_allclose(L.numpy(), L_HAND, atol=1e-5)
    np.testing.assert_allclose(hipi.log_partition(L).numpy(), LOGZ_HAND, atol=1e-5)
    log_q = hipi.relabel_log_probs(L).numpy()
    expected = L_HAND - LOGZ_HAND[None]
    expected = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(log_q), expected, atol=1e-5)
    # Fig. 8's ablation: without log Z the rows are plain softmaxes of L, and row 0 then prefers task 2
    # (largest raw logit) whereas the partition moves its mass to task 0
    plain = np.exp(hipi.relabel_log_probs(L, partition=False).numpy())
    np.testing.assert_allclose(plain, np.exp(L_HAND) / np.exp(L_HAND).sum(1, keepdims=True), atol=1e-5)
    assert plain[0].argmax() == 2 and np.exp(log_q[0]).argmax() == 0


def test_batched_logits_equal_one_pair_at_a_time_with_real_networks():
    torch.manual_seed(0)
    actor, qf1 = hipi.Actor(3, 2, 2, 16), hipi.SoftQNetwork(3, 2, 2, 16)
    obs, next_obs, cands = torch.randn(5, 3), torch.randn(5, 3), torch.randn(4, 2)
    act, rew = torch.rand(5, 2) * 2 - 1, torch.randn(5, 4)
    with torch.no_grad():  # gamma = 0 leaves the deterministic part r - log pi(a_i | s_i, psi_j)
        L = hipi.relabel_logits(actor, qf1, obs, act, next_obs, cands, rew, torch.zeros(5, 4), 0.0)
        loop = [[rew[i, j] - actor.log_prob(obs[i:i + 1], cands[j:j + 1], act[i:i + 1])[0] for j in range(4)]
                for i in range(5)]
    np.testing.assert_allclose(L.numpy(), np.array(loop, dtype=np.float32), rtol=1e-5, atol=1e-5)


def test_gumbel_max_follows_the_distribution():
    log_q = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]))
    n = 30_000
    rows = np.repeat(log_q, n, axis=0)
    picks = hipi.gumbel_max(rows, np.random.default_rng(0)).reshape(3, n)
    freq = np.stack([(picks == j).mean(1) for j in range(3)], axis=1)
    # binomial standard error <= 0.0029 at n = 30,000: 5 sigma
    np.testing.assert_allclose(freq, np.exp(log_q), atol=0.015)
    assert np.array_equal(picks, hipi.gumbel_max(rows, np.random.default_rng(0)).reshape(3, n))


@pytest.mark.parametrize("kind", ["hipi", "random"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_original_task_kept_for_the_requested_fraction(kind, fraction):
    rng = np.random.default_rng(1)
    B = 4000
    batch = {"obs": rng.normal(size=(B, 1)), "act": np.zeros((B, 1)), "next_obs": rng.normal(size=(B, 1)),
             "task": np.full((B, 1), -5.0), "rew": np.full(B, -1.0), "term": np.zeros(B, bool)}
    task_list = np.array([[10.0], [11.0], [12.0]])  # a finite task list none of whose tasks was commanded
    tasks, rew, term, stats = hipi.relabel(kind, batch, LineEnv(), task_list, StubActor(), stub_q,
                                           Args(relabel_fraction=fraction), rng, "cpu")
    changed = np.any(tasks != batch["task"], axis=1)
    assert abs(changed.mean() - fraction) < 0.03 and stats["relabel/fraction_changed"] == changed.mean()
    assert np.all(np.isin(tasks[changed, 0], task_list[:, 0]))
    assert np.all(tasks[~changed] == -5.0)


# A hand-built batch for the authors' candidate semantics. Goals within 5 of the next state give r = 0, others
# r = -50; the stub networks add the same number to every task of a row, so q(psi | row) is (to e^-50) one-hot:
# row 0 (s' = 10) -> task 12, row 1 (s' = 20) -> task 21, row 2 (s' = 0) -> task 0. The states (100, 200, 300)
# are far from every next state and task, so had they been scored their logits would all be -50 (uniform).
HAND_BATCH = {"obs": np.array([[100.0], [200.0], [300.0]]), "act": np.zeros((3, 1)),
              "next_obs": np.array([[10.0], [20.0], [0.0]]), "task": np.array([[0.0], [12.0], [21.0]])}
GATHERED = {  # what each --candidates turns the sampled index j = (1, 2, 0) into
    "tasks": [12.0, 21.0, 0.0],          # task j itself (the authors' README)
    "states": [200.0, 300.0, 100.0],     # the goal state j of the batch achieves (the authors' code default)
    "next_states": [20.0, 0.0, 10.0],    # the goal next state j achieves
    "scored_next_states": [10.0, 20.0, 0.0]}  # not the authors': next-state goals scored, each row its own


class ZeroActor:
    def __call__(self, obs, task):
        return torch.zeros(obs.shape[0], 1), torch.zeros(obs.shape[0], 1)


@pytest.mark.parametrize("candidates", list(GATHERED))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_run_over_tasks_and_states_are_gathered_after_sampling(candidates, seed):
    env = LineEnv(radius=5.0, miss=-50.0)
    batch = dict(HAND_BATCH)
    batch["rew"], batch["term"] = env.evaluate(batch["obs"], batch["act"], batch["next_obs"], batch["task"])
    zero_q = lambda obs, task, act: torch.zeros(obs.shape[0])
    tasks, rew, term, _ = hipi.relabel("hipi", batch, env, None, ZeroActor(), zero_q,
                                       Args(relabel_fraction=1.0, candidates=candidates),
                                       np.random.default_rng(seed), "cpu")
    np.testing.assert_array_equal(tasks[:, 0], GATHERED[candidates])
    r, d = env.evaluate(batch["obs"], batch["act"], batch["next_obs"], tasks)
    np.testing.assert_array_equal(rew, r)
    np.testing.assert_array_equal(term, d)


def test_a_finite_task_list_is_the_task_set():
    env = LineEnv(radius=5.0, miss=-50.0)
    batch = dict(HAND_BATCH)
    batch["rew"], batch["term"] = env.evaluate(batch["obs"], batch["act"], batch["next_obs"], batch["task"])
    task_list = np.array([[99.0], [0.0], [12.0], [21.0]])  # K = 4 tasks, B = 3 rows; 99 suits no row
    zero_q = lambda obs, task, act: torch.zeros(obs.shape[0])
    tasks, _, _, _ = hipi.relabel("hipi", batch, env, task_list, ZeroActor(), zero_q, Args(relabel_fraction=1.0),
                                  np.random.default_rng(0), "cpu")
    np.testing.assert_array_equal(tasks[:, 0], [12.0, 21.0, 0.0])


def rollout_buffer(env, n, seed):
    """Random-action transitions of `env` in a ReplayBuffer, one sampled task per episode."""
    rng = np.random.default_rng(seed)
    rb = hipi.ReplayBuffer(n, env.observation_space.shape[0], 2, env.task_dim)
    task = env.sample_tasks(1, rng)[0]
    env.set_task(task)
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        next_obs, r, term, trunc, _ = env.step(a)
        rb.add(obs, a, r, next_obs, term, task)
        obs = next_obs
        if term or trunc:
            task = env.sample_tasks(1, rng)[0]
            env.set_task(task)
            obs, _ = env.reset()
    return rb


@pytest.mark.parametrize("kind,candidates", [("hipi", c) for c in GATHERED] + [("random", "states")])
def test_relabeled_rewards_equal_env_evaluate(kind, candidates):
    env = envs.make("four-rooms", seed=0)
    rb = rollout_buffer(env, 400, seed=0)
    torch.manual_seed(0)
    actor, qf1 = hipi.Actor(2, 2, 2, 16), hipi.SoftQNetwork(2, 2, 2, 16)
    rng = np.random.default_rng(0)
    batch = rb.sample(rng.integers(rb.size, size=64))
    # stored rewards are what env.step returned for the commanded task
    np.testing.assert_array_equal(batch["rew"], env.evaluate(batch["obs"], batch["act"], batch["next_obs"],
                                                             batch["task"])[0])
    tasks, rew, term, _ = hipi.relabel(kind, batch, env, None, actor, qf1, Args(0.5, 0.99, candidates=candidates),
                                       rng, "cpu")
    r, d = env.evaluate(batch["obs"], batch["act"], batch["next_obs"], tasks)
    np.testing.assert_array_equal(rew, r)
    np.testing.assert_array_equal(term, d)
    changed = np.any(tasks != batch["task"], axis=1)
    assert 0.3 < changed.mean() < 0.7
    source = {"tasks": "task", "states": "obs", "next_states": "next_obs", "scored_next_states": "next_obs"}
    assert all(any(np.array_equal(g, x[:2]) for x in batch[source[candidates]]) for g in tasks[changed])


def hand_episode(T):
    """One 1-D episode of T transitions reaching positions 1, 2, ..., T under the commanded goal 100."""
    return {"obs": np.arange(T, dtype=float)[:, None], "act": np.zeros((T, 1)),
            "next_obs": np.arange(1, T + 1, dtype=float)[:, None], "task": np.full((T, 1), 100.0),
            "rew": np.full(T, -1.0), "term": np.zeros(T, bool)}


def test_her_final_stores_each_transition_and_one_copy_with_the_final_goal():
    env, ep = LineEnv(), hand_episode(5)
    rows = hipi.her_relabel("final", ep, env, np.random.default_rng(0))
    np.testing.assert_array_equal(rows["task"][:, 0], [100, 5] * 5)  # original, then the copy, per transition
    np.testing.assert_array_equal(rows["obs"][:, 0], np.repeat(np.arange(5.0), 2))
    np.testing.assert_array_equal(rows["next_obs"][:, 0], np.repeat(np.arange(1.0, 6.0), 2))
    r, d = env.evaluate(rows["obs"], rows["act"], rows["next_obs"], rows["task"])
    np.testing.assert_array_equal(rows["rew"], r)
    np.testing.assert_array_equal(rows["term"], d)
    assert rows["term"].sum() == 1 and rows["term"][-1]  # only the last transition reaches the final goal


def test_her_future_draws_4_goals_uniformly_over_the_rest_of_the_whole_episode():
    env, T = LineEnv(), 10
    counts = np.zeros((T, T), int)  # counts[t, j]: copies of transition t relabeled to the goal of step j
    rng = np.random.default_rng(0)
    for _ in range(400):
        rows = hipi.her_relabel("future", hand_episode(T), env, rng)
        assert len(rows["task"]) == 5 * T  # the original and 4 copies: 80 % of the stored rows relabeled
        groups = rows["task"][:, 0].reshape(T, 5)
        assert np.all(groups[:, 0] == 100) and np.all(rows["obs"][:, 0].reshape(T, 5) == np.arange(T)[:, None])
        goals = groups[:, 1:].astype(int) - 1  # the goal next state j achieves is j + 1
        for t in range(T):
            counts[t] += np.bincount(goals[t], minlength=T)
        r, d = env.evaluate(rows["obs"], rows["act"], rows["next_obs"], rows["task"])
        np.testing.assert_array_equal(rows["rew"], r)
    assert np.all(np.tril(counts, -1) == 0)  # never a step before the transition
    for t in range(T):  # uniform over j = t .. T-1 (1600 draws per row: 5 sigma of a binomial)
        p = 1 / (T - t)
        sigma = math.sqrt(1600 * p * (1 - p))
        assert np.all(np.abs(counts[t, t:] - 1600 * p) <= 5 * sigma + 1e-9), counts[t]


def test_alpha_update_is_tf_agents_on_log_alpha_with_a_fresh_action_of_the_updated_actor():
    class RecordingActor(hipi.Actor):
        def sample(self, obs, task):
            a, logp = super().sample(obs, task)
            self.calls.append((logp.detach().clone(), self.net[0].weight.detach().clone()))
            return a, logp

    torch.manual_seed(0)
    actor = RecordingActor(3, 2, 2, 16)
    actor.calls = []
    qs = [hipi.SoftQNetwork(3, 2, 2, 16) for _ in range(4)]
    nets = dict(zip(("actor", "qf1", "qf2", "qf1_target", "qf2_target"), [actor] + qs))
    log_alpha = torch.tensor([0.3], requires_grad=True)
    opts = {"q_optimizer": torch.optim.Adam([p for q in qs[:2] for p in q.parameters()], lr=1e-3),
            "actor_optimizer": torch.optim.Adam(actor.parameters(), lr=1e-3),
            "a_optimizer": torch.optim.Adam([log_alpha], lr=1e-3)}
    o, o2, p = torch.randn(8, 3), torch.randn(8, 3), torch.randn(8, 2)
    a, r, d = torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.zeros(8)
    w0 = actor.net[0].weight.detach().clone()
    args = type("A", (), {"gamma": 0.9, "tau": 0.005, "grad_clip": 0.0})()
    hipi.sac_update(nets, opts, log_alpha, -1.0, o, a, r, o2, d, p, args)
    logp_new, w_at_call = actor.calls[-1]
    assert len(actor.calls) == 3 and not torch.equal(w_at_call, w0)  # sampled after the actor's step
    assert torch.equal(w_at_call, actor.net[0].weight)
    # d/d log_alpha of mean(log_alpha * (-log pi - target)) = mean(-log pi) - target (target -1)
    np.testing.assert_allclose(log_alpha.grad.item(), (-logp_new).mean().item() + 1.0, rtol=1e-5)


def test_log_prob_of_a_sampled_action_matches_sample():
    torch.manual_seed(0)
    actor = hipi.Actor(3, 2, 2, 16)
    obs, task = torch.randn(50, 3), torch.randn(50, 2)
    a, logp = actor.sample(obs, task)
    np.testing.assert_allclose(actor.log_prob(obs, task, a).detach().numpy(), logp.detach().numpy(), atol=1e-3)


def test_trajectory_returns_end_at_the_first_terminal_under_each_task():
    # one trajectory of 4 valid steps plus one padded step, positions 1, 2, 3, 4 (then 2 in the padding)
    data = {"obs": np.zeros((1, 5, 1)), "act": np.zeros((1, 5, 1)),
            "next_obs": np.array([[[1.0], [2.0], [3.0], [4.0], [2.0]]]), "length": np.array([4])}
    R, length = hipi.trajectory_returns(LineEnv(), data, np.array([[2.0], [10.0], [1.0]]))
    np.testing.assert_array_equal(R, [[-1.0, -4.0, 0.0]])  # goal 2 reached at step 2, 10 never, 1 at step 1
    np.testing.assert_array_equal(length, [[2, 4, 1]])


def test_replay_buffer_keeps_its_layout_when_resumed_with_another_capacity():
    small, big = hipi.ReplayBuffer(4, 1, 1, 1), hipi.ReplayBuffer(6, 1, 1, 1)
    for i in range(6):  # 4 slots: after 6 adds the ring holds 4, 5, 2, 3 (oldest first: 2, 3, 4, 5)
        small.add([i], [0], i, [i], False, [0])
    big.load(small.state())
    np.testing.assert_array_equal(big.obs[: big.size, 0], [2, 3, 4, 5])
    assert big.ptr == 4
    same = hipi.ReplayBuffer(4, 1, 1, 1)
    same.load(small.state())
    np.testing.assert_array_equal(same.obs[:, 0], small.obs[:, 0])
    assert same.ptr == small.ptr == 2


# ------------------------------------------------------------------------------------- the command line, in-process
@pytest.fixture
def parse_error(one_line_error):
    """The one stderr line of a command line that hipi.parse_command_line refuses with exit code 2."""
    return lambda argv: one_line_error(hipi.parse_command_line, argv)


@pytest.mark.parametrize("argv,needle", [
    (["--total-timesteps", "0"], "--total-timesteps 0"),
    (["--gamma", "2"], "--gamma 2.0"),
    (["--gamma", "0"], "--gamma 0.0"),
    (["--buffer-size", "0"], "--buffer-size 0"),
    (["--lr", "-0.001"], "--lr -0.001"),
    (["--lr", "nan"], "--lr nan"),
    (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2**31)], "--seed"),
    (["--tau", "0"], "--tau"),
    (["--batch-size", "0"], "--batch-size"),
    (["--updates-per-step", "0"], "--updates-per-step"),
    (["--relabel-fraction", "1.5"], "--relabel-fraction"),
    (["--num-candidates", "0"], "--num-candidates"),
    (["--target-entropy", "inf"], "--target-entropy"),
    (["--bc-val-fraction", "1"], "--bc-val-fraction"),
    (["--relabel", "bogus"], "--relabel"),
    (["--batch-size", "x"], "--batch-size"),
    (["--env", "no-such-env"], "--env no-such-env"),
    (["--env", "point-trajectory", "--relabel", "final"], "--relabel final"),
    (["--env", "point-trajectory", "--candidates", "states"], "--candidates states"),
    (["--env", "four-corners", "--candidates", "next_states"], "--candidates next_states"),
    (["--env", "four-rooms", "--relabel", "future", "--relabel-fraction", "0.3"], "--relabel-fraction"),
    (["--env", "four-rooms", "--relabel", "none", "--candidates", "states"], "--candidates"),
    (["--clip-critic", "0", "-1"], "--clip-critic 0 -1"),
    (["--clip-critic", "-1", "inf"], "--clip-critic"),
    (["--env", "dm-reacher-discrete", "--relabel", "future"], "--relabel future"),  # one-hot tasks: no goals
    (["--env", "dm-reacher-discrete", "--candidates", "scored_next_states"], "--candidates scored_next_states"),
    (["--mode", "bc", "--dataset", "/no/such.npz"], "--dataset"),
    (["--mode", "bc", "--relabel", "final", "--dataset", "/no/such.npz"], "--relabel final"),
    (["--resume", "/no/such/checkpoint.pt"], "--resume"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, parse_error):
    assert needle in parse_error(argv)


def test_defaults_resolve_per_env_and_target_entropy_is_tf_agents():
    args, env, _, finite, ckpt = hipi.parse_command_line(["--env", "four-rooms"])
    assert (args.total_timesteps, args.learning_starts, args.batch_size, args.hidden) == (1_000_000, 10_000, 32, 32)
    assert args.eval_every == 10_000
    assert args.target_entropy == -1.0 and not finite and ckpt is None  # -|A| / 2 with |A| = 2
    assert hipi.parse_command_line(["--env", "four-corners", "--target-entropy", "-2"])[3]


@pytest.mark.parametrize("env_name,hidden,clip,finite", [
    ("dm-reacher", 64, (-1000.0, 0.0), False), ("dm-reacher-discrete", 64, (-1000.0, 0.0), True),
    ("dm-finger", 64, (-1000.0, 0.0), False), ("dm-quadruped", 256, (0.0, 0.0), False)])
def test_dm_control_families_get_the_authors_readme_settings(env_name, hidden, clip, finite):
    """The README's commands (batch 32, clip_critic (-1000, 0) on finger and reachers) with App. C.1's widths; the
    discrete reacher relabels over its whole list of 32 one-hot tasks."""
    args, env, _, is_finite, _ = hipi.parse_command_line(["--env", env_name])
    assert (args.batch_size, args.hidden, args.clip_critic, args.grad_clip) == (32, hidden, clip, 0.0)
    assert (args.total_timesteps, args.learning_starts, args.updates_per_step) == (1_000_000, 10_000, 1)
    assert is_finite == finite and args.relabel_fraction == 0.5


def test_clip_critic_squashes_the_critic_into_its_range():
    torch.manual_seed(0)
    plain = hipi.SoftQNetwork(3, 2, 1, 8)
    clipped = hipi.SoftQNetwork(3, 2, 1, 8, (-1000.0, 0.0))
    clipped.load_state_dict(plain.state_dict())  # no extra parameters: checkpoints keep their layout
    obs, task, act = 100 * torch.randn(64, 3), torch.randn(64, 1), torch.randn(64, 2)
    raw = plain.net(torch.cat([obs, task, act], -1)).squeeze(-1)
    torch.testing.assert_close(plain(obs, task, act), raw)
    q = clipped(obs, task, act)
    torch.testing.assert_close(q, -1000.0 + 1000.0 * torch.sigmoid(raw))
    assert (q <= 0).all() and (q >= -1000).all() and raw.abs().max() > 5  # some outputs far outside sigmoid's middle


def test_help_shows_the_chosen_envs_defaults_and_cost(capsys):
    with pytest.raises(SystemExit) as e:
        hipi.parse_command_line(["--env", "sparse-point-robot", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "paper defaults for --env sparse-point-robot" in " ".join(out.split())
    assert "total_timesteps=50000" in out and "a paper-size run costs" in out
    with pytest.raises(SystemExit) as e:
        hipi.parse_command_line(["--env", "no-such-env", "--help"])
    assert e.value.code == 0 and "four-rooms:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- end to end
def run(*flags, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "hipi.py"), *flags], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


# HER's replay-time staging and the exact resume of an episode cut by an iteration (75-step episodes, 40-step
# iterations) are what this run exercises; 10 iterations
TINY = ["--env", "four-rooms", "--relabel", "future", "--learning-starts", "30", "--eval-every", "40",
        "--batch-size", "16", "--hidden", "16", "--num-eval-tasks", "1", "--total-timesteps", "400"]


def records(run_dir):
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


def comparable(rows):
    return [{k: v for k, v in r.items() if k != "wall_time" and not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run, which also saves a small dataset for HIPI-BC."""
    d = tmp_path_factory.mktemp("hipi") / "reference"
    run(*TINY, "--run-dir", str(d), "--save-dataset", str(d / "ds.npz"), "--dataset-episodes", "12")
    return d


def test_reference_run_logs_every_iteration(reference):
    recs = records(reference)
    assert [r["env_steps"] for r in recs] == list(range(40, 401, 40))
    last = recs[-1]
    for key in ("eval/return", "eval/success_rate", "eval/return_train_tasks", "time/collect", "time/update",
                "time/relabel", "time/eval", "losses/qf_loss", "losses/alpha"):
        assert key in last, key
    assert last["grad_steps"] == 40
    with np.load(reference / "ds.npz") as f:
        assert f["obs"].shape == (12, 75, 2) and f["length"].min() >= 1


def test_sigterm_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    d = tmp_path / "run"
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "hipi.py"), *TINY, "--run-dir", str(d)], cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 240
    while not (d / "checkpoint.pt").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("stopped by SIGTERM; the last finished checkpoint is ") and str(d) in lines[0]
    ckpt = hipi.load_checkpoint(str(d))
    assert f"(iteration {ckpt['iteration']})" in lines[0] and ckpt["iteration"] < 9
    # a crash after a log row but before its checkpoint: the resumed run must drop the row and write it again
    with open(d / "eval.jsonl", "a") as f:
        f.write(json.dumps({"iteration": ckpt["iteration"] + 1, "env_steps": -1}) + "\n")
    p = run("--resume", str(d))
    assert "warning" not in p.stderr
    resumed = records(d)
    assert [r["iteration"] for r in resumed] == list(range(10))
    assert comparable(resumed) == comparable(records(reference))


def test_checkpoints_of_another_script_env_or_cut_off_are_one_line(reference, tmp_path, capsys, parse_error):
    ckpt = str(reference / "checkpoint.pt")
    assert "written for --env four-rooms, not --env point-robot" in parse_error(
        ["--resume", ckpt, "--env", "point-robot"])
    other = tmp_path / "pearl.pt"
    torch.save({"format": 1, "script": "pearl.py", "args": {}}, other)
    assert "written by pearl.py, not hipi.py" in parse_error(["--resume", str(other)])
    data = open(ckpt, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cut.pt", "empty.pt"):
        assert "not a readable checkpoint" in parse_error(["--resume", str(tmp_path / name)])
    # flags that differ from the checkpoint's: the run length is taken, the rest kept, each with one warning
    args = hipi.parse_command_line(["--resume", ckpt, "--total-timesteps", "800", "--lr", "0.01"])[0]
    err = capsys.readouterr().err.splitlines()
    assert args.total_timesteps == 800 and args.lr == 3e-4 and args.relabel == "future"
    assert err == ["warning: --total-timesteps 800 (the checkpoint's run had 400): using 800",
                   "warning: --lr 0.01 differs from the checkpoint's 0.0003: using the checkpoint's 0.0003"]


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    p = run("--seed", "-1", "--run-dir", str(tmp_path / "never"), check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: --seed -1: must be in [0, 2**31)"]
    assert not (tmp_path / "never").exists()


def test_hipi_bc_on_the_saved_trajectories(reference, tmp_path):
    b = str(tmp_path / "bc")
    p = run("--mode", "bc", "--env", "four-rooms", "--dataset", str(reference / "ds.npz"), "--run-dir", b,
            "--num-eval-tasks", "1", "--bc-max-epochs", "3", "--bc-candidates", "8")
    rec = records(b)[-1]
    for key in ("eval/return", "eval/return_agnostic", "eval/success_rate", "time/relabel", "relabel/entropy"):
        assert key in rec, key
    assert "task-agnostic BC" in p.stdout


def test_hipi_learns_on_point_robot(tmp_path):
    """A tiny HIPI-RL run (800 gradient steps, a larger learning rate and gamma 0.9 so that it shows in seconds)
    must beat the return of standing still on the same test goals by a wide margin."""
    d = str(tmp_path / "learn")
    run("--env", "point-robot", "--total-timesteps", "1000", "--learning-starts", "200", "--eval-every", "1000",
        "--num-eval-tasks", "10", "--lr", "3e-3", "--gamma", "0.9", "--no-save-model", "--run-dir", d)
    env = envs.make("point-robot")
    still, _ = hipi.evaluate_policy(env, lambda obs, task: np.zeros(2), env.test_tasks[:10], 1 + 10_000)
    learned = records(d)[-1]["eval/return"]
    assert learned > still + 5, (learned, still)
