"""HIPI: Hindsight Inference for Policy Improvement — relabeling experience with inverse RL.

Paper: B. Eysenbach, X. Geng, S. Levine, R. Salakhutdinov, "Rewriting History with Inverse RL: Hindsight
Inference for Policy Improvement", NeurIPS 2020 (https://arxiv.org/abs/2002.11089).

Equation numbers are the paper's:
  Eq. 7  optimal relabeling of a trajectory   q(psi | tau)  ∝ exp(R(tau, psi) - log Z(psi))  (used by HIPI-BC)
  Eq. 8  relabeling of a transition           q(psi | s, a) ∝ exp(Q(s, a, psi) - log Z(psi)) (used by HIPI-RL)
  §5.1   log Z(psi) estimated by Monte Carlo from the samples of one batch
  Alg. 1 approximate inverse RL, Alg. 2 HIPI-RL (off-policy RL), Alg. 3 HIPI-BC (behavior cloning).

--mode rl (Alg. 2): task-conditioned SAC (the task vector is concatenated to the observation). Every sampled
minibatch is relabeled at SAMPLE time. For the B transitions and K candidate tasks (the batch's own B tasks, or
every task of a family with a finite task list) one batched pass builds the B x K logit matrix
    L[i, j] = r(s_i, a_i, psi_j) - log pi(a_i | s_i, psi_j) + gamma (1 - d_ij) Q1(s'_i, a', psi_j),
    a' ~ pi(. | s'_i, psi_j)                                      (one-step soft-Q estimate, Eq. 8)
subtracts from each task column its log-sum-exp over the batch (log Z, §5.1), samples one task per row from the
row's softmax, keeps the original task on the other rows (App. C.1: 50 % relabeled), and recomputes rewards
and terminals with env.evaluate. Baselines: --relabel random (uniform over the same candidates), final and
future (HER, Andrychowicz et al. 2017; goal families only), none (plain multi-task SAC); --no-partition drops
log Z (the paper's Fig. 8 ablation).
--mode bc (Alg. 3): load trajectories saved by --mode rl --save-dataset, discard their task labels, relabel
each trajectory by Eq. 7 over candidate tasks, fit a task-conditioned policy by behavior cloning, and compare it
with task-agnostic behavior cloning on the test tasks.

Quick start (point-robot, learning visible within minutes), then the paper's comparisons at reduced size (the
exact multi-seed commands are in benchmarks/hipi.md, the equation-to-code map in docs/hipi.md):
    python hipi.py
    python hipi.py --env four-rooms --relabel hipi      # and --relabel random | final | none
    python hipi.py --env point-robot --save-dataset runs/point-robot.npz
    python hipi.py --mode bc --env point-robot --dataset runs/point-robot.npz
"""

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

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
    """name of this experiment (part of the run directory name)"""
    seed: int = 1
    """seed of numpy, torch and the environments"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available"""
    capture_video: bool = False
    """save the first test episode of every evaluation as run_dir/videos/eval_<step>.gif"""
    save_model: bool = True
    """write run_dir/checkpoint.pt after every iteration (atomically)"""
    env: str = "point-robot"
    """task family (python -m envs lists them); hipi.py serves families whose tasks vary the reward only"""
    total_timesteps: Optional[int] = None
    """environment steps of --mode rl (default: per env, printed at start)"""
    resume: Optional[str] = None
    """continue --mode rl from this checkpoint.pt (networks, optimizers, replay buffer, RNG state)"""
    run_dir: Optional[str] = None
    """output directory (default runs/{env}__{exp_name}__{seed}__{unix time}; on --resume the checkpoint's)"""

    # Algorithm specific arguments
    mode: Literal["rl", "bc"] = "rl"
    """rl: HIPI-RL (Alg. 2) on SAC; bc: HIPI-BC (Alg. 3) on a dataset saved by --mode rl --save-dataset"""
    relabel: Literal["hipi", "random", "final", "future", "none"] = "hipi"
    """hipi: inverse-RL relabeling (Eq. 8, Eq. 7 in bc mode); random: uniform over the candidates; final/future:
    HER's final or one of the next 4 achieved goals (goal families); none: no relabeling"""
    relabel_fraction: float = 0.5
    """fraction of each minibatch given a relabeled task; the rest keep the commanded task (App. C.1, Appendix D:
    100 % was worse). The authors' code names the complement relabel_prob."""
    no_partition: bool = False
    """drop the log-partition term log Z(psi) from the relabeling logits (the paper's Fig. 8 ablation)"""
    candidates: Literal["tasks", "next_states"] = "tasks"
    """candidate tasks of --relabel hipi/random: the minibatch's commanded tasks (the authors' README), or the
    goals its next states achieve (the authors' goal-reaching variant; goal families only)"""
    num_candidates: Optional[int] = None
    """candidate tasks per relabeled minibatch: default all (the batch's B tasks, or the finite task list); fewer
    = a random subset of the batch's tasks, cost O(B x K)"""
    learning_starts: Optional[int] = None
    """environment steps with uniform random actions before the first update (authors: 10,000)"""
    batch_size: Optional[int] = None
    """minibatch size B (default: per env, printed; the relabeler costs O(B^2) network evaluations)"""
    hidden: Optional[int] = None
    """width of the two hidden layers of actor and critics (default: per env, printed)"""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and entropy temperature"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak rate of the target critics (updated every gradient step)"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions (memory O(capacity x (2 obs + action + task) dims))"""
    updates_per_step: int = 1
    """gradient steps per environment step (the authors collect one step per training iteration)"""
    grad_clip: Optional[float] = None
    """clip the global gradient norm of each network (App. C.1: 1.0 was needed on Sawyer; default: per env)"""
    eval_every: Optional[int] = None
    """environment steps per iteration; one evaluation, log line and checkpoint per iteration (default: per env)"""
    num_eval_tasks: int = 30
    """evaluate on the first N test tasks and N train tasks, one deterministic episode each (authors: 30 episodes)"""
    save_dataset: Optional[str] = None
    """--mode rl: at the end, roll out the trained policy and save its trajectories (.npz) for --mode bc"""
    dataset_episodes: int = 1000
    """episodes saved by --save-dataset (the paper collected 1000 demonstrations), tasks from the train prior"""

    # HIPI-BC (--mode bc)
    dataset: Optional[str] = None
    """--mode bc: the .npz written by --mode rl --save-dataset"""
    bc_candidates: int = 100
    """candidate tasks drawn from the task prior for Eq. 7 (a finite task list is used whole)"""
    first_task_reward_bias: float = 0.0
    """add this constant to every reward of the first candidate task before relabeling (Fig. 8's corruption)"""
    bc_val_fraction: float = 0.1
    """fraction of trajectories held out for early stopping"""
    bc_patience: int = 3
    """stop when the validation loss has not improved for this many epochs (App. C.2)"""
    bc_max_epochs: int = 200
    """upper bound on behavior-cloning epochs"""
    bc_batch_size: int = 256
    """behavior-cloning minibatch size"""


# Per-env defaults. Batch 32 is the paper's (App. C.1) and the authors' README; hidden widths are App. C.1's
# (32 for 2-D navigation, 64 for the others); 10,000 initial random steps are the authors'. The 2-D point families
# of the other papers (horizon 20) get the 2-D navigation networks and 2,000 initial steps (100 episodes). A
# finite task list (the paper's "discrete" task sets) is the whole candidate set: "finite" marks it.
ENV_DEFAULTS = {
    #                    steps    starts  eval   batch hidden clip  finite
    "four-rooms":         (100_000, 10_000, 2_000, 32, 32, None, False),
    "point-robot":        (30_000, 2_000, 2_000, 32, 32, None, False),
    "sparse-point-robot": (50_000, 2_000, 2_000, 32, 32, None, False),
    "four-corners":       (30_000, 2_000, 2_000, 32, 32, None, True),
    "sawyer-reach":       (1_000_000, 10_000, 10_000, 32, 64, 1.0, False),
    "sawyer-reach-margin": (1_000_000, 10_000, 10_000, 32, 64, 1.0, False),
    "walker-linear":      (1_000_000, 10_000, 10_000, 32, 64, None, False),
}
FALLBACK = (1_000_000, 10_000, 10_000, 256, 256, None, False)  # the authors' train_eval.py defaults


def resolve(args: Args) -> bool:
    """Fill the None fields from ENV_DEFAULTS, check the numbers; returns whether the task list is finite."""
    steps, starts, every, batch, hidden, clip, finite = ENV_DEFAULTS.get(args.env, FALLBACK)
    for field, value in (("total_timesteps", steps), ("learning_starts", starts), ("eval_every", every),
                         ("batch_size", batch), ("hidden", hidden), ("grad_clip", clip)):
        if getattr(args, field) is None:
            setattr(args, field, value)
    positive = ("batch_size", "hidden", "eval_every", "updates_per_step", "num_eval_tasks", "dataset_episodes",
                "bc_candidates", "bc_max_epochs", "bc_batch_size", "bc_patience")
    for field in positive:
        if getattr(args, field) <= 0:
            raise SystemExit(f"error: --{field.replace('_', '-')} must be positive, got {getattr(args, field)}")
    if args.total_timesteps < 0 or args.learning_starts < 0:
        raise SystemExit("error: --total-timesteps and --learning-starts must be >= 0")
    if not 0.0 <= args.relabel_fraction <= 1.0:
        raise SystemExit(f"error: --relabel-fraction must lie in [0, 1], got {args.relabel_fraction}")
    if not 0.0 < args.bc_val_fraction < 1.0:
        raise SystemExit(f"error: --bc-val-fraction must lie in (0, 1), got {args.bc_val_fraction}")
    if args.num_candidates is not None and args.num_candidates < 1:
        raise SystemExit(f"error: --num-candidates must be >= 1, got {args.num_candidates}")
    return finite


# ALGO LOGIC: initialize agent here:
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class SoftQNetwork(nn.Module):
    """Q(s, a, psi): the task is concatenated to the observation (App. C.1)."""

    def __init__(self, obs_dim, act_dim, task_dim, hidden):
        super().__init__()
        self.net = mlp(obs_dim + task_dim + act_dim, 1, hidden)

    def forward(self, obs, task, act):
        return self.net(torch.cat([obs, task, act], -1)).squeeze(-1)


class Actor(nn.Module):
    """Tanh-squashed Gaussian pi(a | s, psi) on Box(-1, 1) actions."""

    def __init__(self, obs_dim, act_dim, task_dim, hidden):
        super().__init__()
        self.net = mlp(obs_dim + task_dim, 2 * act_dim, hidden)

    def forward(self, obs, task):
        mean, log_std = self.net(torch.cat([obs, task], -1)).chunk(2, -1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    @staticmethod
    def gaussian_log_prob(u, mean, log_std):
        """log N(u; mean, diag(std^2)) summed over action dims (written out: torch.distributions' argument checks
        cost more than the arithmetic at these sizes)."""
        z = (u - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]

    @staticmethod
    def tanh_correction(a):
        """log |det da/du| of a = tanh(u), summed over action dims (the 1e-6 keeps it finite at |a| = 1)."""
        return torch.log(1 - a.pow(2) + 1e-6).sum(-1)

    @staticmethod
    def sample_from(mean, log_std):
        """a = tanh(u), u ~ N(mean, std^2) by reparameterization, and log pi(a)."""
        u = mean + log_std.exp() * torch.randn_like(mean)
        a = torch.tanh(u)
        return a, Actor.gaussian_log_prob(u, mean, log_std) - Actor.tanh_correction(a)

    def sample(self, obs, task):
        """a ~ pi(. | s, psi) and log pi(a | s, psi)."""
        return self.sample_from(*self(obs, task))

    def log_prob(self, obs, task, a):
        """log pi(a | s, psi) of a GIVEN action."""
        a = a.clamp(-1 + 1e-6, 1 - 1e-6)  # stored random actions may sit on the boundary where atanh is infinite
        return self.gaussian_log_prob(torch.atanh(a), *self(obs, task)) - self.tanh_correction(a)

    def act(self, obs, task):
        """Deterministic evaluation action tanh(mean)."""
        return torch.tanh(self(obs, task)[0])


class ReplayBuffer:
    """Preallocated transitions with their commanded task. ep_end[i] is the index of the last stored transition of
    i's episode so far (HER's final/future goals)."""

    def __init__(self, capacity, obs_dim, act_dim, task_dim):
        self.capacity, self.ptr, self.size, self.ep_start = capacity, 0, 0, 0
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.task = np.zeros((capacity, task_dim), np.float64)
        self.rew = np.zeros(capacity, np.float64)
        self.term = np.zeros(capacity, bool)
        self.ep_end = np.zeros(capacity, np.int64)

    def add(self, obs, act, rew, next_obs, term, task, episode_over):
        i = self.ptr
        self.obs[i], self.act[i], self.rew[i], self.next_obs[i], self.term[i], self.task[i] = (
            obs, act, rew, next_obs, term, task)
        self.ep_end[(np.arange(self.ep_start, self.ep_start + (i - self.ep_start) % self.capacity + 1))
                    % self.capacity] = i
        self.ptr, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)
        if episode_over:
            self.ep_start = self.ptr

    def state(self):
        n = self.size
        return {k: getattr(self, k)[:n] for k in ("obs", "next_obs", "act", "task", "rew", "term", "ep_end")} | {
            "ptr": self.ptr, "size": self.size, "ep_start": self.ep_start}

    def load(self, state):
        for k in ("obs", "next_obs", "act", "task", "rew", "term", "ep_end"):
            getattr(self, k)[: state["size"]] = state[k]
        self.ptr, self.size, self.ep_start = state["ptr"], state["size"], state["ep_start"]


# ALGO LOGIC: the relabeler (Alg. 1 with Eq. 8 for transitions, Eq. 7 for trajectories)
def utility(actor, qf1, obs, act, next_obs, candidates, rew, term, gamma):
    """Alg. 1 / Eq. 8: L[i, j] = r(s_i, a_i, psi_j) - log pi(a_i | s_i, psi_j) + gamma (1 - d_ij) Q1(s'_i, a', psi_j)
    with a' ~ pi(. | s'_i, psi_j): a one-step soft-Q estimate of every transition i under every candidate task j.
    obs/act/next_obs (B, .), candidates (K, task_dim), rew/term (B, K). One batched pass over the B*K pairs."""
    B, K, n = obs.shape[0], candidates.shape[0], obs.shape[0] * candidates.shape[0]
    # rows s_1..s_B, s'_1..s'_B, each repeated beside the K candidate tasks: one actor pass over all 2*B*K pairs
    states = torch.cat([obs, next_obs])[:, None].expand(2 * B, K, obs.shape[1]).reshape(2 * n, -1)
    psi = candidates.repeat(2 * B, 1)
    mean, log_std = actor(states, psi)
    # log pi(a_i | s_i, psi_j); the tanh correction depends on a_i alone, so it is computed once per row
    a = act.clamp(-1 + 1e-6, 1 - 1e-6)  # stored random actions may sit on the boundary where atanh is infinite
    logp = Actor.gaussian_log_prob(torch.atanh(a)[:, None], mean[:n].view(B, K, -1), log_std[:n].view(B, K, -1))
    logp = logp - Actor.tanh_correction(a)[:, None]
    a2, _ = Actor.sample_from(mean[n:], log_std[n:])  # a' ~ pi(. | s'_i, psi_j)
    q_next = qf1(states[n:], psi[n:], a2).view(B, K)  # the authors use the first critic only
    return rew - logp + gamma * (1.0 - term) * q_next


def log_partition(logits):
    """§5.1: log Z(psi_j) estimated from the batch, logsumexp over the B rows of column j (up to log B)."""
    return torch.logsumexp(logits, dim=0)


def relabel_distribution(logits, partition=True):
    """Eq. 7 / Eq. 8: log q(psi_j | row i) = log softmax_j (L[i, j] - log Z(psi_j)); --no-partition drops log Z."""
    if partition:
        logits = logits - log_partition(logits)[None]
    return torch.log_softmax(logits, dim=1)


def sample_rows(log_q, rng):
    """One candidate index per row, j ~ Categorical(exp(log_q[i])), by the Gumbel-max trick."""
    gumbel = -np.log(-np.log(rng.random(log_q.shape)))
    return np.argmax(log_q + gumbel, axis=1)


def relabel(kind, batch, env, rb, idx, candidates, actor, qf1, args, rng, device, with_stats=True):
    """Relabel a sampled minibatch (Alg. 2): new tasks for a --relabel-fraction of the rows, then rewards and
    terminals for every row recomputed with env.evaluate. Returns (tasks, rew, term, stats); the diagnostics
    in stats cost about a tenth of the relabeling at batch 32, so the loop asks for them once per iteration."""
    obs, act, next_obs, tasks = batch["obs"], batch["act"], batch["next_obs"], batch["task"]
    B = len(obs)
    chosen = rng.random(B) < args.relabel_fraction  # the other rows keep their commanded task
    stats = {}
    if kind in ("hipi", "random"):
        K = len(candidates)
        if kind == "hipi":
            # (K, B) rewards and terminals of every transition under every candidate: one vectorized call
            r, d = env.evaluate(obs[None], act[None], next_obs[None], candidates[:, None])
            t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)
            with torch.no_grad():
                L = utility(actor, qf1, t(obs), t(act), t(next_obs), t(candidates), t(r.T), t(d.T), args.gamma)
                log_q = relabel_distribution(L, partition=not args.no_partition).cpu().double().numpy()
                if with_stats:
                    stats["relabel/mean_log_partition"] = log_partition(L).mean().item()
        else:
            log_q = np.full((B, K), -np.log(K))
        j = sample_rows(log_q, rng)
        new = candidates[j]
        if with_stats:
            stats["relabel/entropy"] = float(-(np.exp(log_q) * log_q).sum(1).mean())
    else:  # HER (App. C.1): the goal achieved at the episode's last step, or at one of the next 4 steps
        end_dist = (rb.ep_end[idx] - idx) % rb.capacity
        if kind == "final":
            at = rb.ep_end[idx]
        else:
            at = (idx + (rng.random(B) * np.minimum(4, end_dist + 1)).astype(np.int64)) % rb.capacity
        new = env.achieved_task(rb.next_obs[at], tasks)
    tasks = np.where(chosen[:, None], new, tasks)
    if kind == "hipi":  # env.evaluate's values for the chosen tasks are already in the K x B matrices
        rows = np.arange(B)
        rew, term = np.where(chosen, r[j, rows], batch["rew"]), np.where(chosen, d[j, rows], batch["term"])
    else:
        rew, term = env.evaluate(obs, act, next_obs, tasks)
    if with_stats:
        stats["relabel/fraction_changed"] = float(np.mean(np.any(tasks != batch["task"], axis=1)))
    return tasks, rew, term, stats


