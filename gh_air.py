"""Generalized Hindsight: Approximate-IRL (AIR) and Advantage relabeling on a latent-conditioned SAC.

Paper: A. C. Li, L. Pinto, P. Abbeel, "Generalized Hindsight for Reinforcement Learning", NeurIPS 2020,
arXiv:2002.11708. Comments use the paper's own numbering: Alg. 1 (relabeling at insertion), Alg. 2 (Approximate
IRL: Eq. 3 percentile, Eq. 4 advantage tie-break), Alg. 3 (Advantage relabeling, Eq. 6, with V of Eq. 7) and Eq. 5
(reward-only relabeling, used by the Fig. 6 fidelity analysis). Settings follow the authors' code,
alexlioralexli/generalized-hindsight (launch_gher.py, rlkit/torch/sac/sac_gher.py, rlkit/torch/multitask/rewards.py).

One policy pi(a | s, z) and twin critics Q(s, a, z) serve a continuous family of reward functions r(. | z). Every
collected trajectory is stored twice (Alg. 1 lines 6-8): under the latent z it was collected with, and under a
latent z' chosen in hindsight, its rewards recomputed with `env.evaluate` under z'. `--relabel` picks how z' is
chosen:
  air        Alg. 2: among K candidates, the one under which the trajectory ranks highest against a cache of
             recent trajectories (Eq. 3), ties broken by the advantage R(tau | z) - V(s0, z) (Eq. 4)
  advantage  Alg. 3: the candidate of highest advantage (Eq. 6, V from the twin critics, Eq. 7)
  random     a latent drawn from the task prior (the paper's "Random" baseline)
  none       no relabeled copy (plain multi-task SAC, the paper's "None")
`--mode fidelity` loads a trained point-reacher checkpoint and measures relabeling fidelity (Fig. 6).

Reproduce the paper's PointReacher comparison (Fig. 3), one seed per method (benchmarks/gh_air.md has the multi-seed
runs that fit a 2-core CPU):
    for r in air advantage random none; do python gh_air.py --env point-reacher --relabel $r; done
"""

import contextlib
import io
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal, NoReturn, Optional, Tuple

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
    """seed of the experiment (networks, task sampling, environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """use CUDA when it is available"""
    capture_video: bool = False
    """save the frames of one evaluation episode per evaluation to run_dir/videos/ (needs a renderable env)"""
    save_model: bool = True
    """write run_dir/checkpoint.pt (atomically) after every evaluation"""
    env: str = "point-reacher"
    """task family: point-reacher, point-trajectory, cheetah-multi-objective, ant-dir-sparse, fetch-reach (needs
    gymnasium-robotics) or humanoid-dir-sparse"""
    total_timesteps: Optional[int] = None
    """environment steps to collect (None: the value for --env)"""
    resume: Optional[str] = None
    """continue from this checkpoint (a checkpoint.pt or the run directory holding it); the run's flags come back"""
    run_dir: Optional[str] = None
    """output folder (default runs/{env}__{exp_name}__{seed}__{unix_time}/, or the checkpoint's folder on resume)"""

    # Algorithm specific arguments
    mode: Literal["train", "fidelity"] = "train"
    """train, or fidelity: load --resume and record chosen-vs-true energy weight per relabeler (Fig. 6)"""
    relabel: Literal["air", "advantage", "random", "none"] = "air"
    """how the hindsight latent is chosen (Alg. 2, Alg. 3, or the baselines random and none)"""
    num_candidates: int = 100
    """K: candidate latents per relabeling, air and advantage (prior samples plus the batch's own latents)"""
    cache_size: int = 500
    """N: the most recent trajectories AIR ranks a new trajectory against (Eq. 3)"""
    num_relabels: int = 1
    """m: relabeled copies stored per trajectory, besides the original"""
    # 3e-3 and not the 3e-4 the authors' launcher comment claims: 3e-3 is its actual default, and their README
    # recipes pass no --lr, so it is the rate the paper's curves were run with.
    learning_rate: float = 3e-3
    """Adam step size of policy, critics and temperature (the authors' launcher default; see docs/gh_air.md)"""
    tau: float = 5e-3
    """Polyak rate of the target critics (updated every gradient step)"""
    hidden: Optional[Tuple[int, ...]] = None
    """hidden layer sizes of policy and critics (None: the value for --env)"""
    batch_size: Optional[int] = None
    """transitions per gradient step (None: the value for --env)"""
    buffer_size: Optional[int] = None
    """replay capacity in transitions (None: the value for --env)"""
    gamma: Optional[float] = None
    """discount, also of the returns the relabelers compare (None: the value for --env)"""
    episodes_per_iteration: Optional[int] = None
    """trajectories collected (and relabeled as one batch) per iteration (None: the value for --env)"""
    grad_steps: Optional[int] = None
    """gradient steps per iteration (None: the value for --env)"""
    time_limit_terminal: Optional[bool] = None
    """store t = H as a terminal (no bootstrap past it), as the authors' point envs do (None: the value for --env)"""
    learning_starts: int = 1000
    """environment steps of the warm-up (iteration 0): collected, relabeled as one batch, no gradient step"""
    eval_every: Optional[int] = None
    """iterations between evaluations (None: the value for --env)"""
    num_eval_tasks: int = 25
    """test tasks evaluated (deterministic policy, one episode each); also as many train tasks"""
    fidelity_tasks: int = 1000
    """--mode fidelity: rollouts on latents from the prior (Fig. 6 uses 1000)"""
    fidelity_cache: int = 10
    """--mode fidelity: reference trajectories AIR compares against (Fig. 6 uses N = 10)"""


# ALGO LOGIC: latent-conditioned SAC networks (the latent z is concatenated to every input), initialised as
# rlkit's Mlp (alexlioralexli/generalized-hindsight rlkit/torch/networks.py, rlkit/torch/pytorch_util.py)
def hidden_layer(in_dim, out_dim):
    """rlkit's hidden layer: weight U(-b, b) with b = 1/sqrt(weight.shape[0]) and bias 0.1. (rlkit's fanin_init
    reads dimension 0, which for torch's (out, in) weight is the output width; we follow the code.)"""
    layer = nn.Linear(in_dim, out_dim)
    bound = 1 / math.sqrt(layer.weight.shape[0])
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.constant_(layer.bias, 0.1)
    return layer


