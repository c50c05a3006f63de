"""MCAT: Meta-RL with a Context-conditioned Action Translator (Guo, Wu, Lee, AAAI 2022).

"Learning Action Translator for Meta Reinforcement Learning on Sparse-Reward Tasks". Equation numbers are the
paper's: Eq. 1 the forward-model loss L_forw, Eq. 2 the contrastive loss L_cont, Eq. 3 the translator loss
L_trans; §3.4 combines them with context-conditioned TD3 and the policy-transfer rule (Fig. 2e).

Meta mode (Tables 2-4). Tasks differ in their dynamics (armature, mass, size, damping, a crippled leg) and
rewards are delayed (paid as a sum every `reward_delay` steps). Each iteration collects one episode on every
train task, in lockstep, then trains, alternately and never jointly (Fig. 2):
  (a, b) the context encoder C (last K transitions -> z_t) and the probabilistic forward model F, Eq. 1 + Eq. 2;
  task features z^(i) = mean of C over a large batch from the task's buffer B^(i) (§3.2);
  (c) with C and F frozen, the action translator H(s, a, z_src, z_tgt), Eq. 3;
  (d) with C frozen, TD3 actor pi(s, z_t) and twin critics Q(s, a, z_t), plus self-imitation learning (SIL);
  (e) collection on task i acts with pi(s, z_t), or with the transferred policy H(s, pi(s, z^(j)), z^(j), z^(i))
      from the best task j when that earned more in task i's recent episodes (`transfer_rule`).
Evaluation runs pi on the unseen test tasks, z_t inferred online from the episode's own last K transitions.

Transfer mode (Table 1): train a source policy with TD3 on one task (dense reward), collect a fixed data set
with that policy plus noise on the source and a target task, fit C, F and then H on it, and report the source
policy vs the transferred policy H(s, pi(s), z_src, z_tgt) on the target task.

    python mcat.py --env cheetah-armature --reward-delay 500                 # MCAT
    python mcat.py --env cheetah-armature --reward-delay 500 --no-transfer   # MCAT w/o PT (Table 3)
    python mcat.py --env cheetah-armature --mode transfer                    # Table 1
Reduced settings that fit a 2-core CPU are in benchmarks/mcat.md; choices the paper leaves open are in
docs/mcat.md.
"""

import json
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs

MCAT_FAMILIES = ("cheetah-armature", "cheetah-mass", "hopper-size", "ant-damping", "ant-cripple")
# Fields left at None are filled per env from here: the main text gives delay 500 for the 1M-step ablations
# (Tables 3-4) and 2M steps (Table 2); its appendix is not in our copy, so every MCAT family gets the same values.
PAPER_DEFAULTS = {name: dict(reward_delay=500, total_timesteps=2_000_000) for name in MCAT_FAMILIES}
# Table 1 pairs as indices into train_tasks + test_tasks: armature 0.1 -> 0.5, crippled leg 0 -> leg 3
PAPER_DEFAULTS["cheetah-armature"].update(source_task=6, target_task=3)
PAPER_DEFAULTS["ant-cripple"].update(source_task=0, target_task=3)


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
    """path of a checkpoint.pt to continue from"""
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
    """episode length override (the families default to 1000)"""
    num_train_tasks: Optional[int] = None
    """use only the first N train tasks of the family"""
    num_test_tasks: Optional[int] = None
    """evaluate only on the first N test tasks of the family"""

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

    # action translator H (§3.3)
    translator_lr: float = 3e-4
    """Adam learning rate of H"""
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
    sil_value_coef: float = 0.01
    """beta^sil of Oh et al.: weight of 1/2 (R - Q)_+^2 on both critics"""
    sil_policy_coef: float = 0.0
    """weight of the actor's advantage-weighted imitation term (Oh et al.'s policy loss). Off by default: at
    1/(2 sigma^2) = 50 it outweighs the TD3 actor loss and pins pi to the buffer's mean action (docs/mcat.md)"""
    sil_adv_clip: float = 1.0
    """clip of the SIL advantage (R - V)_+ (Oh et al.'s implementation)"""

    # policy transfer (§3.4)
    transfer_window: int = 10
    """recent episodes per task over which own / transferred returns are averaged"""

    # evaluation
    eval_every: int = 1
    """iterations between evaluations"""
    eval_episodes: int = 1
    """episodes per test task"""

    # --mode transfer (Table 1)
    source_task: Optional[int] = None
    """source task, an index into train_tasks + test_tasks (default: the paper's pair, else 0)"""
    target_task: Optional[int] = None
    """target task, same indexing (default: the paper's pair, else the task farthest from the source)"""
    transfer_episodes: int = 10
    """fixed-data episodes per task, collected with the source policy plus noise"""
    transfer_data_noise: float = 0.3
    """Gaussian noise on the source policy while collecting the fixed data (a 'mediocre' policy)"""
    transfer_model_updates: int = 5000
    """C/F gradient steps on the fixed data"""
    transfer_translator_updates: int = 5000
    """H gradient steps on the fixed data"""