def trajectory_returns(env, data, candidates):
    """R(tau_n, psi_k) of Eq. 7 for every trajectory n and candidate k, as (N, K), together with each relabeled
    trajectory's length: under task psi_k the episode ends at its first terminal step (one vectorized call)."""
    obs, act, next_obs, length = data["obs"], data["act"], data["next_obs"], data["length"]
    N, T = obs.shape[:2]
    r, d = env.evaluate(obs[None], act[None], next_obs[None], candidates[:, None, None])  # (K, N, T)
    valid = np.arange(T)[None, None] < length[None, :, None]
    d = d & valid
    alive = valid & (np.cumsum(d, axis=2) - d == 0)  # steps up to and including the first terminal
    R = np.where(alive, r, 0.0).sum(2).T
    return R, alive.sum(2).T


# ALGO LOGIC: evaluation
def evaluate_policy(env, policy, tasks, seed, video=None):
    """One deterministic episode per task; returns (mean return, success rate or None). policy(obs, task)->action."""
    returns, successes = [], []
    for n, task in enumerate(tasks):
        env.set_task(task)
        obs, _ = env.reset(seed=seed + n)
        ret, success, done = 0.0, False, False
        while not done:
            obs, r, term, trunc, info = env.step(policy(obs, task))
            if video is not None and n == 0:
                video.append(env.render())
            ret, success, done = ret + r, success or bool(info.get("success", False)), term or trunc
        returns.append(ret)
        successes.append(success)
    return float(np.mean(returns)), (float(np.mean(successes)) if env.has_success else None)