def output_layer(in_dim, out_dim, init_w):
    """rlkit's last layer: weight and bias U(-init_w, init_w) (3e-3 for the critics, 1e-3 for the policy)."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.uniform_(layer.weight, -init_w, init_w)
    nn.init.uniform_(layer.bias, -init_w, init_w)
    return layer


def mlp(in_dim, hidden):
    layers = []
    for h in hidden:
        layers += [hidden_layer(in_dim, h), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers)


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, task_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(mlp(obs_dim + act_dim + task_dim, hidden), output_layer(hidden[-1], 1, 3e-3))

    def forward(self, obs, act, z):
        return self.net(torch.cat([obs, act, z], -1)).squeeze(-1)


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Actor(nn.Module):
    """Tanh-Gaussian policy pi(a | s, z) on Box(-1, 1) actions."""

    def __init__(self, obs_dim, act_dim, task_dim, hidden):
        super().__init__()
        self.body = mlp(obs_dim + task_dim, hidden)
        self.mean = output_layer(hidden[-1], act_dim, 1e-3)
        self.log_std = output_layer(hidden[-1], act_dim, 1e-3)

    def forward(self, obs, z):
        h = self.body(torch.cat([obs, z], -1))
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def get_action(self, obs, z):
        """(sampled action, its log-probability, deterministic action tanh(mean))."""
        mean, log_std = self(obs, z)
        u = mean + log_std.exp() * torch.randn_like(mean)
        a = torch.tanh(u)
        # change of variables through tanh with rlkit's 1e-6 (TanhNormal.log_prob, rlkit/torch/distributions.py)
        log_prob = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - a * a + 1e-6)).sum(-1)
        return a, log_prob, torch.tanh(mean)


def make_sac(obs_dim, act_dim, task_dim, hidden, lr, device):
    """pi, Q1, Q2 and the critics' target copies, log alpha (alpha = 1 at the start), and Adam for each with the
    one learning rate of the authors' launcher. Returns (networks, optimizers, log_alpha)."""
    actor = Actor(obs_dim, act_dim, task_dim, hidden).to(device)
    qf1, qf2, qf1_target, qf2_target = (SoftQNetwork(obs_dim, act_dim, task_dim, hidden).to(device) for _ in range(4))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    log_alpha = torch.zeros(1, requires_grad=True, device=device)
    opts = dict(q=torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=lr),
                actor=torch.optim.Adam(actor.parameters(), lr=lr), alpha=torch.optim.Adam([log_alpha], lr=lr))
    return dict(actor=actor, qf1=qf1, qf2=qf2, qf1_target=qf1_target, qf2_target=qf2_target), opts, log_alpha


# ALGO LOGIC: storage. Transitions for SAC; whole padded trajectories for the relabelers.
class ReplayBuffer:
    """Preallocated ring buffer of (s, a, r, s', terminal, z); sampled uniformly over transitions."""

    KEYS = ("obs", "act", "rew", "next_obs", "done", "task")

    def __init__(self, capacity, obs_dim, act_dim, task_dim):
        self.capacity, self.ptr, self.size = capacity, 0, 0
        dims = dict(obs=obs_dim, act=act_dim, rew=None, next_obs=obs_dim, done=None, task=task_dim)
        for k, d in dims.items():
            setattr(self, k, np.zeros((capacity,) if d is None else (capacity, d), np.float32))

    def add(self, **rows):
        n = len(rows["obs"])
        idx = (self.ptr + np.arange(n)) % self.capacity
        for k in self.KEYS:
            getattr(self, k)[idx] = rows[k]
        self.ptr, self.size = (self.ptr + n) % self.capacity, min(self.size + n, self.capacity)

    def sample(self, n, rng, device):
        idx = rng.integers(0, self.size, n)
        return [torch.as_tensor(getattr(self, k)[idx], device=device) for k in self.KEYS]

    def state_dict(self):
        return dict(ptr=self.ptr, size=self.size, **{k: getattr(self, k)[: self.size] for k in self.KEYS})

    def load_state_dict(self, s):
        self.ptr, self.size = s["ptr"], s["size"]
        for k in self.KEYS:
            getattr(self, k)[: self.size] = s[k]


TRAJ_KEYS = ("obs", "act", "next_obs", "mask")


class TrajectoryCache:
    """The N most recent trajectories, the reference set D of Alg. 2, as padded (N, H, .) arrays.

    Families whose reward is linear in the task (`env.reward_features`) also keep each trajectory's discounted
    feature sum phi_i = sum_t gamma^t f_t, so that R(tau_i | v) = phi_i . v for any v at O(F) cost."""

    def __init__(self, capacity, env):
        h, od, ad = env.horizon, env.observation_space.shape[0], env.action_space.shape[0]
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.obs = np.zeros((capacity, h, od), np.float32)
        self.act = np.zeros((capacity, h, ad), np.float32)
        self.next_obs = np.zeros((capacity, h, od), np.float32)
        self.mask = np.zeros((capacity, h), bool)
        self.phi = None
        if hasattr(env, "reward_features"):
            zeros = [np.zeros((1, d), np.float32) for d in (od, ad, od)]
            self.phi = np.zeros((capacity, env.reward_features(*zeros).shape[-1]))

    def add(self, traj, phi=None):
        idx = (self.ptr + np.arange(len(traj["obs"]))) % self.capacity
        for k in TRAJ_KEYS:
            getattr(self, k)[idx] = traj[k]
        if self.phi is not None:
            self.phi[idx] = phi
        self.ptr, self.size = (self.ptr + len(idx)) % self.capacity, min(self.size + len(idx), self.capacity)

    def get(self):
        return {k: getattr(self, k)[: self.size] for k in TRAJ_KEYS}, (
            None if self.phi is None else self.phi[: self.size])

    def state_dict(self):
        traj, phi = self.get()
        return dict(ptr=self.ptr, size=self.size, phi=phi, **traj)

    def load_state_dict(self, s):
        self.ptr, self.size = s["ptr"], s["size"]
        for k in TRAJ_KEYS:
            getattr(self, k)[: self.size] = s[k]
        if self.phi is not None:
            self.phi[: self.size] = s["phi"]


