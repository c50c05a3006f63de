"""Generalized Hindsight: Approximate-IRL (AIR) and Advantage relabeling on a latent-conditioned SAC.

Paper: Li, Pinto, Abbeel, "Generalized Hindsight for Reinforcement Learning", NeurIPS 2020
(shared/papers/gh-generalized-hindsight-air.txt). Comments cite its numbering: Alg. 1 (relabel at insertion),
Alg. 2 (Approximate IRL, Eq. 3 percentile, Eq. 4 advantage tie-break), Alg. 3 (Advantage relabeling, Eq. 6-7).

One policy pi(a | s, z) and twin critics Q(s, a, z) serve a continuous family of reward functions r(. | z).
Every collected trajectory is stored twice (Alg. 1 lines 6-8): once with the latent z it was collected
under, once with a latent z' chosen in hindsight, its rewards recomputed with `env.evaluate` under z'.
`--relabel` picks how z' is chosen:
  air        Alg. 2: among K candidates, the one under which the trajectory ranks highest against a cache of
             recent trajectories (Eq. 3), ties broken by the advantage R(tau|z) - V(s0, z) (Eq. 4)
  advantage  Alg. 3: the candidate of highest advantage (Eq. 6, V from the twin critics, Eq. 7)
  random     a latent drawn from the task prior (the paper's "Random" / intentional-unintentional baseline)
  none       no relabeled copy (plain multi-task SAC, the paper's "None")
`--mode fidelity` loads a checkpoint and measures relabeling fidelity (paper Fig. 6) on point-reacher.

Reproduce the paper's PointReacher comparison (Fig. 3), one seed per method (the reduced 3-seed version that fits
a 2-core CPU is in benchmarks/gh_air.md):
    for r in air advantage random none; do python gh_air.py --env point-reacher --relabel $r; done
"""

import json
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

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
    """task family: point-reacher, point-trajectory, cheetah-multi-objective or ant-dir-sparse"""
    total_timesteps: Optional[int] = None
    """environment steps to collect (per-env default below)"""
    resume: Optional[str] = None
    """continue from this checkpoint.pt (networks, optimizers, buffer, cache, iteration, RNG states)"""
    run_dir: Optional[str] = None
    """output folder (default runs/{env}__{exp_name}__{seed}__{unix_time}/, or the checkpoint's folder on resume)"""

    # Algorithm specific arguments
    mode: str = "train"
    """train, or fidelity: load --resume and record chosen-vs-true energy weight per relabeler (Fig. 6)"""
    relabel: str = "air"
    """how the hindsight latent is chosen: air | advantage | random | none"""
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
    """hidden layer sizes of policy and critics"""
    batch_size: Optional[int] = None
    """transitions per gradient step"""
    buffer_size: Optional[int] = None
    """replay capacity in transitions (memory O(buffer_size * (2 obs_dim + act_dim + task_dim)) floats)"""
    gamma: Optional[float] = None
    """discount, also of the returns the relabelers compare"""
    episodes_per_iteration: Optional[int] = None
    """trajectories collected (and relabeled as one batch) per iteration"""
    grad_steps: Optional[int] = None
    """gradient steps per iteration"""
    learning_starts: int = 1000
    """environment steps collected (and relabeled) before the first gradient step"""
    eval_every: Optional[int] = None
    """iterations between evaluations (one epoch of the authors' loop)"""
    num_eval_tasks: int = 25
    """test tasks evaluated (deterministic policy, one episode each); also as many train tasks"""
    fidelity_tasks: int = 1000
    """--mode fidelity: rollouts on latents from the prior (Fig. 6 uses 1000)"""
    fidelity_cache: int = 10
    """--mode fidelity: reference trajectories AIR compares against (Fig. 6 uses N = 10)"""


# Per-env defaults from the authors' launcher (reference-facts §3.4). Ours: total_timesteps (the launcher sets
# epochs per run) and eval_every=10 on the MuJoCo families (they evaluate 25 episodes after every 1000-step
# loop, 25x the training steps). point-reacher's replay buffer really is 2000 transitions in their launcher.
ENV_DEFAULTS = {
    "point-trajectory": dict(hidden=(400, 300), batch_size=128, buffer_size=100_000, gamma=0.90,
                             episodes_per_iteration=5, grad_steps=100, eval_every=1, total_timesteps=150_000),
    "point-reacher": dict(hidden=(300, 300, 300), batch_size=256, buffer_size=2000, gamma=0.97,
                          episodes_per_iteration=1, grad_steps=100, eval_every=5, total_timesteps=100_000),
    "cheetah-multi-objective": dict(hidden=(256, 256), batch_size=256, buffer_size=1_000_000, gamma=0.99,
                                    episodes_per_iteration=1, grad_steps=100, eval_every=10,
                                    total_timesteps=1_000_000),
    "ant-dir-sparse": dict(hidden=(256, 256), batch_size=256, buffer_size=1_000_000, gamma=0.99,
                           episodes_per_iteration=1, grad_steps=100, eval_every=10, total_timesteps=1_000_000),
}
RELABELERS = ("air", "advantage", "random", "none")


