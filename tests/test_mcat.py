"""Tests of mcat.py: Eq. 2 on hand-built pairs, the translator on a synthetic a -> -a task pair (Eq. 1 + Eq. 3),
the buffer's episode masking, SIL (Oh et al. 2018) on hand-built batches and its prioritized sample, the authors'
observation, the delayed-reward sums, the policy-transfer rule (§3.4), a learning check of the TD3+SIL step, Table 1
with the authors' data recipe (data sizes, which data each model trains on, H's schedule), both modes end to end,
and the command line: one-line errors, checkpoints, exact resume after SIGTERM, --help."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs  # noqa: E402
import mcat  # noqa: E402


def run(*flags, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "mcat.py"), *flags], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def rows(run_dir):
    """eval.jsonl without the wall-clock fields."""
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time" and not k.startswith("time/")}
                for line in f]


# ------------------------------------------------------------------------------------------ Eq. 2
def test_contrastive_loss_hand_built_pairs():
    z_a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    z_b = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.3, 0.4], [1.0, 1.0]])
    different = torch.tensor([False, True, True, True])
    # same task: d^2 = 25; different, d = 5 > margin: 0; different, d = 0.5: (1 - 0.5)^2; identical: 1
    loss = mcat.contrastive_loss(z_a, z_b, different, margin=1.0)
    assert loss.item() == pytest.approx((25.0 + 0.0 + 0.25 + 1.0) / 4, abs=1e-5)
    z_b.requires_grad_(True)
    mcat.contrastive_loss(z_a, z_b, different, margin=1.0).backward()
    assert torch.isfinite(z_b.grad).all()  # identical contexts (padded windows) must not give NaN gradients
    # beyond the margin no force; inside it a descent step (-grad) pushes z_b away from z_a = 0
    assert z_b.grad[1].abs().sum() == 0 and (z_b.grad[2] < 0).all() and (z_b.grad[0] > 0).all()


# ------------------------------------------------------------------------------- buffer and SIL returns
def test_buffer_windows_stop_at_episode_boundaries():
    buf = mcat.TaskReplayBuffer(1, 7, 1, 1)  # capacity 7: the second episode wraps around
    for start in (0.0, 100.0):
        obs = start + np.arange(4, dtype=np.float32)[:, None]
        buf.add_episode(0, obs, obs, np.zeros(4), obs + 1, np.zeros(4), np.zeros(4))
    tasks, idx = np.zeros(1, np.int64), np.array([5])  # 2nd step of the 2nd episode (slot 5: 4, 5, 6, 0)
    obs, act, delta, valid = buf.gather(tasks, idx, np.arange(-3, 4))
    np.testing.assert_array_equal(valid[0], [0, 0, 1, 1, 1, 1, 0])  # 1 step before, 2 after, nothing across
    np.testing.assert_array_equal(obs[0, :, 0], [0, 0, 100, 101, 102, 103, 0])
    np.testing.assert_array_equal(delta[0, 2:6, 0], 1.0)


def test_discounted_returns():
    np.testing.assert_allclose(mcat.discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])


# ----------------------------------------------------------------------------------- SIL (Oh et al. 2018)
class FixedQ(torch.nn.Module):
    """Q(s, a, z) = q0[s] + c * a.sum(-1): known values, and a parameter for gradients to reach."""

    def __init__(self, q0, c=0.0):
        super().__init__()
        self.q0, self.c = torch.nn.Parameter(torch.as_tensor(q0, dtype=torch.float32)), c

    def forward(self, s, a, z):
        return self.q0[s[:, 0].long()] + self.c * a.sum(-1)


class TableActor(torch.nn.Module):
    """pi(s, z) = table[s]: one free action per sample, so each sample's gradient is its own row."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, s, z):
        return self.table[s[:, 0].long()]


def hand_built_sil_batch():
    # 4 samples: returns R = 5, 1, 3, 10; the critics' values of pi: Q1 = 2, 2, 4, 4 and Q2 = 3, 0, 3, 9
    # -> V = min = 2, 0, 3, 4 -> R - V = 3, 1, 0, 6 -> clipped at 2: 2, 1, 0, 2; only sample 2 has R <= V
    s = torch.arange(4, dtype=torch.float32)[:, None]
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    ret = torch.tensor([5.0, 1.0, 3.0, 10.0])
    w = torch.tensor([1.0, 0.5, 1.0, 0.25])
    return (s, a, ret, torch.zeros(4, 3), w), FixedQ([2.0, 2.0, 4.0, 4.0]), FixedQ([3.0, 0.0, 3.0, 9.0])


def test_sil_imitates_only_where_the_return_beats_the_critic():
    batch, qf1, qf2 = hand_built_sil_batch()
    actor = TableActor(torch.zeros(4, 2))
    adv = mcat.sil_advantage(batch, actor, qf1, qf2, clip=2.0)
    np.testing.assert_allclose(adv.numpy(), [2.0, 1.0, 0.0, 2.0])
    sigma, n = 0.1, 64  # 3 samples with R > V: Oh et al.'s minimum of 64 divides
    loss = mcat.sil_policy_loss(batch, adv, actor, sigma, n)
    # w * adv * |a - pi|^2 / (2 sigma^2 n) with pi = 0: |a|^2 = 1, 1, 2, 1.25
    expected = (1.0 * 2 * 1 + 0.5 * 1 * 1 + 0 + 0.25 * 2 * 1.25) / (2 * sigma**2 * n)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad_rows = actor.table.grad.abs().sum(-1)
    assert grad_rows[2] == 0 and (grad_rows[[0, 1, 3]] > 0).all()  # the R <= V sample is not imitated
    # a descent step moves pi toward the imitated actions
    np.testing.assert_array_less(0, -(actor.table.grad[[0, 1, 3]] * batch[1][[0, 1, 3]]).sum(-1).numpy() + 1e-12)


