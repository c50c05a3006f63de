"""MCAT (Guo, Wu, Lee, AAAI 2022, "Learning Action Translator for Meta RL on Sparse-Reward Tasks"): Eq. 1 forward
loss, Eq. 2 contrastive loss, Eq. 3 translator loss, §3.4 policy transfer, §5.2 delayed rewards, SIL (Oh et al. 2018).
Meta mode (Tables 2-4), per iteration (Fig. 2): one episode per train task; (a, b) encoder C (last K transitions -> z_t)
and forward model F by Eqs. 1-2, task features z^(i); (c) C, F frozen: translator H(s, a, z_src, z_tgt) by Eq. 3;
(d) C frozen: TD3 pi(s, z_t), Q(s, a, z_t) + SIL; (e) task i acts with pi, or with H(s, pi(s, z^(j)), z^(j), z^(i))
if the best task j's did better. Test tasks: pi with z_t inferred online. Table 1: --mode transfer (docs/mcat.md).
"""

import contextlib
import io
import json
import os
import random
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Literal, NoReturn, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """use CUDA when it is available"""
    capture_video: bool = False
    """save one test episode per evaluation as a GIF in run_dir/videos (every 5th frame, half resolution)"""
    save_model: bool = True
    """write checkpoint.pt (atomically) at every evaluation"""
    env: str = "cheetah-armature"
    """task family; MCAT needs one whose dynamics vary across tasks"""
    total_timesteps: Optional[int] = None
    """env steps over all train tasks (paper: 2M for Table 2); in --mode transfer: source-policy TD3 steps"""
    resume: Optional[str] = None
    """checkpoint.pt (or its run directory) to continue from; the run's arguments come from the checkpoint"""
    run_dir: Optional[str] = None
    """output folder (default runs/{env}__{exp_name}__{seed}__{time})"""
    mode: Literal["meta", "transfer"] = "meta"
    """meta: MCAT meta-training (Tables 2-4); transfer: one source->target pair from fixed data (Table 1)"""
    reward_delay: Optional[int] = None
    """rewards summed and paid every D steps and at episode end (Table 4: 200/350/500; 1 = dense)"""
    no_transfer: bool = False
    """MCAT w/o PT (Table 3): always act with the learned policy"""
    no_sil: bool = False
    """drop the self-imitation losses"""
    no_contrastive: bool = False
    """drop the contrastive loss on contexts (Eq. 2)"""
    horizon: Optional[int] = None
    """episode length (default: the family's, 1000)"""
    num_train_tasks: Optional[int] = None
    """use only the first N train tasks of the family (default: all)"""
    num_test_tasks: Optional[int] = None
    """evaluate only on the first N test tasks of the family (default: all)"""
    observation: Literal["authors", "full"] = "authors"
    """what C, F, H, pi and Q read: the authors' (qpos without the torso x (ant: x, y), qvel) or the family's all"""
    observe_phase: bool = False
    """append (t mod D) / D, the step's phase in the reward delay, to the observation (a diagnostic, not the paper's)"""
    observe_pending: bool = False
    """append the reward earned since the last payment, over D (with --observe-phase: Markov again; a diagnostic)"""
    # context encoder C and forward model F (§3.2, authors' Table-1 code)
    context_len: int = 10
    """K: past transitions (delta s, a) the context encoder reads"""
    future_len: int = 10
    """M: future transitions the forward model predicts with the same context (Eq. 1)"""
    context_dim: int = 10
    """dimension of the context z"""
    model_lr: float = 2e-4
    """Adam learning rate of C and F (one optimizer)"""
    model_batch_size: int = 128
    """contexts per C/F update (each predicts M transitions)"""
    model_updates: int = 500
    """C/F gradient steps per iteration"""
    contrastive_margin: float = 1.0
    """m in Eq. 2"""
    contrastive_weight: float = 1.0
    """weight of Eq. 2 beside Eq. 1"""
    task_feature_batch: int = 256
    """contexts averaged into each task feature z^(i)"""
    translator_lr: float = 3e-4
    """Adam learning rate of the action translator H (§3.3)"""
    translator_batch_size: int = 256
    """source transitions per H update"""
    translator_updates: int = 500
    """H gradient steps per iteration"""
    # TD3 (Fujimoto et al. 2018 constants) and SIL (Oh et al. 2018)
    buffer_size: int = 100_000
    """transitions kept per train task (FIFO); memory O(n_tasks x buffer_size x (2 obs + act))"""
    batch_size: int = 256
    """transitions per TD3 update (drawn across all train tasks)"""
    learning_rate: float = 3e-4
    """Adam learning rate of actor and critics"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak rate of the target networks"""
    policy_noise: float = 0.2
    """target policy smoothing noise"""
    noise_clip: float = 0.5
    """clip of the target policy noise"""
    policy_frequency: int = 2
    """delayed actor/target updates"""
    exploration_noise: float = 0.1
    """Gaussian action noise while collecting"""
    learning_starts: int = 25_000
    """env steps (all tasks) of uniform random actions before any update"""
    updates_per_step: float = 1.0
    """TD3 gradient steps per collected env step"""
    sil_form: Literal["imitation", "lower-bound"] = "imitation"
    """imitation: Oh et al.'s policy + value terms (the paper's text); lower-bound: Tang 2020's critic term only"""
    sil_nstep: int = 0
    """lower-bound form: 0 = R, the return to the episode's end; n >= 1 = Tang's n-step return bootstrapped with Q'"""
    sil_weight: float = 0.1
    """weight of the SIL losses beside TD3's (Oh et al.'s MuJoCo value; 1 in their Atari runs)"""
    sil_value_coef: float = 0.01
    """beta^sil of Oh et al.: weight of the value term 1/2 (R - Q)_+^2 beside the imitation term"""
    sil_adv_clip: float = 1.0
    """clip of the SIL advantage (R - V)_+ (Oh et al.'s implementation)"""
    sil_batch_size: int = 256
    """transitions of SIL's prioritized sample per TD3 update (Oh et al.: 512 per separate SIL update)"""
    sil_alpha: float = 0.6
    """prioritization exponent of SIL's sample, P(i) ~ (R - V)_+^alpha (Oh et al.)"""
    sil_beta: float = 0.1
    """importance-weight exponent of SIL's prioritized sample (Oh et al.'s MuJoCo value)"""
    transfer_window: int = 10
    """policy transfer (§3.4): recent episodes per task over which own / transferred returns are averaged"""
    eval_every: int = 1
    """iterations between evaluations"""
    eval_episodes: int = 1
    """episodes per test task"""
    # --mode transfer (Table 1)
    source_task: Optional[int] = None
    """source task, an index into train_tasks + test_tasks (default: the paper's pair, else 0)"""
    target_task: Optional[int] = None
    """target task, same indexing (default: the paper's pair, else the task farthest from the source)"""
    transfer_recipe: Literal["ours", "authors"] = "ours"
    """fixed data and C/F, H training: ours, or the authors' (guoyijie/MCAT train_transfer_action.py; docs/mcat.md)"""
    transfer_episodes: int = 10
    """fixed-data episodes per task, collected with the source policy plus noise (0: stop after the source policy)"""
    transfer_data_noise: float = 0.3
    """Gaussian noise on the source policy while collecting the fixed data (a 'mediocre' policy)"""
    transfer_model_updates: Optional[int] = None
    """C/F gradient steps on the fixed data (ours: 5,000; authors': 10,000 per round, then 1,000 once converged)"""
    transfer_translator_updates: Optional[int] = None
    """H gradient steps on the fixed data (ours: 5,000; authors': 3,000 per round)"""
    transfer_data_steps: int = 100_000
    """authors' recipe: transitions per task in the fixed data, each task's from its own data policy"""
    data_policy_steps: Optional[int] = None
    """authors' recipe: TD3 env steps of each data policy (default: the first 20k-step checkpoint after learning)"""
    transfer_rounds: int = 30
    """authors' recipe: rounds of C/F, then of H training (H's lr: 3e-4 in rounds < 5, 5e-5 in < 15, then 1e-5)"""


# ------------------------------------------------------------------------------------------------- networks
class RunningNorm(nn.Module):
    """Running mean/std (the authors normalize obs, act and delta s this way); identity until updated."""

    def __init__(self, dim):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    def update(self, x: np.ndarray):
        x = torch.as_tensor(x.reshape(-1, x.shape[-1]), dtype=torch.float32, device=self.mean.device)
        n, m, v = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        tot = self.count + n  # Chan et al.'s parallel update of mean and variance
        delta = m - self.mean
        self.var.copy_((self.var * self.count + v * n + delta**2 * self.count * n / tot) / tot)
        self.mean += delta * n / tot
        self.count.copy_(tot)

    def forward(self, x):
        return (x - self.mean) / self.var.clamp_min(1e-8).sqrt()


def mlp(sizes, act=nn.ReLU):
    layers = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), act()]
    return nn.Sequential(*layers[:-1])


class ForwardModel(nn.Module):
    """F(delta s | s, a, z): Gaussian over normalized delta s, 4x200 swish, soft-clamped log-variance."""

    def __init__(self, obs_dim, act_dim, context_dim, hidden=200):
        super().__init__()
        self.body = mlp([obs_dim + act_dim + context_dim] + [hidden] * 4, act=nn.SiLU)
        self.body.append(nn.SiLU())  # 4 hidden swish layers
        self.mean, self.logvar = nn.Linear(hidden, obs_dim), nn.Linear(hidden, obs_dim)
        # The authors' fixed bounds; the softplus keeps log-variance gradients alive near them (PETS trick).
        self.register_buffer("max_logvar", torch.full((obs_dim,), 0.5))
        self.register_buffer("min_logvar", torch.full((obs_dim,), -10.0))

    def forward(self, obs_n, act_n, z):
        h = self.body(torch.cat([obs_n, act_n, z], -1))
        lv = self.max_logvar - F.softplus(self.max_logvar - self.logvar(h))
        return self.mean(h), self.min_logvar + F.softplus(lv - self.min_logvar)


class DynamicsModel(nn.Module):
    """The context encoder C, the forward model F and the normalizers they read through."""

    def __init__(self, obs_dim, act_dim, context_len, context_dim):
        super().__init__()
        self.obs_norm, self.act_norm, self.delta_norm = RunningNorm(obs_dim), RunningNorm(act_dim), RunningNorm(obs_dim)
        self.C = mlp([context_len * (obs_dim + act_dim), 256, 128, 64, context_dim])
        self.F = ForwardModel(obs_dim, act_dim, context_dim)

    def context_input(self, delta, act, valid):
        """Flattened (delta s, a) of a window, zero-padded before the episode start. The context's delta s is not
        normalized (the authors' identity normalizer for state differences)."""
        return (torch.cat([delta, self.act_norm(act)], -1) * valid.unsqueeze(-1)).flatten(-2)

    def context(self, delta, act, valid):
        """z_t = C((delta s, a) of the K transitions before t)."""
        return self.C(self.context_input(delta, act, valid))

    def predict(self, obs, act, z):
        return self.F(self.obs_norm(obs), self.act_norm(act), z)

    def weight_decay(self):
        """The authors' per-layer L2 coefficients (PETS style, c * ||W||^2 / 2)."""
        pairs = list(zip([m for m in self.C if isinstance(m, nn.Linear)], (2.5e-5, 5e-5, 7.5e-5)))
        pairs += zip([m for m in self.F.body if isinstance(m, nn.Linear)] + [self.F.mean],
                     (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4))
        return sum(c * 0.5 * (m.weight**2).sum() for m, c in pairs)