# ALGO LOGIC: Alg. 1 lines 3-4, one episode per latent (collection and evaluation share the rollout)
@torch.no_grad()
def rollout(env_list, tasks, actor, device, *, deterministic, time_limit_terminal=False, frames=None):
    """One episode per task on env_list[i], all in lockstep with one batched policy call per step. Returns padded
    trajectories (n, H, .) with a validity mask and the terminal flags to store, the undiscounted episode returns
    and success flags. The terminal is the env's termination, and with `time_limit_terminal` also the time limit:
    the authors' PointReacher and PointTrajectory return done = t >= H, and their observations carry t/H."""
    n, h = len(tasks), env_list[0].horizon
    od, ad = env_list[0].observation_space.shape[0], env_list[0].action_space.shape[0]
    traj = dict(obs=np.zeros((n, h, od), np.float32), act=np.zeros((n, h, ad), np.float32),
                next_obs=np.zeros((n, h, od), np.float32), mask=np.zeros((n, h), bool),
                terminal=np.zeros((n, h), bool), task=np.asarray(tasks, np.float64))
    ret, success = np.zeros(n), np.zeros(n, bool)
    obs = np.zeros((n, od), np.float32)
    for i, e in enumerate(env_list[:n]):
        e.set_task(tasks[i])
        obs[i] = e.reset()[0]
    z = torch.as_tensor(traj["task"], dtype=torch.float32, device=device)
    alive = np.ones(n, bool)
    for t in range(h):
        sample, _, mean = actor.get_action(torch.as_tensor(obs, device=device), z)
        act = (mean if deterministic else sample).cpu().numpy()
        for i in np.nonzero(alive)[0]:
            next_obs, r, term, trunc, info = env_list[i].step(act[i])
            traj["obs"][i, t], traj["act"][i, t], traj["next_obs"][i, t] = obs[i], act[i], next_obs
            traj["mask"][i, t], ret[i], obs[i] = True, ret[i] + r, next_obs
            traj["terminal"][i, t] = term or (trunc and time_limit_terminal)
            success[i] |= bool(info.get("success", False))
            alive[i] = not (term or trunc)
            if frames is not None and i == 0:
                frames.append(env_list[0].render())
        if not alive.any():
            break
    return traj, ret, success


def warm_up(env, env_list, actor, device, args, rng):
    """The authors' warm-up (min_num_steps_before_training, rlkit/core/batch_rl_algorithm.py): at least
    --learning-starts steps (and one iteration's episodes) on latents from the prior, returned as ONE batch, which
    they relabel together before the first gradient step. Returns padded trajectories and episode returns."""
    parts, steps = [], 0
    while steps < args.learning_starts or not parts:
        n = max(args.episodes_per_iteration, math.ceil((args.learning_starts - steps) / env.horizon))
        tasks = env.sample_tasks(min(n, len(env_list)), rng)
        parts.append(rollout(env_list, tasks, actor, device, deterministic=False,
                             time_limit_terminal=args.time_limit_terminal)[:2])
        steps += int(parts[-1][0]["mask"].sum())
    return {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}, np.concatenate([p[1] for p in parts])


# ALGO LOGIC: Alg. 1 line 5, Z = S(tau): the relabelers of Alg. 2 and 3, vectorized over trajectories x candidates
def sample_candidates(env, own_tasks, k, rng):
    """Alg. 2 line 2 as the authors run it: K - B latents from the prior (none when B >= K) plus the B own latents
    of the trajectories relabeled together."""
    return np.concatenate([env.sample_tasks(max(k - len(own_tasks), 0), rng), own_tasks])


def discounted_feature_sums(env, traj, gamma):
    """phi_i = sum_t gamma^t f(s_t, a_t, s_t+1) for the trajectories of a batch: (B, F)."""
    f = env.reward_features(traj["obs"], traj["act"], traj["next_obs"])  # (B, H, F)
    disc = gamma ** np.arange(f.shape[1]) * traj["mask"]
    return (f * disc[..., None]).sum(1)