def test_sil_value_term_lower_bounds_each_critic_by_the_return():
    batch, _, _ = hand_built_sil_batch()
    # Q(s, a) with the taken actions: q0 + 1 * a.sum = (3, 3, 6, 3.5) and (2, 1, 4, 8.5)
    qf1, qf2 = FixedQ([2.0, 2.0, 4.0, 4.0], c=1.0), FixedQ([1.0, 0.0, 2.0, 9.0], c=1.0)
    loss = mcat.sil_value_loss(batch, qf1, qf2, n=64)
    # (R - Q)_+ = (2, 0, 0, 6.5) and (3, 0, 0, 1.5); weights 1, 0.5, 1, 0.25
    expected = 0.5 * (1 * 2**2 + 0.25 * 6.5**2 + 1 * 3**2 + 0.25 * 1.5**2) / 64
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert qf1.q0.grad[1] == 0 and qf1.q0.grad[2] == 0 and (qf1.q0.grad[[0, 3]] < 0).all()  # only pushed up


def test_td3_update_applies_the_sil_coefficients():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args = mcat.Args(sil_weight=0.3, sil_value_coef=0.05, sil_adv_clip=100.0)
    od, ad, zd = 3, 2, args.context_dim
    nets = [mcat.Actor(od, ad, zd), mcat.QNetwork(od, ad, zd), mcat.QNetwork(od, ad, zd)]
    targets = [type(n)(od, ad, zd) for n in nets]
    targets_before = copy.deepcopy(targets)  # the actor step moves the targets (Polyak) after the critic step
    b = 80
    t = lambda *shape: torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)  # noqa: E731
    batch = (t(b, od), t(b, ad).clamp(-1, 1), t(b), t(b, od), torch.zeros(b), t(b, zd), t(b, zd))
    sil = (t(b, od), t(b, ad).clamp(-1, 1), 5 * t(b), t(b, zd), torch.rand(b))
    # SGD at lr 0: the networks stay as they are and each update's gradients stay readable
    q_opt = torch.optim.SGD(list(nets[1].parameters()) + list(nets[2].parameters()), lr=0.0)
    pi_opt = torch.optim.SGD(nets[0].parameters(), lr=0.0)
    torch.manual_seed(1)
    info, adv = mcat.td3_update(1, batch, sil, nets, targets, q_opt, pi_opt, args)  # step 1: critics only
    got_q = [p.grad.clone() for p in nets[1].parameters()]
    mcat.td3_update(2, batch, sil, nets, targets, q_opt, pi_opt, args)  # step 2: the delayed actor step too
    got_pi = [p.grad.clone() for p in nets[0].parameters()]
    # the same losses by hand: TD3's + sil_weight * beta * L_value on the critics, + sil_weight * L_policy on pi
    torch.manual_seed(1)
    obs, act, rew, next_obs, done, z, z_next = batch
    with torch.no_grad():
        noise = (torch.randn_like(act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
        actor_t, qf1_t, qf2_t = targets_before
        next_act = (actor_t(next_obs, z_next) + noise).clamp(-1.0, 1.0)
        y = rew + args.gamma * torch.min(qf1_t(next_obs, next_act, z_next), qf2_t(next_obs, next_act, z_next))
    a_hand = mcat.sil_advantage(sil, *nets, args.sil_adv_clip)
    n = max(int((a_hand > 0).sum()), mcat.SIL_MIN_SAMPLES)
    assert 0 < (a_hand > 0).sum() < b and np.allclose(adv, a_hand.numpy())  # the priorities returned
    assert info["losses/sil_fraction"] == pytest.approx(float((a_hand > 0).float().mean()))

    def grads(net, loss):
        net.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    def same(got, want, without_sil):  # equal up to rounding, and the SIL part is far above the rounding
        got = torch.cat([g.flatten() for g in got])
        assert (got - want).abs().max() < 1e-3 * (want - without_sil).abs().max()

    mse = torch.nn.functional.mse_loss
    td = lambda: mse(nets[1](obs, act, z), y) + mse(nets[2](obs, act, z), y)  # noqa: E731
    same(got_q, grads(nets[1], td() + 0.3 * 0.05 * mcat.sil_value_loss(sil, nets[1], nets[2], n)), grads(nets[1], td()))
    pi_loss = lambda: -nets[1](obs, nets[0](obs, z), z).mean()  # noqa: E731
    sil_pi = lambda: mcat.sil_policy_loss(sil, a_hand, nets[0], args.exploration_noise, n)  # noqa: E731
    same(got_pi, grads(nets[0], pi_loss() + 0.3 * sil_pi()), grads(nets[0], pi_loss()))


def test_sil_lower_bound_raises_each_critic_to_the_return_and_leaves_the_actor_alone():
    batch, _, _ = hand_built_sil_batch()
    # Q(s, a) with the taken actions: (3, 3, 6, 3.5) and (2, 1, 4, 8.5) -> gains (2, 0, 0, 6.5) and (3, 0, 0, 1.5)
    qf1, qf2 = FixedQ([2.0, 2.0, 4.0, 4.0], c=1.0), FixedQ([1.0, 0.0, 2.0, 9.0], c=1.0)
    loss, prio = mcat.sil_lower_bound_loss(batch, qf1, qf2)
    # mean over the whole batch (Tang's reduce_mean), weights 1, 0.5, 1, 0.25, no 1/2, no clip
    expected = (1 * 2**2 + 0.25 * 6.5**2) / 4 + (1 * 3**2 + 0.25 * 1.5**2) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(prio.numpy(), [5.0, 1e-8, 1e-8, 8.0], rtol=1e-6)  # unclipped, at the stored action
    loss.backward()
    assert qf1.q0.grad[1] == 0 and qf1.q0.grad[2] == 0 and (qf1.q0.grad[[0, 3]] < 0).all()  # only pushed up

    # in td3_update: critics get TD3 + sil_weight * L_lb; the actor gets TD3's loss and nothing from SIL
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args = mcat.Args(sil_form="lower-bound", sil_weight=0.3)
    od, ad, zd = 3, 2, args.context_dim
    nets = [mcat.Actor(od, ad, zd), mcat.QNetwork(od, ad, zd), mcat.QNetwork(od, ad, zd)]
    targets = [type(n)(od, ad, zd) for n in nets]
    b = 80
    t = lambda *shape: torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)  # noqa: E731
    batch = (t(b, od), t(b, ad).clamp(-1, 1), t(b), t(b, od), torch.zeros(b), t(b, zd), t(b, zd))
    sil = (t(b, od), t(b, ad).clamp(-1, 1), 5 * t(b), t(b, zd), torch.rand(b))

    def step_grads(sil_batch):
        q_opt = torch.optim.SGD(list(nets[1].parameters()) + list(nets[2].parameters()), lr=0.0)
        pi_opt = torch.optim.SGD(nets[0].parameters(), lr=0.0)
        torch.manual_seed(1)
        info, out = mcat.td3_update(2, batch, sil_batch, nets, targets, q_opt, pi_opt, args)
        flat = lambda net: torch.cat([p.grad.flatten() for p in net.parameters()])  # noqa: E731
        return info, out, flat(nets[0]), flat(nets[1])

    targets_before = copy.deepcopy(targets)
    info, prio, pi_with, q_with = step_grads(sil)
    for tgt, before in zip(targets, targets_before):  # undo the Polyak step so both calls see the same targets
        tgt.load_state_dict(before.state_dict())
    _, none, pi_without, q_without = step_grads(None)
    assert none is None and torch.equal(pi_with, pi_without)  # no SIL gradient on the actor
    want_prio = mcat.sil_lower_bound_loss(sil, nets[1], nets[2])[1]
    np.testing.assert_allclose(prio, want_prio.numpy(), rtol=1e-6)
    assert info["losses/sil_fraction"] == pytest.approx(float((want_prio > 1e-8).float().mean()))
    for p in nets[1].parameters():
        p.grad = None
    (0.3 * mcat.sil_lower_bound_loss(sil, nets[1], nets[2])[0]).backward()
    sil_part = torch.cat([p.grad.flatten() for p in nets[1].parameters()])
    assert sil_part.abs().max() > 0
    torch.testing.assert_close(q_with - q_without, sil_part, rtol=1e-4, atol=1e-5)


def test_sil_nstep_return_by_hand():
    # one task, capacity 8: an episode of 3 steps (slots 0-2, cut by the time limit), then one of 4 that
    # terminates (slots 3-6); s = 10 * slot, s' = s + 1, rewards 1, 2, 3 and 4, 5, 6, 7
    args = mcat.Args(sil_form="lower-bound", sil_nstep=3, gamma=0.5)
    buf = mcat.TaskReplayBuffer(1, 8, 1, 1)
    for slots, rew, done in (([0, 1, 2], [1, 2, 3], [0, 0, 0]), ([3, 4, 5, 6], [4, 5, 6, 7], [0, 0, 0, 1])):
        s = 10.0 * np.array(slots, np.float32)[:, None]
        buf.add_episode(0, s, np.zeros_like(s), np.array(rew, np.float32), s + 1, np.array(done, np.float32),
                        np.zeros(len(slots)))
    tasks, idx = np.zeros(4, np.int64), np.array([0, 1, 3, 5])
    rsum, boot, s_n, z_n = mcat.sil_nstep_parts(None, buf, tasks, idx, args, "cpu", use_context=False)
    # slot 0: 1 + 2/2 + 3/4, bootstrapped from s' of slot 2 (21) with 1/8; slot 1: cut to 2 steps by the time limit,
    # 2 + 3/2, bootstrapped with 1/4 (a time limit is not a terminal); slot 3: 4 + 5/2 + 6/4 from s' of slot 5;
    # slot 5: 6 + 7/2 and no bootstrap (the episode terminated)
    np.testing.assert_allclose(rsum.numpy(), [2.75, 3.5, 8.0, 9.5])
    np.testing.assert_allclose(boot.numpy(), [0.125, 0.25, 0.125, 0.0])
    np.testing.assert_allclose(s_n.numpy()[:, 0], [21, 21, 51, 61])
    assert z_n.shape == (4, args.context_dim) and (z_n == 0).all()
    # G_n with target critics that read only s: Q1' = s, Q2' = s + 1 -> min = s_{t+n}
    targets = (mcat.Actor(1, 1, args.context_dim), FixedQ(np.arange(80.0)), FixedQ(np.arange(80.0) + 1))
    sil = (torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4), z_n, torch.ones(4))
    _, _, g, _, _ = mcat.with_nstep_return(sil, (rsum, boot, s_n, z_n), targets, args)
    np.testing.assert_allclose(g.numpy(), [2.75 + 21 / 8, 3.5 + 21 / 4, 8.0 + 51 / 8, 9.5])