# ALGO LOGIC: latent-conditioned SAC networks (the latent z is concatenated to every input)
def mlp(in_dim, hidden, out_dim):
    layers = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, task_dim, hidden):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + task_dim, hidden, 1)

    def forward(self, obs, act, z):
        return self.net(torch.cat([obs, act, z], -1)).squeeze(-1)


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Actor(nn.Module):
    """Tanh-Gaussian policy pi(a | s, z) on Box(-1, 1) actions."""

    def __init__(self, obs_dim, act_dim, task_dim, hidden):
        super().__init__()
        self.body = mlp(obs_dim + task_dim, hidden[:-1], hidden[-1])
        self.mean = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)

    def forward(self, obs, z):
        h = F.relu(self.body(torch.cat([obs, z], -1)))
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def get_action(self, obs, z):
        """(sampled action, its log-probability, deterministic action tanh(mean))."""
        mean, log_std = self(obs, z)
        u = mean + log_std.exp() * torch.randn_like(mean)
        log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)): the stable form of log(1 - tanh(u)^2)
        log_prob = (log_prob - 2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob, torch.tanh(mean)


# ALGO LOGIC: storage. Transitions for SAC; whole padded trajectories for the relabelers.
class ReplayBuffer:
    """Preallocated ring buffer of (s, a, r, s', terminated, z); sampled uniformly over transitions."""

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

    def __init__(self, capacity, horizon, obs_dim, act_dim, n_features=None):
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.obs = np.zeros((capacity, horizon, obs_dim), np.float32)
        self.act = np.zeros((capacity, horizon, act_dim), np.float32)
        self.next_obs = np.zeros((capacity, horizon, obs_dim), np.float32)
        self.mask = np.zeros((capacity, horizon), bool)
        self.phi = None if n_features is None else np.zeros((capacity, n_features))

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


# ALGO LOGIC: the relabelers (Alg. 2 and 3), vectorized over trajectories x candidates
def discounted_feature_sums(env, traj, gamma):
    """phi_i = sum_t gamma^t f(s_t, a_t, s_t+1) for the trajectories of a batch: (B, F)."""
    f = env.reward_features(traj["obs"], traj["act"], traj["next_obs"])  # (B, H, F)
    disc = gamma ** np.arange(f.shape[1]) * traj["mask"]
    return (f * disc[..., None]).sum(1)


def trajectory_returns(env, traj, phi, candidates, gamma, max_elements=1 << 22):
    """Alg. 2 line 4: R(tau_i | v_k) = sum_t gamma^t r(s_t, a_t, v_k) for every trajectory i and candidate k.

    traj: padded (N, H, .) arrays with a validity mask; candidates (K, task_dim). Returns (N, K).
    All N x K x H rewards come from one broadcast `env.evaluate` call (in chunks of trajectories only to bound
    memory); with reward features it is one (N, F) @ (F, K) product."""
    if phi is not None:
        return phi @ candidates.T
    n, h = traj["mask"].shape
    disc = gamma ** np.arange(h) * traj["mask"]  # (N, H); padding steps weigh 0
    out = np.empty((n, len(candidates)))
    chunk = max(1, max_elements // (len(candidates) * h))
    for s in range(0, n, chunk):
        e = slice(s, s + chunk)
        r, _ = env.evaluate(traj["obs"][e, None], traj["act"][e, None], traj["next_obs"][e, None],
                            candidates[None, :, None])  # (chunk, K, H)
        out[e] = (r * disc[e, None]).sum(-1)
    return out


def percentile(returns, reference_returns):
    """Eq. 3 / Alg. 2 line 5: P(tau, v_k) = 1/N sum_j 1{R(tau | v_k) >= R(tau_j | v_k)}.

    returns (B, K) of the new trajectories, reference_returns (N, K) of the cache. Returns (B, K) in [0, 1]."""
    return (returns[:, :, None] >= reference_returns.T[None]).mean(-1)


@torch.no_grad()
def state_value(actor, qf1, qf2, obs0, candidates, device):
    """Eq. 7: V(s_0, z) = min_i Q_i(s_0, mu(s_0, z), z), mu the deterministic (mean) action; (B, K) pairs."""
    b, k = len(obs0), len(candidates)
    s = torch.as_tensor(obs0, dtype=torch.float32, device=device)[:, None].expand(b, k, -1).reshape(b * k, -1)
    z = torch.as_tensor(candidates, dtype=torch.float32, device=device)[None].expand(b, k, -1).reshape(b * k, -1)
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


def sample_candidates(env, own_tasks, k, rng):
    """Alg. 2 line 2 as the authors run it: K - B latents from the prior plus the batch's own B latents."""
    return np.concatenate([env.sample_tasks(k - len(own_tasks), rng), own_tasks])


def choose_relabels(mode, env, traj, cache, nets, args, rng, device):
    """The hindsight latents for a batch of new trajectories (already in the cache): (B, m, task_dim), stats."""
    b = len(traj["task"])
    if mode == "random":
        return env.sample_tasks(b * args.num_relabels, rng).reshape(b, args.num_relabels, -1), {}
    candidates = sample_candidates(env, traj["task"], args.num_candidates, rng)
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
    stats["relabel/original_advantage"] = adv[np.arange(b), len(candidates) - b + np.arange(b)].mean()
    return candidates[pick], stats


def insert(buffer, env, traj, relabels):
    """Alg. 1 lines 6-8: store each trajectory under its own latent and under each hindsight latent, rewards
    and terminations recomputed by env.evaluate. A hindsight latent equal to the original one is not stored
    twice (as in the authors' buffer). Returns the fraction of trajectories that got a new latent."""
    tasks = np.concatenate([traj["task"][:, None], relabels], 1)  # (B, 1 + m, d)
    keep = np.ones(tasks.shape[:2], bool)
    keep[:, 1:] = np.any(relabels != traj["task"][:, None], -1)
    i, j = np.nonzero(keep)  # (trajectory, copy) pairs to store
    r, d = env.evaluate(traj["obs"][i], traj["act"][i], traj["next_obs"][i], tasks[i, j][:, None])  # (P, H)
    m = traj["mask"][i]
    buffer.add(obs=traj["obs"][i][m], act=traj["act"][i][m], rew=r[m], next_obs=traj["next_obs"][i][m],
               done=d[m], task=np.broadcast_to(tasks[i, j][:, None], m.shape + tasks.shape[-1:])[m])
    return keep[:, 1:].any(1).mean() if relabels.shape[1] else 0.0


# ALGO LOGIC: rollouts (collection and evaluation share them) and evaluation
@torch.no_grad()
def rollout(env_list, tasks, actor, device, deterministic, frames=None):
    """One episode per task on env_list[i], all in lockstep with one batched policy call per step. Returns padded
    trajectories (n, H, .) with a validity mask, the undiscounted episode returns and success flags."""
    n, h = len(tasks), env_list[0].horizon
    od, ad = env_list[0].observation_space.shape[0], env_list[0].action_space.shape[0]
    traj = dict(obs=np.zeros((n, h, od), np.float32), act=np.zeros((n, h, ad), np.float32),
                next_obs=np.zeros((n, h, od), np.float32), mask=np.zeros((n, h), bool),
                task=np.asarray(tasks, np.float64))
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
            success[i] |= bool(info.get("success", False))
            alive[i] = not (term or trunc)
            if frames is not None and i == 0:
                frames.append(env_list[0].render())
        if not alive.any():
            break
    return traj, ret, success


def evaluate_policy(env_list, tasks, actor, device, frames=None):
    """Deterministic policy, one episode per task (tasks in chunks of len(env_list)): mean return, success."""
    rets, succ = [], []
    for s in range(0, len(tasks), len(env_list)):
        chunk = tasks[s: s + len(env_list)]
        _, r, ok = rollout(env_list, chunk, actor, device, True, frames if s == 0 else None)
        rets.append(r)
        succ.append(ok)
    return float(np.concatenate(rets).mean()), float(np.concatenate(succ).mean())


def fidelity(env, actor, qf1, qf2, args, rng, device, env_list):
    """Paper Fig. 6: roll the trained policy out on latents z from the prior; for each trajectory let AIR (against
    the N = fidelity_cache previous trajectories), Advantage and reward-only relabeling (Eq. 5) choose among K
    fresh prior samples; record the energy weight of z and of each choice."""
    tasks = env.sample_tasks(args.fidelity_tasks, rng)
    parts = [rollout(env_list, tasks[s: s + len(env_list)], actor, device, True)[0]
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


def resolve_args(args):
    """Fill per-env defaults, validate; every problem is a one-line SystemExit."""
    try:
        env = envs.make(args.env, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if args.env not in ENV_DEFAULTS or env.varies != "reward":
        raise SystemExit(f"error: gh_air.py relabels reward families only: {', '.join(ENV_DEFAULTS)}; "
                         f"got '{args.env}'")
    ckpt = None
    if args.resume is not None:
        if not os.path.isfile(args.resume):
            raise SystemExit(f"error: --resume: no such checkpoint file '{args.resume}'")
        try:  # our own file (numpy arrays, RNG states), hence weights_only=False
            ckpt = torch.load(args.resume, map_location="cpu", weights_only=False)
        except Exception as e:
            raise SystemExit(f"error: cannot read checkpoint '{args.resume}' ({type(e).__name__})")
        if ckpt["env"] != args.env:
            raise SystemExit(f"error: the checkpoint was trained on {ckpt['env']}, not {args.env}")
    for k, v in ENV_DEFAULTS[args.env].items():
        if getattr(args, k) is None:  # not given: the checkpoint's value on resume, else the paper's for --env
            v = ckpt["args"][k] if ckpt and "args" in ckpt else v
            setattr(args, k, tuple(v) if k == "hidden" else v)
    if args.relabel not in RELABELERS:
        raise SystemExit(f"error: --relabel must be one of {', '.join(RELABELERS)}, got '{args.relabel}'")
    if args.mode not in ("train", "fidelity"):
        raise SystemExit(f"error: --mode must be train or fidelity, got '{args.mode}'")
    positive = ("num_candidates", "cache_size", "num_relabels", "batch_size", "buffer_size", "total_timesteps",
                "episodes_per_iteration", "eval_every", "num_eval_tasks", "fidelity_tasks", "fidelity_cache")
    for k in positive:
        if getattr(args, k) < 1:
            raise SystemExit(f"error: --{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.grad_steps < 0 or args.learning_starts < 0 or not 0 < args.gamma <= 1 or not args.hidden:
        raise SystemExit("error: need --grad-steps >= 0, --learning-starts >= 0, 0 < --gamma <= 1, --hidden set")
    if args.relabel in ("air", "advantage") and args.num_candidates <= args.episodes_per_iteration:
        raise SystemExit(f"error: --num-candidates ({args.num_candidates}) must exceed --episodes-per-iteration "
                         f"({args.episodes_per_iteration}): the batch's own latents are among the candidates")
    if args.relabel != "random" and args.num_relabels > args.num_candidates:
        raise SystemExit(f"error: --num-relabels ({args.num_relabels}) exceeds --num-candidates")
    if args.mode == "fidelity" and (args.resume is None or args.env != "point-reacher"):
        raise SystemExit("error: --mode fidelity needs --env point-reacher and --resume PATH of a trained checkpoint")
    return env, ckpt


def save_checkpoint(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint behind


if __name__ == "__main__":
    args = tyro.cli(Args)
    env, ckpt = resolve_args(args)
    if args.run_dir is None:
        args.run_dir = (os.path.dirname(os.path.abspath(args.resume)) if args.resume else
                        f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}")
    os.makedirs(args.run_dir, exist_ok=True)
    print("resolved args:", json.dumps(asdict(args)))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)  # task prior samples, candidates, minibatches
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    n_envs = max(args.episodes_per_iteration, args.num_eval_tasks)
    env_list = [env] + [envs.make(args.env, seed=args.seed + i) for i in range(1, n_envs)]
    if args.capture_video:  # frames of the first evaluation episode come from env_list[0]
        try:
            env_list[0] = envs.make(args.env, seed=args.seed, render_mode="rgb_array")
        except ValueError as e:  # e.g. no OpenGL library to render with
            raise SystemExit(f"error: {e}")
    for i, e in enumerate(env_list):
        e.reset(seed=args.seed + i)
    obs_dim, act_dim, task_dim = env.observation_space.shape[0], env.action_space.shape[0], env.task_dim

    # ALGO LOGIC: initialize agent here
    actor = Actor(obs_dim, act_dim, task_dim, args.hidden).to(device)
    qf1, qf2 = (SoftQNetwork(obs_dim, act_dim, task_dim, args.hidden).to(device) for _ in range(2))
    qf1_target, qf2_target = (SoftQNetwork(obs_dim, act_dim, task_dim, args.hidden).to(device) for _ in range(2))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.learning_rate)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    target_entropy = -float(act_dim)  # automatic entropy tuning with target -|A|, as the authors' SAC
    log_alpha = torch.zeros(1, requires_grad=True, device=device)
    a_optimizer = torch.optim.Adam([log_alpha], lr=args.learning_rate)
    buffer = ReplayBuffer(args.buffer_size, obs_dim, act_dim, task_dim)
    n_features = None
    if hasattr(env, "reward_features"):
        zeros = [np.zeros((1, d), np.float32) for d in (obs_dim, act_dim, obs_dim)]
        n_features = env.reward_features(*zeros).shape[-1]
    cache = TrajectoryCache(args.cache_size, env.horizon, obs_dim, act_dim, n_features)
    iteration, env_steps, grad_updates = 0, 0, 0

    modules = dict(actor=actor, qf1=qf1, qf2=qf2, qf1_target=qf1_target, qf2_target=qf2_target,
                   q_optimizer=q_optimizer, actor_optimizer=actor_optimizer, a_optimizer=a_optimizer)
    if ckpt is not None:
        try:
            for k, m in modules.items():
                m.load_state_dict(ckpt[k])
            buffer.load_state_dict(ckpt["buffer"])
            cache.load_state_dict(ckpt["cache"])
        except (RuntimeError, ValueError) as e:  # e.g. other --hidden, or a smaller --buffer-size / --cache-size
            raise SystemExit(f"error: the checkpoint does not fit these settings ({str(e).splitlines()[0]})")
        with torch.no_grad():
            log_alpha.copy_(ckpt["log_alpha"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        iteration, env_steps, grad_updates = ckpt["iteration"], ckpt["env_steps"], ckpt["grad_updates"]
        print(f"resumed {args.resume} at iteration {iteration}, {env_steps} env steps")

    if args.mode == "fidelity":
        out = fidelity(env, actor, qf1, qf2, args, rng, device, env_list)
        path = os.path.join(args.run_dir, "fidelity.json")
        with open(path, "w") as f:
            json.dump(out, f)
        for k in ("air", "advantage", "reward"):
            print(f"{k}: corr(true, chosen energy weight) = {np.corrcoef(out['true'], out[k])[0, 1]:.3f}")
        print(f"wrote {path}")
        raise SystemExit(0)

    writer = SummaryWriter(args.run_dir)
    writer.add_text("hyperparameters",
                    "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    with open(os.path.join(args.run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=1)
    nets = (actor, qf1, qf2)
    start_time, start_steps, last_eval = time.time(), env_steps, float("nan")
    # Ctrl-C (SIGINT) ends the run after the current iteration, which then evaluates and checkpoints;
    # a second Ctrl-C stops at once.
    stop = []
    signal.signal(signal.SIGINT, lambda *_: (stop.append(1), signal.signal(signal.SIGINT, signal.SIG_DFL)))

    while env_steps < args.total_timesteps and not stop:
        iteration += 1
        # Alg. 1 lines 3-4: latents from the prior, one episode each with the stochastic policy
        t0 = time.time()
        tasks = env.sample_tasks(args.episodes_per_iteration, rng)
        traj, ep_ret, _ = rollout(env_list, tasks, actor, device, deterministic=False)
        env_steps += int(traj["mask"].sum())
        t_collect = time.time() - t0

        # Alg. 1 lines 5-8: choose hindsight latents, store the original and the relabeled copies
        t0 = time.time()
        if n_features is not None:
            traj["phi"] = discounted_feature_sums(env, traj, args.gamma)
        cache.add(traj, traj.get("phi"))  # new trajectories join the reference set first, as in the authors' code
        stats = {}
        if args.relabel == "none":
            relabels = np.zeros((len(tasks), 0, task_dim))
        else:
            relabels, stats = choose_relabels(args.relabel, env, traj, cache, nets, args, rng, device)
        stats["relabel/fraction_relabeled"] = insert(buffer, env, traj, relabels)
        t_relabel = time.time() - t0

        # Alg. 1 line 10: n steps of SAC
        t0 = time.time()
        if env_steps >= args.learning_starts and buffer.size >= args.batch_size:
            for _ in range(args.grad_steps):
                obs, act, rew, next_obs, done, z = buffer.sample(args.batch_size, rng, device)
                alpha = log_alpha.exp().detach()
                with torch.no_grad():
                    next_act, next_logp, _ = actor.get_action(next_obs, z)
                    min_q_next = torch.min(qf1_target(next_obs, next_act, z), qf2_target(next_obs, next_act, z))
                    # bootstraps through time-limit truncation; only true terminations stop it
                    target_q = rew + (1 - done) * args.gamma * (min_q_next - alpha * next_logp)
                qf1_values, qf2_values = qf1(obs, act, z), qf2(obs, act, z)
                qf_loss = F.mse_loss(qf1_values, target_q) + F.mse_loss(qf2_values, target_q)
                q_optimizer.zero_grad()
                qf_loss.backward()
                q_optimizer.step()

                new_act, logp, _ = actor.get_action(obs, z)
                actor_loss = (alpha * logp - torch.min(qf1(obs, new_act, z), qf2(obs, new_act, z))).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()
                alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
                a_optimizer.zero_grad()
                alpha_loss.backward()
                a_optimizer.step()

                with torch.no_grad():
                    for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                        torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), args.tau)
                grad_updates += 1
            writer.add_scalar("losses/qf1_values", qf1_values.mean().item(), env_steps)
            writer.add_scalar("losses/qf2_values", qf2_values.mean().item(), env_steps)
            writer.add_scalar("losses/qf_loss", qf_loss.item() / 2, env_steps)
            writer.add_scalar("losses/actor_loss", actor_loss.item(), env_steps)
            writer.add_scalar("losses/alpha", alpha.item(), env_steps)
            writer.add_scalar("losses/alpha_loss", alpha_loss.item(), env_steps)
        t_update = time.time() - t0

        # TRY NOT TO MODIFY: logging, evaluation, checkpoint
        writer.add_scalar("charts/episodic_return", ep_ret.mean(), env_steps)
        for k, v in stats.items():
            writer.add_scalar(k, v, env_steps)
        t_eval = 0.0
        done_training = env_steps >= args.total_timesteps or bool(stop)
        if iteration % args.eval_every == 0 or done_training:
            t0 = time.time()
            frames = [] if args.capture_video else None
            test = env.test_tasks[: args.num_eval_tasks]
            last_eval, success = evaluate_policy(env_list, test, actor, device, frames)
            train_ret, _ = evaluate_policy(env_list, env.train_tasks[: args.num_eval_tasks], actor, device)
            t_eval = time.time() - t0
            record = {"iteration": iteration, "env_steps": env_steps, "grad_updates": grad_updates,
                      "wall_time": time.time() - start_time, "eval/return": last_eval,
                      "eval/return_train_tasks": train_ret, "charts/episodic_return": float(ep_ret.mean()),
                      "time/collect": t_collect, "time/update": t_update, "time/relabel": t_relabel,
                      "time/eval": t_eval, **{k: float(v) for k, v in stats.items()}}
            if env.has_success:
                record["eval/success_rate"] = success
            for k in ("eval/return", "eval/return_train_tasks", "eval/success_rate"):
                if k in record:
                    writer.add_scalar(k, record[k], env_steps)
            with open(os.path.join(args.run_dir, "eval.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            if frames:
                envs.save_video(frames, os.path.join(args.run_dir, "videos", f"eval_{iteration}.gif"))
            if args.save_model:
                save_checkpoint(os.path.join(args.run_dir, "checkpoint.pt"), dict(
                    env=args.env, args=asdict(args), iteration=iteration, env_steps=env_steps,
                    grad_updates=grad_updates, log_alpha=log_alpha.detach(), buffer=buffer.state_dict(),
                    cache=cache.state_dict(),
                    rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                    **{k: m.state_dict() for k, m in modules.items()}))
        for k, v in (("collect", t_collect), ("update", t_update), ("relabel", t_relabel), ("eval", t_eval)):
            writer.add_scalar(f"time/{k}", v, env_steps)
        sps = (env_steps - start_steps) / (time.time() - start_time)
        writer.add_scalar("charts/SPS", sps, env_steps)
        eta = max(args.total_timesteps - env_steps, 0) / max(sps, 1e-9)
        print(f"it {iteration} step {env_steps}/{args.total_timesteps} SPS {sps:.0f} eval {last_eval:.2f} "
              f"relabel {t_relabel * 1e3:.0f}ms update {t_update:.2f}s ETA {eta / 60:.1f}min", flush=True)

    writer.close()