def trajectory_returns(env, traj, phi, candidates, gamma, max_elements=1 << 22):
    """Alg. 2 line 4: R(tau_i | v_k) = sum_t gamma^t r(s_t, a_t, v_k) for every trajectory i and candidate k.

    traj: padded (N, H, .) arrays with a validity mask; candidates (K, task_dim) shared by all trajectories, or
    (N, K, task_dim) per trajectory. Returns (N, K). All N x K x H rewards come from one broadcast `env.evaluate`
    call (in chunks of trajectories only to bound memory); with reward features it is one (N, F) @ (F, K) product."""
    if phi is not None:
        return phi @ candidates.T if candidates.ndim == 2 else np.einsum("nf,nkf->nk", phi, candidates)
    n, h = traj["mask"].shape
    k = candidates.shape[-2]
    disc = gamma ** np.arange(h) * traj["mask"]  # (N, H); padding steps weigh 0
    out = np.empty((n, k))
    chunk = max(1, max_elements // (k * h))
    for s in range(0, n, chunk):
        e = slice(s, s + chunk)
        c = candidates[None, :, None] if candidates.ndim == 2 else candidates[e, :, None]
        r, _ = env.evaluate(traj["obs"][e, None], traj["act"][e, None], traj["next_obs"][e, None], c)  # (chunk, K, H)
        out[e] = (r * disc[e, None]).sum(-1)
    return out


def percentile(returns, reference_returns):
    """Eq. 3 / Alg. 2 line 5: P(tau, v_k) = 1/N sum_j 1{R(tau | v_k) >= R(tau_j | v_k)}.

    returns (B, K) of the new trajectories, reference_returns (N, K) of the cache. Returns (B, K) in [0, 1]."""
    return (returns[:, :, None] >= reference_returns.T[None]).mean(-1)


@torch.no_grad()
def state_value(actor, qf1, qf2, obs0, candidates, device):
    """Eq. 7: V(s_0, z) = min_i Q_i(s_0, mu(s_0, z), z), mu the deterministic (mean) action, for (B, K) pairs of a
    start state and a candidate (candidates (K, task_dim) shared, or (B, K, task_dim) per start state)."""
    b, k = len(obs0), candidates.shape[-2]
    s = torch.as_tensor(obs0, dtype=torch.float32, device=device)[:, None].expand(b, k, -1).reshape(b * k, -1)
    z = torch.as_tensor(candidates, dtype=torch.float32, device=device).expand(b, k, -1).reshape(b * k, -1)
    a = actor.get_action(s, z)[2]
    return torch.min(qf1(s, a, z), qf2(s, a, z)).reshape(b, k).cpu().double().numpy()


def advantage(returns, values):
    """Eq. 4: A(tau, z) = R(tau | z) - V(s_0, z)."""
    return returns - values


def air_choice(percentiles, advantages, m):
    """Alg. 2 line 7: the m candidates of highest percentile; among equal percentiles the higher advantage
    (Eq. 4) wins. (B, K) scores -> (B, m) candidate indices."""
    return np.lexsort((-advantages, -percentiles), axis=-1)[:, :m]  # last key is the primary one


def advantage_choice(advantages, m):
    """Alg. 3 line 5 / Eq. 6: the m candidates of highest advantage. (B, K) -> (B, m) candidate indices."""
    return np.argsort(-advantages, axis=-1, kind="stable")[:, :m]


def choose_relabels(mode, env, traj, cache, nets, args, rng, device):
    """Z = S(tau) for a batch of new trajectories (already in the cache): (B, m, task_dim) latents, stats."""
    b = len(traj["task"])
    if mode == "none":
        return np.zeros((b, 0, env.task_dim)), {}
    if mode == "random":
        return random_relabels(env, b, args.num_relabels, rng), {}
    if mode == "advantage":  # Alg. 3 as the authors' add_path: per trajectory K - 1 prior draws and its own latent
        candidates = np.stack([sample_candidates(env, traj["task"][i: i + 1], args.num_candidates, rng)
                               for i in range(b)])  # (B, K, d)
        own = np.full(b, args.num_candidates - 1)
    else:  # Alg. 2 as the authors' approx_irl_relabeling: one candidate set for the batch, its B latents last
        candidates = sample_candidates(env, traj["task"], args.num_candidates, rng)  # (K', d)
        own = len(candidates) - b + np.arange(b)
    returns = trajectory_returns(env, traj, traj.get("phi"), candidates, args.gamma)  # (B, K)
    adv = advantage(returns, state_value(*nets, traj["obs"][:, 0], candidates, device))
    if mode == "advantage":
        pick = advantage_choice(adv, args.num_relabels)
        stats = {}
    else:
        ref, ref_phi = cache.get()
        pct = percentile(returns, trajectory_returns(env, ref, ref_phi, candidates, args.gamma))
        pick = air_choice(pct, adv, args.num_relabels)
        stats = {"relabel/chosen_percentile": np.take_along_axis(pct, pick, 1).mean(),
                 "relabel/tied_at_max_percentile": (pct == pct.max(1, keepdims=True)).sum(1).mean()}
    stats["relabel/chosen_advantage"] = np.take_along_axis(adv, pick, 1).mean()
    stats["relabel/original_advantage"] = adv[np.arange(b), own].mean()
    return (candidates[pick] if candidates.ndim == 2 else candidates[np.arange(b)[:, None], pick]), stats


def insert(buffer, env, traj, relabels):
    """Alg. 1 lines 6-9: store each trajectory under its own latent and under each hindsight latent, rewards
    recomputed by env.evaluate, the trajectory's terminals copied to every copy (as the authors' buffer does;
    no GH family terminates differently per latent). A hindsight latent equal to the original one is not
    stored twice. Returns the fraction of trajectories that got a new latent."""
    tasks = np.concatenate([traj["task"][:, None], relabels], 1)  # (B, 1 + m, d)
    keep = np.ones(tasks.shape[:2], bool)
    keep[:, 1:] = np.any(relabels != traj["task"][:, None], -1)
    i, j = np.nonzero(keep)  # (trajectory, copy) pairs to store
    r, _ = env.evaluate(traj["obs"][i], traj["act"][i], traj["next_obs"][i], tasks[i, j][:, None])  # (P, H)
    m = traj["mask"][i]
    buffer.add(obs=traj["obs"][i][m], act=traj["act"][i][m], rew=r[m], next_obs=traj["next_obs"][i][m],
               done=traj["terminal"][i][m], task=np.broadcast_to(tasks[i, j][:, None], m.shape + tasks.shape[-1:])[m])
    return keep[:, 1:].any(1).mean() if relabels.shape[1] else 0.0


# ---- baselines and ablations (not part of Algorithm 1) ----
def random_relabels(env, b, m, rng):
    """The paper's Random baseline: m latents per trajectory drawn from the task prior. (B, m, task_dim)."""
    return env.sample_tasks(b * m, rng).reshape(b, m, -1)


# ALGO LOGIC: Alg. 1 line 10, one step of the off-policy algorithm A (SAC with automatic entropy tuning)
def soft_q_target(rew, done, next_obs, z, actor, qf1_target, qf2_target, alpha, gamma):
    """y = r + gamma (1 - d) (min_i Q'_i(s', a', z) - alpha log pi(a' | s', z)), a' ~ pi(. | s', z)."""
    with torch.no_grad():
        next_act, next_logp, _ = actor.get_action(next_obs, z)
        min_q_next = torch.min(qf1_target(next_obs, next_act, z), qf2_target(next_obs, next_act, z))
        return rew + (1 - done) * gamma * (min_q_next - alpha * next_logp)


def sac_update(batch, nets, opts, log_alpha, target_entropy, gamma, tau):
    """One gradient step in the authors' order (sac_gher.py train_from_torch): the temperature, then the policy
    against the critics as they were before this step, then the critics against y computed with the new
    temperature; then the Polyak step of the target critics.
    nets: actor, qf1, qf2, qf1_target, qf2_target; opts: q, actor, alpha. Returns the step's losses."""
    obs, act, rew, next_obs, done, z = batch
    actor, qf1, qf2 = nets["actor"], nets["qf1"], nets["qf2"]
    new_act, logp, _ = actor.get_action(obs, z)
    alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()  # target entropy -|A|
    opts["alpha"].zero_grad()
    alpha_loss.backward()
    opts["alpha"].step()
    alpha = log_alpha.exp().detach()

    actor_loss = (alpha * logp - torch.min(qf1(obs, new_act, z), qf2(obs, new_act, z))).mean()
    qf1_values, qf2_values = qf1(obs, act, z), qf2(obs, act, z)
    # (1 - d) stops the bootstrap at a stored terminal: a termination, or t = H with --time-limit-terminal
    target_q = soft_q_target(rew, done, next_obs, z, actor, nets["qf1_target"], nets["qf2_target"], alpha, gamma)
    qf_loss = F.mse_loss(qf1_values, target_q) + F.mse_loss(qf2_values, target_q)
    opts["actor"].zero_grad()
    actor_loss.backward()
    opts["actor"].step()
    opts["q"].zero_grad()  # drops what the policy loss left in the critics' gradients
    qf_loss.backward()
    opts["q"].step()

    with torch.no_grad():
        for net, target in ((qf1, nets["qf1_target"]), (qf2, nets["qf2_target"])):
            torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), tau)
    return {"losses/qf1_values": qf1_values.mean().item(), "losses/qf2_values": qf2_values.mean().item(),
            "losses/qf_loss": qf_loss.item() / 2, "losses/actor_loss": actor_loss.item(),
            "losses/alpha": alpha.item(), "losses/alpha_loss": alpha_loss.item()}