def test_prioritized_sample_follows_the_priorities_and_survives_a_checkpoint():
    rng = np.random.default_rng(0)
    buf = mcat.TaskReplayBuffer(2, 8, 1, 1, sil_alpha=0.5)
    for k in range(2):
        buf.add_episode(k, np.zeros((3, 1)), np.zeros((3, 1)), np.zeros(3), np.zeros((3, 1)), np.zeros(3), np.zeros(3))
    np.testing.assert_allclose(buf.priority[:, :3], 1.0)  # new transitions: the largest priority so far (1)
    buf.update_priorities(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 2, 0, 1, 2]), np.array([4.0, 0, 16, 0, 0, 0]))
    # p^0.5 with p floored at 1e-6: 2, 1e-3, 4 on task 0, 1e-3 on task 1's three
    tasks, idx, w = buf.sample_prioritized(20000, rng, beta=0.1)
    freq = np.bincount(tasks * 8 + idx, minlength=16) / 20000
    total = 2 + 4 + 4e-3
    np.testing.assert_allclose(freq[[0, 2]], [2 / total, 4 / total], atol=0.01)
    assert freq[[3, 4, 5, 6, 7, 11, 12, 13, 14, 15]].sum() == 0  # never an empty slot
    np.testing.assert_allclose(w[(tasks == 0) & (idx == 2)], (4 / 1e-3) ** -0.1)  # (P / P_min)^-beta
    assert buf.max_priority[0] == 16.0
    buf.add_episode(1, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)), np.zeros(1), np.zeros(1))
    assert buf.priority[1, 3] == 4.0  # 16^0.5: the largest so far
    copy = mcat.TaskReplayBuffer(2, 8, 1, 1, sil_alpha=0.5)
    copy.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(copy.tree.sum, buf.tree.sum)
    np.testing.assert_array_equal(copy.tree.min, buf.tree.min)
    assert copy.max_priority[0] == 16.0


