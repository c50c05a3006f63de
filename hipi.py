"""HIPI: Hindsight Inference for Policy Improvement — relabeling experience with inverse RL.

Paper: B. Eysenbach, X. Geng, S. Levine, R. Salakhutdinov, "Rewriting History with Inverse RL: Hindsight
Inference for Policy Improvement", NeurIPS 2020 (https://arxiv.org/abs/2002.11089). Authors' code:
google-research/google-research, folder hipi/ (TF-Agents 0.5.0 SAC; relabelling_replay_buffer.py, train_eval.py).

Equation numbers are the paper's own:
  Eq. 7  optimal relabeling of a trajectory   q(psi | tau)  ∝ exp(R(tau, psi) - log Z(psi))  (used by HIPI-BC)
  Eq. 8  relabeling of a transition           q(psi | s, a) ∝ exp(Q(s, a, psi) - log Z(psi)) (used by HIPI-RL)
  §5.1   log Z(psi) estimated by Monte Carlo from the samples of one batch
  Alg. 1 approximate inverse RL, Alg. 2 HIPI-RL (off-policy RL), Alg. 3 HIPI-BC (behavior cloning).

--mode rl (Alg. 2): task-conditioned SAC (the task vector is concatenated to the observation). Every sampled
minibatch is relabeled at SAMPLE time, as in the authors' relabelling_replay_buffer.py. For the B transitions and
the K tasks of the task set (the batch's own B commanded tasks, or every task of a finite task list) one batched
pass builds the B x K logit matrix
    L[i, j] = r(s_i, a_i, psi_j) - log pi(a_i | s_i, psi_j) + gamma (1 - d_ij) Q1(s'_i, a', psi_j),
    a' ~ pi(. | s'_i, psi_j)                                      (one-step soft-Q estimate, Eq. 8)
subtracts from each task column its log-sum-exp over the batch (log Z, §5.1), samples one index j per row from
the row's softmax, turns j into the new task (--candidates: task j, or the goal reached by state / next state j
of the batch), keeps the original task on the other rows (App. C.1: 50 % relabeled), and recomputes rewards and
terminals with env.evaluate. Baselines: --relabel random (a uniform index), final and future (HER, Andrychowicz
et al. 2017, as the authors store it; goal families only), none (plain multi-task SAC); --no-partition drops
log Z (the paper's Fig. 8 ablation).
--mode bc (Alg. 3): load trajectories saved by --mode rl --save-dataset, discard their task labels, relabel
each trajectory by Eq. 7 over candidate tasks, fit a task-conditioned policy by behavior cloning, and compare it
with task-agnostic behavior cloning on the test tasks.

Quick start (point-robot, learning visible within minutes), then the paper's comparisons at reduced size (the
exact multi-seed commands are in benchmarks/hipi.md, the equation-to-code map in docs/hipi.md):
    python hipi.py
    python hipi.py --env four-rooms --relabel hipi      # and --relabel random | final | future | none
    python hipi.py --env point-robot --save-dataset runs/point-robot.npz
    python hipi.py --mode bc --env point-robot --dataset runs/point-robot.npz
The paper's Fig. 5 comparison, reduced to sparse-point-robot (3 seeds):
    python benchmarks/run.py hipi.py --env sparse-point-robot --name hipi-sparse-point-robot --seeds 1 2 3 \\
      --variant hipi= --variant random="--relabel random" --variant final="--relabel final" \\
      --variant future="--relabel future" --variant none="--relabel none"
"""

import contextlib
import io
import json
import math
import os
import random
import signal
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal, NoReturn, Optional

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
    """environment steps of --mode rl (None: the env's default, listed at the top of --help)"""
    resume: Optional[str] = None
    """continue --mode rl from this checkpoint.pt or run directory (networks, optimizers, buffer, RNG states)"""
    run_dir: Optional[str] = None
    """output directory (default runs/{env}__{exp_name}__{seed}__{unix time}; on --resume the checkpoint's)"""

    # Algorithm specific arguments
    mode: Literal["rl", "bc"] = "rl"
    """rl: HIPI-RL (Alg. 2) on SAC; bc: HIPI-BC (Alg. 3) on a dataset saved by --mode rl --save-dataset"""
    relabel: Literal["hipi", "random", "final", "future", "none"] = "hipi"
    """hipi: inverse-RL relabeling (Eq. 8, Eq. 7 in bc mode); random: a uniform index instead of Eq. 8's; final /
    future: HER as the authors' code (goal families): each finished episode stored with 1 copy relabeled to its
    final achieved goal / 4 copies relabeled to goals achieved later in it; none: no relabeling"""
    relabel_fraction: float = 0.5
    """hipi / random: fraction of each minibatch given a relabeled task; the rest keep the commanded task (App. C.1,
    App. D: 100 % was worse). The authors' code names the complement relabel_prob. HER's is fixed by its copies."""
    no_partition: bool = False
    """drop the log-partition term log Z(psi) from the relabeling logits (the paper's Fig. 8 ablation)"""
    candidates: Literal["tasks", "states", "next_states", "scored_next_states"] = "tasks"
    """what a row's sampled index j becomes (the authors' candidate_task_type; the logits always run over the
    batch's commanded tasks, or the finite task list): tasks = task j (the authors' README); states / next_states
    = the goal achieved by state / next state j of the batch (the authors' code default: states). Not the
    authors': scored_next_states scores the goals the batch's next states achieve themselves (goal families)"""
    num_candidates: Optional[int] = None
    """tasks in Eq. 8's logits per minibatch: default all (the batch's B tasks, or the finite task list); fewer =
    a random subset, cost O(B x K)"""
    learning_starts: Optional[int] = None
    """environment steps with uniform random actions before the first update (authors: 10,000)"""
    batch_size: Optional[int] = None
    """minibatch size B (default: per env; the relabeler costs O(B^2) network evaluations)"""
    hidden: Optional[int] = None
    """width of the two hidden layers of actor and critics (default: per env)"""
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
    target_entropy: Optional[float] = None
    """SAC's entropy target (default -|A|/2: tf_agents 0.5.0's, which the authors' train_eval.py keeps; App. C.1
    writes -|A|)"""
    grad_clip: Optional[float] = None
    """clip the global gradient norm of each network, 0 = off (App. C.1: 1.0 was needed on Sawyer; None: per env)"""
    clip_critic: Optional[tuple[float, float]] = None
    """LO HI: squash every critic's output into (LO, HI) by LO + (HI - LO) sigmoid(x), the authors' train_eval.py
    clip_critic (their README: -1000 0 on the dm_control reacher and finger tasks); 0 0 = off (None: per env)"""
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