# Evaluation: the deterministic policy on the family's fixed test tasks; the Fig. 6 fidelity analysis
def evaluate_policy(env_list, tasks, actor, device, frames=None):
    """Deterministic policy, one episode per task (tasks in chunks of len(env_list)): mean return, success."""
    rets, succ = [], []
    for s in range(0, len(tasks), len(env_list)):
        chunk = tasks[s: s + len(env_list)]
        _, r, ok = rollout(env_list, chunk, actor, device, deterministic=True, frames=frames if s == 0 else None)
        rets.append(r)
        succ.append(ok)
    return float(np.concatenate(rets).mean()), float(np.concatenate(succ).mean())


def evaluation(env, env_list, actor, args, device, frames=None):
    """The deterministic policy, one episode on each of the first num_eval_tasks test tasks and as many train
    tasks (frames: of the first test episode)."""
    ret, success = evaluate_policy(env_list, env.test_tasks[: args.num_eval_tasks], actor, device, frames)
    train_ret, _ = evaluate_policy(env_list, env.train_tasks[: args.num_eval_tasks], actor, device)
    return {"eval/return": ret, "eval/return_train_tasks": train_ret, **({"eval/success_rate": success}
                                                                         if env.has_success else {})}


def fidelity(env, actor, qf1, qf2, args, rng, device, env_list):
    """Paper Fig. 6: roll the trained policy out on latents z from the prior; for each trajectory let AIR (against
    the N = fidelity_cache previous trajectories), Advantage and reward-only relabeling (Eq. 5) choose among K
    fresh prior samples; record the energy weight of z and of each choice."""
    tasks = env.sample_tasks(args.fidelity_tasks, rng)
    parts = [rollout(env_list, tasks[s: s + len(env_list)], actor, device, deterministic=True)[0]
             for s in range(0, len(tasks), len(env_list))]
    traj = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    chosen = {k: [] for k in ("air", "advantage", "reward")}
    for i in range(args.fidelity_cache, len(tasks)):
        one = {k: v[i: i + 1] for k, v in traj.items()}
        ref = {k: v[i - args.fidelity_cache: i + 1] for k, v in traj.items()}  # N previous + itself, as cached
        v = env.sample_tasks(args.num_candidates, rng)
        returns = trajectory_returns(env, one, None, v, args.gamma)
        adv = advantage(returns, state_value(actor, qf1, qf2, one["obs"][:, 0], v, device))
        pct = percentile(returns, trajectory_returns(env, ref, None, v, args.gamma))
        chosen["air"].append(v[air_choice(pct, adv, 1)[0, 0]])
        chosen["advantage"].append(v[advantage_choice(adv, 1)[0, 0]])
        chosen["reward"].append(v[np.argmax(returns[0])])  # Eq. 5
    return dict(true=energy_weight(tasks[args.fidelity_cache:]).tolist(),
                **{k: energy_weight(np.array(c)).tolist() for k, c in chosen.items()})


def energy_weight(task):
    """point-reacher's weight on the energy term: sin(2 pi u) sin(arccos(2 v - 1)) (envs/point.py PointReacher)."""
    return np.sin(2 * np.pi * task[..., 0]) * np.sin(np.arccos(2 * task[..., 1] - 1))


# ---------------------------------------------------------------------------------------------------------------
# Plumbing: per-env defaults, argument checks, --help, progress, checkpoints, signals
# The authors' launcher values (launch_gher.py) per family. Ours: total_timesteps (the launcher sets epochs per
# run) and eval_every=10 on the MuJoCo families and fetch-reach (they evaluate 25 episodes after every training
# loop, 25x (MuJoCo) or 5x (fetch) the training steps). point-reacher's replay buffer really is 2000 transitions
# in their launcher. fetch-reach ('fetchreach'): 250 steps (5 episodes of 50) and 100 gradient steps per loop;
# its episodes end with done = True at t = 50 (rlkit's TimeLimit wrapper, without the time in the observation:
# insert_time is off), which their SAC takes as a terminal. humanoid-dir-sparse: the paper's Humanoid (Sec. 5,
# Fig. 3) is not in the launcher; it gets the launcher's row for the same reward on the ant ('antdirectionnewsparse').
DEFAULTS = dict(batch_size=256, grad_steps=100, time_limit_terminal=False)
PAPER_DEFAULTS = {
    "point-reacher": dict(hidden=(300, 300, 300), buffer_size=2000, gamma=0.97, episodes_per_iteration=1,
                          eval_every=5, total_timesteps=100_000, time_limit_terminal=True),
    "point-trajectory": dict(hidden=(400, 300), batch_size=128, buffer_size=100_000, gamma=0.90,
                             episodes_per_iteration=5, eval_every=1, total_timesteps=150_000,
                             time_limit_terminal=True),
    "cheetah-multi-objective": dict(hidden=(256, 256), buffer_size=1_000_000, gamma=0.99, episodes_per_iteration=1,
                                    eval_every=10, total_timesteps=1_000_000),
    "ant-dir-sparse": dict(hidden=(256, 256), buffer_size=1_000_000, gamma=0.99, episodes_per_iteration=1,
                           eval_every=10, total_timesteps=1_000_000),
    "fetch-reach": dict(hidden=(256, 256), buffer_size=250_000, gamma=0.98, episodes_per_iteration=5,
                        eval_every=10, total_timesteps=250_000, time_limit_terminal=True),
    "humanoid-dir-sparse": dict(hidden=(256, 256), buffer_size=1_000_000, gamma=0.99, episodes_per_iteration=1,
                                eval_every=10, total_timesteps=1_000_000),  # ant-dir-sparse's row (see above)
}
# What a paper-size run costs on one thread of the 2-core CPU (process CPU time under load 7-10, by parts: gradient
# step, relabeling, collection and evaluation, times their counts; point-reacher also end to end at 3x128-192).
RUN_COST = {
    "point-reacher": "~5 h on a 2-core CPU (measured: 174-183 CPU s per 1k env steps at 3x300; at 3x160 68 s, "
                     "1.9 h)",
    "point-trajectory": "~1 h on a 2-core CPU (measured by parts: 17 ms per gradient step at 400x300, batch "
                        "128)",
    "cheetah-multi-objective": "~1 h on a 2-core CPU (measured by parts: 17.5 ms per gradient step, 4.5 s per "
                               "evaluation)",
    "ant-dir-sparse": "~1 h on a 2-core CPU plus AIR's O(KNT) relabeling against a full cache (measured by "
                      "parts)",
    "fetch-reach": "~1.6 h on a 2-core CPU (measured by parts: 22.5 ms per gradient step, 4.5 ms per env step, "
                   "1.4 s per AIR relabeling against a full cache, 11 s per evaluation)",
    "humanoid-dir-sparse": "~2.3 h on a 2-core CPU (measured by parts: 43 ms per gradient step, 1.5 s per AIR "
                           "relabeling against a full cache, 23 s per evaluation of 1000-step episodes); its full "
                           "replay buffer and cache take ~4.6 GB, in memory and in each checkpoint",
}
REDUCED = {  # reduced runs that show learning within minutes
    "point-trajectory": "python gh_air.py --env point-trajectory --hidden 64 64 --batch-size 64 --grad-steps 20 "
                        "--total-timesteps 1050 --learning-starts 150 --eval-every 4 --num-candidates 20 "
                        "--cache-size 20 (eval/return 0.05 -> 4.4 with seed 1, about a minute)",
}
# Flags that say how long or where a resumed run goes on: the typed value wins over the checkpoint's.
RUN_CONTROL = ("total_timesteps", "cuda", "capture_video", "run_dir", "save_model")
# Flags that say what to do with a checkpoint rather than describe the run in it.
CHECKPOINT_USE = ("resume", "mode", "fidelity_tasks", "fidelity_cache")