# ------------------------------------------------------------------------------------------------- networks
def mlp(sizes, act=nn.ReLU):
    layers = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), act()]
    return nn.Sequential(*layers[:-1])


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
    """H(s, a_src, z_src, z_tgt) -> a_tgt in [-1, 1] (the authors' multi-task translator, 512-256-128-64)."""

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


# -------------------------------------------------------------------------------------------- replay buffer
class TaskReplayBuffer:
    """B^(i) for every train task: preallocated (n_tasks, capacity, .) FIFO arrays of whole episodes.

    Episodes are stored contiguously (modulo capacity), so a transition's context window and its future
    transitions are neighbours in memory; `t` (step in episode) and `left` (steps after it in its episode)
    say which neighbours belong to the same episode. `delta` = s' - s is stored instead of s' because contexts
    and F read it; `ret` is the discounted return-to-go, SIL's R."""

    def __init__(self, n_tasks, capacity, obs_dim, act_dim):
        shape = (n_tasks, capacity)
        self.obs, self.delta = np.zeros(shape + (obs_dim,), np.float32), np.zeros(shape + (obs_dim,), np.float32)
        self.act = np.zeros(shape + (act_dim,), np.float32)
        self.rew, self.ret = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.done = np.zeros(shape, np.float32)
        self.t, self.left = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        self.ptr, self.size = np.zeros(n_tasks, np.int64), np.zeros(n_tasks, np.int64)
        self.n_tasks, self.capacity = n_tasks, capacity

    def add_episode(self, k, obs, act, rew, next_obs, done, ret):
        n = len(obs)
        pos = (self.ptr[k] + np.arange(n)) % self.capacity
        for name, value in dict(obs=obs, act=act, rew=rew, delta=next_obs - obs, done=done, ret=ret).items():
            getattr(self, name)[k, pos] = value
        self.t[k, pos], self.left[k, pos] = np.arange(n), n - 1 - np.arange(n)
        self.ptr[k] = (self.ptr[k] + n) % self.capacity
        self.size[k] = min(self.size[k] + n, self.capacity)

    def sample_index(self, tasks, rng):
        return (rng.random(len(tasks)) * self.size[tasks]).astype(np.int64)

    def gather(self, tasks, idx, offsets, with_obs=True):
        """(obs, act, delta s, valid) at positions idx + offsets of the same episode, invalid entries zeroed."""
        flat = (tasks[:, None] * self.capacity + (idx[:, None] + offsets) % self.capacity).ravel()
        valid = (self.t[tasks, idx][:, None] + offsets >= 0) & (offsets <= self.left[tasks, idx][:, None])
        v = valid[..., None]
        take = lambda a: np.take(a.reshape(-1, a.shape[-1]), flat, 0).reshape(v.shape[:2] + (-1,)) * v  # noqa: E731
        return take(self.obs) if with_obs else None, take(self.act), take(self.delta), valid.astype(np.float32)

    def state_dict(self):  # only the filled part: a checkpoint early in training stays small
        n = int(self.size.max())
        return {k: (v if v.ndim == 1 else v[:, :n]) for k, v in vars(self).items() if isinstance(v, np.ndarray)}

    def load_state_dict(self, state):
        for k, v in state.items():
            getattr(self, k)[(slice(None),) * v.ndim if v.ndim == 1 else (slice(None), slice(0, v.shape[1]))] = v