# ---------------------------------------------------------------------------------------------------- networks
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class SoftQNetwork(nn.Module):
    """Q(s, a, psi): the task is concatenated to the observation (App. C.1). With an output range (lo, hi) other than
    (0, 0) the last layer's output x becomes lo + (hi - lo) sigmoid(x), as the authors' clip_critic (train_eval.py's
    output_activation_fn of the critic network; App. C.11 does the same on the desk task)."""

    def __init__(self, obs_dim, act_dim, task_dim, hidden, output_range=(0.0, 0.0)):
        super().__init__()
        self.net = mlp(obs_dim + task_dim + act_dim, 1, hidden)
        self.lo, self.hi = (float(v) for v in output_range)

    def forward(self, obs, task, act):
        q = self.net(torch.cat([obs, task, act], -1)).squeeze(-1)
        return q if self.lo == self.hi else self.lo + (self.hi - self.lo) * torch.sigmoid(q)


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


# ----------------------------------------------------------------------------------------------- replay buffer
class ReplayBuffer:
    """Preallocated transitions (s, a, r, s', terminal) with the task they are labeled with, first in first out."""

    FIELDS = ("obs", "act", "rew", "next_obs", "term", "task")

    def __init__(self, capacity, obs_dim, act_dim, task_dim):
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.task = np.zeros((capacity, task_dim), np.float64)
        self.rew = np.zeros(capacity, np.float64)
        self.term = np.zeros(capacity, bool)

    def add(self, obs, act, rew, next_obs, term, task):
        i = self.ptr
        self.obs[i], self.act[i], self.rew[i], self.next_obs[i], self.term[i], self.task[i] = (
            obs, act, rew, next_obs, term, task)
        self.ptr, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def add_rows(self, rows):
        """Store rows (a dict of equally long arrays, one per field) in order."""
        for row in zip(*(rows[k] for k in self.FIELDS)):
            self.add(*row)

    def sample(self, idx):
        return {k: getattr(self, k)[idx] for k in ("obs", "act", "next_obs", "task", "rew", "term")}

    def state(self):
        return {k: getattr(self, k)[: self.size] for k in self.FIELDS} | {
            "capacity": self.capacity, "ptr": self.ptr, "size": self.size}

    def load(self, state):
        """Restore a stored buffer; one of another capacity (a resumed run given a new length) is laid out oldest
        first, as a run of this length would have stored it."""
        n, ptr = state["size"], state["ptr"]
        if state["capacity"] == self.capacity:
            order, self.ptr = np.arange(n), ptr
        else:
            order = (ptr + np.arange(n)) % n if n == state["capacity"] else np.arange(n)
            order = order[max(0, n - self.capacity):]
            self.ptr = len(order) % self.capacity
        for k in self.FIELDS:
            getattr(self, k)[: len(order)] = state[k][order]
        self.size = len(order)


# ------------------------------------------------------------------- HIPI-RL (Alg. 2) and its relabeler (Alg. 1)
def command_tasks(env, finite, n, rng):
    """Tasks commanded during collection: uniformly from a finite task list, otherwise from the task prior."""
    return env.train_tasks[rng.integers(len(env.train_tasks), size=n)] if finite else env.sample_tasks(n, rng)