def fail(message: str) -> NoReturn:
    """A bad input: one line on stderr and exit code 2, as tyro does for a malformed flag."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def check_args(args: Args, env) -> None:
    """Every numeric and choice argument in the range the algorithm needs, before anything runs."""
    if not 0 <= args.seed < 2**31:
        fail(f"--seed {args.seed}: must be in [0, 2**31)")
    for k in ("learning_rate",):
        if not (math.isfinite(getattr(args, k)) and getattr(args, k) > 0):
            fail(f"{flag(k)} {getattr(args, k)}: must be > 0")
    for k in ("tau", "gamma"):
        if not 0 < getattr(args, k) <= 1:
            fail(f"{flag(k)} {getattr(args, k)}: must be in (0, 1]")
    for k in ("total_timesteps", "num_candidates", "cache_size", "num_relabels", "batch_size", "buffer_size",
              "episodes_per_iteration", "eval_every", "num_eval_tasks", "fidelity_tasks", "fidelity_cache"):
        if getattr(args, k) < 1:
            fail(f"{flag(k)} {getattr(args, k)}: must be >= 1")
    for k in ("grad_steps", "learning_starts"):
        if getattr(args, k) < 0:
            fail(f"{flag(k)} {getattr(args, k)}: must be >= 0")
    if not args.hidden or min(args.hidden) < 1:
        fail(f"--hidden {show(args.hidden)}: needs one or more layer sizes, each >= 1")
    if args.num_eval_tasks > len(env.test_tasks):
        fail(f"--num-eval-tasks {args.num_eval_tasks}: must be in [1, {len(env.test_tasks)}] "
             f"({args.env} has {len(env.test_tasks)} test tasks)")
    if args.relabel in ("air", "advantage") and args.num_candidates <= args.episodes_per_iteration:
        fail(f"--num-candidates {args.num_candidates}: must exceed --episodes-per-iteration "
             f"({args.episodes_per_iteration}), since the batch's own latents are among the candidates")
    if args.relabel in ("air", "advantage") and args.num_relabels > args.num_candidates:
        fail(f"--num-relabels {args.num_relabels}: must be <= --num-candidates ({args.num_candidates})")
    if args.mode == "fidelity":
        if args.resume is None or args.env != "point-reacher":
            fail("--mode fidelity: needs --env point-reacher and --resume PATH of a trained checkpoint")
        if args.fidelity_tasks <= args.fidelity_cache:
            fail(f"--fidelity-tasks {args.fidelity_tasks}: must exceed --fidelity-cache ({args.fidelity_cache})")


def parse_args(argv: list[str], description: str) -> Args:
    """tyro.cli, with tyro's boxed parse errors condensed to one `error: ...` line (exit code 2 kept)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(Args, args=argv, description=description)
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


def help_text(env_name: str) -> str:
    """--help's description: the file's summary, the resolved paper defaults for --env, the cost of a run."""
    values = lambda e: " ".join(f"{flag(k)[2:]}={show(v)}" for k, v in {**DEFAULTS, **PAPER_DEFAULTS[e]}.items())
    head = __doc__.split("\n\n")[0]
    if env_name not in PAPER_DEFAULTS:
        return "\n\n".join([head, "paper defaults per --env (flags left at None take these):"]
                            + [f"{e}: {values(e)}" for e in PAPER_DEFAULTS])
    parts = [head, f"paper defaults for --env {env_name}: {values(env_name)}"]
    parts.append(f"a paper-size run costs {RUN_COST[env_name]}")
    if env_name in REDUCED:
        parts.append(f"learning shows within minutes with: {REDUCED[env_name]}")
    return "\n\n".join(parts)


def typed_flags(argv: list[str]) -> list[str]:
    """Args fields named on the command line (`--flag`, `--flag=v`, `--no-flag`), in the order typed."""
    names = {f.name for f in fields(Args)}
    out = []
    for tok in argv:
        if not tok.startswith("--"):
            continue
        name = tok[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names and name not in out:
            out.append(name)
    return out


def resumed_args(args: Args, ckpt: dict, path: str, typed: list[str]) -> Args:
    """The checkpoint's run flags, except what the command line may change (RUN_CONTROL, CHECKPOINT_USE)."""
    stored, given = dict(ckpt["args"]), asdict(args)
    for k in typed:
        if k in CHECKPOINT_USE:
            stored[k] = given[k]
        elif show(given[k]) == show(stored[k]):
            continue
        elif k == "env":
            fail(f"--resume {path}: written for --env {stored['env']}, not --env {given['env']}")
        elif k in RUN_CONTROL:
            print(f"warning: {flag(k)} {show(given[k])} (the checkpoint's run had {show(stored[k])}): "
                  f"using {show(given[k])}", file=sys.stderr)
            stored[k] = given[k]
        else:
            print(f"warning: {flag(k)} {show(given[k])} differs from the checkpoint's {show(stored[k])}: "
                  f"using the checkpoint's {show(stored[k])}", file=sys.stderr)
    if "run_dir" not in typed:
        stored["run_dir"] = os.path.dirname(os.path.abspath(path))  # the run continues beside its checkpoint
    stored["resume"] = args.resume
    stored["hidden"] = tuple(stored["hidden"])
    return Args(**stored)


def parse_command_line(argv: list[str]):
    """argv -> (resolved Args, the family env, the rollout envs, checkpoint or None). Every bad input is one
    `error:` line with exit code 2, before a run directory exists."""
    env_name = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--env"),
                    next((a.split("=", 1)[1] for a in argv if a.startswith("--env=")), Args.env))
    args = parse_args(argv, help_text(env_name))
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        path = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
        args = resumed_args(args, ckpt, path, typed_flags(argv))
    if args.env not in PAPER_DEFAULTS:
        if args.env in envs.names():
            fail(f"--env {args.env}: gh_air.py needs a family of reward functions r(. | z) over a latent prior; "
                 f"it serves: {', '.join(PAPER_DEFAULTS)}")
        fail(f"--env {args.env}: unknown; choose one of {', '.join(PAPER_DEFAULTS)}")
    for k, v in {**DEFAULTS, **PAPER_DEFAULTS[args.env]}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:  # the family; its RNG is seeded with --seed at the first reset
        env = envs.make(args.env)
    except ValueError as e:
        fail(f"--env {args.env}: {e}")
    check_args(args, env)
    n_envs = max(args.episodes_per_iteration, args.num_eval_tasks)
    env_list = [env] + [envs.make(args.env, seed=args.seed + i) for i in range(1, n_envs)]
    if args.capture_video:  # frames of the first evaluation episode come from env_list[0]
        try:
            env_list[0] = envs.make(args.env, seed=args.seed, render_mode="rgb_array")
        except ValueError as e:  # e.g. no OpenGL library to render with
            fail(f"--capture-video: {e}")
    for i, e in enumerate(env_list):
        e.reset(seed=args.seed + i)
    return args, env, env_list, ckpt