class Translator(nn.Module):
    """H(s, a_src, z_src, z_tgt) -> a_tgt in [-1, 1]: an MLP 512-256-128-64 on the concatenation. (Deviation: this
    is a variant left commented out in guoyijie/MCAT models.py; their active MultiPairAxmodel embeds s, a, z_src,
    z_tgt to 128 each, then 256-256.)"""

    def __init__(self, obs_dim, act_dim, context_dim):
        super().__init__()
        self.net = mlp([obs_dim + act_dim + 2 * context_dim, 512, 256, 128, 64, act_dim])

    def forward(self, model, obs, act, z_src, z_tgt):
        return torch.tanh(self.net(torch.cat([model.obs_norm(obs), model.act_norm(act), z_src, z_tgt], -1)))


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, context_dim):
        super().__init__()
        self.net = mlp([obs_dim + context_dim, 256, 256, act_dim])

    def forward(self, obs, z):
        return torch.tanh(self.net(torch.cat([obs, z], -1)))


class QNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, context_dim):
        super().__init__()
        self.net = mlp([obs_dim + act_dim + context_dim, 256, 256, 1])

    def forward(self, obs, act, z):
        return self.net(torch.cat([obs, act, z], -1)).squeeze(-1)


def make_agent(obs_dim, act_dim, args, device) -> dict:
    """C and F, H, TD3's actor and twin critics with their targets, and one Adam each for C/F, H, the critics
    and the actor (Fig. 2: trained alternately, never jointly)."""
    model = DynamicsModel(obs_dim, act_dim, args.context_len, args.context_dim).to(device)
    H = Translator(obs_dim, act_dim, args.context_dim).to(device)
    actor, qf1, qf2 = (m.to(device) for m in (Actor(obs_dim, act_dim, args.context_dim),
                                              QNetwork(obs_dim, act_dim, args.context_dim),
                                              QNetwork(obs_dim, act_dim, args.context_dim)))
    actor_t, qf1_t, qf2_t = (type(m)(obs_dim, act_dim, args.context_dim).to(device) for m in (actor, qf1, qf2))
    for m, t in zip((actor, qf1, qf2), (actor_t, qf1_t, qf2_t)):
        t.load_state_dict(m.state_dict())
    return dict(model=model, H=H, actor=actor, qf1=qf1, qf2=qf2, actor_t=actor_t, qf1_t=qf1_t, qf2_t=qf2_t,
                model_opt=torch.optim.Adam(model.parameters(), lr=args.model_lr),
                H_opt=torch.optim.Adam(H.parameters(), lr=args.translator_lr),
                q_opt=torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.learning_rate),
                pi_opt=torch.optim.Adam(actor.parameters(), lr=args.learning_rate))



# -------------------------------------------------------------------------------------------- replay buffer
class TaskReplayBuffer:
    """B^(i) for every train task: preallocated (n_tasks, capacity, .) FIFO arrays of whole episodes.

    Episodes are stored contiguously (modulo capacity), so a transition's context window and its future
    transitions are neighbours in memory; `t` (step in episode) and `left` (steps after it in its episode)
    say which neighbours belong to the same episode. `delta` = s' - s is stored instead of s' because contexts
    and F read it; `ret` is the discounted return-to-go, SIL's R. With `sil_alpha`, every transition also holds
    SIL's priority p^alpha in `priority`, indexed by a sum tree for the prioritized sample."""

    def __init__(self, n_tasks, capacity, obs_dim, act_dim, sil_alpha=None):
        shape = (n_tasks, capacity)
        self.obs, self.delta = np.zeros(shape + (obs_dim,), np.float32), np.zeros(shape + (obs_dim,), np.float32)
        self.act = np.zeros(shape + (act_dim,), np.float32)
        self.rew, self.ret = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.done = np.zeros(shape, np.float32)
        self.t, self.left = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        self.ptr, self.size = np.zeros(n_tasks, np.int64), np.zeros(n_tasks, np.int64)
        self.n_tasks, self.capacity = n_tasks, capacity
        self.priority, self.max_priority = np.zeros(shape), np.ones(1)  # p^alpha (0: empty slot); largest p so far
        self.sil_alpha, self.tree = sil_alpha, (SumTree(n_tasks * capacity) if sil_alpha is not None else None)

    def add_episode(self, k, obs, act, rew, next_obs, done, ret):
        n = len(obs)
        pos = (self.ptr[k] + np.arange(n)) % self.capacity
        for name, value in dict(obs=obs, act=act, rew=rew, delta=next_obs - obs, done=done, ret=ret).items():
            getattr(self, name)[k, pos] = value
        self.t[k, pos], self.left[k, pos] = np.arange(n), n - 1 - np.arange(n)
        self.ptr[k] = (self.ptr[k] + n) % self.capacity
        self.size[k] = min(self.size[k] + n, self.capacity)
        if self.tree is not None:  # new transitions get the largest priority so far (Schaul et al. 2016)
            self.set_priority(np.full(n, k), pos, np.full(n, self.max_priority[0] ** self.sil_alpha))

    def sample_index(self, tasks, rng):
        return (rng.random(len(tasks)) * self.size[tasks]).astype(np.int64)

    def gather(self, tasks, idx, offsets, with_obs=True):
        """(obs, act, delta s, valid) at positions idx + offsets of the same episode, invalid entries zeroed."""
        flat = (tasks[:, None] * self.capacity + (idx[:, None] + offsets) % self.capacity).ravel()
        valid = (self.t[tasks, idx][:, None] + offsets >= 0) & (offsets <= self.left[tasks, idx][:, None])
        v = valid[..., None]
        take = lambda a: np.take(a.reshape(-1, a.shape[-1]), flat, 0).reshape(v.shape[:2] + (-1,)) * v  # noqa: E731
        return take(self.obs) if with_obs else None, take(self.act), take(self.delta), valid.astype(np.float32)

    def sample_prioritized(self, n, rng, beta):
        """SIL's sample (Oh et al. 2018, Sec. 3): P(i) ~ p_i^alpha over all tasks' transitions, with importance
        weights (N P(i))^-beta / max_j (N P(j))^-beta = (p_i^alpha / min_j p_j^alpha)^-beta. Returns (tasks, idx, w)."""
        leaf = self.tree.draw(rng.random(n) * self.tree.sum[1])
        tasks, idx = leaf // self.capacity, leaf % self.capacity
        return tasks, idx, (self.priority[tasks, idx] / self.tree.min[1]) ** -beta

    def update_priorities(self, tasks, idx, adv, floor=1e-6):
        """p = (R - V)_+ (or the lower bound's gains) as last computed, floored so every transition stays drawable
        (Oh et al.'s code: 1e-6; Tang's adds 1e-8)."""
        p = np.maximum(adv, floor)
        self.max_priority[0] = max(self.max_priority[0], float(p.max()))
        self.set_priority(tasks, idx, p**self.sil_alpha)

    def set_priority(self, tasks, idx, value):
        self.priority[tasks, idx] = value
        self.tree.set(tasks * self.capacity + idx, value)

    def state_dict(self):  # only the filled part: a checkpoint early in training stays small
        n = int(self.size.max())
        return {k: (v if v.ndim == 1 else v[:, :n]) for k, v in vars(self).items() if isinstance(v, np.ndarray)}

    def load_state_dict(self, state):
        for k, v in state.items():
            getattr(self, k)[(slice(None),) * v.ndim if v.ndim == 1 else (slice(None), slice(0, v.shape[1]))] = v
        if self.tree is not None:  # the tree is a function of the priorities: rebuilt, not stored
            filled = np.flatnonzero(self.priority.ravel())
            self.tree.set(filled, self.priority.ravel()[filled])