def discounted_returns(rew, gamma):
    """R_t = sum_k gamma^k r_{t+k} to the episode's end: what SIL imitates (Oh et al. 2018, Sec. 3)."""
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
    _, act, delta, valid = to_t(device, *buf.gather(tasks, buf.sample_index(tasks, rng), np.arange(-K, 0), False))
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
def sample_rl_batch(model, buf, rng, args, device, use_context=True):
    """B transitions across all tasks with z_t and z_{t+1} from the FROZEN encoder (Fig. 2d: 'with fixed C')."""
    K = args.context_len
    tasks = rng.integers(buf.n_tasks, size=args.batch_size)
    idx = buf.sample_index(tasks, rng)
    _, act, delta, valid = to_t(device, *buf.gather(tasks, idx, np.arange(-K, 1), with_obs=False))
    s, rew, done, ret = to_t(device, *(x[tasks, idx] for x in (buf.obs, buf.rew, buf.done, buf.ret)))
    with torch.no_grad():
        if use_context:  # one encoder pass: window[:K] is the context of s_t, window[1:] that of s_{t+1}
            x, d = model.context_input(delta, act, valid), delta.shape[-1] + act.shape[-1]
            z = model.C(torch.cat([x[:, : K * d], x[:, d:]])).view(2, len(tasks), -1)
        else:  # --mode transfer trains a single-task source policy: constant zero context
            z = torch.zeros(2, len(tasks), args.context_dim, device=device)
    return s, act[:, K], rew, s + delta[:, K], done, ret, z[0], z[1]