# ------------------------------------------------------------------------------- the authors' observation
@pytest.mark.parametrize("name, expected", [
    ("cheetah-armature", lambda d: np.concatenate([d.qpos[1:], d.qvel])),
    ("cheetah-mass", lambda d: np.concatenate([d.qpos[1:], d.qvel])),
    ("hopper-size", lambda d: np.concatenate([d.qpos[1:], np.clip(d.qvel, -10, 10)])),
    ("ant-damping", lambda d: np.concatenate([d.qpos[2:], d.qvel])),
    ("ant-cripple", lambda d: np.concatenate([d.qpos[2:], d.qvel])),
])
def test_networks_read_the_authors_observation(name, expected):
    args = mcat.Args(env=name, horizon=5, reward_delay=1)
    (e,) = mcat.make_envs(args, envs.make(name).train_tasks[:1], seed=0)
    obs, _ = e.reset(seed=0)
    np.testing.assert_allclose(obs, expected(e.unwrapped.data), rtol=1e-6)  # qpos[1:] (ant: [2:]) + qvel
    next_obs = e.step(np.full(e.action_space.shape, 0.5))[0]
    np.testing.assert_allclose(next_obs, expected(e.unwrapped.data), rtol=1e-6)
    assert e.observation_space.shape == obs.shape
    (full,) = mcat.make_envs(mcat.Args(env=name, horizon=5, reward_delay=1, observation="full"),
                             envs.make(name).train_tasks[:1], seed=0)
    assert full.reset(seed=0)[0].shape == envs.make(name).observation_space.shape


# ---------------------------------------------------------------------- delayed rewards (Table 4)
def test_delayed_reward_sums_match_dense_rewards():
    env = envs.make("cheetah-armature", seed=0, horizon=25, reward_delay=10)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    paid, dense = [], []
    for _ in range(25):
        _, r, _, trunc, info = env.step(rng.uniform(-1, 1, 6))
        paid.append(r)
        dense.append(info["dense_reward"])
    paid, dense = np.array(paid), np.array(dense)
    assert trunc and np.flatnonzero(paid).tolist() == [9, 19, 24]  # every 10 steps and at the episode end
    np.testing.assert_allclose(paid[[9, 19, 24]], [dense[:10].sum(), dense[10:20].sum(), dense[20:].sum()])


def test_observe_phase_appends_the_steps_since_the_last_payment():
    args = mcat.Args(env="cheetah-armature", horizon=8, reward_delay=3, observe_phase=True)
    (e,) = mcat.make_envs(args, envs.make("cheetah-armature").train_tasks[:1], seed=0)
    obs, _ = e.reset(seed=0)
    assert e.observation_space.shape == obs.shape == (17 + 1,)  # the authors' 17 columns, then the phase
    phases, paid = [obs[-1]], []
    for _ in range(8):
        obs, r, _, trunc, _ = e.step(np.zeros(6))
        phases.append(obs[-1])
        paid.append(r != 0)
    # after k steps the phase is (k mod 3) / 3: 0 again right after each payment (steps 3 and 6) and at the start
    np.testing.assert_allclose(phases, [0, 1 / 3, 2 / 3, 0, 1 / 3, 2 / 3, 0, 1 / 3, 2 / 3], rtol=1e-6)
    assert trunc and np.flatnonzero(paid).tolist() == [2, 5, 7]
    np.testing.assert_allclose(obs[:-1], np.concatenate([e.unwrapped.data.qpos[1:], e.unwrapped.data.qvel]),
                               rtol=1e-6)
    assert e.reset(seed=1)[0][-1] == 0.0


def test_observe_pending_appends_the_reward_earned_since_the_last_payment():
    args = mcat.Args(env="cheetah-armature", horizon=8, reward_delay=3, observe_phase=True, observe_pending=True)
    (e,) = mcat.make_envs(args, envs.make("cheetah-armature").train_tasks[:1], seed=0)
    obs, _ = e.reset(seed=0)
    assert e.observation_space.shape == obs.shape == (17 + 2,)  # the authors' 17 columns, the phase, the pending
    rng = np.random.default_rng(0)
    seen, dense, paid = [obs[-2:]], [], []
    for _ in range(8):
        obs, r, _, _, info = e.step(rng.uniform(-1, 1, 6))
        seen.append(obs[-2:])
        dense.append(info["dense_reward"])
        paid.append(r)
    seen, d = np.array(seen), np.array(dense)
    # by hand, D = 3: after k steps the pending reward is the sum of the dense rewards since the last multiple of 3
    pending = [0, d[0], d[0] + d[1], 0, d[3], d[3] + d[4], 0, d[6], d[6] + d[7]]
    np.testing.assert_allclose(seen[:, 1], np.array(pending) / 3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[:, 0], [0, 1 / 3, 2 / 3] * 3, rtol=1e-6)
    # what is pending just before a payment is what the payment holds
    np.testing.assert_allclose(paid[2], 3 * seen[2, 1] + d[2], rtol=1e-5)
    assert e.reset(seed=1)[0][-1] == 0.0


# ---------------------------------------------------------------------------- transfer rule (§3.4)
def test_transfer_rule_picks_the_better_recent_average():
    h = lambda *items: deque(items, maxlen=4)  # noqa: E731
    history = [
        h(("own", 1.0), ("transfer", 5.0), ("own", 2.0)),            # transfer earned more -> transfer
        h(("own", 6.0), ("transfer", 3.0), ("own", 7.0)),            # own earned more -> own
        h(("own", 0.0), ("own", 1.0)),                               # transfer never tried -> try it
        h(("own", 10.0), ("own", 12.0)),                             # best task: it is its own source -> own
        h(("transfer", 9.0), ("transfer", 9.0), ("transfer", 9.0), ("transfer", 9.0)),  # own not recent -> own
        h(("own", 50.0), ("transfer", 1.0), ("own", 8.0), ("own", 9.0), ("transfer", 30.0)),  # window 4: 8.5 < 15.5
    ]
    use, source = mcat.transfer_rule(history, window=4)
    assert use.tolist() == [True, False, True, False, False, True]
    assert source[0] == 3 and source[3] == 5  # the other task whose own policy has the best recent average