class Progress:
    """One progress line now and then whenever `every` seconds have passed: what runs, work done / total and an
    ETA from the rates measured so far. The time between two calls is charged to the kind of work reported."""

    def __init__(self, remaining: dict[str, float], every: float = 30.0):
        self.remaining, self.every = dict(remaining), every
        self.measured, self.spent = dict.fromkeys(remaining, 0.0), dict.fromkeys(remaining, 0.0)
        self.t_last = self.t_start = time.time()
        self.t_printed = -float("inf")

    def eta(self) -> Optional[float]:
        """Seconds left: remaining work of each kind times its measured seconds per unit (None until each kind
        with work left has been measured)."""
        left = [k for k, v in self.remaining.items() if v > 0]
        if any(self.measured[k] == 0 for k in left):
            return None
        return sum(self.remaining[k] * self.spent[k] / self.measured[k] for k in left)

    def step(self, kind: str, amount: float, text: str, force: bool = False) -> None:
        now = time.time()
        self.spent[kind] += now - self.t_last
        self.measured[kind] += amount
        self.remaining[kind] -= amount
        self.t_last = now
        if force or now - self.t_printed >= self.every:
            self.t_printed = now
            eta = self.eta()
            print(f"[{hms(now - self.t_start)}] {text} | ETA {hms(eta) if eta is not None else 'measuring'}",
                  flush=True)


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


CHECKPOINT_FORMAT = 1
SCRIPT = os.path.basename(__file__)


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
    path = os.path.join(resume, "checkpoint.pt") if os.path.isdir(resume) else resume
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


def trim_log(path: str, iteration: int) -> None:
    """Keep the rows of eval.jsonl written at or before `iteration` (atomic rewrite): rows a stopped run wrote
    after its last checkpoint are written again, identically, by the resumed run (a row cut off mid-write, which
    lacks its newline, is dropped)."""
    if os.path.isfile(path):
        with open(path) as f:
            keep = [line for line in f if line.endswith("\n") and json.loads(line)["iteration"] <= iteration]
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def checkpoint_state(args, position, nets, opts, log_alpha, buffer, cache, rng, env_list, device) -> dict:
    """Everything a resumed run needs to go on exactly: position = (iteration, env steps, gradient steps, wall
    time)."""
    return dict(env=args.env, args=asdict(args), **dict(zip(("iteration", "env_steps", "grad_updates", "wall_time"),
                                                             position)),
                log_alpha=log_alpha.detach(), buffer=buffer.state_dict(), cache=cache.state_dict(),
                rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                env_rng=[e.np_random.bit_generator.state for e in env_list],
                optimizers={k: o.state_dict() for k, o in opts.items()}, **{k: m.state_dict() for k, m in nets.items()})