def td3_update(step, batch, nets, targets, q_opt, pi_opt, args):
    """TD3 (Fujimoto et al. 2018) on context-conditioned nets, plus SIL (Oh et al. 2018) in TD3 form:
    critics: 1/2 (R - Q_k(s, a, z))_+^2 for k = 1, 2 (lower-bound Q learning, Tang 2020; the actor follows Q);
    actor, only with --sil-policy-coef > 0: w (a - pi(s, z))^2 / (2 sigma^2) with w = clip(R - V(s, z), 0, c),
    V = min_k Q_k(s, pi(s, z), z): SIL's -log pi(a|s) (R - V)_+ for the Gaussian policy N(pi(s, z), sigma^2)."""
    actor, qf1, qf2 = nets
    actor_t, qf1_t, qf2_t = targets
    obs, act, rew, next_obs, done, ret, z, z_next = batch
    with torch.no_grad():
        noise = (torch.randn_like(act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
        next_act = (actor_t(next_obs, z_next) + noise).clamp(-1.0, 1.0)
        target = rew + args.gamma * (1.0 - done) * torch.min(qf1_t(next_obs, next_act, z_next),
                                                             qf2_t(next_obs, next_act, z_next))
    q1, q2 = qf1(obs, act, z), qf2(obs, act, z)
    q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    info = {"losses/qf_loss": q_loss.item(), "losses/qf1_values": q1.mean().item()}
    if not args.no_sil:
        sil_v = 0.5 * (F.relu(ret - q1) ** 2 + F.relu(ret - q2) ** 2).mean()
        q_loss = q_loss + args.sil_value_coef * sil_v
        info["losses/sil_value"] = sil_v.item()
    q_opt.zero_grad(set_to_none=True)
    q_loss.backward()
    q_opt.step()
    if step % args.policy_frequency == 0:
        pi = actor(obs, z)
        q_pi = qf1(obs, pi, z)
        pi_loss = -q_pi.mean()
        if not args.no_sil and args.sil_policy_coef > 0:
            with torch.no_grad():
                w = (ret - torch.min(q_pi, qf2(obs, pi, z))).clamp(0.0, args.sil_adv_clip)
            sil_pi = (w * ((act - pi) ** 2).sum(-1)).mean() / (2 * args.exploration_noise**2)
            pi_loss = pi_loss + args.sil_policy_coef * sil_pi
            info["losses/sil_policy"], info["losses/sil_fraction"] = sil_pi.item(), (w > 0).float().mean().item()
        pi_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        pi_opt.step()
        info["losses/actor_loss"] = pi_loss.item()
        with torch.no_grad():
            for net, tgt in zip(nets, targets):
                torch._foreach_lerp_(list(tgt.parameters()), list(net.parameters()), args.tau)
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


def make_envs(args, tasks, seed):
    out = []
    for k, task in enumerate(tasks):
        try:
            e = envs.make(args.env, seed=seed + k, **({"horizon": args.horizon} if args.horizon else {}),
                          **({"render_mode": "rgb_array"} if args.capture_video and k == 0 else {}),
                          reward_delay=args.reward_delay)
        except ValueError as err:  # e.g. no OpenGL library to render with
            raise SystemExit(f"error: {err}")
        e.unwrapped.set_task(task)  # the physics live in the base env, under any reward wrapper
        out.append(e)
    return out


def save_checkpoint(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


# ================================================================================================ main
if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        probe = envs.make(args.env, seed=args.seed, **({"horizon": args.horizon} if args.horizon else {}))
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if "dynamics" not in probe.varies:
        raise SystemExit(f"error: mcat.py needs tasks with varying dynamics; '{args.env}' varies {probe.varies}. "
                         f"Use one of: {', '.join(MCAT_FAMILIES)}")
    for key, value in PAPER_DEFAULTS.get(args.env, {}).items():
        # Table 1 pre-trains the source policy on DENSE rewards: the meta-training values do not apply there
        if getattr(args, key) is None and not (args.mode == "transfer" and key in ("reward_delay", "total_timesteps")):
            setattr(args, key, value)
    args.reward_delay = 1 if args.reward_delay is None else args.reward_delay
    if args.total_timesteps is None:
        args.total_timesteps = 2_000_000 if args.mode == "meta" else 200_000
    train_all = probe.train_tasks[: args.num_train_tasks] if args.num_train_tasks else probe.train_tasks
    test_tasks = probe.test_tasks[: args.num_test_tasks] if args.num_test_tasks else probe.test_tasks
    all_tasks = np.concatenate([probe.train_tasks, probe.test_tasks])
    args.source_task = args.source_task or 0
    if args.target_task is None and args.mode == "transfer" and args.source_task < len(all_tasks):
        args.target_task = int(np.argmax(np.linalg.norm(all_tasks - all_tasks[args.source_task], axis=-1)))
    bad = [(args.total_timesteps < 1, "--total-timesteps must be >= 1"),
           (args.reward_delay < 1, "--reward-delay must be >= 1"),
           (min(args.context_len, args.future_len, args.context_dim, args.batch_size, args.eval_every,
                args.eval_episodes, args.transfer_window, args.buffer_size, args.num_test_tasks or 1) < 1,
            "sizes and counts must be >= 1"),
           (args.mode == "meta" and len(train_all) < 2, "meta mode needs at least 2 train tasks"),
           (args.mode == "transfer" and not (0 <= args.source_task < len(all_tasks) and 0 <= (args.target_task or 0)
            < len(all_tasks) and args.source_task != args.target_task),
            f"--source-task/--target-task must be two different indices in [0, {len(all_tasks)})"),
           (args.resume is not None and not os.path.isfile(args.resume or ""), f"no checkpoint at {args.resume}")]
    for failed, msg in bad:
        if failed:
            raise SystemExit(f"error: {msg}")
    print("resolved:", {k: getattr(args, k) for k in ("mode", "reward_delay", "total_timesteps")},
          f"{len(train_all)} train / {len(test_tasks)} test tasks" if args.mode == "meta" else
          f"pair {all_tasks[args.source_task].tolist()} -> {all_tasks[args.target_task].tolist()}")

    run_dir = args.run_dir or (os.path.dirname(args.resume) if args.resume else
                               f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=2)
    writer = SummaryWriter(run_dir)
    table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    meta = args.mode == "meta"
    train_tasks = train_all if meta else all_tasks[[args.source_task]]
    train_envs = make_envs(args, train_tasks, args.seed)
    eval_envs = make_envs(args, test_tasks if meta else train_tasks, args.seed + 10_000)
    train_eval_envs = make_envs(args, train_tasks, args.seed + 20_000) if meta else []
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    n_tasks, K = len(train_tasks), args.context_len

    model = DynamicsModel(obs_dim, act_dim, K, args.context_dim).to(device)
    H = Translator(obs_dim, act_dim, args.context_dim).to(device)
    actor, qf1, qf2 = (m.to(device) for m in (Actor(obs_dim, act_dim, args.context_dim),
                                              QNetwork(obs_dim, act_dim, args.context_dim),
                                              QNetwork(obs_dim, act_dim, args.context_dim)))
    actor_t, qf1_t, qf2_t = (type(m)(obs_dim, act_dim, args.context_dim).to(device) for m in (actor, qf1, qf2))
    for m, t in zip((actor, qf1, qf2), (actor_t, qf1_t, qf2_t)):
        t.load_state_dict(m.state_dict())
    model_opt = torch.optim.Adam(model.parameters(), lr=args.model_lr)
    H_opt = torch.optim.Adam(H.parameters(), lr=args.translator_lr)
    q_opt = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.learning_rate)
    pi_opt = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    buf = TaskReplayBuffer(n_tasks, args.buffer_size, obs_dim, act_dim)
    history = [deque(maxlen=args.transfer_window) for _ in range(n_tasks)]
    z_feat, iteration, env_steps, grad_steps = None, 0, 0, 0
    modules = dict(model=model, H=H, actor=actor, qf1=qf1, qf2=qf2, actor_t=actor_t, qf1_t=qf1_t, qf2_t=qf2_t,
                   model_opt=model_opt, H_opt=H_opt, q_opt=q_opt, pi_opt=pi_opt)
    if args.resume:
        ck = torch.load(args.resume, map_location=device, weights_only=False)
        for k, m in modules.items():
            m.load_state_dict(ck[k])
        buf.load_state_dict(ck["buffer"])
        history = [deque(h, maxlen=args.transfer_window) for h in ck["history"]]
        z_feat, iteration, env_steps, grad_steps = ck["z_feat"], ck["iteration"], ck["env_steps"], ck["grad_steps"]
        rng.bit_generator.state = ck["np_rng"]
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {args.resume} at iteration {iteration}, {env_steps} env steps")
    zero_z = torch.zeros(1, args.context_dim, device=device)

    def evaluate(env_list, z_fixed=None, record=False):
        """Meta-test protocol: deterministic pi(s, z_t), z_t from the episode's own last K transitions."""
        pol = make_policy(model, actor, device, z_fixed=z_fixed)
        runs = [rollout(env_list, pol, rng, K, record_frames=record and e == 0) for e in range(args.eval_episodes)]
        if record and runs[0]["frames"]:
            envs.save_video(runs[0]["frames"], os.path.join(run_dir, "videos", f"iter{iteration}.gif"), fps=4)
        return np.mean([r["returns"] for r in runs], 0)  # per task

    # ======================================================================= meta-training loop (Fig. 2)
    start_time, start_steps, last_eval = time.time(), env_steps, float("nan")
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
        for k in range(n_tasks):
            history[k].append(("transfer" if use_tr[k] else "own", float(ep["returns"][k])))
            writer.add_scalar("charts/episodic_return", ep["returns"][k], env_steps)
        env_steps += new_steps
        writer.add_scalar("transfer/fraction_transferred", use_tr.mean(), env_steps)
        writer.add_scalar("relabel/fraction_transferred", use_tr.mean(), env_steps)
        times["collect"] = time.time() - t0

        times["model"] = times["translator"] = times["update"] = 0.0
        if env_steps >= args.learning_starts:
            # ---- (a, b) C and F with Eq. 1 + Eq. 2 (only meta mode: the source policy ignores contexts)
            t0 = time.time()
            if meta:
                for _ in range(args.model_updates):
                    fwd, cont = model_update(model, model_opt, buf, rng, args, device)
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
                model.requires_grad_(True)
                writer.add_scalar("losses/translator", tl, env_steps)
            times["translator"] = time.time() - t0
            # ---- (d) TD3 + SIL with C frozen
            t0, info = time.time(), {}
            for _ in range(int(new_steps * args.updates_per_step)):
                grad_steps += 1
                info = td3_update(grad_steps, sample_rl_batch(model, buf, rng, args, device, use_context=meta),
                                  (actor, qf1, qf2), (actor_t, qf1_t, qf2_t), q_opt, pi_opt, args)
            for k, v in info.items():
                writer.add_scalar(k, v, env_steps)
            times["update"] = time.time() - t0
        times["relabel"] = times["model"] + times["translator"]  # what MCAT adds on top of context-TD3's RL step

        if iteration % args.eval_every == 0 or env_steps >= args.total_timesteps:
            t0 = time.time()
            test_ret = evaluate(eval_envs, None if meta else zero_z, record=args.capture_video)
            train_ret = evaluate(train_eval_envs) if meta else test_ret
            times["eval"] = time.time() - t0
            last_eval = float(test_ret.mean())
            record = {"iteration": iteration, "env_steps": env_steps, "wall_time": time.time() - start_time,
                      "eval/return": last_eval, "eval/return_train_tasks": float(train_ret.mean()),
                      "transfer/fraction_transferred": float(use_tr.mean()),
                      **{f"time/{k}": v for k, v in times.items()}}
            for k, v in record.items():
                if "/" in k:
                    writer.add_scalar(k, v, env_steps)
            with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            if args.save_model:
                save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), {
                    **{k: m.state_dict() for k, m in modules.items()}, "buffer": buf.state_dict(),
                    "history": [list(h) for h in history], "z_feat": z_feat, "iteration": iteration,
                    "env_steps": env_steps, "grad_steps": grad_steps, "np_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "args": asdict(args)})
        sps = (env_steps - start_steps) / (time.time() - start_time)
        writer.add_scalar("charts/SPS", sps, env_steps)
        eta = max(args.total_timesteps - env_steps, 0) / max(sps, 1e-9)
        print(f"it {iteration} step {env_steps}/{args.total_timesteps} SPS {sps:.0f} eval {last_eval:.1f} "
              f"transfer {use_tr.mean():.2f} ETA {eta / 60:.1f} min", flush=True)

    # ========================================================== --mode transfer: Table 1 on fixed data
    if not meta:
        t0 = time.time()
        pair_envs = make_envs(args, all_tasks[[args.source_task, args.target_task]], args.seed + 30_000)
        data = TaskReplayBuffer(2, args.transfer_episodes * probe.horizon, obs_dim, act_dim)
        model = DynamicsModel(obs_dim, act_dim, K, args.context_dim).to(device)  # fresh C/F for the pair
        collect = make_policy(model, actor, device, z_fixed=zero_z, noise=args.transfer_data_noise, rng=rng)
        for _ in range(args.transfer_episodes):  # the source policy plus noise on both tasks: 'mediocre' data
            store_episodes(data, model, rollout(pair_envs, collect, rng, K), args.gamma)
        fwd = cont = tl = float("nan")
        model_opt = torch.optim.Adam(model.parameters(), lr=args.model_lr)
        for _ in range(args.transfer_model_updates):
            fwd, cont = model_update(model, model_opt, data, rng, args, device)
        z_pair = task_features(model, data, rng, args, device)
        model.requires_grad_(False)
        for _ in range(args.transfer_translator_updates):
            tl = translator_update(model, H, H_opt, data, z_pair, rng, args, device, pair=(0, 1))
        tgt_env = pair_envs[1:]
        source_pol = make_policy(model, actor, device, z_fixed=zero_z)
        transfer_pol = make_policy(model, actor, device, z_fixed=zero_z, H=H, z_src=z_pair[[0]], z_tgt=z_pair[[1]],
                                   use_transfer=np.ones(1, bool))
        src_on_tgt = [rollout(tgt_env, source_pol, rng, K)["returns"][0] for _ in range(args.eval_episodes)]
        tr_on_tgt = [rollout(tgt_env, transfer_pol, rng, K)["returns"][0] for _ in range(args.eval_episodes)]
        src_on_src = [rollout(pair_envs[:1], source_pol, rng, K)["returns"][0] for _ in range(args.eval_episodes)]
        record = {"iteration": iteration + 1, "env_steps": env_steps, "wall_time": time.time() - start_time,
                  "eval/return": float(np.mean(tr_on_tgt)), "eval/source_policy_return": float(np.mean(src_on_tgt)),
                  "eval/source_on_source_return": float(np.mean(src_on_src)),
                  "eval/transferred_stderr": float(np.std(tr_on_tgt) / np.sqrt(len(tr_on_tgt))),
                  "eval/source_stderr": float(np.std(src_on_tgt) / np.sqrt(len(src_on_tgt))),
                  "losses/forward": fwd, "losses/contrastive": cont, "losses/translator": tl,
                  "source_task": all_tasks[args.source_task].tolist(),
                  "target_task": all_tasks[args.target_task].tolist(),
                  "time/collect": 0.0, "time/update": 0.0, "time/relabel": time.time() - t0, "time/eval": 0.0}
        with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k.startswith(("eval/", "losses/")):
                writer.add_scalar(k, v, env_steps)
        print(f"transfer {all_tasks[args.source_task].tolist()} -> {all_tasks[args.target_task].tolist()}: "
              f"source policy on target {np.mean(src_on_tgt):.1f}, transferred {np.mean(tr_on_tgt):.1f} "
              f"(source on source {np.mean(src_on_src):.1f})")
    for e in train_envs + eval_envs + train_eval_envs:
        e.close()
    writer.close()