class SumTree:
    """Sums and minima over n leaves in a binary tree (Schaul et al. 2016): proportional draws and updates of a
    batch of leaves in O(log n) vectorized steps. Empty leaves are 0 in the sums and +inf in the minima."""

    def __init__(self, n):
        self.size = 1 << max(n - 1, 1).bit_length()
        self.sum, self.min = np.zeros(2 * self.size), np.full(2 * self.size, np.inf)

    def set(self, leaves, value):
        i = np.asarray(leaves) + self.size
        self.sum[i], self.min[i] = value, value
        i = np.unique(i // 2)
        while i[0] >= 1:  # every node on the paths to the root, one level at a time
            self.sum[i] = self.sum[2 * i] + self.sum[2 * i + 1]
            self.min[i] = np.minimum(self.min[2 * i], self.min[2 * i + 1])
            i = np.unique(i // 2)

    def draw(self, u):
        """The leaf where each u in [0, total) falls in the cumulative sums (never an empty leaf)."""
        i = np.ones(len(u), np.int64)
        while i[0] < self.size:
            left = self.sum[2 * i]
            right = (u >= left) & (self.sum[2 * i + 1] > 0)
            u, i = np.where(right, u - left, u), 2 * i + right
        return i - self.size


def discounted_returns(rew, gamma):
    """R_t = sum_k gamma^k r_{t+k} to the episode's end: what SIL imitates (Oh et al. 2018, Sec. 3; no bootstrap at
    the time limit, as theirs)."""
    ret, run = np.zeros_like(rew), 0.0
    for t in range(len(rew) - 1, -1, -1):
        run = rew[t] + gamma * run
        ret[t] = run
    return ret


def store_episodes(buf, model, ep, gamma):
    """Push one lockstep rollout into the per-task buffers and the running normalizers; returns its env steps."""
    for k, n in enumerate(ep["lengths"]):
        buf.add_episode(k, ep["obs"][k, :n], ep["act"][k, :n], ep["rew"][k, :n], ep["next_obs"][k, :n],
                        ep["done"][k, :n], discounted_returns(ep["rew"][k, :n], gamma))
    valid = np.arange(ep["obs"].shape[1])[None] < ep["lengths"][:, None]
    model.obs_norm.update(ep["obs"][valid])
    model.act_norm.update(ep["act"][valid])
    model.delta_norm.update((ep["next_obs"] - ep["obs"])[valid])
    return int(ep["lengths"].sum())


def to_t(device, *arrays):
    return [None if a is None else torch.as_tensor(a, device=device) for a in arrays]


# ---------------------------------------------------------------------- losses: Eq. 1, Eq. 2, Eq. 3
def forward_loss(model, buf, rng, args, device):
    """Eq. 1: -sum_m log F(s_{t+m} | s_{t+m-1}, a_{t+m-1}, z_t), every future step with the SAME context z_t;
    steps past the episode end are masked. Returns (loss, z_t, tasks) so Eq. 2 can reuse the contexts."""
    K, M = args.context_len, args.future_len
    tasks = rng.integers(buf.n_tasks, size=args.model_batch_size)
    idx = buf.sample_index(tasks, rng)
    obs, act, delta, valid = to_t(device, *buf.gather(tasks, idx, np.arange(-K, M)))
    z = model.context(delta[:, :K], act[:, :K], valid[:, :K])
    mean, logvar = model.predict(obs[:, K:], act[:, K:], z[:, None].expand(-1, M, -1))
    nll = ((mean - model.delta_norm(delta[:, K:])) ** 2 * torch.exp(-logvar) + logvar).mean(-1)
    mask = valid[:, K:]
    return (nll * mask).sum() / mask.sum(), z, tasks


def contrastive_loss(z_a, z_b, different, margin):
    """Eq. 2 as the authors' code: same task (label 0) d^2, different tasks max(0, m - d)^2 (Hadsell et al.)."""
    sq = ((z_a - z_b) ** 2).sum(-1)
    hinge = F.relu(margin - torch.sqrt(sq + 1e-12)) ** 2  # eps: identical padded contexts would give NaN grads
    return torch.where(different, hinge, sq).mean()


def model_update(model, opt, buf, rng, args, device):
    fwd, z, tasks = forward_loss(model, buf, rng, args, device)
    loss, cont = fwd + model.weight_decay(), torch.zeros(())
    if not args.no_contrastive and buf.n_tasks > 1:
        # 50% positive pairs (same task), 50% negative pairs (a different task), label 0 = same
        different = rng.random(len(tasks)) < 0.5
        partner = np.where(different, (tasks + rng.integers(1, buf.n_tasks, len(tasks))) % buf.n_tasks, tasks)
        K = args.context_len
        window = buf.gather(partner, buf.sample_index(partner, rng), np.arange(-K, 0), with_obs=False)
        _, act, delta, valid = to_t(device, *window)
        cont = contrastive_loss(z, model.context(delta, act, valid), torch.as_tensor(different, device=device),
                                args.contrastive_margin)
        loss = loss + args.contrastive_weight * cont
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return fwd.item(), cont.item()


@torch.no_grad()
def task_features(model, buf, rng, args, device):
    """z^(i) = mean of C over a large batch of segments from B^(i) (§3.2), all tasks in one pass."""
    n, K = args.task_feature_batch, args.context_len
    tasks = np.repeat(np.arange(buf.n_tasks), n)
    window = buf.gather(tasks, buf.sample_index(tasks, rng), np.arange(-K, 0), with_obs=False)
    _, act, delta, valid = to_t(device, *window)
    return model.context(delta, act, valid).view(buf.n_tasks, n, -1).mean(1)


def translator_loss(model, H, buf, z_feat, src, tgt, rng, device):
    """Eq. 3 as the authors train it: with C and F frozen, the target-task model fed the translated action
    should reproduce the SOURCE transition: L1(F_mean(s, H(s, a, z_src, z_tgt), z_tgt), delta s), normalized."""
    obs, act, delta, _ = to_t(device, *buf.gather(src, buf.sample_index(src, rng), np.zeros(1, np.int64)))
    obs, act, delta = obs[:, 0], act[:, 0], delta[:, 0]
    a_tgt = H(model, obs, act, z_feat[src], z_feat[tgt])
    mean, _ = model.predict(obs, a_tgt, z_feat[tgt])
    return (mean - model.delta_norm(delta)).abs().mean()


def translator_update(model, H, opt, buf, z_feat, rng, args, device, pair=None):
    """Any source -> any target pair of train tasks (Fig. 5), or one fixed pair in --mode transfer."""
    n = args.translator_batch_size
    src = np.full(n, pair[0]) if pair else rng.integers(buf.n_tasks, size=n)
    tgt = np.full(n, pair[1]) if pair else rng.integers(buf.n_tasks, size=n)
    loss = translator_loss(model, H, buf, z_feat, src, tgt, rng, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# ------------------------------------------------------------------------------------ TD3 + self-imitation
def contexts(model, buf, tasks, idx, args, device, n_windows, use_context):
    """z_t (with n_windows=2 also z_{t+1}) of the sampled transitions from the FROZEN encoder (Fig. 2d: 'with fixed
    C') in one encoder pass over the K + 1 steps up to t: window[:K] is the context of s_t, window[1:] that of
    s_{t+1}. Returns (z, a, delta s) of the K + 1 steps; the last are the sampled transitions' own."""
    K = args.context_len
    _, act, delta, valid = to_t(device, *buf.gather(tasks, idx, np.arange(-K, 1), with_obs=False))
    with torch.no_grad():
        if not use_context:  # --mode transfer trains a single-task source policy: constant zero context
            return torch.zeros(n_windows, len(tasks), args.context_dim, device=device), act, delta
        x, d = model.context_input(delta, act, valid), delta.shape[-1] + act.shape[-1]
        z = model.C(torch.cat([x[:, w * d: (K + w) * d] for w in range(n_windows)]))
        return z.view(n_windows, len(tasks), -1), act, delta


def sample_rl_batch(model, buf, rng, args, device, use_context=True):
    """TD3's minibatch: B transitions, tasks and positions uniform, with z_t and z_{t+1}."""
    tasks = rng.integers(buf.n_tasks, size=args.batch_size)
    idx = buf.sample_index(tasks, rng)
    z, act, delta = contexts(model, buf, tasks, idx, args, device, n_windows=2, use_context=use_context)
    s, rew, done = to_t(device, *(x[tasks, idx] for x in (buf.obs, buf.rew, buf.done)))
    return s, act[:, -1], rew, s + delta[:, -1], done, z[0], z[1]


def sample_sil_batch(model, buf, rng, args, device, use_context=True):
    """SIL's minibatch (Oh et al. 2018, Sec. 3): prioritized by (R - V)_+ over all tasks' transitions. Returns
    (tasks, idx) for the priority update and (s, a, R, z, importance weights) for the losses."""
    tasks, idx, w = buf.sample_prioritized(args.sil_batch_size, rng, args.sil_beta)
    z, act, _ = contexts(model, buf, tasks, idx, args, device, n_windows=1, use_context=use_context)
    s, ret, w = to_t(device, buf.obs[tasks, idx], buf.ret[tasks, idx], w.astype(np.float32))
    return (tasks, idx), (s, act[:, -1], ret, z[0], w)


def sil_nstep_parts(model, buf, tasks, idx, args, device, use_context=True):
    """--sil-nstep n (Tang's td3_nstep_sil.py): the parts of the n-step return
    G_n = sum_{k<n} gamma^k r_{t+k} + gamma^n (1 - d) Q'(s_{t+n}) for the sampled transitions: (discounted reward
    sum, gamma^n (1 - d), s_{t+n}, z_{t+n}). A window that the episode's end cuts short sums the steps left
    (n' = left + 1 < n) and bootstraps with gamma^n' unless the episode terminated; Tang's wrapper stores no such
    window."""
    n_eff = np.minimum(args.sil_nstep, buf.left[tasks, idx] + 1)
    k = np.arange(args.sil_nstep)
    rew = buf.rew[tasks[:, None], (idx[:, None] + k) % buf.capacity] * (k < n_eff[:, None])
    last = (idx + n_eff - 1) % buf.capacity  # the window's last transition, whose s' is s_{t+n}
    rsum, boot = (rew * args.gamma**k).sum(1), args.gamma**n_eff * (1.0 - buf.done[tasks, last])
    z, _, _ = contexts(model, buf, tasks, last, args, device, n_windows=2, use_context=use_context)
    s_n = buf.obs[tasks, last] + buf.delta[tasks, last]
    return (*to_t(device, rsum.astype(np.float32), boot.astype(np.float32), s_n), z[1])


def with_nstep_return(sil_batch, parts, targets, args):
    """SIL's batch with R replaced by G_n, the target critics' clipped double-Q at the target actor's smoothed
    action in s_{t+n} (TD3's own target, n steps ahead; Tang's backup_sil)."""
    s, a, _, z, w = sil_batch
    rsum, boot, s_n, z_n = parts
    actor_t, qf1_t, qf2_t = targets
    with torch.no_grad():
        a_n = actor_t(s_n, z_n)
        a_n = (a_n + (torch.randn_like(a_n) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)).clamp(-1, 1)
        return s, a, rsum + boot * torch.min(qf1_t(s_n, a_n, z_n), qf2_t(s_n, a_n, z_n)), z, w


SIL_MIN_SAMPLES = 64  # Oh et al.'s code averages the SIL losses over max(#(R > V), 64) samples


def sil_advantage(batch, actor, qf1, qf2, clip):
    """Oh et al.'s (R - V(s))_+ for the deterministic actor: V(s, z) = min_k Q_k(s, pi(s, z), z), the critics'
    value of the current policy (TD3's own value estimate), without gradient; clipped at `clip` as in their code.
    Positive exactly where the return beat what the critics expect of pi: the samples SIL imitates."""
    s, _, ret, z, _ = batch
    with torch.no_grad():
        pi = actor(s, z)
        return (ret - torch.min(qf1(s, pi, z), qf2(s, pi, z))).clamp(0.0, clip)


def sil_value_loss(batch, qf1, qf2, n):
    """Oh et al.'s Eq. 3, L_value = 1/2 (R - V)_+^2, on each critic's Q(s, a, z): the return is a lower bound of Q
    (their Sec. 4, lower-bound Q-learning); importance-weighted, summed and divided by n."""
    s, a, ret, z, w = batch
    return sum((w * 0.5 * F.relu(ret - q(s, a, z)) ** 2).sum() for q in (qf1, qf2)) / n


def sil_policy_loss(batch, adv, actor, sigma, n):
    """Oh et al.'s Eq. 2, L_policy = -log pi(a|s) (R - V)_+, with pi(.|s) the Gaussian N(pi(s, z), sigma^2 I) that
    collected the data (sigma = the exploration noise): -log pi(a|s) = |a - pi(s, z)|^2 / (2 sigma^2) + const.
    Zero weight, hence no gradient, where R <= V."""
    s, a, _, z, w = batch
    return (w * adv * ((a - actor(s, z)) ** 2).sum(-1)).sum() / (2 * sigma**2 * n)


def sil_lower_bound_loss(batch, qf1, qf2):
    """--sil-form lower-bound: Tang 2020's return-based lower-bound Q-learning for TD3 (arXiv:2006.07442; code
    robintyh1/nstep-sil td3_return_sil.py, whose n-step wrapper the MCAT authors' repo ships as envs/nstep_env.py):
    mean_i w_i [(R_i - Q1(s_i, a_i))_+^2 + (R_i - Q2(s_i, a_i))_+^2], the critics only, no policy term (the actor
    follows the raised Q through TD3's own loss). The priorities are the gains (R - Q1)_+ + (R - Q2)_+ + 1e-8,
    unclipped, at the stored action. Returns (loss, priorities)."""
    s, a, ret, z, w = batch
    gains = [F.relu(ret - q(s, a, z)) for q in (qf1, qf2)]
    loss = sum((w * g**2).mean() for g in gains)
    return loss, (gains[0] + gains[1]).detach() + 1e-8


def td3_update(step, batch, sil_batch, nets, targets, q_opt, pi_opt, args):
    """TD3 (Fujimoto et al. 2018) on context-conditioned nets, plus SIL (MCAT §5.2; Oh et al. 2018, Eq. 1-3) on its
    own prioritized minibatch: critics += w_sil beta^sil L_value every step, actor += w_sil L_policy on TD3's
    delayed actor steps (--sil-form lower-bound: critics += w_sil L_lb, nothing on the actor). Returns the logged
    losses and the new priorities of `sil_batch` (SIL's advantages, or the lower bound's gains)."""
    actor, qf1, qf2 = nets
    actor_t, qf1_t, qf2_t = targets
    obs, act, rew, next_obs, done, z, z_next = batch
    with torch.no_grad():
        noise = (torch.randn_like(act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
        next_act = (actor_t(next_obs, z_next) + noise).clamp(-1.0, 1.0)
        target = rew + args.gamma * (1.0 - done) * torch.min(qf1_t(next_obs, next_act, z_next),
                                                             qf2_t(next_obs, next_act, z_next))
    q1, q2 = qf1(obs, act, z), qf2(obs, act, z)
    q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    info, adv = {"losses/qf_loss": q_loss.item(), "losses/qf1_values": q1.mean().item()}, None
    imitate = sil_batch is not None and args.sil_form == "imitation"
    if imitate:
        adv = sil_advantage(sil_batch, actor, qf1, qf2, args.sil_adv_clip)
        n = max(int((adv > 0).sum()), SIL_MIN_SAMPLES)
        sil_v = sil_value_loss(sil_batch, qf1, qf2, n)
        q_loss = q_loss + args.sil_weight * args.sil_value_coef * sil_v
        info.update({"losses/sil_value": sil_v.item(), "losses/sil_fraction": (adv > 0).float().mean().item()})
    elif sil_batch is not None:  # --sil-form lower-bound
        sil_v, adv = sil_lower_bound_loss(sil_batch, qf1, qf2)
        q_loss = q_loss + args.sil_weight * sil_v
        info.update({"losses/sil_value": sil_v.item(), "losses/sil_fraction": (adv > 1e-8).float().mean().item()})
    q_opt.zero_grad(set_to_none=True)
    q_loss.backward()
    q_opt.step()
    if step % args.policy_frequency == 0:
        pi_loss = -qf1(obs, actor(obs, z), z).mean()
        if imitate:
            sil_pi = sil_policy_loss(sil_batch, adv, actor, args.exploration_noise, n)
            pi_loss = pi_loss + args.sil_weight * sil_pi
            info["losses/sil_policy"] = sil_pi.item()
        pi_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        pi_opt.step()
        info["losses/actor_loss"] = pi_loss.item()
        with torch.no_grad():
            for net, tgt in zip(nets, targets):
                torch._foreach_lerp_(list(tgt.parameters()), list(net.parameters()), args.tau)
    return info, None if adv is None else adv.cpu().numpy()


def rl_step(step, model, buf, rng, nets, targets, q_opt, pi_opt, args, device, use_context):
    """(d) once: TD3 on a uniform minibatch plus SIL on a prioritized one, whose priorities it then refreshes."""
    batch = sample_rl_batch(model, buf, rng, args, device, use_context=use_context)
    if args.no_sil:
        return td3_update(step, batch, None, nets, targets, q_opt, pi_opt, args)[0]
    where, sil = sample_sil_batch(model, buf, rng, args, device, use_context=use_context)
    if args.sil_nstep:
        sil = with_nstep_return(sil, sil_nstep_parts(model, buf, *where, args, device, use_context), targets, args)
    info, adv = td3_update(step, batch, sil, nets, targets, q_opt, pi_opt, args)
    buf.update_priorities(*where, adv, floor=1e-6 if args.sil_form == "imitation" else 1e-8)  # Oh's / Tang's code
    return info


# ------------------------------------------------------------------------------ policy transfer (§3.4)
def transfer_rule(history, window):
    """Which policy acts on each task in the next episode. history[i]: deque of (kind, return) of task i's
    recent episodes, kind 'own' (pi(s, z_i)) or 'transfer'. The source j is the task whose own policy has the
    best recent average; transfer is considered only when that beats task i's own average. It is then used
    when it earned more than the own policy over task i's last `window` episodes; a kind absent from the
    window is tried once, so both averages stay recent. Returns (use_transfer bool[n], source int[n])."""
    def avg(h, kind):
        r = [ret for k, ret in list(h)[-window:] if k == kind]
        return np.mean(r) if r else np.nan
    own = np.array([avg(h, "own") for h in history])
    tr = np.array([avg(h, "transfer") for h in history])
    n = len(history)
    use, source = np.zeros(n, bool), np.zeros(n, np.int64)
    for i in range(n):  # n tasks, once per episode: bookkeeping, not a gradient step
        others = np.where(np.arange(n) != i, np.nan_to_num(own, nan=-np.inf), -np.inf)
        source[i] = j = int(np.argmax(others))
        if np.isnan(own[i]) or not own[j] > own[i]:
            continue
        use[i] = np.isnan(tr[i]) or tr[i] > own[i]
    return use, source


# ---------------------------------------------------------------------------------------------- rollouts
def rollout(env_list, policy, rng, K, record_frames=False):
    """One episode on every env in lockstep. policy(obs, delta_hist, act_hist, valid_hist) -> actions, all
    (n, .) numpy; the histories are each env's last K (delta s, a) of this episode (zero-padded)."""
    n = len(env_list)
    obs = np.stack([e.reset(seed=int(rng.integers(2**31)))[0] for e in env_list]).astype(np.float32)
    od, ad = obs.shape[1], env_list[0].action_space.shape[0]
    hist_d, hist_a, hist_v = (np.zeros((n, K) + d, np.float32) for d in ((od,), (ad,), ()))
    alive, steps, frames = np.ones(n, bool), [], []
    while alive.any():
        act = np.clip(policy(obs, hist_d, hist_a, hist_v), -1.0, 1.0).astype(np.float32)
        next_obs, rew, done = obs.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        for i in np.flatnonzero(alive):
            o, r, term, trunc, _ = env_list[i].step(act[i])
            next_obs[i], rew[i], done[i] = o, r, float(term)
            alive[i] = not (term or trunc)
        if record_frames and len(steps) % 5 == 0:  # every 5th frame at half resolution keeps the file small
            frames.append(env_list[0].render()[::2, ::2])
        steps.append((obs, act, rew, next_obs, done, alive.copy()))
        hist_d = np.concatenate([hist_d[:, 1:], (next_obs - obs)[:, None]], 1)
        hist_a = np.concatenate([hist_a[:, 1:], act[:, None]], 1)
        hist_v = np.concatenate([hist_v[:, 1:], np.ones((n, 1), np.float32)], 1)
        obs = next_obs
    o, a, r, o2, d, alive_after = (np.stack(x, 1) for x in zip(*steps))
    lengths = 1 + np.concatenate([alive_after, np.zeros((n, 1), bool)], 1).argmin(1)
    return dict(obs=o, act=a, rew=r, next_obs=o2, done=d, lengths=lengths, frames=frames,
                returns=np.array([r[i, : lengths[i]].sum() for i in range(n)]))


def make_policy(model, actor, device, z_fixed=None, H=None, z_src=None, z_tgt=None, use_transfer=None,
                noise=0.0, rng=None):
    """pi(s, z_t) with z_t from the online history (or a fixed z); rows with use_transfer act with the transferred
    policy H(s, pi(s, z_src), z_src, z_tgt) instead (§3.4). Gaussian noise for exploration."""
    @torch.no_grad()
    def policy(obs, hist_d, hist_a, hist_v):
        o, d, a, v = to_t(device, obs, hist_d, hist_a, hist_v)
        z = z_fixed.expand(len(o), -1) if z_fixed is not None else model.context(d, a, v)
        act = actor(o, z)
        if H is not None and use_transfer.any():
            # the source action pi(s, z^(j)); a policy trained on a fixed context (--mode transfer) keeps it
            a_src = actor(o, z_src if z_fixed is None else z)
            rows = torch.as_tensor(use_transfer, device=device)[:, None]
            act = torch.where(rows, H(model, o, a_src, z_src, z_tgt), act)
        act = act.cpu().numpy()
        return act + noise * rng.standard_normal(act.shape) if noise > 0 else act
    return policy


def table1_transfer(args, actor, H, H_opt, rng, device, pair_envs, horizon, obs_dim, act_dim, progress):
    """Table 1 on fixed data: the trained source policy plus noise collects `transfer_episodes` on the source and
    the target task; a fresh C/F (Eq. 1 + Eq. 2) and then H (Eq. 3) are fit on that data; the source policy and
    the transferred policy H(s, pi(s), z_src, z_tgt) are rolled out on the target task."""
    K, zero_z = args.context_len, torch.zeros(1, args.context_dim, device=device)
    data = TaskReplayBuffer(2, args.transfer_episodes * horizon, obs_dim, act_dim)
    model = DynamicsModel(obs_dim, act_dim, K, args.context_dim).to(device)  # fresh C/F for the pair
    collect = make_policy(model, actor, device, z_fixed=zero_z, noise=args.transfer_data_noise, rng=rng)
    for _ in range(args.transfer_episodes):  # the source policy plus noise on both tasks: 'mediocre' data
        store_episodes(data, model, rollout(pair_envs, collect, rng, K), args.gamma)
    model_opt = torch.optim.Adam(model.parameters(), lr=args.model_lr)
    for _ in range(args.transfer_model_updates):
        fwd, cont = model_update(model, model_opt, data, rng, args, device)
        progress.step("model", 1, "Table 1 | C/F on the fixed data")
    z_pair = task_features(model, data, rng, args, device)
    model.requires_grad_(False)
    for _ in range(args.transfer_translator_updates):
        tl = translator_update(model, H, H_opt, data, z_pair, rng, args, device, pair=(0, 1))
        progress.step("translator", 1, "Table 1 | H on the fixed data")
    return {**table1_returns(args, model, actor, H, z_pair, rng, device, pair_envs),
            "losses/forward": fwd, "losses/contrastive": cont, "losses/translator": tl}


def table1_returns(args, model, actor, H, z_pair, rng, device, pair_envs):
    """Table 1's numbers: the source policy and the transferred policy H(s, pi(s), z_src, z_tgt) on the target task,
    the source policy on the source task, `eval_episodes` each."""
    K, zero_z = args.context_len, torch.zeros(1, args.context_dim, device=device)
    source_pol = make_policy(model, actor, device, z_fixed=zero_z)
    transfer_pol = make_policy(model, actor, device, z_fixed=zero_z, H=H, z_src=z_pair[[0]], z_tgt=z_pair[[1]],
                               use_transfer=np.ones(1, bool))
    src_on_tgt = [rollout(pair_envs[1:], source_pol, rng, K)["returns"][0] for _ in range(args.eval_episodes)]
    tr_on_tgt = [rollout(pair_envs[1:], transfer_pol, rng, K)["returns"][0] for _ in range(args.eval_episodes)]
    src_on_src = [rollout(pair_envs[:1], source_pol, rng, K)["returns"][0] for _ in range(args.eval_episodes)]
    return {"eval/return": float(np.mean(tr_on_tgt)), "eval/source_policy_return": float(np.mean(src_on_tgt)),
            "eval/source_on_source_return": float(np.mean(src_on_src)),
            "eval/transferred_stderr": float(np.std(tr_on_tgt) / np.sqrt(len(tr_on_tgt))),
            "eval/source_stderr": float(np.std(src_on_tgt) / np.sqrt(len(src_on_tgt)))}


# ------------------------------------------- Table 1 with the authors' data recipe (guoyijie/MCAT, Table 1 Replicate)
# train_transfer_action.py and single_transfer.py: 100k transitions per task from each task's own "data policy" (a
# TD3 actor checkpoint of train_td3.py, which saves one every 20k env steps; which checkpoint they loaded is not in
# the code), C and F on the target task only, H on the source data with a fresh Adam per round.
AUTHORS_MODEL_BATCH = 256  # (context, future step) pairs per forward batch (their get_forward_loss: sample(256))
AUTHORS_FORWARD_THRESHOLD = {"cheetah": 0.01, "ant": 0.2, "hopper": 0.1, "walker": 0.2, "humanoid": 0.45}
AUTHORS_CONVERGED_MODEL_UPDATES = 1000  # C/F steps per round once the last round's MSE is below the threshold
CHECKPOINT_EVERY = 20_000  # train_td3.py saves the actor every 20k env steps


def authors_translator_lr(round_: int) -> float:
    """H's learning rate in round t (their train_transfer_agent_bisimilar: 3e-4 for t < 5, 5e-5 for t < 15, 1e-5)."""
    return 3e-4 if round_ < 5 else 5e-5 if round_ < 15 else 1e-5


def train_data_policy(env, args, rng, device, obs_dim, act_dim, progress, label):
    """One task's mediocre data policy: TD3 (+SIL unless --no-sil) with a zero context on that task alone for
    --data-policy-steps env steps, as the source policy is trained (random steps, updates per env step). The
    source's data policy is its own run, not an early checkpoint of the good source policy's run: whether theirs
    was is not in their code, and a run of its own treats both tasks alike."""
    agent = make_agent(obs_dim, act_dim, args, device)
    buf = TaskReplayBuffer(1, args.buffer_size, obs_dim, act_dim, sil_alpha=None if args.no_sil else args.sil_alpha)
    zero_z, steps, grad_steps = torch.zeros(1, args.context_dim, device=device), 0, 0
    nets, targets = (agent["actor"], agent["qf1"], agent["qf2"]), (agent["actor_t"], agent["qf1_t"], agent["qf2_t"])
    while steps < args.data_policy_steps:
        if steps < args.learning_starts:
            policy = lambda o, *_: rng.uniform(-1, 1, (len(o), act_dim))  # noqa: E731
        else:
            policy = make_policy(agent["model"], agent["actor"], device, z_fixed=zero_z, noise=args.exploration_noise,
                                 rng=rng)
        new_steps = store_episodes(buf, agent["model"], rollout([env], policy, rng, args.context_len), args.gamma)
        steps += new_steps
        progress.step("collect", new_steps, f"Table 1 | {label} data policy: TD3 on the {label} task, {steps:,} steps")
        if steps >= args.learning_starts:
            for _ in range(int(new_steps * args.updates_per_step)):
                grad_steps += 1
                rl_step(grad_steps, agent["model"], buf, rng, nets, targets, agent["q_opt"], agent["pi_opt"], args,
                        device, use_context=False)
                progress.step("update", 1, f"Table 1 | {label} data policy: TD3 updates")
    return agent["actor"]


def collect_fixed_data(args, data_actors, rng, device, pair_envs, obs_dim, act_dim, progress):
    """--transfer-data-steps transitions on each task of the pair from that task's own data policy, acting
    deterministically (their select_action); the last episode is cut where the count is reached, as their loop
    of 10e4 steps. The normalizers of the fresh C/F see both tasks' data (their compute_normalization on every
    path). (Deviations: their loop carries the running episode over from one task to the next, so each task's first
    episode there ran on the other task's physics; here every episode starts on its own task. Their paths store
    states only and so lose each episode's last transition; here it is kept.) Returns (data with task 0 = source,
    1 = target, the fresh C/F, mean return of the whole episodes)."""
    data = TaskReplayBuffer(2, args.transfer_data_steps, obs_dim, act_dim)
    model = DynamicsModel(obs_dim, act_dim, args.context_len, args.context_dim).to(device)
    zero_z, returns = torch.zeros(1, args.context_dim, device=device), [[], []]
    for k, (env, data_actor) in enumerate(zip(pair_envs, data_actors)):
        policy = make_policy(model, data_actor, device, z_fixed=zero_z)
        while data.size[k] < args.transfer_data_steps:
            ep = rollout([env], policy, rng, args.context_len)
            n = min(int(ep["lengths"][0]), args.transfer_data_steps - int(data.size[k]))
            o, a, r, o2, d = (ep[key][0, :n] for key in ("obs", "act", "rew", "next_obs", "done"))
            data.add_episode(k, o, a, r, o2, d, discounted_returns(r, args.gamma))
            for norm, x in ((model.obs_norm, o), (model.act_norm, a), (model.delta_norm, o2 - o)):
                norm.update(x)
            if n == ep["lengths"][0]:
                returns[k].append(float(ep["returns"][0]))
            progress.step("collect", n, f"Table 1 | fixed data on task {k}: {int(data.size[k]):,} transitions")
    return data, model, [float(np.mean(r)) if r else float("nan") for r in returns]


def forward_loss_flat(model, buf, task, rng, args, device):
    """Eq. 1 sampled as the authors' Table-1 code does (single_transfer.py get_forward_loss): 256 (context, future
    step) pairs of one task, each a window start t with its context z_t and ONE of the next M transitions under
    the same z_t, steps past the episode end dropped. Returns (NLL, MSE of F's mean, z_t)."""
    K, n = args.context_len, AUTHORS_MODEL_BATCH
    tasks = np.full(n, task)
    idx = buf.sample_index(tasks, rng)
    future = rng.integers(args.future_len, size=(n, 1))  # uniform over the M steps, as their bootstrap draw
    _, act, delta, valid = to_t(device, *buf.gather(tasks, idx, np.arange(-K, 0), with_obs=False))
    z = model.context(delta, act, valid)
    obs_f, act_f, delta_f, valid_f = (x[:, 0] for x in to_t(device, *buf.gather(tasks, idx, future)))
    mean, logvar = model.predict(obs_f, act_f, z)
    err = (mean - model.delta_norm(delta_f)) ** 2
    nll, mse = (err * torch.exp(-logvar) + logvar).mean(-1), err.mean(-1)
    return (nll * valid_f).sum() / valid_f.sum(), ((mse * valid_f).sum() / valid_f.sum()).item(), z


def model_update_one_task(model, opt, buf, task, rng, args, device):
    """The authors' Table-1 C/F step (train_context_forward with a_idx = b_idx = target, label 0): Eq. 1 on two
    batches of ONE task, each with the L2 term, and Eq. 2 with the two batches' contexts as same-task pairs (only
    the pull-together term d^2). Returns (the two batches' summed MSE, their convergence measure; the NLL)."""
    loss_a, mse_a, z_a = forward_loss_flat(model, buf, task, rng, args, device)
    loss_b, mse_b, z_b = forward_loss_flat(model, buf, task, rng, args, device)
    loss = loss_a + loss_b + 2 * model.weight_decay()
    if not args.no_contrastive:
        same = torch.zeros(len(z_a), dtype=torch.bool, device=device)
        loss = loss + args.contrastive_weight * contrastive_loss(z_a, z_b, same, args.contrastive_margin)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return mse_a + mse_b, (loss_a + loss_b).item()


def fit_model_on_target(model, data, rng, args, device, progress):
    """C/F on the target task's data only: --transfer-rounds rounds of --transfer-model-updates steps, 1,000 once the
    last round's mean summed MSE is below the authors' threshold for the family (one Adam throughout)."""
    opt = torch.optim.Adam(model.parameters(), lr=args.model_lr)
    threshold = next((v for k, v in AUTHORS_FORWARD_THRESHOLD.items() if args.env.startswith(k)), None)
    mse, fwd = float("inf"), float("nan")
    for t in range(args.transfer_rounds):
        n = args.transfer_model_updates
        if threshold is not None and mse < threshold:
            n = min(n, AUTHORS_CONVERGED_MODEL_UPDATES)
            progress.remaining["model"] -= args.transfer_model_updates - n
        mses = []
        for _ in range(n):
            m, fwd = model_update_one_task(model, opt, data, 1, rng, args, device)
            mses.append(m)
            progress.step("model", 1, f"Table 1 | C/F on the target data, round {t + 1}/{args.transfer_rounds} | "
                                      f"last round's forward MSE {mse:.4f} (threshold {threshold})")
        mse = float(np.mean(mses))
    return mse, fwd


def fit_translator_authors(model, H, data, z_pair, rng, args, device, progress):
    """H on the source data (Eq. 3, C and F frozen): --transfer-rounds rounds of --transfer-translator-updates steps,
    a fresh Adam each round at authors_translator_lr(t) (their get_optim per round)."""
    tl = float("nan")
    for t in range(args.transfer_rounds):
        opt = torch.optim.Adam(H.parameters(), lr=authors_translator_lr(t))
        for _ in range(args.transfer_translator_updates):
            tl = translator_update(model, H, opt, data, z_pair, rng, args, device, pair=(0, 1))
            progress.step("translator", 1, f"Table 1 | H on the source data, round {t + 1}/{args.transfer_rounds} | "
                                           f"lr {authors_translator_lr(t):g} | loss {tl:.4f}")
    return tl


def table1_transfer_authors(args, actor, H, rng, device, pair_envs, obs_dim, act_dim, progress):
    """Table 1 with the authors' data recipe: each task's own mediocre TD3 policy collects --transfer-data-steps
    there; a fresh C/F is fit on the target's data alone, then H on the source data; then as table1_transfer."""
    times, t0 = {}, time.time()
    data_actors = [train_data_policy(env, args, rng, device, obs_dim, act_dim, progress, label)
                   for env, label in zip(pair_envs, ("source", "target"))]
    times["time/update"] = time.time() - t0  # the data policies' TD3 runs, their env steps included
    t0 = time.time()
    data, model, data_returns = collect_fixed_data(args, data_actors, rng, device, pair_envs, obs_dim, act_dim,
                                                   progress)
    times["time/collect"] = time.time() - t0
    t0 = time.time()
    mse, fwd = fit_model_on_target(model, data, rng, args, device, progress)
    # Deviation: z_src, z_tgt are computed once (the mean context of 256 windows per task) and H reads them as
    # inputs; their pair translator H(s, a) reads no context, and F's z_tgt is re-averaged over a fresh batch of 256
    # target windows at every step.
    z_pair = task_features(model, data, rng, args, device)
    model.requires_grad_(False)
    tl = fit_translator_authors(model, H, data, z_pair, rng, args, device, progress)
    times["time/relabel"] = time.time() - t0
    t0 = time.time()  # once, after the last round (theirs: 100 episodes after every round; see docs/mcat.md)
    record = table1_returns(args, model, actor, H, z_pair, rng, device, pair_envs)
    times["time/eval"] = time.time() - t0
    return {**record, "losses/forward": fwd, "losses/forward_mse": mse, "losses/translator": tl,
            "data/source_return": data_returns[0], "data/target_return": data_returns[1],
            "data/transitions_per_task": int(data.size.min()), "transfer_recipe": "authors", "times": times}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(env_list, model, actor, rng, args, device, z_fixed=None, video_path=None):
    """Meta-test protocol: deterministic pi(s, z_t), z_t from the episode's own last K transitions (from an empty
    window); mean return per task over `eval_episodes`."""
    pol = make_policy(model, actor, device, z_fixed=z_fixed)
    runs = [rollout(env_list, pol, rng, args.context_len, record_frames=video_path is not None and e == 0)
            for e in range(args.eval_episodes)]
    if video_path is not None and runs[0]["frames"]:
        envs.save_video(runs[0]["frames"], video_path, fps=4)
    return np.mean([r["returns"] for r in runs], 0)


# ================================================================================================ plumbing
MCAT_FAMILIES = ("cheetah-armature", "cheetah-mass", "hopper-size", "ant-damping", "ant-cripple")
# Fields left at None are filled from here. The main text gives delay 500 for the 1M-step ablations (Tables 3-4)
# and 2M steps (Table 2); its appendix is not in our copy, so every MCAT family gets the same values. Table 1
# pairs are indices into train_tasks + test_tasks: armature 0.1 -> 0.5, crippled leg 0 -> leg 3.
DEFAULTS = dict(reward_delay=500, total_timesteps=2_000_000)
PAPER_DEFAULTS: dict[str, dict] = {
    "cheetah-armature": dict(source_task=6, target_task=3),
    "cheetah-mass": {}, "hopper-size": {}, "ant-damping": {},
    "ant-cripple": dict(source_task=0, target_task=3),
}
# Table 1 pre-trains the source policy on DENSE rewards: the meta-training values do not apply there
TRANSFER_MODE_DEFAULTS = dict(reward_delay=1, total_timesteps=200_000)
# C/F and H steps on the fixed data per recipe; the authors' per round (train_transfer_action.py forward_n_update,
# cycle_n_update)
TRANSFER_RECIPE_DEFAULTS = {"ours": dict(transfer_model_updates=5000, transfer_translator_updates=5000),
                            "authors": dict(transfer_model_updates=10_000, transfer_translator_updates=3000)}
RUN_LENGTH_FLAGS = ("total_timesteps", "cuda", "capture_video", "run_dir", "save_model")  # resume may change these
CHECKPOINT_FORMAT = 1
SCRIPT = os.path.basename(__file__)


def fail(message: str) -> NoReturn:
    """A bad input: one line on stderr and exit code 2, as tyro does for a malformed flag."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_probe(name: str) -> envs.TaskEnv:
    """The family `name` at its defaults (task lists, horizon), or a one-line error if mcat.py cannot serve it."""
    if name not in envs.names():
        fail(f"--env {name}: unknown; choose one of {', '.join(MCAT_FAMILIES)}")
    probe = envs.make(name, seed=0)
    if "dynamics" not in probe.varies:
        fail(f"--env {name}: mcat.py needs tasks whose dynamics vary ('{name}' varies {probe.varies}); "
             f"it serves: {', '.join(MCAT_FAMILIES)}")
    return probe


def resolve_args(args: Args, probe: envs.TaskEnv) -> Args:
    """Every None field filled: the paper's value for --env, else the family's own (horizon, task counts)."""
    paper = {**DEFAULTS, **PAPER_DEFAULTS.get(args.env, {}), **(TRANSFER_MODE_DEFAULTS if args.mode == "transfer"
                                                                  else {})}
    family = dict(horizon=probe.horizon, num_train_tasks=len(probe.train_tasks),
                  num_test_tasks=len(probe.test_tasks), source_task=0)
    for key, value in {**family, **paper, **TRANSFER_RECIPE_DEFAULTS[args.transfer_recipe]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data_policy_steps is None:  # the first of train_td3.py's checkpoints that has been trained
        args.data_policy_steps = CHECKPOINT_EVERY * (args.learning_starts // CHECKPOINT_EVERY + 1)
    if args.target_task is None:  # the task farthest from the source
        all_tasks = np.concatenate([probe.train_tasks, probe.test_tasks])
        if 0 <= args.source_task < len(all_tasks):
            args.target_task = int(np.argmax(np.linalg.norm(all_tasks - all_tasks[args.source_task], axis=-1)))
        else:
            args.target_task = 0
    return args


def check_args(args: Args, probe: envs.TaskEnv) -> None:
    """Every numeric and choice argument, before anything runs: one line naming the flag, exit code 2."""
    n_train, n_test = len(probe.train_tasks), len(probe.test_tasks)
    rules = [("seed", 0 <= args.seed < 2**31, "must be in [0, 2**31)"),
             ("total_timesteps", args.total_timesteps >= 1, "must be >= 1"),
             ("reward_delay", args.reward_delay >= 1, "must be >= 1 (1 = dense rewards)"),
             ("horizon", args.horizon >= 1, "must be >= 1"),
             ("num_train_tasks", (2 if args.mode == "meta" else 1) <= args.num_train_tasks <= n_train,
              f"must be in [{2 if args.mode == 'meta' else 1}, {n_train}] for --env {args.env}"
              + (" (meta-training needs 2 tasks to transfer between)" if args.mode == "meta" else "")),
             ("num_test_tasks", 1 <= args.num_test_tasks <= n_test, f"must be in [1, {n_test}] for --env {args.env}"),
             ("buffer_size", args.buffer_size >= args.horizon,
              f"must be >= --horizon ({args.horizon}): the buffer holds whole episodes")]
    rules += [(k, getattr(args, k) >= 1, "must be >= 1") for k in (
        "context_len", "future_len", "context_dim", "model_batch_size", "model_updates", "task_feature_batch",
        "translator_batch_size", "translator_updates", "batch_size", "sil_batch_size", "policy_frequency",
        "transfer_window",
        "eval_every", "eval_episodes", "transfer_model_updates", "transfer_translator_updates", "transfer_data_steps",
        "data_policy_steps", "transfer_rounds")]
    rules += [(k, getattr(args, k) > 0, "must be > 0") for k in (
        "model_lr", "translator_lr", "learning_rate", "contrastive_margin", "sil_adv_clip", "sil_alpha")]
    rules += [(k, getattr(args, k) >= 0, "must be >= 0") for k in (
        "contrastive_weight", "policy_noise", "noise_clip", "exploration_noise", "learning_starts",
        "updates_per_step", "sil_weight", "sil_value_coef", "sil_beta", "transfer_episodes", "transfer_data_noise")]
    rules += [("gamma", 0 < args.gamma <= 1, "must be in (0, 1]"), ("tau", 0 < args.tau <= 1, "must be in (0, 1]"),
              ("exploration_noise", args.no_sil or args.exploration_noise > 0,
               "must be > 0 with SIL: it is the sigma of SIL's Gaussian policy (or use --no-sil)")]
    n_all = n_train + n_test
    if args.mode == "transfer":
        rules += [("source_task", 0 <= args.source_task < n_all, f"must be in [0, {n_all}) for --env {args.env}"),
                  ("target_task", 0 <= args.target_task < n_all and args.target_task != args.source_task,
                   f"must be in [0, {n_all}) for --env {args.env} and differ from --source-task {args.source_task}"),
                  ("data_policy_steps", args.transfer_recipe == "ours" or args.data_policy_steps > args.learning_starts,
                   f"must be > --learning-starts ({args.learning_starts}) with --transfer-recipe authors: a data "
                   "policy that never updated is the untrained network, not a mediocre one")]
    rules += [("sil_form", args.sil_form == "imitation" or not args.no_sil, "needs SIL on (drop --no-sil)"),
              ("sil_nstep", args.sil_nstep == 0 or (args.sil_nstep > 0 and args.sil_form == "lower-bound"),
               "must be 0, or >= 1 with --sil-form lower-bound")]
    rules += [("observe_phase", not args.observe_phase or args.reward_delay > 1,
               "needs --reward-delay > 1 (with dense rewards there is no phase)"),
              ("observe_pending", not args.observe_pending or args.reward_delay > 1,
               "needs --reward-delay > 1 (with dense rewards nothing is pending)")]
    rules += [("transfer_recipe", args.mode == "transfer" or args.transfer_recipe == "ours",
               "needs --mode transfer (it is the recipe of Table 1's fixed-data experiment)")]
    for name, ok, allowed in rules:
        if not ok:
            fail(f"{flag(name)} {getattr(args, name)}: {allowed}")


def help_text(env_name: str) -> str:
    """tyro's description: the paper defaults resolved for --env, the cost of a paper-size run, a reduced run."""
    text = ("MCAT (Guo, Wu, Lee, AAAI 2022): context-conditioned TD3 with self-imitation and policy transfer "
            "through an action translator (Tables 2-4), or one source -> target transfer (Table 1, --mode transfer).")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # an unknown --env: the generic text only
            resolved = resolve_args(Args(env=env_name), make_probe(env_name))
    except (SystemExit, Exception):
        resolved = None
    if resolved is not None:
        table = " ".join(f"{k}={getattr(resolved, k)}" for k in (*DEFAULTS, *PAPER_DEFAULTS.get(env_name, {}),
                                                                 "horizon", "num_train_tasks", "num_test_tasks"))
        text += (f"\n\npaper defaults for --env {env_name}: {table}; in --mode transfer: "
                 + " ".join(f"{k}={v}" for k, v in TRANSFER_MODE_DEFAULTS.items()) + ".")
    return text + (
        "\n\na paper-size run (2M env steps) costs ~13 h of one uncontended core, ~30 h on a loaded 2-core CPU "
        "(measured: 18-27 ms of CPU per TD3+SIL update, 28 ms per C/F and 11.5 ms per H update, and 270 s per "
        "5,000-step iteration at load 6; benchmarks/mcat.md). Reduced command that learned to run within ~40 min "
        "before the SIL policy term and the authors' observation (dense reward, 2,082 ± 620 at 150k env steps): "
        "python mcat.py --reward-delay 1 --total-timesteps 150000 --learning-starts 10000 --updates-per-step 0.5 "
        "--model-updates 250 --translator-updates 250 --eval-every 2")


def parse_args(description: str, argv: list[str]) -> Args:
    """tyro.cli, with tyro's boxed parse errors condensed to one `error: ...` line (exit code 2 kept)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(Args, description=description, args=argv)
    except SystemExit as e:
        text = captured.getvalue()
        if e.code == 2 and text:
            lines = [line.strip("│╭╮╰╯─ ") for line in text.splitlines()[1:]]
            body = []
            for line in lines:  # the box's first paragraph is the message; a rule ends it
                if not line:
                    if body:
                        break
                    continue
                body.append(line)
            fail(" ".join(body))
        sys.stderr.write(text)
        raise


def typed_flags(argv: list[str]) -> set[str]:
    """The Args fields the user typed (`--flag`, `--flag=v`, `--no-flag`)."""
    names = {f.name for f in fields(Args)}
    typed = set()
    for tok in argv:
        if tok.startswith("--"):
            name = tok[2:].split("=")[0].replace("-", "_")
            typed.add(name[3:] if name not in names and name.startswith("no_") and name[3:] in names else name)
    return typed & names


def parse_command_line(argv: list[str]):
    """argv -> (resolved and checked args, probe env, checkpoint or None). With --resume the run's arguments
    come from the checkpoint; typed flags that differ are refused (--env), used (the run length and output
    flags) or ignored, each with one line on stderr."""
    env_name = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--env"),
                    next((a.split("=", 1)[1] for a in argv if a.startswith("--env=")), Args.env))
    description = help_text(env_name) if {"-h", "--help"} & set(argv) else ""
    args, ckpt = parse_args(description, argv), None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        stored, path = ckpt["args"], args.resume
        if args.env != ckpt["env"] and "env" in typed_flags(argv):
            fail(f"--resume {path}: written for --env {ckpt['env']}, not --env {args.env}")
        merged = dict(stored)
        for name in sorted(typed_flags(argv) - {"resume", "env"}):
            given, old = getattr(args, name), stored.get(name)
            if given == old:
                continue
            if name in RUN_LENGTH_FLAGS:
                print(f"warning: {flag(name)} {given} (the checkpoint's run had {old}): using {given}", file=sys.stderr)
                merged[name] = given
            else:
                print(f"warning: {flag(name)} {given} differs from the checkpoint's {old}: using the checkpoint's "
                      f"{old}", file=sys.stderr)
        try:
            args = Args(**{**merged, "resume": args.resume})
        except TypeError:
            fail(f"--resume {path}: its arguments do not match this {SCRIPT}")
        if "run_dir" not in typed_flags(argv):  # the run continues in the checkpoint's directory
            args.run_dir = os.path.dirname(os.path.abspath(checkpoint_path(args.resume)))
    probe = make_probe(args.env)
    args = resolve_args(args, probe)
    check_args(args, probe)
    args.run_dir = args.run_dir or f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    return args, probe, ckpt


class Progress:
    """One progress line now and then whenever `every` seconds have passed: what runs, work done / total and an
    ETA from the rates measured so far. The time between two calls is charged to the kind of work reported."""

    def __init__(self, remaining: dict[str, float], every: float = 30.0):
        self.remaining, self.every = dict(remaining), every
        self.measured, self.spent = dict.fromkeys(remaining, 0.0), dict.fromkeys(remaining, 0.0)
        self.t_last = self.t_start = time.time()
        self.t_printed = -float("inf")

    def eta(self) -> tuple[Optional[float], list[str]]:
        """(seconds left over the kinds measured so far: remaining work times measured seconds per unit, None
        before any kind with work left is measured; the kinds with work left not measured yet). A phase can run
        long before the next kind starts (Table 1's C/F rounds before H), so the partial sum is worth showing."""
        left = [k for k, v in self.remaining.items() if v > 0]
        known = [k for k in left if self.measured[k] > 0]
        seconds = sum(self.remaining[k] * self.spent[k] / self.measured[k] for k in known) if known else None
        return seconds, [k for k in left if self.measured[k] == 0]

    def step(self, kind: str, amount: float, text: str, force: bool = False) -> None:
        now = time.time()
        self.spent[kind] += now - self.t_last
        self.measured[kind] += amount
        self.remaining[kind] -= amount
        self.t_last = now
        if force or now - self.t_printed >= self.every:
            self.t_printed = now
            eta, unmeasured = self.eta()
            if eta is None:
                eta_text = "measuring"
            else:
                eta_text = hms(eta) + (f" + {', '.join(unmeasured)} (not measured yet)" if unmeasured else "")
            print(f"[{hms(now - self.t_start)}] {text} | ETA {eta_text}", flush=True)


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def checkpoint_path(resume: str) -> str:
    return os.path.join(resume, "checkpoint.pt") if os.path.isdir(resume) else resume


held = {"holding": False, "signal": None}  # a SIGINT/SIGTERM that arrived while a checkpoint was being finished


def raise_interrupt(signum, frame):
    """The SIGINT and SIGTERM handler: a KeyboardInterrupt naming the signal, the one way a run stops; inside
    signals_held() the signal is only noted, and raised when the block ends."""
    if held["holding"]:
        held["signal"] = signal.Signals(signum).name
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_held():
    """A checkpoint and the note of which one is finished change together, so the stop message never names an older
    checkpoint than the one on disk. (A flag, not a signal mask: a mask holds only the main thread's signals, and
    a signal sent to the process may land in one of torch's or TensorBoard's threads.)"""
    held["holding"] = True
    try:
        yield
    finally:
        held["holding"] = False
    name, held["signal"] = held["signal"], None
    if name is not None:
        raise KeyboardInterrupt(name)


def save_checkpoint(path: str, state: dict) -> None:
    """Atomic and durable: write path.tmp, fsync, rename over path. A crash or a signal mid-write leaves the
    previous checkpoint intact; a stale .tmp from a killed run is removed at start."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, "script": SCRIPT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(resume: str) -> dict:
    """The checkpoint at `resume` (a file or a run directory holding checkpoint.pt), or a one-line error."""
    path = checkpoint_path(resume)
    if not os.path.isfile(path):
        fail(f"--resume {resume}: no checkpoint file there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, empty or not a torch file
        fail(f"--resume {path}: not a readable checkpoint ({type(e).__name__}); it may have been cut off mid-write")
    if not isinstance(ckpt, dict) or ckpt.get("script") != SCRIPT:
        who = ckpt.get("script", "an unknown script") if isinstance(ckpt, dict) else "an unknown script"
        fail(f"--resume {path}: written by {who}, not {SCRIPT}")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        fail(f"--resume {path}: checkpoint format {ckpt.get('format')}, this {SCRIPT} reads format {CHECKPOINT_FORMAT}")
    return ckpt


# The MCAT authors' envs observe qpos[1:] + qvel (cheetah), qpos[1:] + clip(qvel, -10, 10) (hopper) and qpos[2:] +
# qvel (ant; guoyijie/MCAT envs/halfcheetah_env.py, hopper_env.py, ant_env.py, ant_cripple_env.py _get_obs). Our
# families keep the torso x (ant: x, y) so that their rewards are functions of the observation, and the ant's
# contact forces; these are the columns [lo, hi) of theirs that the authors' observation is.
AUTHORS_OBSERVATION = {"cheetah-armature": (1, 18), "cheetah-mass": (1, 18), "hopper-size": (1, 12),
                       "ant-damping": (2, 29), "ant-cripple": (2, 29)}


class DelayObservation(gym.Wrapper):
    """--observe-phase / --observe-pending: the observation gains, in this order,
    - the phase (t mod D) / D, where t counts the steps since reset and D is the reward delay, so it is 0 right
      after each payment. Without it V(s) cannot tell a step just after a payment from one just before the next,
      and SIL's R - V then measures the phase rather than the episode (benchmarks/sil_diagnostic.py);
    - the pending reward: what the steps since the last payment earned and the next payment will pay, divided by
      D. With the phase it makes the delayed-reward problem Markov again: the next payment is then a function of
      what is observed, not of the unobserved history (benchmarks/mcat.md, (d)).
    Neither is in the paper (its observation is the env's); both are diagnostics."""

    def __init__(self, env: gym.Env, delay: int, phase: bool, pending: bool):
        super().__init__(env)
        self.delay, self.phase, self.pending = delay, phase, pending
        self._t, self._pending = 0, 0.0
        low, high = env.observation_space.low, env.observation_space.high
        extra_low = ([0.0] if phase else []) + ([-np.inf] if pending else [])
        extra_high = ([1.0] if phase else []) + ([np.inf] if pending else [])
        self.observation_space = gym.spaces.Box(np.append(low, extra_low).astype(np.float32),
                                                np.append(high, extra_high).astype(np.float32), dtype=np.float32)

    def _extend(self, obs: np.ndarray) -> np.ndarray:
        extra = ([(self._t % self.delay) / self.delay] if self.phase else []) + \
                ([self._pending / self.delay] if self.pending else [])
        return np.append(obs, extra).astype(np.float32)

    def reset(self, **kwargs):
        self._t, self._pending = 0, 0.0
        obs, info = self.env.reset(**kwargs)
        return self._extend(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        # the same rule as envs/wrappers.py's DelayedReward: paid every D steps (and at the end, after which the
        # observation is not used)
        self._pending = 0.0 if self._t % self.delay == 0 else self._pending + float(info["dense_reward"])
        return self._extend(obs), reward, terminated, truncated, info


def make_envs(args: Args, tasks: np.ndarray, seed: int, render_first: bool = False) -> list:
    """One env per task; with --observation authors each returns only the authors' columns (other families: all),
    with --observe-phase / --observe-pending one more column each: the phase within the reward delay, the reward
    earned since the last payment."""
    out = []
    for k, task in enumerate(tasks):
        try:
            e = envs.make(args.env, seed=seed + k, horizon=args.horizon, reward_delay=args.reward_delay,
                          **({"render_mode": "rgb_array"} if render_first and k == 0 else {}))
        except ValueError as err:  # e.g. no OpenGL library to render with
            fail(f"--capture-video: {err}" if render_first else str(err))
        e.unwrapped.set_task(task)  # the physics live in the base env, under any reward wrapper
        lo, hi = AUTHORS_OBSERVATION.get(args.env, (0, None)) if args.observation == "authors" else (0, None)
        if (lo, hi) != (0, None):
            space = gym.spaces.Box(-np.inf, np.inf, (hi - lo,), np.float32)
            e = gym.wrappers.TransformObservation(e, lambda o, lo=lo, hi=hi: o[lo:hi], space)
        if args.observe_phase or args.observe_pending:
            e = DelayObservation(e, args.reward_delay, args.observe_phase, args.observe_pending)
        out.append(e)
    return out


def rng_states(rng: np.random.Generator, env_list: list) -> dict:
    return {"np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "env_rng": [e.unwrapped.np_random.bit_generator.state for e in env_list]}


def restore_rng_states(ckpt: dict, rng: np.random.Generator, env_list: list) -> None:
    rng.bit_generator.state = ckpt["np_rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    random.setstate(ckpt["python_rng"])
    for e, state in zip(env_list, ckpt["env_rng"]):
        e.unwrapped.np_random.bit_generator.state = state


def start_logs(run_dir: str, ckpt: Optional[dict], args: Args) -> SummaryWriter:
    """Fresh run: a new writer and the hyperparameter table. Resumed run: eval.jsonl keeps only the rows written
    at or before the checkpoint (atomic rewrite) and TensorBoard purges the events logged after it."""
    os.makedirs(run_dir, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(run_dir, "checkpoint.pt.tmp"))  # a stale one from a killed run
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=2)
    if ckpt is None:
        writer = SummaryWriter(run_dir)
        table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        return writer
    log = os.path.join(run_dir, "eval.jsonl")
    if os.path.isfile(log):
        with open(log) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["iteration"] <= ckpt["iteration"]]
        with open(log + ".tmp", "w") as f:
            f.writelines(rows)
        os.replace(log + ".tmp", log)
    return SummaryWriter(run_dir, purge_step=ckpt["env_steps"] + 1)


# ==================================================================================================== main
if __name__ == "__main__":
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    writer, all_envs, saved = None, [], None  # saved: (path, iteration) of the last finished checkpoint
    try:
        args, probe, ckpt = parse_command_line(sys.argv[1:])
        meta = args.mode == "meta"
        all_tasks = np.concatenate([probe.train_tasks, probe.test_tasks])
        train_tasks = probe.train_tasks[: args.num_train_tasks] if meta else all_tasks[[args.source_task]]
        test_tasks = probe.test_tasks[: args.num_test_tasks]
        train_envs = make_envs(args, train_tasks, args.seed)
        eval_envs = make_envs(args, test_tasks if meta else train_tasks, args.seed + 10_000,
                              render_first=args.capture_video)
        train_eval_envs = make_envs(args, train_tasks, args.seed + 20_000) if meta else []
        pair_envs = [] if meta else make_envs(args, all_tasks[[args.source_task, args.target_task]], args.seed + 30_000)
        all_envs = train_envs + eval_envs + train_eval_envs + pair_envs
        print("resolved:", {k: getattr(args, k) for k in ("mode", "reward_delay", "total_timesteps")},
              f"{len(train_tasks)} train / {len(test_tasks)} test tasks" if meta else
              f"pair {all_tasks[args.source_task].tolist()} -> {all_tasks[args.target_task].tolist()}")
        run_dir = args.run_dir
        ckpt_path = os.path.join(run_dir, "checkpoint.pt")
        writer = start_logs(run_dir, ckpt, args)

        # TRY NOT TO MODIFY: seeding
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        rng = np.random.default_rng(args.seed)
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

        obs_dim, act_dim = train_envs[0].observation_space.shape[0], probe.action_space.shape[0]
        n_tasks, K = len(train_tasks), args.context_len
        modules = make_agent(obs_dim, act_dim, args, device)
        model, H, actor, qf1, qf2, actor_t, qf1_t, qf2_t, model_opt, H_opt, q_opt, pi_opt = modules.values()
        buf = TaskReplayBuffer(n_tasks, args.buffer_size, obs_dim, act_dim, sil_alpha=None if args.no_sil else
                               args.sil_alpha)
        history = [deque(maxlen=args.transfer_window) for _ in range(n_tasks)]
        z_feat, iteration, env_steps, grad_steps, wall_before = None, 0, 0, 0, 0.0
        zero_z = torch.zeros(1, args.context_dim, device=device)
        if ckpt is not None:
            for k, m in modules.items():
                m.load_state_dict(ckpt[k])
            buf.load_state_dict(ckpt["buffer"])
            history = [deque(h, maxlen=args.transfer_window) for h in ckpt["history"]]
            z_feat = None if ckpt["z_feat"] is None else ckpt["z_feat"].to(device)
            iteration, env_steps, grad_steps, wall_before = (ckpt[k] for k in ("iteration", "env_steps", "grad_steps",
                                                                               "wall_time"))
            restore_rng_states(ckpt, rng, all_envs)
            if os.path.abspath(checkpoint_path(args.resume)) == os.path.abspath(ckpt_path):
                saved = (ckpt_path, iteration)
            print(f"resumed from {checkpoint_path(args.resume)} at iteration {iteration}, {env_steps} env steps")

        n_iter = -(-args.total_timesteps // (n_tasks * args.horizon))
        iters_left = max(n_iter - iteration, 0)
        learn_left = max(args.total_timesteps - max(env_steps, args.learning_starts), 0)
        authors = not meta and args.transfer_recipe == "authors"  # Table 1 with the authors' data recipe
        table1 = not meta and (authors or args.transfer_episodes > 0)
        rounds = args.transfer_rounds if authors else 1
        data_learn = 2 * authors * max(args.data_policy_steps - args.learning_starts, 0) * args.updates_per_step
        progress = Progress({"collect": args.total_timesteps - env_steps
                             + 2 * authors * (args.data_policy_steps + args.transfer_data_steps),
                             "update": learn_left * args.updates_per_step + data_learn,
                             "model": (iters_left * args.model_updates if meta
                                       else args.transfer_model_updates * rounds * table1),
                             "translator": (iters_left * args.translator_updates * (not args.no_transfer) if meta
                                            else args.transfer_translator_updates * rounds * table1),
                             "eval": -(-iters_left // args.eval_every) * (1 + meta) * args.eval_episodes})
        start_time, start_steps, last_eval = time.time(), env_steps, float("nan")
        status = lambda what: (f"iteration {iteration}/{n_iter} | {what} | env steps {env_steps:,}/"  # noqa: E731
                               f"{args.total_timesteps:,} | last eval return {last_eval:.1f}")
        progress.step("collect", 0, status("starting"), force=True)

        # ======================================================================= meta-training loop (Fig. 2)
        while env_steps < args.total_timesteps:
            iteration += 1
            times = {}
            t0 = time.time()
            # ---- (e) collection: one episode per train task; learned or transferred policy per task (§3.4)
            learning = env_steps >= args.learning_starts
            use_tr = np.zeros(n_tasks, bool)
            if not learning:
                policy = lambda o, *_: rng.uniform(-1, 1, (len(o), act_dim))  # noqa: E731
            else:
                src = np.zeros(n_tasks, np.int64)
                if meta and not args.no_transfer and z_feat is not None:
                    use_tr, src = transfer_rule(history, args.transfer_window)
                policy = make_policy(model, actor, device, z_fixed=None if meta else zero_z,
                                     H=H if use_tr.any() else None, z_src=z_feat[src] if use_tr.any() else None,
                                     z_tgt=z_feat if use_tr.any() else None, use_transfer=use_tr,
                                     noise=args.exploration_noise, rng=rng)
            ep = rollout(train_envs, policy, rng, K)
            new_steps = store_episodes(buf, model, ep, args.gamma)
            env_steps += new_steps
            for k in range(n_tasks):
                history[k].append(("transfer" if use_tr[k] else "own", float(ep["returns"][k])))
                writer.add_scalar("charts/episodic_return", ep["returns"][k], env_steps)
            writer.add_scalar("transfer/fraction_transferred", use_tr.mean(), env_steps)
            writer.add_scalar("relabel/fraction_transferred", use_tr.mean(), env_steps)
            times["collect"] = time.time() - t0
            progress.step("collect", new_steps, status("collected one episode per train task"))

            times["model"] = times["translator"] = times["update"] = 0.0
            if env_steps >= args.learning_starts:
                # ---- (a, b) C and F with Eq. 1 + Eq. 2 (only meta mode: the source policy ignores contexts)
                t0 = time.time()
                if meta:
                    for _ in range(args.model_updates):
                        fwd, cont = model_update(model, model_opt, buf, rng, args, device)
                        progress.step("model", 1, status("C/F updates"))
                    writer.add_scalar("losses/forward", fwd, env_steps)
                    writer.add_scalar("losses/contrastive", cont, env_steps)
                    z_feat = task_features(model, buf, rng, args, device)
                times["model"] = time.time() - t0
                # ---- (c) H with Eq. 3, C and F frozen
                t0 = time.time()
                if meta and not args.no_transfer:
                    model.requires_grad_(False)
                    for _ in range(args.translator_updates):
                        tl = translator_update(model, H, H_opt, buf, z_feat, rng, args, device)
                        progress.step("translator", 1, status("H updates"))
                    model.requires_grad_(True)
                    writer.add_scalar("losses/translator", tl, env_steps)
                times["translator"] = time.time() - t0
                # ---- (d) TD3 + SIL with C frozen
                t0, info = time.time(), {}
                for _ in range(int(new_steps * args.updates_per_step)):
                    grad_steps += 1
                    info = rl_step(grad_steps, model, buf, rng, (actor, qf1, qf2), (actor_t, qf1_t, qf2_t), q_opt,
                                   pi_opt, args, device, use_context=meta)
                    progress.step("update", 1, status("TD3 updates" if args.no_sil else "TD3+SIL updates"))
                for k, v in info.items():
                    writer.add_scalar(k, v, env_steps)
                times["update"] = time.time() - t0
            times["relabel"] = times["model"] + times["translator"]  # what MCAT adds on top of context-TD3's RL step

            if iteration % args.eval_every == 0 or env_steps >= args.total_timesteps:
                t0 = time.time()
                video = os.path.join(run_dir, "videos", f"iter{iteration}.gif") if args.capture_video else None
                test_ret = evaluate(eval_envs, model, actor, rng, args, device, None if meta else zero_z, video)
                train_ret = evaluate(train_eval_envs, model, actor, rng, args, device) if meta else test_ret
                times["eval"] = time.time() - t0
                last_eval = float(test_ret.mean())
                progress.step("eval", (1 + meta) * args.eval_episodes, status("evaluated"))
                record = {"iteration": iteration, "env_steps": env_steps,
                          "wall_time": wall_before + time.time() - start_time,
                          "eval/return": last_eval, "eval/return_train_tasks": float(train_ret.mean()),
                          "transfer/fraction_transferred": float(use_tr.mean()),
                          **{f"time/{k}": v for k, v in times.items()}}
                for k, v in record.items():
                    if "/" in k:
                        writer.add_scalar(k, v, env_steps)
                with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
                if args.save_model:
                    with signals_held():
                        save_checkpoint(ckpt_path, {
                            **{k: m.state_dict() for k, m in modules.items()}, "buffer": buf.state_dict(),
                            "history": [list(h) for h in history], "z_feat": z_feat, "iteration": iteration,
                            "env_steps": env_steps, "grad_steps": grad_steps, "wall_time": record["wall_time"],
                            "env": args.env, "args": asdict(args), **rng_states(rng, all_envs)})
                        saved = (ckpt_path, iteration)
            writer.add_scalar("charts/SPS", (env_steps - start_steps) / (time.time() - start_time), env_steps)

        # ========================================================== --mode transfer: Table 1 on fixed data
        if table1:
            t0 = time.time()
            record = (table1_transfer_authors(args, actor, H, rng, device, pair_envs, obs_dim, act_dim, progress)
                      if authors else table1_transfer(args, actor, H, H_opt, rng, device, pair_envs, args.horizon,
                                                      obs_dim, act_dim, progress))
            times = {"time/collect": 0.0, "time/update": 0.0, "time/relabel": time.time() - t0, "time/eval": 0.0,
                     **record.pop("times", {})}
            record = {"iteration": iteration + 1, "env_steps": env_steps,
                      "wall_time": wall_before + time.time() - start_time, **record,
                      "source_task": all_tasks[args.source_task].tolist(),
                      "target_task": all_tasks[args.target_task].tolist(), **times}
            with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if k.startswith(("eval/", "losses/", "data/")):
                    writer.add_scalar(k, v, env_steps + 1)  # after the checkpoint's step: a resume purges it
            print(f"transfer {record['source_task']} -> {record['target_task']}: source policy on target "
                  f"{record['eval/source_policy_return']:.1f}, transferred {record['eval/return']:.1f} "
                  f"(source on source {record['eval/source_on_source_return']:.1f})")
        progress.step("eval", 0, f"done: eval.jsonl and TensorBoard logs in {run_dir}"
                      + (f", checkpoint {ckpt_path}" if saved else ""), force=True)
    except KeyboardInterrupt as e:
        name = e.args[0] if e.args else "SIGINT"
        where = (f"the last finished checkpoint is {saved[0]} (iteration {saved[1]})" if saved
                 else "no checkpoint was written yet")
        print(f"stopped by {name}; {where}", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name].value)
    finally:
        if writer is not None:
            writer.close()
        for e in all_envs:
            e.close()