def torch_policy(net, device):
    def policy(obs, task):
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
            p = torch.as_tensor(task, dtype=torch.float32, device=device)[None]
            return net.act(o, p)[0].cpu().numpy()
    return policy


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


# ALGO LOGIC: HIPI-BC (Alg. 3)
class BCPolicy(nn.Module):
    """2 x 256 ReLU MLP regressing normalized actions (App. C.2); task_dim 0 gives task-agnostic BC."""

    def __init__(self, obs_dim, act_dim, task_dim, stats):
        super().__init__()
        self.net = mlp(obs_dim + task_dim, act_dim, 256)
        for k, v in stats.items():
            self.register_buffer(k, torch.as_tensor(v, dtype=torch.float32))

    def forward(self, obs, task):
        return self.net(torch.cat([(obs - self.obs_mean) / self.obs_std, task], -1))

    def act(self, obs, task):
        return (self(obs, task) * self.act_std + self.act_mean).clamp(-1, 1)


def behavior_clone(X_obs, X_task, Y, train_rows, val_rows, stats, args, device, writer, tag):
    """Fit BCPolicy by MSE with early stopping on the validation loss; returns the best network and epochs."""
    net = BCPolicy(X_obs.shape[1], Y.shape[1], X_task.shape[1], stats).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)
    o, p, y = t(X_obs), t(X_task), t((Y - stats["act_mean"]) / stats["act_std"])
    tr, va = torch.as_tensor(train_rows, device=device), torch.as_tensor(val_rows, device=device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    best, best_state, bad, epoch = float("inf"), None, 0, 0
    for epoch in range(1, args.bc_max_epochs + 1):
        for rows in tr[torch.randperm(len(tr), generator=gen).to(device)].split(args.bc_batch_size):
            loss = F.mse_loss(net(o[rows], p[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = F.mse_loss(net(o[va], p[va]), y[va]).item()
        writer.add_scalar(f"losses/{tag}_val", val, epoch)
        if val < best:
            best, best_state, bad = val, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= args.bc_patience:
                break
    net.load_state_dict(best_state)
    return net, epoch, best


def run_bc(args, env, finite, run_dir, writer, device, rng):
    """HIPI-BC (Alg. 3): relabel each trajectory with q(psi | tau) (Eq. 7), then task-conditioned behavior
    cloning; task-agnostic behavior cloning on the same trajectories is the baseline (§6.2)."""
    if args.dataset is None or not os.path.isfile(args.dataset):
        raise SystemExit(f"error: --mode bc needs --dataset PATH of an existing .npz (got {args.dataset})")
    if args.relabel not in ("hipi", "random"):
        raise SystemExit(f"error: --mode bc relabels with --relabel hipi or random, not '{args.relabel}'")
    if args.resume is not None:
        raise SystemExit("error: --resume applies to --mode rl; --mode bc trains in seconds")
    with np.load(args.dataset) as f:  # the stored task labels are never read: Alg. 3 discards them
        data = {k: f[k] for k in ("obs", "act", "next_obs", "length")}
    if data["obs"].shape[2:] != env.observation_space.shape or data["act"].shape[2:] != env.action_space.shape:
        raise SystemExit(f"error: {args.dataset} does not hold {args.env} trajectories (obs/action shapes differ)")
    t0 = time.time()
    candidates = env.train_tasks if finite else env.sample_tasks(args.bc_candidates, rng)
    R, lengths = trajectory_returns(env, data, candidates)
    R[:, 0] += args.first_task_reward_bias * lengths[:, 0]  # Fig. 8: one task's rewards on a different scale
    if args.relabel == "hipi":
        log_q = relabel_distribution(torch.as_tensor(R), partition=not args.no_partition).numpy()
    else:
        log_q = np.full(R.shape, -np.log(len(candidates)))
    k = sample_rows(log_q, rng)
    N, T = data["obs"].shape[:2]
    length = lengths[np.arange(N), k]
    t_relabel = time.time() - t0

    # task-conditioned rows: steps of each trajectory up to its end under the inferred task
    steps = np.arange(T)[None] < length[:, None]
    traj_of_row = np.nonzero(steps)[0]
    X_obs, Y, X_task = data["obs"][steps], data["act"][steps], candidates[k][traj_of_row]
    val_traj = rng.permutation(N)[: max(1, int(round(args.bc_val_fraction * N)))]
    is_val = np.isin(traj_of_row, val_traj)
    stats = {"obs_mean": X_obs[~is_val].mean(0), "obs_std": X_obs[~is_val].std(0) + 1e-6,
             "act_mean": Y[~is_val].mean(0), "act_std": Y[~is_val].std(0) + 1e-6}
    t0 = time.time()
    hipi_net, hipi_epochs, hipi_val = behavior_clone(
        X_obs, X_task, Y, np.nonzero(~is_val)[0], np.nonzero(is_val)[0], stats, args, device, writer, "bc_task")
    # task-agnostic rows: every recorded step, no task input
    all_steps = np.arange(T)[None] < data["length"][:, None]
    A_obs, A_Y = data["obs"][all_steps], data["act"][all_steps]
    a_val = np.isin(np.nonzero(all_steps)[0], val_traj)
    agn_net, agn_epochs, agn_val = behavior_clone(
        A_obs, np.zeros((len(A_obs), 0)), A_Y, np.nonzero(~a_val)[0], np.nonzero(a_val)[0], stats, args, device,
        writer, "bc_agnostic")
    t_update = time.time() - t0

    t0 = time.time()
    test, train = env.test_tasks[: args.num_eval_tasks], env.train_tasks[: args.num_eval_tasks]
    hipi_pol = torch_policy(hipi_net, device)
    agn = lambda obs, task: torch_policy(agn_net, device)(obs, np.zeros(0))
    ret, succ = evaluate_policy(env, hipi_pol, test, args.seed + 10_000)
    ret_train, _ = evaluate_policy(env, hipi_pol, train, args.seed + 20_000)
    agn_ret, agn_succ = evaluate_policy(env, agn, test, args.seed + 10_000)
    entropy = float(-(np.exp(log_q) * log_q).sum(1).mean())
    record = {"iteration": hipi_epochs, "env_steps": int(data["length"].sum()), "wall_time": time.time(),
              "eval/return": ret, "eval/return_train_tasks": ret_train, "eval/return_agnostic": agn_ret,
              "bc/epochs_task": hipi_epochs, "bc/epochs_agnostic": agn_epochs, "bc/val_loss_task": hipi_val,
              "bc/val_loss_agnostic": agn_val, "relabel/entropy": entropy,
              "time/collect": 0.0, "time/update": t_update, "time/relabel": t_relabel, "time/eval": time.time() - t0}
    if succ is not None:
        record |= {"eval/success_rate": succ, "eval/success_rate_agnostic": agn_succ}
    for key, value in record.items():
        if key.split("/")[0] in ("eval", "bc", "relabel", "time"):
            writer.add_scalar(key, value, 0)
    with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if args.save_model:
        save_atomic({"bc_task": hipi_net.state_dict(), "bc_agnostic": agn_net.state_dict(), "args": asdict(args),
                     "candidates": candidates}, os.path.join(run_dir, "checkpoint.pt"))
    print(f"HIPI-BC ({args.relabel}{', no log Z' if args.no_partition else ''}): test return {ret:.2f}"
          + (f" success {succ:.2f}" if succ is not None else "") + f" | task-agnostic BC: test return {agn_ret:.2f}"
          + (f" success {agn_succ:.2f}" if agn_succ is not None else "")
          + f" | {N} trajectories, {len(candidates)} candidates, epochs {hipi_epochs}/{agn_epochs}")


def save_dataset(path, env, actor, args, finite, rng, device):
    """Roll out the trained (stochastic) policy on tasks from the training distribution; HIPI-BC's input data."""
    H, n = env.horizon, args.dataset_episodes
    obs_b = np.zeros((n, H) + env.observation_space.shape, np.float32)
    next_b, act_b = np.zeros_like(obs_b), np.zeros((n, H) + env.action_space.shape, np.float32)
    length, tasks = np.zeros(n, np.int64), command_tasks(env, finite, n, rng)
    for e in range(n):
        env.set_task(tasks[e])
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        for t in range(H):
            with torch.no_grad():
                a, _ = actor.sample(torch.as_tensor(obs, device=device)[None],
                                    torch.as_tensor(tasks[e], dtype=torch.float32, device=device)[None])
            a = a[0].cpu().numpy()
            next_obs, _, term, trunc, _ = env.step(a)
            obs_b[e, t], act_b[e, t], next_b[e, t] = obs, a, next_obs
            obs, length[e] = next_obs, t + 1
            if term or trunc:
                break
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, obs=obs_b, act=act_b, next_obs=next_b, length=length, task=tasks, env=args.env)
    print(f"saved {n} trajectories ({length.sum()} steps) to {path}")


def command_tasks(env, finite, n, rng):
    """Tasks commanded during collection: uniformly from a finite task list, otherwise from the task prior."""
    return env.train_tasks[rng.integers(len(env.train_tasks), size=n)] if finite else env.sample_tasks(n, rng)


if __name__ == "__main__":
    args = tyro.cli(Args)
    finite = resolve(args)
    try:
        env = envs.make(args.env, seed=args.seed)
        eval_env = envs.make(args.env, seed=args.seed + 1, **({"render_mode": "rgb_array"} if args.capture_video
                                                                 else {}))
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if env.varies != "reward":
        raise SystemExit(f"error: hipi.py relabels rewards, and '{args.env}' varies {env.varies}; use a reward family "
                         f"({', '.join(ENV_DEFAULTS)})")
    if (args.relabel in ("final", "future") or args.candidates == "next_states") and not hasattr(env, "achieved_task"):
        what = f"--relabel {args.relabel}" if args.relabel in ("final", "future") else "--candidates next_states"
        raise SystemExit(f"error: {what} needs a goal family (env.achieved_task); '{args.env}' has none: use "
                         "--relabel hipi, random or none with --candidates tasks")
    ckpt = None
    if args.resume is not None:
        if not os.path.isfile(args.resume):
            raise SystemExit(f"error: --resume {args.resume}: no such checkpoint")
        ckpt = torch.load(args.resume, weights_only=False)
        if ckpt.get("args", {}).get("env") != args.env:
            raise SystemExit(f"error: {args.resume} was trained on {ckpt.get('args', {}).get('env')}, not {args.env}")
        args.run_dir = args.run_dir or os.path.dirname(os.path.abspath(args.resume))
    run_dir = args.run_dir or f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=2)
    print("resolved args: " + " ".join(f"{k}={v}" for k, v in asdict(args).items()))
    writer = SummaryWriter(run_dir)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    if args.mode == "bc":
        run_bc(args, env, finite, run_dir, writer, device, rng)
        writer.close()
        sys.exit(0)

    obs_dim, act_dim, task_dim = env.observation_space.shape[0], env.action_space.shape[0], env.task_dim
    actor = Actor(obs_dim, act_dim, task_dim, args.hidden).to(device)
    qf1, qf2 = (SoftQNetwork(obs_dim, act_dim, task_dim, args.hidden).to(device) for _ in range(2))
    qf1_target, qf2_target = (SoftQNetwork(obs_dim, act_dim, task_dim, args.hidden).to(device) for _ in range(2))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.lr)
    target_entropy = -float(act_dim)  # SAC's entropy constraint, -|A| (App. C.1)
    log_alpha = torch.zeros(1, requires_grad=True, device=device)
    a_optimizer = torch.optim.Adam([log_alpha], lr=args.lr)
    rb = ReplayBuffer(min(args.buffer_size, max(args.total_timesteps, 1)), obs_dim, act_dim, task_dim)
    nets = {"actor": actor, "qf1": qf1, "qf2": qf2, "qf1_target": qf1_target, "qf2_target": qf2_target}
    opts = {"q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer, "a_optimizer": a_optimizer}
    global_step, start_iteration = 0, 0
    if ckpt is not None:
        for k, m in (nets | opts).items():
            m.load_state_dict(ckpt[k])
        with torch.no_grad():
            log_alpha.copy_(ckpt["log_alpha"])
        rb.load(ckpt["buffer"])
        rb.ep_start = rb.ptr  # the interrupted episode ends where it was cut; a new one starts
        rng.bit_generator.state = ckpt["np_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        global_step, start_iteration = ckpt["global_step"], ckpt["iteration"] + 1
        print(f"resumed from {args.resume} at step {global_step} (the interrupted episode restarts)")

    n_iterations = -(-args.total_timesteps // args.eval_every)
    candidates_fixed = env.train_tasks if finite else None
    task = command_tasks(env, finite, 1, rng)[0]
    env.set_task(task)
    obs, _ = env.reset(seed=args.seed + global_step)
    ep_return, ep_len, start_time, start_step = 0.0, 0, time.time(), global_step
    interrupted = []  # Ctrl-C ends the run after the current step; a second Ctrl-C kills it at once
    signal.signal(signal.SIGINT, lambda *_: (interrupted.append(1), signal.signal(signal.SIGINT, signal.SIG_DFL)))
    for iteration in range(start_iteration, n_iterations):
        times = {"collect": 0.0, "update": 0.0, "relabel": 0.0}
        grad_steps, it_stats = 0, {}
        while global_step < min((iteration + 1) * args.eval_every, args.total_timesteps) and not interrupted:
            # ----- collect one step; the time limit truncates without a terminal (critics bootstrap through it)
            t0 = time.perf_counter()
            if global_step < args.learning_starts:
                action = rng.uniform(-1, 1, act_dim).astype(np.float32)
            else:
                with torch.no_grad():
                    a, _ = actor.sample(torch.as_tensor(obs, device=device)[None],
                                        torch.as_tensor(task, dtype=torch.float32, device=device)[None])
                action = a[0].cpu().numpy()
            next_obs, reward, terminated, truncated, info = env.step(action)
            rb.add(obs, action, reward, next_obs, terminated, task, terminated or truncated)
            obs, ep_return, ep_len, global_step = next_obs, ep_return + reward, ep_len + 1, global_step + 1
            if terminated or truncated:
                writer.add_scalar("charts/episodic_return", ep_return, global_step)
                writer.add_scalar("charts/episodic_length", ep_len, global_step)
                task = command_tasks(env, finite, 1, rng)[0]
                env.set_task(task)
                obs, _ = env.reset()
                ep_return, ep_len = 0.0, 0
            times["collect"] += time.perf_counter() - t0
            if global_step < args.learning_starts:
                continue

            # ALGO LOGIC: training (Alg. 2: sample a minibatch, relabel it, one SAC step)
            for _ in range(args.updates_per_step):
                t0 = time.perf_counter()
                idx = rng.integers(rb.size, size=args.batch_size)
                batch = {k: getattr(rb, k)[idx] for k in ("obs", "act", "next_obs", "task", "rew", "term")}
                t_sample = time.perf_counter()
                if args.relabel == "none":
                    b_task, b_rew, b_term = batch["task"], batch["rew"], batch["term"]
                else:
                    if args.candidates == "next_states":
                        cands = env.achieved_task(batch["next_obs"], batch["task"])
                    else:
                        cands = candidates_fixed if candidates_fixed is not None else batch["task"]
                    if args.num_candidates is not None and args.num_candidates < len(cands):
                        cands = cands[rng.choice(len(cands), args.num_candidates, replace=False)]
                    last = global_step == min((iteration + 1) * args.eval_every, args.total_timesteps)
                    b_task, b_rew, b_term, stats = relabel(args.relabel, batch, env, rb, idx, cands, actor, qf1,
                                                          args, rng, device, with_stats=last)
                    it_stats |= stats
                t1 = time.perf_counter()
                times["relabel"] += t1 - t_sample
                t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)
                o, a, o2, p, r, d = (t(batch["obs"]), t(batch["act"]), t(batch["next_obs"]), t(b_task), t(b_rew),
                                     t(b_term))
                alpha = log_alpha.exp().detach()
                with torch.no_grad():  # soft Bellman target, bootstrapping through time-limit truncations
                    a2, logp2 = actor.sample(o2, p)
                    q_next = torch.min(qf1_target(o2, p, a2), qf2_target(o2, p, a2)) - alpha * logp2
                    y = r + args.gamma * (1.0 - d) * q_next
                q1, q2 = qf1(o, p, a), qf2(o, p, a)
                qf_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
                q_optimizer.zero_grad()
                qf_loss.backward()
                if args.grad_clip:
                    nn.utils.clip_grad_norm_(list(qf1.parameters()) + list(qf2.parameters()), args.grad_clip)
                q_optimizer.step()

                pi, logp = actor.sample(o, p)
                actor_loss = (alpha * logp - torch.min(qf1(o, p, pi), qf2(o, p, pi))).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
                if args.grad_clip:
                    nn.utils.clip_grad_norm_(actor.parameters(), args.grad_clip)
                actor_optimizer.step()
                alpha_loss = -(log_alpha.exp() * (logp.detach() + target_entropy)).mean()
                a_optimizer.zero_grad()
                alpha_loss.backward()
                a_optimizer.step()
                with torch.no_grad():
                    for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                        for w, w_t in zip(net.parameters(), target.parameters()):
                            w_t.lerp_(w, args.tau)
                times["update"] += time.perf_counter() - t1 + (t_sample - t0)
                grad_steps += 1

        if interrupted:
            print(f"interrupted at step {global_step}: finished iterations are in {run_dir}/eval.jsonl and "
                  "checkpoint.pt (continue with --resume)")
            break

        # TRY NOT TO MODIFY: evaluation, logging, checkpoint
        t0 = time.perf_counter()
        frames = [] if args.capture_video else None
        test, train = env.test_tasks[: args.num_eval_tasks], env.train_tasks[: args.num_eval_tasks]
        ret, succ = evaluate_policy(eval_env, torch_policy(actor, device), test, args.seed + 10_000, frames)
        ret_train, _ = evaluate_policy(eval_env, torch_policy(actor, device), train, args.seed + 20_000)
        times["eval"] = time.perf_counter() - t0
        if frames:
            envs.save_video(frames, os.path.join(run_dir, "videos", f"eval_{global_step}.gif"))
        sps = int((global_step - start_step) / (time.time() - start_time))
        record = {"iteration": iteration, "env_steps": global_step, "wall_time": time.time(), "eval/return": ret,
                  "eval/return_train_tasks": ret_train, "grad_steps": grad_steps,
                  **{f"time/{k}": v for k, v in times.items()},
                  "time/per_grad_step": (times["update"] + times["relabel"]) / max(grad_steps, 1)}
        if succ is not None:
            record["eval/success_rate"] = succ
        record |= it_stats  # relabel/* of the iteration's last minibatch
        if grad_steps:
            record |= {"losses/qf_loss": qf_loss.item(), "losses/actor_loss": actor_loss.item(),
                       "losses/alpha": alpha.item(), "losses/qf1_values": q1.mean().item()}
        for key, value in record.items():
            if "/" in key:
                writer.add_scalar(key, value, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if args.save_model:
            save_atomic({**{k: m.state_dict() for k, m in (nets | opts).items()}, "log_alpha": log_alpha.detach(),
                         "buffer": rb.state(), "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                         "global_step": global_step, "iteration": iteration, "args": asdict(args)},
                        os.path.join(run_dir, "checkpoint.pt"))
        eta = (args.total_timesteps - global_step) / max(sps, 1)
        print(f"it {iteration + 1}/{n_iterations} step {global_step}/{args.total_timesteps} SPS {sps} "
              f"eval return {ret:.2f}" + (f" success {succ:.2f}" if succ is not None else "")
              + f" | {1000 * record['time/per_grad_step']:.1f} ms/grad step ETA {eta / 60:.1f} min", flush=True)

    if args.save_dataset and not interrupted:
        save_dataset(args.save_dataset, env, actor, args, finite, rng, device)
    env.close()
    eval_env.close()
    writer.close()