def relabel_logits(actor, qf1, obs, act, next_obs, candidates, rew, term, gamma):
    """Alg. 1 (blue line) / Eq. 8, as the authors compute it: L[i, j] = r(s_i, a_i, psi_j) - log pi(a_i | s_i, psi_j)
    + gamma (1 - d_ij) Q1(s'_i, a', psi_j) with a' ~ pi(. | s'_i, psi_j), a one-step estimate of the soft Q-value of
    transition i under candidate task j (Eq. 8 writes the soft Q alone; the -log pi term is the authors' code).
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


def relabel_log_probs(logits, *, partition=True):
    """Eq. 7 / Eq. 8 in log space: log q(psi_j | row i) = log softmax_j (L[i, j] - log Z(psi_j)), each row a
    distribution over the K candidates; --no-partition drops log Z."""
    if partition:
        logits = logits - log_partition(logits)[None]
    return torch.log_softmax(logits, dim=1)


def gumbel_max(log_q, rng):
    """One candidate index per row, j ~ Categorical(exp(log_q[i])): argmax_j (log_q[i, j] + Gumbel noise)."""
    gumbel = -np.log(-np.log(rng.random(log_q.shape)))
    return np.argmax(log_q + gumbel, axis=1)


def relabel(kind, batch, env, fixed_tasks, actor, qf1, args, rng, device, *, with_stats=True):
    """Relabel a sampled minibatch (Alg. 2, as the authors' _soft_relabel): Eq. 8's logits of every transition under
    every task of the task set (the batch's commanded tasks, or the finite task list), one index j sampled per row,
    and for a --relabel-fraction of the rows the new task that index stands for (--candidates); rewards and
    terminals recomputed with env.evaluate. Returns (tasks, rew, term, stats); the diagnostics in stats cost about
    a tenth of the relabeling at batch 32, so the loop asks for them once per iteration."""
    obs, act, next_obs, tasks = batch["obs"], batch["act"], batch["next_obs"], batch["task"]
    if kind in ("none", "final", "future"):  # no relabeling at sample time (HER relabels when an episode is stored)
        return tasks, batch["rew"], batch["term"], {}
    B, stats = len(obs), {}
    task_set = fixed_tasks if fixed_tasks is not None else tasks
    if args.candidates == "scored_next_states":  # this project's variant, not the authors': the goals the batch's
        task_set = env.achieved_task(next_obs, tasks)  # next states achieve are themselves the task set scored
    rows = np.arange(len(task_set))  # the batch row each task of the set came from
    if args.num_candidates is not None and args.num_candidates < len(task_set):
        rows = rng.choice(len(task_set), args.num_candidates, replace=False)
        task_set = task_set[rows]
    chosen = rng.random(B) < args.relabel_fraction  # the other rows keep their commanded task
    K = len(task_set)
    if kind == "hipi":
        # (K, B) rewards and terminals of every transition under every task of the set: one vectorized call
        r, d = env.evaluate(obs[None], act[None], next_obs[None], task_set[:, None])
        t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)
        with torch.no_grad():
            L = relabel_logits(actor, qf1, t(obs), t(act), t(next_obs), t(task_set), t(r.T), t(d.T), args.gamma)
            log_q = relabel_log_probs(L, partition=not args.no_partition).cpu().double().numpy()
            if with_stats:
                stats["relabel/mean_log_partition"] = log_partition(L).mean().item()
    else:  # the authors' "random": uniform logits, the same gathering
        log_q = np.full((B, K), -np.log(K))
    j = gumbel_max(log_q, rng)
    # only now does --candidates matter: the sampled index j becomes task j itself, or the goal that state j of the
    # batch achieves (the authors' gather after tf.random.categorical)
    if args.candidates in ("tasks", "scored_next_states"):
        new = task_set[j]
    else:
        new = env.achieved_task((obs if args.candidates == "states" else next_obs)[rows[j]], tasks)
    if with_stats:
        stats["relabel/entropy"] = float(-(np.exp(log_q) * log_q).sum(1).mean())
    tasks = np.where(chosen[:, None], new, tasks)
    if kind == "hipi" and args.candidates in ("tasks", "scored_next_states"):
        b = np.arange(B)  # env.evaluate's values for the new tasks are already in the K x B matrices
        rew, term = np.where(chosen, r[j, b], batch["rew"]), np.where(chosen, d[j, b], batch["term"])
    else:
        rew, term = env.evaluate(obs, act, next_obs, tasks)
    if with_stats:
        stats["relabel/fraction_changed"] = float(np.mean(np.any(tasks != batch["task"], axis=1)))
    return tasks, rew, term, stats


# ---- baselines and ablations (not part of Algorithm 1) ----
# --relabel random (uniform logits), --no-partition (Fig. 8) and --candidates scored_next_states (this project's
# variant) are one marked line each in the relabeler above; the HER baselines of Fig. 5 store relabeled copies.
HER_FUTURE_GOALS = 4  # the authors' num_future_states (App. C.1: "one of the next 4 states")


def her_relabel(kind, episode, env, rng):
    """HER (Andrychowicz et al. 2017) as the authors' GoalRelabellingReplayBuffer._add_batch with the README's
    keep_current_goal=True: once an episode of T transitions has ended, transition t is stored as commanded and
    with copies relabeled to the goal achieved at the episode's last step (final: 1 copy, so 1/2 of the stored
    transitions are relabeled) or at steps j ~ U{t, ..., T-1} drawn independently over the rest of the whole
    episode (future: 4 copies, 4/5 relabeled); their rewards and terminals are recomputed for the new goals. The
    goal of step j is the one its next state achieves (these families score the state reached; docs/hipi.md).
    episode: dict of (T, .) arrays; returns the rows to store, each transition followed by its copies."""
    T = len(episode["rew"])
    if kind == "final":
        at = np.full((T, 1), T - 1)
    else:
        at = rng.integers(np.arange(T)[:, None], T, size=(T, HER_FUTURE_GOALS))
    src = np.repeat(np.arange(T), at.shape[1])  # the transition each copy is made from
    goals = env.achieved_task(episode["next_obs"][at.ravel()], episode["task"][src])
    rew, term = env.evaluate(episode["obs"][src], episode["act"][src], episode["next_obs"][src], goals)
    copies = {k: episode[k][src] for k in ("obs", "act", "next_obs")} | {"task": goals, "rew": rew, "term": term}
    order = np.argsort(np.concatenate([np.arange(T) * (at.shape[1] + 1), np.arange(T * at.shape[1]) + src + 1]),
                       kind="stable")
    return {k: np.concatenate([episode[k], copies[k]])[order] for k in ReplayBuffer.FIELDS}


def sac_update(nets, opts, log_alpha, target_entropy, o, a, r, o2, d, p, args):
    """One SAC gradient step on the relabeled minibatch (Alg. 2's last line), in tf_agents 0.5.0's order: twin soft
    critics, the actor against the updated critics, then the entropy temperature on log alpha with a fresh action
    of the updated actor; Polyak averaging of the target critics. Returns the tensors that are logged."""
    actor, qf1, qf2, qf1_target, qf2_target = (nets[k] for k in ("actor", "qf1", "qf2", "qf1_target", "qf2_target"))
    alpha = log_alpha.exp().detach()
    with torch.no_grad():  # soft Bellman target, bootstrapping through time-limit truncations
        a2, logp2 = actor.sample(o2, p)
        q_next = torch.min(qf1_target(o2, p, a2), qf2_target(o2, p, a2)) - alpha * logp2
        y = r + args.gamma * (1.0 - d) * q_next
    q1, q2 = qf1(o, p, a), qf2(o, p, a)
    qf_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
    opts["q_optimizer"].zero_grad()
    qf_loss.backward()
    if args.grad_clip:  # one global norm per network; tf_agents clips each weight tensor's norm separately
        nn.utils.clip_grad_norm_(list(qf1.parameters()) + list(qf2.parameters()), args.grad_clip)
    opts["q_optimizer"].step()

    pi, logp = actor.sample(o, p)
    actor_loss = (alpha * logp - torch.min(qf1(o, p, pi), qf2(o, p, pi))).mean()
    opts["actor_optimizer"].zero_grad()
    actor_loss.backward()
    if args.grad_clip:
        nn.utils.clip_grad_norm_(actor.parameters(), args.grad_clip)
    opts["actor_optimizer"].step()
    with torch.no_grad():
        _, logp_new = actor.sample(o, p)
    alpha_loss = (log_alpha * (-logp_new - target_entropy)).mean()  # tf_agents: log alpha * (H(pi) - target)
    opts["a_optimizer"].zero_grad()
    alpha_loss.backward()
    opts["a_optimizer"].step()
    with torch.no_grad():
        for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
            for w, w_t in zip(net.parameters(), target.parameters()):
                w_t.lerp_(w, args.tau)
    return {"qf_loss": qf_loss, "actor_loss": actor_loss, "alpha": alpha, "qf1_values": q1.mean()}


# ------------------------------------------------------------------------------------ HIPI-BC (Alg. 3)
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
    with np.load(args.dataset) as f:  # the stored task labels are never read: Alg. 3 discards them
        data = {k: f[k] for k in ("obs", "act", "next_obs", "length")}
    t0 = time.time()
    candidates = env.train_tasks if finite else env.sample_tasks(args.bc_candidates, rng)
    R, lengths = trajectory_returns(env, data, candidates)
    R[:, 0] += args.first_task_reward_bias * lengths[:, 0]  # Fig. 8: one task's rewards on a different scale
    if args.relabel == "hipi":
        log_q = relabel_log_probs(torch.as_tensor(R), partition=not args.no_partition).numpy()
    else:
        log_q = np.full(R.shape, -np.log(len(candidates)))
    k = gumbel_max(log_q, rng)
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
        save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), {
            "env": args.env, "args": asdict(args), "bc_task": hipi_net.state_dict(),
            "bc_agnostic": agn_net.state_dict(), "candidates": candidates})
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


# -------------------------------------------------------------------------------------------------- evaluation
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


# ---------------------------------------------------------------------------------------------------- plumbing
# Per-env defaults. Batch 32 is the paper's (App. C.1) and the authors' README; hidden widths are App. C.1's
# (32 for 2-D navigation, 256 for the quadruped, 64 for the others); 10,000 initial random steps are the authors'.
# four-rooms runs the authors' num_iterations (1M steps: the README's 2-D navigation command sets none).
# The 2-D point families of the other papers (horizon 20) get the 2-D navigation networks and 2,000 initial steps
# (100 episodes). The dm_control goal tasks: the README's commands (batch 32, one train step per env step,
# clip_critic (-1000, 0) on finger and both reachers; the margins 0.01 and the quadruped's goal_radius 0.3 are the
# families' own defaults), no gradient clipping (App. C.1 needed it on Sawyer and Jaco only), the authors'
# num_iterations (1M steps); horizons are the families' (1000, the quadruped 300: App. C.3-C.5).
DEFAULTS = {"total_timesteps": 1_000_000, "learning_starts": 10_000, "eval_every": 10_000, "batch_size": 256,
            "hidden": 256, "grad_clip": 0.0, "clip_critic": (0.0, 0.0)}  # the authors' train_eval.py defaults
NAVIGATION = {"learning_starts": 2_000, "eval_every": 2_000, "batch_size": 32, "hidden": 32}
SAWYER = {"total_timesteps": 1_000_000, "learning_starts": 10_000, "eval_every": 10_000, "batch_size": 32,
          "hidden": 64, "grad_clip": 1.0}
DM_CONTROL = {**SAWYER, "grad_clip": 0.0, "clip_critic": (-1000.0, 0.0)}
PAPER_DEFAULTS = {
    "four-rooms": {**NAVIGATION, "total_timesteps": 1_000_000, "learning_starts": 10_000, "eval_every": 10_000},
    "point-robot": {**NAVIGATION, "total_timesteps": 30_000},
    "sparse-point-robot": {**NAVIGATION, "total_timesteps": 50_000},
    "four-corners": {**NAVIGATION, "total_timesteps": 30_000},
    "sawyer-reach": SAWYER,
    "sawyer-reach-margin": SAWYER,
    "walker-linear": {**SAWYER, "grad_clip": 0.0},
    "dm-reacher": DM_CONTROL,
    "dm-reacher-discrete": DM_CONTROL,
    "dm-finger": DM_CONTROL,
    "dm-quadruped": {**DM_CONTROL, "hidden": 256, "clip_critic": (0.0, 0.0)},  # README: no clip_critic here
}
# the paper's "discrete" task sets: the whole list is the candidate set (the authors' task_distribution.tasks)
FINITE_TASK_LISTS = ("four-corners", "dm-reacher-discrete")
# CPU seconds per 1,000 training env steps (one env step + one gradient step) with --relabel hipi at the env's
# defaults, one torch thread, measured on this project's 2-core development machine under a load average of ~7
# (all methods measured 3-8 s there, none consistently cheaper): the cost line of --help, +-50 %.
# The dm_control families: the collect + update + relabel seconds of a 1,500-step run at their defaults (500 random
# steps, then 1,000 steps with a gradient step each), one torch thread, load average ~6.5.
SECONDS_PER_1K_STEPS = {"point-robot": 5, "sparse-point-robot": 5, "four-corners": 5, "four-rooms": 5,
                        "dm-reacher": 10, "dm-reacher-discrete": 6, "dm-finger": 9, "dm-quadruped": 20}
QUICK = {"point-robot": "python hipi.py --env point-robot --total-timesteps 6000"}

CHECKPOINT_FORMAT = 1
BEFORE_FIELD = {"clip_critic": (0.0, 0.0)}  # what a field did in checkpoints written before it existed
SCRIPT = os.path.basename(__file__)
GIVEN_ON_RESUME = ("total_timesteps", "cuda", "capture_video", "run_dir", "save_model", "save_dataset",
                   "dataset_episodes")


def fail(message: str) -> NoReturn:
    """A bad input: one line on stderr and exit code 2, as tyro does for a malformed flag."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def resolve(args: Args) -> Args:
    """Fill every None default from the env's entry of PAPER_DEFAULTS."""
    for k, v in {**DEFAULTS, **PAPER_DEFAULTS.get(args.env, {})}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def names_achieved_goals(env) -> bool:
    """Whether the family names the goal a state achieves (env.achieved_task, which HER and the state candidates
    need). dm-reacher-discrete defines it only to refuse: its tasks are one-hot choices among fixed goals."""
    if not hasattr(env, "achieved_task"):
        return False
    try:
        env.achieved_task(np.zeros(env.observation_space.shape, np.float32), env.train_tasks[0])
    except NotImplementedError:
        return False
    return True


def check_args(args: Args, env) -> None:
    """Every numeric and choice argument, before anything runs: one `error:` line and exit code 2 otherwise."""
    if not 0 <= args.seed < 2**31:
        fail(f"--seed {args.seed}: must be in [0, 2**31)")
    ranges = {  # field: (lowest allowed, highest allowed, whether the lowest is excluded)
        "total_timesteps": (1, None, False), "learning_starts": (0, None, False), "eval_every": (1, None, False),
        "batch_size": (1, None, False), "hidden": (1, None, False), "buffer_size": (1, None, False),
        "updates_per_step": (1, None, False), "num_eval_tasks": (1, None, False), "dataset_episodes": (1, None, False),
        "bc_candidates": (1, None, False), "bc_patience": (1, None, False), "bc_max_epochs": (1, None, False),
        "bc_batch_size": (1, None, False), "lr": (0.0, None, True), "gamma": (0.0, 1.0, True),
        "tau": (0.0, 1.0, True), "grad_clip": (0.0, None, False), "relabel_fraction": (0.0, 1.0, False)}
    for field, (lo, hi, open_lo) in ranges.items():
        v = getattr(args, field)
        ok = math.isfinite(v) and (v > lo if open_lo else v >= lo) and (hi is None or v <= hi)
        if not ok:
            allowed = (f"{'(' if open_lo else '['}{lo:g}, {hi:g}]" if hi is not None
                       else f"{'> ' if open_lo else '>= '}{lo:g}")
            fail(f"{flag(field)} {v}: must be {'in ' if hi is not None else ''}{allowed}")
    if args.num_candidates is not None and args.num_candidates < 1:
        fail(f"--num-candidates {args.num_candidates}: must be >= 1 (or left out: all candidates)")
    if not 0.0 < args.bc_val_fraction < 1.0:
        fail(f"--bc-val-fraction {args.bc_val_fraction}: must be in (0, 1)")
    for field in ("first_task_reward_bias", "target_entropy"):
        if not math.isfinite(getattr(args, field)):
            fail(f"{flag(field)} {getattr(args, field)}: must be a finite number")
    lo, hi = args.clip_critic
    if not (math.isfinite(lo) and math.isfinite(hi) and (lo < hi or lo == hi == 0)):
        fail(f"--clip-critic {lo:g} {hi:g}: must be two finite numbers LO < HI (or 0 0: off)")
    if env.varies != "reward":
        fail(f"--env {args.env}: hipi.py relabels rewards, and {args.env} varies {env.varies}; it serves the families "
             f"whose tasks vary the reward only, e.g. {', '.join(PAPER_DEFAULTS)}")
    if args.mode == "rl" and args.relabel in ("none", "final", "future"):
        for field, default in (("candidates", "tasks"), ("num_candidates", None), ("relabel_fraction", 0.5)):
            if getattr(args, field) != default:
                fail(f"{flag(field)} {getattr(args, field)}: applies to --relabel hipi and random, not "
                     f"--relabel {args.relabel}" + (" (HER relabels 1/2 (final) or 4/5 (future) of what it stores)"
                                                    if field == "relabel_fraction" else ""))
    goal_only = args.relabel in ("final", "future") or (args.candidates != "tasks" and args.mode == "rl")
    if goal_only and not names_achieved_goals(env):
        what = f"--relabel {args.relabel}" if args.relabel in ("final", "future") else f"--candidates {args.candidates}"
        fail(f"{what}: needs a goal family (env.achieved_task); {args.env} has none: use --relabel hipi, random or "
             "none with --candidates tasks")
    if args.mode == "rl" and args.candidates in ("states", "next_states") and args.env in FINITE_TASK_LISTS:
        fail(f"--candidates {args.candidates}: the sampled index would pick a batch row's state, but {args.env}'s "
             "logits run over its finite task list, not over the batch; use --candidates tasks")
    if args.mode == "bc":
        if args.relabel not in ("hipi", "random"):
            fail(f"--relabel {args.relabel}: --mode bc relabels with --relabel hipi or random")
        if args.dataset is None or not os.path.isfile(args.dataset):
            fail(f"--dataset {args.dataset}: --mode bc needs the .npz written by --mode rl --save-dataset")
        try:
            with np.load(args.dataset) as f:
                shapes = f["obs"].shape[2:], f["act"].shape[2:]
        except Exception as e:
            fail(f"--dataset {args.dataset}: not a dataset of --save-dataset ({type(e).__name__})")
        if shapes != (env.observation_space.shape, env.action_space.shape):
            fail(f"--dataset {args.dataset}: does not hold {args.env} trajectories (obs/action shapes differ)")


def parse_args(argv: list[str], description: str) -> Args:
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


def help_text(env_name: str) -> str:
    """--help's description: the resolved defaults of --env and what a run of that size costs."""
    head = __doc__.split("\n\n")[0]
    show = lambda v: "off" if v in (0.0, (0.0, 0.0)) else f"({v[0]:g}, {v[1]:g})" if isinstance(v, tuple) else v
    if env_name not in envs.names():
        rows = [f"  {name}: " + ", ".join(f"{k}={show(v)}" for k, v in {**DEFAULTS, **d}.items())
                for name, d in PAPER_DEFAULTS.items()]
        return head + "\n\nper-env defaults (choose one with --env):\n" + "\n".join(rows)
    d = {**DEFAULTS, **PAPER_DEFAULTS.get(env_name, {})}
    text = textwrap.fill(f"paper defaults for --env {env_name}: " + " ".join(f"{k}={show(v)}" for k, v in d.items())
                         + " target_entropy=-|A|/2"
                         + (" (the whole finite task list is the task set)" if env_name in FINITE_TASK_LISTS else ""),
                         110)
    if env_name in SECONDS_PER_1K_STEPS:
        minutes = SECONDS_PER_1K_STEPS[env_name] * d["total_timesteps"] / 1000 / 60
        text += (f"\n\na paper-size run costs ~{minutes / 60:.2g} h (~{minutes:.0f} min) on a 2-core CPU (measured: "
                 "CPU seconds per 1,000 env steps of --relabel hipi at these defaults, one torch thread)")
    else:
        text += f"\n\nthe cost of a {d['total_timesteps']:,}-step run on --env {env_name} was not measured"
    if env_name in QUICK:
        text += f"; learning shows within minutes with: {QUICK[env_name]}"
    return head + "\n\n" + text


def typed_fields(argv: list[str]) -> set[str]:
    """The Args fields named on the command line (--flag, --flag=v, --no-flag)."""
    names = {f.name for f in fields(Args)}
    typed = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=")[0].replace("-", "_")
            typed.add(name[3:] if name.startswith("no_") and name[3:] in names else name)
    return typed


def parse_command_line(argv: list[str]):
    """argv -> Args (merged with a --resume checkpoint's), the training and evaluation envs, whether the task list
    is finite, and the checkpoint (or None). Every bad input ends here with one line and exit code 2."""
    env_name = Args.env
    for i, token in enumerate(argv):
        if token == "--env" and i + 1 < len(argv):
            env_name = argv[i + 1]
        elif token.startswith("--env="):
            env_name = token.split("=", 1)[1]
    args = parse_args(argv, help_text(env_name))
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        path = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
        typed, stored = typed_fields(argv), ckpt["args"]
        for f in fields(Args):
            # a checkpoint written before --clip-critic existed trained unclipped critics
            name, given, old = f.name, getattr(args, f.name), stored.get(f.name, BEFORE_FIELD.get(f.name))
            if name == "resume" or (name in typed and given == old):
                continue
            if name not in typed:
                setattr(args, name, old)
            elif name == "env":
                fail(f"--resume {path}: written for --env {old}, not --env {given}")
            elif name in GIVEN_ON_RESUME:
                print(f"warning: {flag(name)} {given} (the checkpoint's run had {old}): using {given}", file=sys.stderr)
            else:
                print(f"warning: {flag(name)} {given} differs from the checkpoint's {old}: "
                      f"using the checkpoint's {old}", file=sys.stderr)
                setattr(args, name, old)
        if "run_dir" not in typed:
            args.run_dir = os.path.dirname(os.path.abspath(path))
    resolve(args)
    if args.env not in envs.names():
        fail(f"--env {args.env}: unknown; choose one of {', '.join(envs.names())}")
    try:  # the envs' own seeds never matter here: every reset below passes a seed or a stored RNG state
        env = envs.make(args.env)
        eval_env = envs.make(args.env, **({"render_mode": "rgb_array"} if args.capture_video else {}))
    except ValueError as e:
        fail(f"--env {args.env}: {e}")
    if args.target_entropy is None:  # tf_agents 0.5.0 SacAgent's default, kept by the authors' train_eval.py
        args.target_entropy = -env.action_space.shape[0] / 2
    check_args(args, env)
    return args, env, eval_env, args.env in FINITE_TASK_LISTS, ckpt


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
    if "global_step" not in ckpt:
        fail(f"--resume {path}: a --mode bc checkpoint; --resume continues --mode rl runs")
    return ckpt


def keep_rows_up_to(path: str, iteration: int) -> None:
    """Rewrite eval.jsonl with only the rows of iterations <= `iteration` (temp file + rename): rows a crashed run
    wrote after its last checkpoint are written again, identically, by the resumed run."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip().startswith("{") and line.strip().endswith("}")
                and json.loads(line)["iteration"] <= iteration]
    with open(path + ".tmp", "w") as f:
        f.writelines(rows)
    os.replace(path + ".tmp", path)


def start_episode(env, task, seed=None):
    """Set the task and reset; returns the first observation and the record that replays the episode on resume."""
    env.set_task(task)
    record = {"task": task, "seed": seed, "rng": env.np_random.bit_generator.state, "actions": []}
    obs, _ = env.reset(seed=seed)
    return obs, record


def replay_episode(env, record):
    """Bring `env` back to where a checkpoint left it mid-episode: the episode's reset and actions again (the env
    is deterministic given its RNG state). Returns the last observation and the episode's transitions so far."""
    env.set_task(record["task"])
    env.np_random.bit_generator.state = record["rng"]
    obs, _ = env.reset(seed=record["seed"])
    steps = []
    for action in record["actions"]:
        next_obs, r, term, _, _ = env.step(action)
        steps.append((obs, action, r, next_obs, term, record["task"]))
        obs = next_obs
    return obs, steps


if __name__ == "__main__":
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    writer, env, eval_env, last_checkpoint = None, None, None, None
    try:
        args, env, eval_env, finite, ckpt = parse_command_line(sys.argv[1:])
        run_dir = args.run_dir or f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
        ckpt_path = os.path.join(run_dir, "checkpoint.pt")
        os.makedirs(run_dir, exist_ok=True)
        if os.path.exists(ckpt_path + ".tmp"):
            os.remove(ckpt_path + ".tmp")
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump(asdict(args), f, indent=2)
        print("resolved args: " + " ".join(f"{k}={v}" for k, v in asdict(args).items()))
        writer = SummaryWriter(run_dir, purge_step=None if ckpt is None else ckpt["global_step"] + 1)
        if ckpt is None:
            writer.add_text("hyperparameters",
                            "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

        # TRY NOT TO MODIFY: seeding
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        rng = np.random.default_rng(args.seed)
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

        if args.mode == "bc":
            run_bc(args, env, finite, run_dir, writer, device, rng)
            raise SystemExit(0)

        obs_dim, act_dim, task_dim = env.observation_space.shape[0], env.action_space.shape[0], env.task_dim
        actor = Actor(obs_dim, act_dim, task_dim, args.hidden).to(device)
        qf1, qf2, qf1_target, qf2_target = (SoftQNetwork(obs_dim, act_dim, task_dim, args.hidden, args.clip_critic)
                                            .to(device) for _ in range(4))
        qf1_target.load_state_dict(qf1.state_dict())
        qf2_target.load_state_dict(qf2.state_dict())
        nets = {"actor": actor, "qf1": qf1, "qf2": qf2, "qf1_target": qf1_target, "qf2_target": qf2_target}
        opts = {"q_optimizer": torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.lr),
                "actor_optimizer": torch.optim.Adam(actor.parameters(), lr=args.lr)}
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        opts["a_optimizer"] = torch.optim.Adam([log_alpha], lr=args.lr)
        her = args.relabel in ("final", "future")  # HER stores each finished episode with relabeled copies
        rows_per_step = {"final": 2, "future": 1 + HER_FUTURE_GOALS}.get(args.relabel, 1)
        rb = ReplayBuffer(min(args.buffer_size, rows_per_step * args.total_timesteps), obs_dim, act_dim, task_dim)
        fixed_tasks = env.train_tasks if finite else None
        global_step, start_iteration, wall_before = 0, 0, 0.0
        if ckpt is None:
            task = command_tasks(env, finite, 1, rng)[0]
            obs, episode = start_episode(env, task, seed=args.seed)
            steps = []  # the transitions of the episode so far
        else:
            for k, m in (nets | opts).items():
                m.load_state_dict(ckpt[k])
            with torch.no_grad():
                log_alpha.copy_(ckpt["log_alpha"])
            rb.load(ckpt["buffer"])
            rng.bit_generator.state = ckpt["np_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            global_step, start_iteration, wall_before = ckpt["global_step"], ckpt["iteration"] + 1, ckpt["wall_time"]
            episode = ckpt["episode"]
            task = episode["task"]
            obs, steps = replay_episode(env, episode)
            episode["actions"] = list(episode["actions"])
            env.np_random.bit_generator.state = ckpt["env_rng"]
            keep_rows_up_to(os.path.join(run_dir, "eval.jsonl"), ckpt["iteration"])
            last_checkpoint = (ckpt_path if os.path.isfile(ckpt_path) else args.resume, ckpt["iteration"])
            print(f"resumed from {args.resume} at iteration {ckpt['iteration'] + 1}, step {global_step:,}")

        n_iterations = -(-args.total_timesteps // args.eval_every)
        grad_steps_left = lambda step: args.updates_per_step * max(
            0, args.total_timesteps - max(step, args.learning_starts))
        progress = Progress({"collect": args.total_timesteps - global_step, "update": grad_steps_left(global_step),
                             "eval": n_iterations - start_iteration})
        start_time, start_step, last_eval = time.time(), global_step, "none yet"
        status = lambda what: (f"iteration {iteration + 1}/{n_iterations} | {what} | env steps "
                               f"{global_step:,}/{args.total_timesteps:,} | last eval {last_eval}")
        iteration = start_iteration
        progress.step("collect", 0, status("starting"), force=True)
        for iteration in range(start_iteration, n_iterations):
            end = min((iteration + 1) * args.eval_every, args.total_timesteps)
            times = {"collect": 0.0, "update": 0.0, "relabel": 0.0}
            grad_steps, it_stats = 0, {}
            while global_step < end:
                # ----- Alg. 2, collect: one step of pi(. | s, psi) for the commanded task; the time limit truncates
                # without a terminal (the critics bootstrap through it)
                t0 = time.perf_counter()
                if global_step < args.learning_starts:
                    action = rng.uniform(-1, 1, act_dim).astype(np.float32)
                else:
                    with torch.no_grad():
                        a, _ = actor.sample(torch.as_tensor(obs, device=device)[None],
                                            torch.as_tensor(task, dtype=torch.float32, device=device)[None])
                    action = a[0].cpu().numpy()
                next_obs, reward, terminated, truncated, info = env.step(action)
                episode["actions"].append(action)
                steps.append((obs, action, reward, next_obs, terminated, task))
                if not her:
                    rb.add(obs, action, reward, next_obs, terminated, task)
                obs, global_step = next_obs, global_step + 1
                if terminated or truncated:
                    if her:
                        finished = dict(zip(ReplayBuffer.FIELDS, map(np.array, zip(*steps))))
                        rb.add_rows(her_relabel(args.relabel, finished, env, rng))
                    writer.add_scalar("charts/episodic_return", sum(step[2] for step in steps), global_step)
                    writer.add_scalar("charts/episodic_length", len(steps), global_step)
                    task = command_tasks(env, finite, 1, rng)[0]
                    obs, episode = start_episode(env, task)
                    steps = []
                times["collect"] += time.perf_counter() - t0
                progress.step("collect", 1, status("collecting"))
                if global_step < args.learning_starts or rb.size == 0:  # (HER: no episode has ended yet)
                    continue

                # ----- Alg. 2, train: sample a minibatch, relabel it (Alg. 1), one SAC step
                for _ in range(args.updates_per_step):
                    t0 = time.perf_counter()
                    idx = rng.integers(rb.size, size=args.batch_size)
                    batch = rb.sample(idx)
                    t_sample = time.perf_counter()
                    b_task, b_rew, b_term, stats = relabel(args.relabel, batch, env, fixed_tasks, actor, qf1, args,
                                                           rng, device, with_stats=global_step == end)
                    it_stats |= stats
                    t1 = time.perf_counter()
                    times["relabel"] += t1 - t_sample
                    t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)
                    losses = sac_update(nets, opts, log_alpha, args.target_entropy, t(batch["obs"]), t(batch["act"]),
                                        t(b_rew), t(batch["next_obs"]), t(b_term), t(b_task), args)
                    times["update"] += time.perf_counter() - t1 + (t_sample - t0)
                    grad_steps += 1
                    progress.step("update", 1, status("training"))

            # ----- evaluation (one deterministic episode per test and train task), log row, checkpoint
            t0 = time.perf_counter()
            frames = [] if args.capture_video else None
            test, train = env.test_tasks[: args.num_eval_tasks], env.train_tasks[: args.num_eval_tasks]
            ret, succ = evaluate_policy(eval_env, torch_policy(actor, device), test, args.seed + 10_000, frames)
            ret_train, _ = evaluate_policy(eval_env, torch_policy(actor, device), train, args.seed + 20_000)
            times["eval"] = time.perf_counter() - t0
            if frames:
                envs.save_video(frames, os.path.join(run_dir, "videos", f"eval_{global_step}.gif"))
            sps = int((global_step - start_step) / max(time.time() - start_time, 1e-9))
            record = {"iteration": iteration, "env_steps": global_step, "wall_time": time.time(), "eval/return": ret,
                      "eval/return_train_tasks": ret_train, "grad_steps": grad_steps,
                      **{f"time/{k}": v for k, v in times.items()},
                      "time/per_grad_step": (times["update"] + times["relabel"]) / max(grad_steps, 1)}
            if succ is not None:
                record["eval/success_rate"] = succ
            record |= it_stats  # relabel/* of the iteration's last minibatch
            if grad_steps:
                record |= {f"losses/{k}": v.item() for k, v in losses.items()}
            for key, value in record.items():
                if "/" in key:
                    writer.add_scalar(key, value, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            if args.save_model:
                with signals_held():
                    save_checkpoint(ckpt_path, {
                        "env": args.env, "args": asdict(args), "iteration": iteration, "global_step": global_step,
                        "wall_time": wall_before + time.time() - start_time,
                        **{k: m.state_dict() for k, m in (nets | opts).items()},
                        "log_alpha": log_alpha.detach().clone(), "buffer": rb.state(),
                        "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                        "episode": {**episode,
                                    "actions": np.array(episode["actions"], np.float32).reshape(-1, act_dim)},
                        "env_rng": env.np_random.bit_generator.state})
                    last_checkpoint = (ckpt_path, iteration)
            last_eval = f"return {ret:.2f}" + (f" success {succ:.2f}" if succ is not None else "")
            progress.step("eval", 1, status(f"evaluated, {1000 * record['time/per_grad_step']:.1f} ms per grad step"),
                          force=True)

        if args.save_dataset:
            save_dataset(args.save_dataset, env, actor, args, finite, rng, device)
        print(f"done: eval.jsonl and TensorBoard logs in {run_dir}"
              + (f", checkpoint {ckpt_path}" if args.save_model else ""))
    except KeyboardInterrupt as e:
        name = e.args[0] if e.args else "SIGINT"
        where = (f"the last finished checkpoint is {last_checkpoint[0]} (iteration {last_checkpoint[1]})"
                 if last_checkpoint else "no checkpoint was written yet")
        print(f"stopped by {name}; {where}", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name].value)
    finally:
        if writer is not None:
            writer.close()
        for e in (env, eval_env):
            if e is not None:
                e.close()