def restore(ckpt, nets, opts, log_alpha, buffer, cache, rng, env_list, device) -> tuple:
    """The inverse of checkpoint_state; returns the position (iteration, env steps, gradient steps, wall time)."""
    for k, m in nets.items():
        m.load_state_dict(ckpt[k])
    for k, o in opts.items():
        o.load_state_dict(ckpt["optimizers"][k])
    buffer.load_state_dict(ckpt["buffer"])
    cache.load_state_dict(ckpt["cache"])
    with torch.no_grad():
        log_alpha.copy_(ckpt["log_alpha"])
    rng.bit_generator.state = ckpt["rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    for e, s in zip(env_list, ckpt["env_rng"]):
        e.np_random.bit_generator.state = s
    return ckpt["iteration"], ckpt["env_steps"], ckpt["grad_updates"], ckpt["wall_time"]


def open_logs(args, ckpt, env_steps) -> SummaryWriter:
    """TensorBoard and args.json in run_dir. On resume eval.jsonl is cut back to the checkpoint and TensorBoard
    purges the events after it, so the rows a stopped run wrote after its checkpoint are not repeated."""
    if ckpt is not None:
        trim_log(os.path.join(args.run_dir, "eval.jsonl"), ckpt["iteration"])
    writer = SummaryWriter(args.run_dir, purge_step=env_steps + 1 if ckpt is not None else None)
    if ckpt is None:
        writer.add_text("hyperparameters",
                        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    with open(os.path.join(args.run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=1)
    return writer


if __name__ == "__main__":
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    writer, env_list, ckpt_path, saved_iteration, stopped = None, [], None, None, False
    try:
        args, env, env_list, ckpt = parse_command_line(sys.argv[1:])
        if args.run_dir is None:
            args.run_dir = f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
        os.makedirs(args.run_dir, exist_ok=True)
        ckpt_path = os.path.join(args.run_dir, "checkpoint.pt")
        if os.path.exists(ckpt_path + ".tmp"):
            os.remove(ckpt_path + ".tmp")  # left by a run killed mid-write
        print("resolved args:", json.dumps(asdict(args)))

        # TRY NOT TO MODIFY: seeding
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        rng = np.random.default_rng(args.seed)  # task prior samples, candidates, minibatches
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        obs_dim, act_dim, task_dim = env.observation_space.shape[0], env.action_space.shape[0], env.task_dim

        # ALGO LOGIC: initialize agent here
        nets, opts, log_alpha = make_sac(obs_dim, act_dim, task_dim, args.hidden, args.learning_rate, device)
        actor, qf1, qf2 = nets["actor"], nets["qf1"], nets["qf2"]
        target_entropy = -float(act_dim)  # automatic entropy tuning with target -|A|, as the authors' SAC
        buffer = ReplayBuffer(args.buffer_size, obs_dim, act_dim, task_dim)
        cache = TrajectoryCache(args.cache_size, env)
        iteration, env_steps, grad_updates, wall_offset = -1, 0, 0, 0.0  # iteration 0 is the warm-up
        if ckpt is not None:
            iteration, env_steps, grad_updates, wall_offset = restore(ckpt, nets, opts, log_alpha, buffer, cache,
                                                                      rng, env_list, device)
            saved_iteration = iteration
            print(f"resumed {args.resume} at iteration {iteration}, {env_steps} env steps")

        if args.mode == "fidelity":
            out = fidelity(env, actor, qf1, qf2, args, rng, device, env_list)
            with open(os.path.join(args.run_dir, "fidelity.json"), "w") as f:
                json.dump(out, f)
            for k in ("air", "advantage", "reward"):
                print(f"{k}: corr(true, chosen energy weight) = {np.corrcoef(out['true'], out[k])[0, 1]:.3f}")
            print(f"wrote {os.path.join(args.run_dir, 'fidelity.json')}")
            raise SystemExit(0)

        writer = open_logs(args, ckpt, env_steps)
        t_started, start_steps, last_eval = time.time(), env_steps, float("nan")
        start_time = t_started - wall_offset  # wall_time counts every part of a resumed run
        its_left = max(args.total_timesteps - env_steps, 0) / (args.episodes_per_iteration * env.horizon)
        progress = Progress({"collect": max(args.total_timesteps - env_steps, 0),
                             "update": its_left * args.grad_steps, "eval": its_left / args.eval_every})
        status = lambda: (f"iteration {max(iteration, 0)} | env steps {env_steps:,}/{args.total_timesteps:,} | "
                          f"gradient steps {grad_updates:,} | last eval return {last_eval:.3f}")
        progress.step("collect", 0, status(), force=True)

        while env_steps < args.total_timesteps:
            iteration += 1
            # Alg. 1 lines 3-4: latents from the prior, one episode each with the stochastic policy; iteration 0 is
            # the warm-up, relabeled below as one batch
            t0 = time.time()
            if iteration == 0:
                traj, ep_ret = warm_up(env, env_list, actor, device, args, rng)
            else:
                traj, ep_ret, _ = rollout(env_list, env.sample_tasks(args.episodes_per_iteration, rng), actor,
                                          device, deterministic=False, time_limit_terminal=args.time_limit_terminal)
            env_steps += int(traj["mask"].sum())
            times = {"time/collect": time.time() - t0}

            # Alg. 1 lines 5-9: choose hindsight latents, store the original and the relabeled copies
            t0 = time.time()
            if cache.phi is not None:
                traj["phi"] = discounted_feature_sums(env, traj, args.gamma)
            cache.add(traj, traj.get("phi"))  # new trajectories join the reference set first, as the authors do
            relabels, stats = choose_relabels(args.relabel, env, traj, cache, (actor, qf1, qf2), args, rng, device)
            stats["relabel/fraction_relabeled"] = insert(buffer, env, traj, relabels)
            times["time/relabel"] = time.time() - t0
            progress.step("collect", int(traj["mask"].sum()), status())

            # Alg. 1 line 10: n steps of SAC (none in the warm-up)
            t0, losses = time.time(), {}
            for _ in range(args.grad_steps if iteration > 0 and buffer.size >= args.batch_size else 0):
                losses = sac_update(buffer.sample(args.batch_size, rng, device), nets, opts, log_alpha,
                                    target_entropy, args.gamma, args.tau)
                grad_updates += 1
            times["time/update"] = time.time() - t0
            progress.step("update", args.grad_steps if losses else 0, status())

            # TRY NOT TO MODIFY: logging, evaluation, checkpoint
            sps = (env_steps - start_steps) / (time.time() - t_started)
            for k, v in {"charts/episodic_return": ep_ret.mean(), "charts/SPS": sps, **stats, **losses,
                         **times}.items():
                writer.add_scalar(k, v, env_steps)
            if iteration % args.eval_every == 0 or env_steps >= args.total_timesteps:
                t0, frames = time.time(), [] if args.capture_video else None
                scores = evaluation(env, env_list, actor, args, device, frames)
                last_eval, times["time/eval"] = scores["eval/return"], time.time() - t0
                for k, v in {**scores, "time/eval": times["time/eval"]}.items():
                    writer.add_scalar(k, v, env_steps)
                row = {"iteration": iteration, "env_steps": env_steps, "grad_updates": grad_updates,
                       "wall_time": time.time() - start_time, **scores, "charts/episodic_return": float(ep_ret.mean()),
                       **times, **{k: float(v) for k, v in stats.items()}}
                with open(os.path.join(args.run_dir, "eval.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
                if frames:
                    envs.save_video(frames, os.path.join(args.run_dir, "videos", f"eval_{iteration}.gif"))
                if args.save_model:
                    writer.flush()  # TensorBoard holds every event up to the checkpoint
                    with signals_held():
                        save_checkpoint(ckpt_path, checkpoint_state(
                            args, (iteration, env_steps, grad_updates, time.time() - start_time), nets, opts, log_alpha,
                            buffer, cache, rng, env_list, device))
                        saved_iteration = iteration
                progress.step("eval", 1, status())
        progress.step("eval", 0, status(), force=True)
        print(f"done: eval.jsonl and TensorBoard logs in {args.run_dir}"
              + (f", checkpoint {ckpt_path}" if saved_iteration is not None else ""))
    except KeyboardInterrupt as e:
        name = e.args[0] if e.args and e.args[0] in ("SIGINT", "SIGTERM") else "SIGINT"
        where = (f"the last finished checkpoint is {ckpt_path} (iteration {saved_iteration})"
                 if saved_iteration is not None else "no checkpoint was written yet")
        print(f"stopped by {name}; {where}", file=sys.stderr)
        stopped = True
        raise SystemExit(128 + signal.Signals[name].value)
    finally:
        if writer is not None and not stopped:  # an interrupt inside the writer's queue can deadlock its close;
            writer.close()  # after a stop, what it has not written lies after the checkpoint and is purged on resume
        for e in env_list:
            e.close()