# -------------------------------------------------------------- translator learns a -> -a (Eq. 1 + Eq. 3)
def test_translator_learns_negated_actions():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args = mcat.Args(context_len=3, future_len=2, model_batch_size=64, translator_batch_size=256)
    buf = mcat.TaskReplayBuffer(2, 4000, 2, 2)
    model = mcat.DynamicsModel(2, 2, args.context_len, args.context_dim)
    for k, sign in enumerate((1.0, -1.0)):  # a synthetic task pair: s' = s + 0.5 a versus s' = s - 0.5 a
        for _ in range(40):
            obs = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
            act = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
            nxt = obs + sign * 0.5 * act
            buf.add_episode(k, obs, act, np.zeros(50), nxt, np.zeros(50), np.zeros(50))
            model.obs_norm.update(obs), model.act_norm.update(act), model.delta_norm.update(nxt - obs)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(400):  # H can only be as exact as F: fit F closely (lr 2e-3, then 5e-4 for the second half);
        if i == 200:      # with 200 steps at 2e-3 alone, H's error was 0.07-0.17 depending on seed and CPU
            opt.param_groups[0]["lr"] = 5e-4
        fwd, cont = mcat.model_update(model, opt, buf, rng, args, "cpu")
    assert fwd < -1.0  # the Gaussian NLL of an exact relation falls well below 0
    z = mcat.task_features(model, buf, rng, args, "cpu")
    assert (z[0] - z[1]).norm() > 0.5  # Eq. 2 separates the two tasks
    H = mcat.Translator(2, 2, args.context_dim)
    h_opt = torch.optim.Adam(H.parameters(), lr=1e-3)
    model.requires_grad_(False)
    for _ in range(250):
        mcat.translator_update(model, H, h_opt, buf, z, rng, args, "cpu", pair=(0, 1))
    a = torch.as_tensor(rng.uniform(-0.7, 0.7, (500, 2)), dtype=torch.float32)
    s = torch.as_tensor(rng.uniform(-1, 1, (500, 2)), dtype=torch.float32)
    with torch.no_grad():
        translated = H(model, s, a, z[[0]].expand(500, -1), z[[1]].expand(500, -1))
    assert (translated + a).abs().mean() < 0.12, (translated + a).abs().mean()


# ------------------------------------------------------- Table 1 with the authors' data recipe
def test_authors_recipe_data_sizes_and_what_each_model_trains_on(monkeypatch):
    """Each task's own data policy (trained on that task) collects exactly --transfer-data-steps there, acting
    deterministically; C/F read only the target's data, H only the source's; H gets a fresh Adam per round at
    3e-4 / 5e-5 / 1e-5; C/F drop to the converged step count once a round's MSE is below the threshold."""
    torch.manual_seed(0)
    rng, probe = np.random.default_rng(0), envs.make("cheetah-armature")
    args = mcat.resolve_args(mcat.Args(mode="transfer", transfer_recipe="authors", horizon=25, learning_starts=50,
                                       data_policy_steps=75, transfer_data_steps=60, transfer_rounds=16,
                                       transfer_model_updates=2, transfer_translator_updates=1, eval_episodes=1,
                                       batch_size=32, task_feature_batch=16, no_sil=True), probe)
    tasks = np.concatenate([probe.train_tasks, probe.test_tasks])[[args.source_task, args.target_task]]
    pair_envs = mcat.make_envs(args, tasks, seed=5)
    od, ad = pair_envs[0].observation_space.shape[0], pair_envs[0].action_space.shape[0]
    agent = mcat.make_agent(od, ad, args, "cpu")
    phase, seen, lrs, trained_on, made = [None], [], [], [], {}

    def spy(name, fn):
        def wrapped(*a, **kw):
            phase[0] = name
            out = fn(*a, **kw)
            phase[0] = None
            made[name] = out
            return out
        monkeypatch.setattr(mcat, name, wrapped)
    for name in ("collect_fixed_data", "fit_model_on_target", "fit_translator_authors"):
        spy(name, getattr(mcat, name))
    real_train = mcat.train_data_policy
    data_actors = []
    def train(env, *a):
        trained_on.append(env.unwrapped.task[0])
        data_actors.append(real_train(env, *a))
        return data_actors[-1]
    monkeypatch.setattr(mcat, "train_data_policy", train)
    real_gather = mcat.TaskReplayBuffer.gather
    def gather(self, tasks, idx, offsets, with_obs=True):
        if self.n_tasks == 2:  # the fixed data (the data policies' own buffers hold one task)
            seen.append((phase[0], set(tasks.tolist())))
        return real_gather(self, tasks, idx, offsets, with_obs)
    monkeypatch.setattr(mcat.TaskReplayBuffer, "gather", gather)
    real_adam = torch.optim.Adam
    def adam(params, lr, **kw):
        lrs.append((phase[0], lr))
        return real_adam(params, lr=lr, **kw)
    monkeypatch.setattr(torch.optim, "Adam", adam)
    monkeypatch.setattr(mcat, "AUTHORS_FORWARD_THRESHOLD", {"cheetah": float("inf")})  # converged after round 1
    monkeypatch.setattr(mcat, "AUTHORS_CONVERGED_MODEL_UPDATES", 1)
    steps, real_step = [], mcat.model_update_one_task
    def model_step(model, opt, buf, task, *a):
        steps.append(task)
        return real_step(model, opt, buf, task, *a)
    monkeypatch.setattr(mcat, "model_update_one_task", model_step)
    progress = mcat.Progress({"collect": 0, "update": 0, "model": 16 * 2, "translator": 16, "eval": 0}, every=1e9)
    record = mcat.table1_transfer_authors(args, agent["actor"], agent["H"], rng, "cpu", pair_envs, od, ad, progress)

    assert trained_on == [0.1, 0.5]  # one data policy per task, each trained on its own task (source, target)
    data, model, _ = made["collect_fixed_data"]
    assert data.size.tolist() == [60, 60] and record["data/transitions_per_task"] == 60
    for k in range(2):  # episodes of 25, 25 and the first 10 of a third; each window stops at its episode's end
        assert data.t[k, :60].tolist() == list(range(25)) * 2 + list(range(10)) and data.left[k, 59] == 0
    assert progress.measured["collect"] == 2 * 75 + 2 * 60  # data policies' TD3 steps, then the fixed data
    with torch.no_grad():  # task k's data are task k's own data policy's actions, without noise
        for k in range(2):
            obs = torch.as_tensor(data.obs[k, :60])
            own = data_actors[k](obs, torch.zeros(60, args.context_dim)).numpy()
            assert np.allclose(data.act[k, :60], own, atol=1e-5)
            assert not np.allclose(data.act[k, :60], data_actors[1 - k](obs, torch.zeros(60, args.context_dim)))
    # C/F: only the target task (index 1), 2 steps in round 1, then 1 per round; one Adam for all rounds
    assert {t for p, ts in seen if p == "fit_model_on_target" for t in ts} == {1}
    assert steps == [1] * 17 and progress.remaining["model"] == 0
    assert [lr for p, lr in lrs if p == "fit_model_on_target"] == [args.model_lr]
    # H: source transitions only (the target enters through F and z_tgt), a fresh Adam per round on the schedule
    assert {t for p, ts in seen if p == "fit_translator_authors" for t in ts} == {0}
    assert [lr for p, lr in lrs if p == "fit_translator_authors"] == [3e-4] * 5 + [5e-5] * 10 + [1e-5]
    assert np.isfinite(record["eval/return"]) and np.isfinite(record["data/target_return"])


def test_transfer_recipe_defaults():
    probe = envs.make("cheetah-armature")
    ours = mcat.resolve_args(mcat.Args(mode="transfer"), probe)
    authors = mcat.resolve_args(mcat.Args(mode="transfer", transfer_recipe="authors"), probe)
    assert (ours.transfer_model_updates, ours.transfer_translator_updates) == (5000, 5000)
    assert (authors.transfer_model_updates, authors.transfer_translator_updates) == (10_000, 3000)
    assert (authors.transfer_data_steps, authors.transfer_rounds, authors.data_policy_steps) == (100_000, 30, 40_000)
    early = mcat.resolve_args(mcat.Args(mode="transfer", transfer_recipe="authors", learning_starts=10_000), probe)
    assert early.data_policy_steps == 20_000  # the first 20k-step checkpoint after the random steps


def filled_buffer(rng, n_tasks=2, n=50, od=3, ad=2, sil_alpha=0.6):
    buf = mcat.TaskReplayBuffer(n_tasks, 4 * n, od, ad, sil_alpha=sil_alpha)
    for k in range(n_tasks):
        buf.add_episode(k, rng.random((n, od)), rng.uniform(-1, 1, (n, ad)), rng.random(n), rng.random((n, od)),
                        np.zeros(n), 10 * rng.random(n))
    return buf


def make_td3(od, ad, zd):
    nets = [mcat.Actor(od, ad, zd), mcat.QNetwork(od, ad, zd), mcat.QNetwork(od, ad, zd)]
    q_opt = torch.optim.Adam(list(nets[1].parameters()) + list(nets[2].parameters()), lr=3e-4)
    return nets, [type(n)(od, ad, zd) for n in nets], q_opt, torch.optim.Adam(nets[0].parameters(), lr=3e-4)


def test_td3_and_sil_batches_carry_no_gradient_to_the_encoder():
    rng = np.random.default_rng(0)
    buf = filled_buffer(rng)
    args = mcat.Args(batch_size=16, sil_batch_size=16)
    model = mcat.DynamicsModel(3, 2, args.context_len, args.context_dim)
    nets, targets, q_opt, pi_opt = make_td3(3, 2, args.context_dim)
    info = mcat.rl_step(2, model, buf, rng, nets, targets, q_opt, pi_opt, args, "cpu", use_context=True)
    assert {"losses/sil_value", "losses/sil_policy", "losses/actor_loss"} <= set(info)  # both SIL terms ran
    assert all(p.grad is None for p in model.parameters())  # Fig. 2d: C fixed while training Q, pi
    assert (buf.priority[:, :50] != 1.0).sum() > 0  # the SIL sample's priorities were refreshed


def test_same_seed_gives_identical_first_losses():
    def first_losses(seed):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        buf = filled_buffer(rng)
        args = mcat.Args(batch_size=32, sil_batch_size=32, model_batch_size=16)
        model = mcat.DynamicsModel(3, 2, args.context_len, args.context_dim)
        fwd, cont = mcat.model_update(model, torch.optim.Adam(model.parameters()), buf, rng, args, "cpu")
        info = mcat.rl_step(2, model, buf, rng, *make_td3(3, 2, 10), args, "cpu", use_context=True)
        return fwd, cont, info["losses/qf_loss"], info["losses/actor_loss"], info["losses/sil_policy"]

    assert first_losses(0) == first_losses(0) != first_losses(1)


def test_td3_with_sil_learns_a_contextual_bandit():
    """The learning check. No MCAT family learns within seconds on a CPU (cheetah at horizon 50 after 2,500
    updates moved by +-2 between evaluations), so this drives the script's own update (`rl_step`: buffer, frozen
    contexts, TD3 + prioritized SIL) on one-step episodes whose best action is a*(s) = 0.9 (s_0, -s_1): reward
    -|a - a*(s)|^2, behaviour actions uniform. The untrained actor scores about -0.55; 300 updates reach -0.01."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args = mcat.Args(batch_size=64, sil_batch_size=64, learning_rate=1e-3)
    best = lambda s: 0.9 * np.stack([s[:, 0], -s[:, 1]], -1)  # noqa: E731
    buf = mcat.TaskReplayBuffer(2, 2000, 3, 2, sil_alpha=args.sil_alpha)
    for k in range(2):
        for _ in range(1000):
            s, a = rng.uniform(-1, 1, (1, 3)), rng.uniform(-1, 1, (1, 2))
            r = -((a - best(s)) ** 2).sum(-1)
            buf.add_episode(k, s, a, r, s, np.ones(1), r)  # terminal: Q(s, a) = r = R
    model = mcat.DynamicsModel(3, 2, args.context_len, args.context_dim)
    nets, targets, q_opt, pi_opt = make_td3(3, 2, args.context_dim)
    s_test = torch.as_tensor(rng.uniform(-1, 1, (500, 3)), dtype=torch.float32)

    def reward():
        with torch.no_grad():
            a = nets[0](s_test, torch.zeros(500, args.context_dim)).numpy()
        return float(-((a - best(s_test.numpy())) ** 2).sum(-1).mean())

    untrained = reward()
    for step in range(1, 301):
        mcat.rl_step(step, model, buf, rng, nets, targets, q_opt, pi_opt, args, "cpu", use_context=True)
    assert untrained < -0.3 and reward() > -0.05, (untrained, reward())


# -------------------------------------------------------------------------------- the command line
def bad(tmp_path, kind):
    """A checkpoint that --resume must refuse: (path, words its error names)."""
    path = str(tmp_path / f"{kind}.pt")
    good = asdict(mcat.resolve_args(mcat.Args(), envs.make("cheetah-armature")))
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "truncated":
        torch.save({"script": "mcat.py", "format": 1, "blob": torch.zeros(20000)}, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif kind == "foreign":
        torch.save({"script": "pearl.py", "format": 1}, path)
    elif kind == "old-format":
        torch.save({"script": "mcat.py", "format": 0}, path)
    elif kind == "other-env":
        mcat.save_checkpoint(path, {"env": "cheetah-armature", "args": good})
        return path, ["--env cheetah-armature", "not --env cheetah-mass"]
    return path, {"empty": ["not a readable checkpoint"], "truncated": ["not a readable checkpoint"],
                  "foreign": ["written by pearl.py, not mcat.py"], "old-format": ["format 0"],
                  "missing": ["no checkpoint file there"]}[kind]


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["--seed -1", "[0, 2**31)"]),
    (["--gamma", "2"], ["--gamma 2.0", "(0, 1]"]),
    (["--gamma", "0"], ["--gamma 0.0"]),
    (["--tau", "-1"], ["--tau -1.0"]),
    (["--learning-rate", "-0.001"], ["--learning-rate -0.001", "> 0"]),
    (["--model-lr", "0"], ["--model-lr 0.0"]),
    (["--horizon", "0"], ["--horizon 0", ">= 1"]),
    (["--num-train-tasks", "0"], ["--num-train-tasks 0"]),
    (["--num-train-tasks", "1"], ["--num-train-tasks 1", "2 tasks"]),
    (["--num-test-tasks", "9"], ["--num-test-tasks 9", "[1, 6]"]),
    (["--total-timesteps", "0"], ["--total-timesteps 0"]),
    (["--reward-delay", "0"], ["--reward-delay 0"]),
    (["--mode", "transfer", "--observe-phase"], ["--observe-phase", "--reward-delay > 1"]),
    (["--mode", "transfer", "--observe-pending"], ["--observe-pending", "--reward-delay > 1"]),
    (["--no-sil", "--sil-form", "lower-bound"], ["--sil-form lower-bound", "--no-sil"]),
    (["--sil-nstep", "5"], ["--sil-nstep 5", "--sil-form lower-bound"]),
    (["--sil-form", "lower-bound", "--sil-nstep", "-1"], ["--sil-nstep -1", ">= 1"]),
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--buffer-size", "999"], ["--buffer-size 999", "--horizon (1000)"]),
    (["--sil-alpha", "0"], ["--sil-alpha 0.0"]),
    (["--exploration-noise", "0"], ["--exploration-noise 0.0", "--no-sil"]),
    (["--env", "foo"], ["--env foo: unknown", "cheetah-armature"]),
    (["--env", "point-robot"], ["--env point-robot", "dynamics vary", "cheetah-mass"]),
    (["--mode", "c"], ["'c'", "--mode", "transfer"]),
    (["--batch-size", "x"], ["--batch-size", "'x'"]),
    (["--no-such-flag"], ["--no-such-flag"]),
    (["--mode", "transfer", "--source-task", "2", "--target-task", "2"], ["--target-task 2", "--source-task 2"]),
    (["--mode", "transfer", "--source-task", "11"], ["--source-task 11", "[0, 11)"]),
    (["--transfer-recipe", "authors"], ["--transfer-recipe authors", "--mode transfer"]),
    (["--transfer-recipe", "theirs"], ["'theirs'", "--transfer-recipe"]),
    (["--mode", "transfer", "--transfer-recipe", "authors", "--data-policy-steps", "20000"],
     ["--data-policy-steps 20000", "--learning-starts (25000)"]),
    (["--mode", "transfer", "--transfer-rounds", "0"], ["--transfer-rounds 0"]),
    (["--mode", "transfer", "--transfer-data-steps", "0"], ["--transfer-data-steps 0"]),
])
def test_bad_input_is_a_one_line_error(argv, words, one_line_error):
    err = one_line_error(mcat.parse_command_line, argv)
    assert all(w in err for w in words), err


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "foreign", "old-format", "other-env"])
def test_a_checkpoint_that_cannot_be_resumed_is_a_one_line_error(kind, tmp_path, capsys):
    path, words = bad(tmp_path, kind)
    argv = ["--resume", path] + (["--env", "cheetah-mass"] if kind == "other-env" else [])
    with pytest.raises(SystemExit) as e:
        mcat.parse_command_line(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and err.startswith("error: --resume"), err
    assert all(w in err for w in words), err


def test_resume_takes_the_runs_arguments_from_the_checkpoint(tmp_path, capsys):
    stored = mcat.resolve_args(mcat.Args(env="cheetah-mass", reward_delay=10, gamma=0.9, seed=7),
                               envs.make("cheetah-mass"))
    stored.run_dir = str(tmp_path / "run")
    os.makedirs(stored.run_dir)
    path = os.path.join(stored.run_dir, "checkpoint.pt")
    mcat.save_checkpoint(path, {"env": "cheetah-mass", "args": asdict(stored)})
    args, probe, ckpt = mcat.parse_command_line(["--resume", stored.run_dir, "--gamma", "0.5",
                                                 "--total-timesteps", "777", "--seed", "7"])
    assert (args.env, args.reward_delay, args.gamma, args.seed) == ("cheetah-mass", 10, 0.9, 7)  # not repeated
    assert args.total_timesteps == 777 and args.run_dir == stored.run_dir and probe.name == "cheetah-mass"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --gamma 0.5 differs from the checkpoint's 0.9: using the checkpoint's 0.9",
                   "warning: --total-timesteps 777 (the checkpoint's run had 2000000): using 777"]


def test_help_shows_the_chosen_envs_paper_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        mcat.parse_command_line(["--env", "hopper-size", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "paper defaults for --env hopper-size: reward_delay=500 total_timesteps=2000000" in out
    assert "num_test_tasks=2" in out and "a paper-size run (2M env steps) costs ~" in out
    with pytest.raises(SystemExit) as e:
        mcat.parse_command_line(["--env", "nope", "--help"])  # an unknown env: the generic text, no traceback
    assert e.value.code == 0 and "paper defaults" not in capsys.readouterr().out


def test_bad_input_from_the_shell_has_no_traceback():
    r = run("--seed", "-1", timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "error: --seed -1: must be in [0, 2**31)", r.stderr


# ------------------------------------------------------------------------------------- end to end
TINY = ["--env", "cheetah-armature", "--horizon", "25", "--learning-starts", "125", "--model-updates", "4",
        "--translator-updates", "4", "--updates-per-step", "0.2", "--num-train-tasks", "3", "--num-test-tasks", "2",
        "--transfer-window", "2", "--reward-delay", "10", "--model-batch-size", "32", "--task-feature-batch", "16",
        "--batch-size", "32", "--sil-batch-size", "32", "--total-timesteps", "600"]


def test_meta_run_stopped_by_sigterm_resumes_to_the_uninterrupted_run(tmp_path):
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    r = run(*TINY, "--run-dir", whole)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = rows(whole)
    assert [x["env_steps"] for x in expected] == [75 * i for i in range(1, 9)]
    assert any(x["transfer/fraction_transferred"] > 0 for x in expected)  # transfer decisions were taken
    assert len({x["eval/return"] for x in expected[2:]}) > 1  # the policy changed once updates began

    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "mcat.py"), *TINY, "--run-dir", cut], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = os.path.join(cut, "checkpoint.pt")
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1].strip()
    assert p.returncode == 143 and "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"stopped by SIGTERM; the last finished checkpoint is {ckpt} (iteration "), err
    stopped_at = mcat.load_checkpoint(ckpt)["iteration"]
    assert stopped_at < 8, "the run ended before the signal: nothing was interrupted"
    with open(os.path.join(cut, "eval.jsonl"), "a") as f:  # a row the killed run wrote after its checkpoint
        f.write(json.dumps({**expected[stopped_at], "eval/return": 1e9}) + "\n")
    r = run("--resume", cut)  # no other flag: the run's arguments come from the checkpoint
    assert r.returncode == 0 and f"resumed from {ckpt} at iteration {stopped_at}" in r.stdout, r.stderr[-2000:]
    assert rows(cut) == expected  # row for row, no iteration twice


def test_transfer_mode_end_to_end(tmp_path):
    d = str(tmp_path / "transfer")
    r = run("--mode", "transfer", *TINY[:-2], "--total-timesteps", "150", "--transfer-episodes", "2",
            "--transfer-model-updates", "10", "--transfer-translator-updates", "10", "--eval-episodes", "2",
            "--no-sil", "--no-contrastive", "--run-dir", d)  # the ablation flags' code paths as well
    assert r.returncode == 0, r.stderr[-2000:]
    last = rows(d)[-1]
    assert last["source_task"] == [0.1] and last["target_task"] == [0.5]  # the paper's Table 1 pair
    assert np.isfinite(last["eval/return"]) and np.isfinite(last["eval/source_policy_return"])
    assert mcat.load_checkpoint(d)["args"]["mode"] == "transfer"


def test_transfer_mode_with_the_authors_recipe_end_to_end(tmp_path):
    d = str(tmp_path / "authors")
    r = run("--mode", "transfer", "--transfer-recipe", "authors", "--horizon", "25", "--learning-starts", "50",
            "--updates-per-step", "0.2", "--batch-size", "32", "--task-feature-batch", "16", "--total-timesteps", "100",
            "--data-policy-steps", "75", "--transfer-data-steps", "60", "--transfer-rounds", "2",
            "--transfer-model-updates", "3", "--transfer-translator-updates", "3", "--eval-episodes", "1", "--no-sil",
            "--run-dir", d)
    assert r.returncode == 0, r.stderr[-2000:]
    last = rows(d)[-1]
    assert last["transfer_recipe"] == "authors" and last["data/transitions_per_task"] == 60
    assert np.isfinite(last["eval/return"]) and np.isfinite(last["eval/source_policy_return"])
    assert len(rows(d)) == 5  # the source policy's 4 evaluations (100 steps of 25), then the transfer row


def test_progress_eta_sums_the_measured_kinds_and_names_the_rest(monkeypatch, capsys):
    """Table 1's authors recipe spends ~45 min in C/F rounds before H starts: the ETA line must give the C/F time
    left and name H as not measured yet, not say 'measuring' throughout."""
    clock = iter([100.0, 110.0, 130.0])  # start, then two steps 10 s and 20 s later
    monkeypatch.setattr(mcat.time, "time", lambda: next(clock))
    progress = mcat.Progress({"model": 10, "translator": 5}, every=0.0)
    assert progress.eta() == (None, ["model", "translator"])
    progress.step("model", 2, "C/F")  # 2 updates in 10 s: 5 s each, 8 left -> 40 s
    assert progress.eta() == (40.0, ["translator"])
    assert capsys.readouterr().out.strip() == "[0:00:10] C/F | ETA 0:00:40 + translator (not measured yet)"
    progress.step("translator", 5, "H")  # the last H updates: nothing left of it, 8 C/F updates left
    assert progress.eta() == (40.0, [])
    assert capsys.readouterr().out.strip() == "[0:00:30] H | ETA 0:00:40"
