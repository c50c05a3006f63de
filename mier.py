"""MIER: Model Identification and Experience Relabeling (and MIER-wR, without relabeling).

Paper: R. Mendonca*, X. Geng*, C. Finn, S. Levine, "Meta-Reinforcement Learning Robust to Distributional Shift
via Model Identification and Experience Relabeling" (2020), arXiv:2006.07178. Authors' code:
russellmendonca/mier_public (TensorFlow 1). The paper numbers no equations; the comments name them:
  Eq. A   an adaptation step A_MAML (Sec. 2): phi_T = phi - alpha grad_phi E_{D_adapt}[-log p(s', r | s, a; theta, phi)]
  Eq. J   the model meta-loss (Sec. 2):        J(theta, phi) = E_{D_eval}[-log p(s', r | s, a; theta, phi_T)]
  Eq. R   Relabel(D, theta, phi_T) (Sec. 3):   s in D; a ~ pi(a | s, phi_T); (s', r) ~ p(s', r | s, a; theta, phi_T)
  Alg. 1  Model Identification Meta-Training;  Alg. 2  Experience Relabeling Adaptation.

A Gaussian model p(s', r | s, a; theta, phi) predicts [r, s' - s] from [s, a, phi], phi a small latent context.
Adapting to a task changes ONLY phi, by gradient steps on the model's negative log-likelihood (Eq. A) from the
initial context phi_0; theta is meta-trained through those steps on a second batch (Eq. J, second order). phi_0 is
zero and fixed, as in the authors' code (--learn-context-init meta-learns it with theta, as Sec. 2 reads). SAC on
[s, phi_T] learns from all tasks' data, each with its adapted context (Alg. 1): that alone is MIER-wR. At meta-test
time MIER adapts phi further and keeps training SAC for the test task on meta-training transitions relabeled by
the adapted model (Eq. R, Alg. 2): the reward only for reward shifts, one-step model rollouts for dynamics shifts.

Defaults follow the authors' configs (mier_public configs/default.py, configs/envs/ood/*.json,
configs/exps/mier-*.json); docs/mier.md lists every deviation. The paper's extrapolation comparison (Fig. 3):
    python mier.py --env cheetah-vel-ood-hard --no-relabel     # MIER-wR
    python mier.py --env cheetah-vel-ood-hard --relabel        # MIER (same meta-training, then Alg. 2)
and the reduced versions a 2-core CPU can run: benchmarks/mier.md.
"""

import contextlib
import copy
import io
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, NoReturn, Optional

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
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """use CUDA when it is available"""
    capture_video: bool = False
    """save the first test task's evaluation episode as a GIF (run_dir/videos/)"""
    save_model: bool = True
    """write run_dir/checkpoint.pt after every epoch and every relabeled test task"""
    env: str = "cheetah-vel-ood-hard"
    """cheetah-vel-ood-hard, cheetah-vel-ood-medium, ant-dir-ood, cheetah-negated-joints, ant-negated-joints,
    cheetah-vel, walker-rand-params, humanoid-dir (the paper's), or point-robot (cheap smoke tests)"""
    num_epochs: Optional[int] = None
    """meta-training epochs (authors: num_train_epochs)"""
    resume: Optional[str] = None
    """a checkpoint.pt (or its run directory) to continue from; the run's own arguments are restored"""
    run_dir: Optional[str] = None
    """output folder (default runs/{env}__{exp_name}__{seed}__{unix time}; on --resume, the checkpoint's folder)"""
    relabel: bool = True
    """after meta-training, run experience relabeling on the test tasks (Alg. 2): MIER; --no-relabel is MIER-wR"""

    # Alg. 1: data collection
    initial_repeats: Optional[int] = None
    """initial exploration: this many collections of steps_prior with phi_0 for every train task"""
    tasks_per_epoch: Optional[int] = None
    """train tasks collected per epoch (authors: num_tasks_sample)"""
    steps_prior: Optional[int] = None
    """steps collected with phi_0 per collection (-> adaptation buffer and replay buffer)"""
    steps_posterior: Optional[int] = None
    """steps collected with the adapted phi_T per collection (-> replay buffer only)"""
    buffer_size: Optional[int] = None
    """FIFO capacity per train task of each of the two buffers: 2 x tasks x capacity x (2 obs + act + 2) floats"""
    # Alg. 1: model identification
    train_steps: Optional[int] = None
    """meta-updates of the model (each followed by one SAC update) per epoch"""
    meta_batch: int = 10
    """tasks per meta-update"""
    adapt_batch: Optional[int] = None
    """transitions per task in the adaptation batch and in the evaluation batch; also the test-time adaptation data"""
    context_dim: Optional[int] = None
    """length of the latent context phi"""
    model_hidden: int = 200
    """model width (4 hidden layers, leaky ReLU)"""
    model_layers: int = 4
    """model hidden layers"""
    model_lr: float = 1e-3
    """Adam learning rate of the outer loop (theta, log-variance bounds; phi_0 with --learn-context-init)"""
    inner_steps: int = 2
    """gradient steps on phi in the inner loop (Eq. A applied this many times)"""
    inner_lr: float = 0.01
    """inner-loop step size alpha of Eq. A"""
    grad_clip: float = 10.0
    """norm clip of each task's inner gradient and of each outer gradient tensor"""
    learn_context_init: bool = False
    """meta-learn phi_0 with theta (Sec. 2's 'context vector initialization'); off: phi_0 = 0, as the authors' code"""
    first_order: bool = False
    """drop the second-order terms of the meta-gradient (first-order MAML); faster, not the paper's method"""
    # SAC on [s, phi_T]
    sac_hidden: Optional[str] = None
    """SAC hidden sizes, comma separated (actor and twin critics)"""
    sac_lr: float = 3e-4
    """actor, critic and temperature learning rate"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """target network Polyak rate"""
    target_entropy: float = -1.0
    """entropy target of the automatic temperature (the authors use -1, not -|A|)"""
    log_alpha_init: float = -1.0
    """initial log temperature"""
    # evaluation
    eval_interval: int = 1
    """evaluate every this many epochs (and after the last)"""
    num_eval_tasks: Optional[int] = None
    """test tasks (and as many train tasks) evaluated during meta-training; default all test tasks"""
    # Alg. 2: experience relabeling at meta-test time
    relabel_tasks: Optional[int] = None
    """test tasks to run Alg. 2 on (each gets its own copy of SAC); default all"""
    extrapolation_epochs: int = 10
    """epochs of Alg. 2 per test task, each followed by an evaluation episode"""
    sac_steps_per_epoch: Optional[int] = None
    """SAC steps per Alg. 2 epoch"""
    sac_repeat: int = 2
    """SAC updates per Alg. 2 step"""
    sac_batch: int = 256
    """SAC batch in Alg. 2"""
    real_ratio: float = 0.05
    """fraction of each Alg. 2 SAC batch drawn from real test-task data"""
    relabel_interval: int = 250
    """relabel a fresh batch every this many Alg. 2 steps"""
    rollout_batch: int = 100_000
    """transitions relabeled per round, drawn equally from cross_tasks random train tasks' replay buffers"""
    cross_tasks: int = 20
    """train tasks whose data a relabeling round draws from"""
    context_steps: Optional[int] = None
    """test-time gradient steps on phi (the first inner_steps at inner_lr, the rest at inner_lr / 10)"""
    finetune_steps: Optional[int] = None
    """test-time Adam steps on theta with phi fixed (authors: num_extra_fast_adapt_steps_for_model)"""
    train_val_ratio: float = 0.8
    """test-time adaptation data: this fraction adapts, the rest measures the adapted model (relabel/model_val_nll)"""


# ----------------------------------------------------------------------------------------------------------------
# Networks: the model p(s', r | s, a; theta, phi) (Sec. 2) and SAC on [s, phi] (softlearning's SAC: twin Q,
# target Q, automatic temperature)
class DynamicsModel(nn.Module):
    """Gaussian over [r, s' - s] given [s, a, phi]; `context` is phi_0, the pre-adaptation phi (zero, and
    meta-learned only with learn_context_init)."""

    def __init__(self, obs_dim, act_dim, context_dim, hidden, layers, learn_context_init=False):
        super().__init__()
        self.context = nn.Parameter(torch.zeros(context_dim), requires_grad=learn_context_init)
        sizes = [obs_dim + act_dim + context_dim] + [hidden] * layers
        self.body = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], 2 * (1 + obs_dim))
        for layer in [*self.body, self.head]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        # learned soft bounds on the log-variance, per output (reward first), initialized as the authors
        self.max_logvar = nn.Parameter(torch.full((1 + obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1 + obs_dim,), -10.0))

    def forward(self, obs, act, context):
        """obs (..., B, obs_dim), act (..., B, act_dim), context (..., d) -> mean, logvar (..., B, 1 + obs_dim)."""
        x = torch.cat([obs, act, context.unsqueeze(-2).expand(*obs.shape[:-1], -1)], -1)
        for layer in self.body:
            x = F.leaky_relu(layer(x), 0.2)  # TF's leaky_relu slope, as the authors' network
        mean, logvar = self.head(x).chunk(2, -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def sample(self, obs, act, context):
        """(r, s') ~ p(s', r | s, a; theta, phi): sampled, not the mean, as the authors relabel."""
        mean, logvar = self(obs, act, context)
        y = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return y[..., 0], obs + y[..., 1:]


def mlp(in_dim, hidden, out_dim):
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, out_dim))


class SoftQ(nn.Module):
    def __init__(self, in_dim, act_dim, hidden):
        super().__init__()
        self.net = mlp(in_dim + act_dim, hidden, 1)

    def forward(self, x, a):
        return self.net(torch.cat([x, a], -1)).squeeze(-1)


class Actor(nn.Module):
    """tanh-Gaussian policy pi(a | s, phi); actions in [-1, 1] as every family expects."""

    def __init__(self, in_dim, act_dim, hidden):
        super().__init__()
        self.net = mlp(in_dim, hidden, 2 * act_dim)

    def forward(self, x, deterministic=False, with_log_prob=True):
        mean, log_std = self.net(x).chunk(2, -1)
        if deterministic:
            return torch.tanh(mean), None
        std = log_std.clamp(-20.0, 2.0).exp()
        u = mean + std * torch.randn_like(mean)
        if not with_log_prob:  # acting in the env needs no log-probability
            return torch.tanh(u), None
        # log N(u; mean, std) minus the log-Jacobian of tanh, written stably: log(1 - tanh(u)^2)
        log_prob = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        log_prob = log_prob - (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


class SAC(nn.Module):
    def __init__(self, in_dim, act_dim, hidden, log_alpha_init):
        super().__init__()
        self.actor = Actor(in_dim, act_dim, hidden)
        self.qf1, self.qf2 = SoftQ(in_dim, act_dim, hidden), SoftQ(in_dim, act_dim, hidden)
        self.qf1_target, self.qf2_target = copy.deepcopy(self.qf1), copy.deepcopy(self.qf2)
        self.log_alpha = nn.Parameter(torch.tensor(float(log_alpha_init)))

    def optimizers(self, lr):
        return (torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=lr),
                torch.optim.Adam(self.actor.parameters(), lr=lr), torch.optim.Adam([self.log_alpha], lr=lr))


# ----------------------------------------------------------------------------------------------------------------
# Replay buffers: one preallocated FIFO per task
FIELDS = ("obs", "act", "rew", "next_obs", "term")


class MultiTaskReplayBuffer:
    def __init__(self, n_tasks, capacity, obs_dim, act_dim):
        self.capacity = capacity
        dims = dict(obs=(obs_dim,), act=(act_dim,), rew=(), next_obs=(obs_dim,), term=())
        # slot-major (capacity, tasks, .): the pages in use grow with the fullest task, not with a page run per task
        self.data = {k: np.zeros((capacity, n_tasks, *dims[k]), np.float32) for k in FIELDS}
        self.ptr, self.size = np.zeros(n_tasks, np.int64), np.zeros(n_tasks, np.int64)

    def add(self, task, batch):
        n = len(batch["rew"])
        idx = (self.ptr[task] + np.arange(n)) % self.capacity
        for k in FIELDS:
            self.data[k][idx, task] = batch[k]
        self.ptr[task] = (self.ptr[task] + n) % self.capacity
        self.size[task] = min(self.size[task] + n, self.capacity)

    def sample(self, tasks, n, rng):
        """n transitions uniformly from each of `tasks` (T,) in one gather: arrays (T, n, .)."""
        idx = (rng.random((len(tasks), n)) * self.size[tasks][:, None]).astype(np.int64)
        return {k: v[idx, np.asarray(tasks)[:, None]] for k, v in self.data.items()}

    def state_dict(self):  # only the filled part of each task's buffer, concatenated over tasks
        return dict(ptr=self.ptr, size=self.size,
                    **{k: np.concatenate([v[:n, t] for t, n in enumerate(self.size)]) for k, v in self.data.items()})

    def load_state_dict(self, state):
        self.ptr[:], self.size[:] = state["ptr"], state["size"]
        starts = np.concatenate([[0], np.cumsum(self.size)])
        for k in FIELDS:
            for t, n in enumerate(self.size):
                self.data[k][:n, t] = state[k][starts[t]: starts[t] + n]


def to_torch(batch, device):
    """The model's view of a batch: (obs, act, rew, next_obs) float32 tensors."""
    return tuple(torch.as_tensor(batch[k], device=device) for k in FIELDS[:4])


def with_context(x, phi):
    """[x, phi]: phi (..., d) broadcast over the batch dimension of x (..., B, n)."""
    return torch.cat([x, phi.unsqueeze(-2).expand(*x.shape[:-1], -1)], -1)


# ----------------------------------------------------------------------------------------------------------------
# Alg. 1, Model Identification Meta-Training: the model's loss, its adaptation (Eq. A), data collection with phi_0
# and phi_T, the meta-update (Eq. J) and the SAC update on [s, phi_T]
def nll(model, batch, context):
    """-log p(s', r | s, a; theta, phi) per task (up to constants), shape (...,) for a batch (..., B, .). As the
    authors: reward and state terms each averaged, summed, + 0.01 (sum max_logvar - sum min_logvar) (tight bounds)."""
    obs, act, rew, next_obs = batch
    mean, logvar = model(obs, act, context)
    target = torch.cat([rew.unsqueeze(-1), next_obs - obs], -1)
    per_output = (mean - target) ** 2 * torch.exp(-logvar) + logvar
    loss = per_output[..., 0].mean(-1) + per_output[..., 1:].mean((-1, -2))
    return loss + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())


def adapt(model, batch, lrs, clip, create_graph):
    """Eq. A once per entry of `lrs`, for T tasks at once: batch (T, B, .) -> adapted contexts phi_T (T, d).

    phi is one row per task and the loss is the SUM of the tasks' losses, so row t of one autograd.grad is exactly
    task t's own gradient (tasks share no terms): the whole meta-batch adapts in one backward pass.
    create_graph=True keeps the graph of every step, so the outer loss differentiates through them (second order).
    """
    phi = model.context.expand(batch[0].shape[0], -1)
    if not phi.requires_grad:  # phi_0 fixed (learn_context_init off): the inner loop still differentiates phi
        phi = phi.detach().requires_grad_()
    for lr in lrs:
        (grad,) = torch.autograd.grad(nll(model, batch, phi).sum(), phi, create_graph=create_graph)
        grad = grad * (clip / grad.norm(dim=-1, keepdim=True).clamp_min(clip))  # per-task clip_by_norm
        phi = phi - lr * grad
    return phi


@torch.no_grad()
def rollout(env, actor, phi, n_steps, device, *, deterministic, episodes=None, frames=None):
    """Run pi(a | s, phi) in env's current task for n_steps (or `episodes` whole episodes).
    Returns the transitions (float32 arrays) and the finished episodes' returns. (No supported family reports
    success, so there is no success rate.)"""
    phi = torch.as_tensor(phi, dtype=torch.float32, device=device)
    out, returns, ep_return = {k: [] for k in FIELDS}, [], 0.0
    obs, _ = env.reset()
    while len(out["rew"]) < n_steps and (episodes is None or len(returns) < episodes):
        x = torch.cat([torch.as_tensor(obs, dtype=torch.float32, device=device), phi])
        action = actor(x, deterministic, with_log_prob=False)[0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        if frames is not None:
            frames.append(env.render())
        for k, v in zip(FIELDS, (obs, action, reward, next_obs, terminated)):
            out[k].append(v)
        ep_return, obs = ep_return + reward, next_obs
        if terminated or truncated:
            returns.append(ep_return)
            ep_return, (obs, _) = 0.0, env.reset()
    return {k: np.asarray(v, np.float32) for k, v in out.items()}, returns


def collect(env, task_id, model, actor, adapt_buffer, replay, args, device, *, with_updated_context):
    """Alg. 1 lines 5-8 for train task `task_id`: D_adapt with phi_0 (-> both buffers); adapt phi on it (Eq. A);
    then D_eval with phi_T (-> replay buffer only). Returns the env steps taken and the finished episodes' returns."""
    env.set_task(env.train_tasks[task_id])
    d_adapt, returns = rollout(env, actor, model.context.detach(), args.steps_prior, device, deterministic=False)
    adapt_buffer.add(task_id, d_adapt), replay.add(task_id, d_adapt)
    if not with_updated_context:
        return args.steps_prior, returns
    batch = to_torch({k: v[None] for k, v in d_adapt.items()}, device)
    phi_T = adapt(model, batch, [args.inner_lr] * args.inner_steps, args.grad_clip, create_graph=False)
    d_eval, more = rollout(env, actor, phi_T[0].detach(), args.steps_posterior, device, deterministic=False)
    replay.add(task_id, d_eval)
    return args.steps_prior + args.steps_posterior, returns + more


def meta_update(model, optimizer, adapt_batch, eval_batch, args):
    """One outer step of Alg. 1 (line 11): theta (and phi_0 when learned) <- Adam on Eq. J after the inner steps;
    returns phi_T."""
    lrs = [args.inner_lr] * args.inner_steps
    phi_T = adapt(model, adapt_batch, lrs, args.grad_clip, create_graph=not args.first_order)
    loss = nll(model, eval_batch, phi_T).mean()
    optimizer.zero_grad()
    loss.backward()
    for p in model.parameters():  # per tensor; the authors' network is one flat vector, clipped as one
        if p.grad is not None:
            nn.utils.clip_grad_norm_(p, args.grad_clip)
    optimizer.step()
    return phi_T.detach(), loss.item()


def minimize(optimizer, loss):
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def sac_update(sac, opts, x, act, rew, next_x, term, args):
    """One SAC step on inputs x = [s, phi] (phi a constant input, Alg. 1 line 12). Returns losses for logging."""
    q_opt, actor_opt, alpha_opt = opts
    alpha = sac.log_alpha.exp().detach()  # the actor's and the critics' targets use the current temperature
    with torch.no_grad():
        next_a, next_logp = sac.actor(next_x)
        next_q = torch.min(sac.qf1_target(next_x, next_a), sac.qf2_target(next_x, next_a)) - alpha * next_logp
        target = rew + args.gamma * (1.0 - term) * next_q  # truncation is not termination: bootstrap through it
    q_loss = 0.5 * (F.mse_loss(sac.qf1(x, act), target) + F.mse_loss(sac.qf2(x, act), target))
    minimize(q_opt, q_loss)
    a, logp = sac.actor(x)
    actor_loss = (alpha * logp - torch.min(sac.qf1(x, a), sac.qf2(x, a))).mean()
    minimize(actor_opt, actor_loss)
    minimize(alpha_opt, -(sac.log_alpha * (logp.detach() + args.target_entropy)).mean())
    with torch.no_grad():
        for net, target_net in ((sac.qf1, sac.qf1_target), (sac.qf2, sac.qf2_target)):
            torch._foreach_lerp_(list(target_net.parameters()), list(net.parameters()), args.tau)
    return q_loss.item(), actor_loss.item(), alpha.item()


def policy_update(sac, sac_opts, eval_np, phi_T, args, device):
    """Alg. 1 line 12: SAC on D_eval with each task's adapted context appended, all tasks as one batch."""
    obs, act, rew, next_obs = (x.flatten(0, 1) for x in to_torch(eval_np, device))
    phi = phi_T.repeat_interleave(args.adapt_batch, 0)
    term = torch.as_tensor(eval_np["term"], device=device).flatten()
    return sac_update(sac, sac_opts, torch.cat([obs, phi], -1), act, rew, torch.cat([next_obs, phi], -1), term, args)


# ----------------------------------------------------------------------------------------------------------------
# Alg. 2, Experience Relabeling Adaptation: test-time adaptation, Relabel (Sec. 3, Eq. R), SAC on relabeled data
def adapt_to_test_task(model, data, args, device, rng):
    """Alg. 2 lines 1-3: N_fast steps on phi (the first inner_steps at inner_lr, later ones at inner_lr / 10, as the
    authors), then optionally finetune_steps Adam steps on theta with phi fixed. Returns phi_T (d,), the adapted
    model (a copy when fine-tuned) and the held-out NLL of the adapted model."""
    n = len(data["rew"])
    perm = rng.permutation(n)
    n_fit = max(1, int(args.train_val_ratio * n))
    fit = to_torch({k: v[None, perm[:n_fit]] for k, v in data.items()}, device)
    held_out = to_torch({k: v[None, perm[n_fit:]] for k, v in data.items()}, device) if n_fit < n else fit
    lrs = [args.inner_lr if k < args.inner_steps else args.inner_lr / 10 for k in range(args.context_steps)]
    phi = adapt(model, fit, lrs, args.grad_clip, create_graph=False).detach()
    if args.finetune_steps > 0:
        model = copy.deepcopy(model)
        optimizer = torch.optim.Adam([p for name, p in model.named_parameters() if name != "context"], args.model_lr)
        for _ in range(args.finetune_steps):
            optimizer.zero_grad()
            nll(model, fit, phi).sum().backward()
            optimizer.step()
    with torch.no_grad():
        return phi[0], model, nll(model, held_out, phi).item()


@torch.no_grad()
def relabel(model, actor, phi, data, env, task, mode, device):
    """Relabel(D, theta, phi_T) of Eq. R on transitions `data` from other tasks, for the test task.

    mode "reward" (tasks differ only in reward): keep (s, a, s') and sample r from the adapted model (the authors'
    off-policy relabeling). mode "dynamics": a ~ pi(a | s, phi_T), then (s', r) ~ p(s', r | s, a; theta, phi_T), a
    one-step model rollout. Terminations are the test task's, env.evaluate on (s, a, s')."""
    obs, act, _, next_obs = to_torch(data, device)
    if mode == "dynamics":
        act, _ = actor(with_context(obs, phi))
        rew, next_obs = model.sample(obs, act, phi)
    else:
        rew, _ = model.sample(obs, act, phi)
    out = dict(obs=obs, act=act, rew=rew, next_obs=next_obs)
    out = {k: v.cpu().numpy() for k, v in out.items()}
    _, term = env.evaluate(out["obs"], out["act"], out["next_obs"], task)
    out["term"] = term.astype(np.float32)
    return out


def experience_relabeling(env, test_task, model, sac, sac_opts, replay, mode, args, device, rng,
                          on_step: Optional[Callable[[int, int], None]] = None):
    """Alg. 2 on one test task, on a copy of the meta-trained SAC (restored afterwards). Returns the evaluation
    returns (before relabeling, then after each epoch), per-epoch timings and the adapted model's held-out NLL.
    `on_step(epoch, step)` is called after every SAC step (progress reports)."""
    snapshot = copy.deepcopy(dict(sac=sac.state_dict(), opts=[o.state_dict() for o in sac_opts]))
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.set_task(test_task)
    t0 = time.time()
    # line 1: D_adapt from the test task with phi_0; lines 2-3: adapt phi (more steps than in meta-training)
    real_data, _ = rollout(env, sac.actor, model.context.detach(), args.adapt_batch, device, deterministic=False)
    real = MultiTaskReplayBuffer(1, len(real_data["rew"]), obs_dim, act_dim)
    real.add(0, real_data)
    phi_T, test_model, val_nll = adapt_to_test_task(model, real_data, args, device, rng)
    rounds = -(-args.sac_steps_per_epoch // args.relabel_interval)
    relabeled = MultiTaskReplayBuffer(1, args.rollout_batch * rounds, obs_dim, act_dim)  # one epoch's worth, FIFO
    n_real = int(args.sac_batch * args.real_ratio)
    t_collect = time.time() - t0
    returns = [rollout(env, sac.actor, phi_T, env.horizon, device, deterministic=True, episodes=1)[1][0]]
    timings = []
    for epoch in range(args.extrapolation_epochs):
        t_relabel = t_update = 0.0
        for step in range(args.sac_steps_per_epoch):
            t1 = time.time()
            if step % args.relabel_interval == 0:  # lines 5-6: transitions of random train tasks, relabeled by Eq. R
                d = replay.sample(rng.choice(len(env.train_tasks), args.cross_tasks),
                                  args.rollout_batch // args.cross_tasks, rng)
                d = {k: v.reshape(-1, *v.shape[2:]) for k, v in d.items()}
                relabeled.add(0, relabel(test_model, sac.actor, phi_T, d, env, test_task, mode, device))
            t2 = time.time()
            for _ in range(args.sac_repeat):  # line 7, on 5% real / 95% relabeled data with phi_T appended
                r, m = real.sample([0], n_real, rng), relabeled.sample([0], args.sac_batch - n_real, rng)
                b = {k: np.concatenate([r[k][0], m[k][0]]) for k in FIELDS}
                obs, act, rew, next_obs = to_torch(b, device)
                sac_update(sac, sac_opts, with_context(obs, phi_T), act, rew, with_context(next_obs, phi_T),
                           torch.as_tensor(b["term"], device=device), args)
            t_relabel, t_update = t_relabel + t2 - t1, t_update + time.time() - t2
            if on_step is not None:
                on_step(epoch, step)
        t3 = time.time()
        returns.append(rollout(env, sac.actor, phi_T, env.horizon, device, deterministic=True, episodes=1)[1][0])
        timings.append((t_collect if epoch == 0 else 0.0, t_update, t_relabel, time.time() - t3, t_relabel / rounds))
    sac.load_state_dict(snapshot["sac"])
    for opt, state in zip(sac_opts, snapshot["opts"]):
        opt.load_state_dict(state)
    return dict(returns=returns, timings=timings, val_nll=val_nll)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: the authors' meta-test protocol during meta-training
def evaluate(env, tasks, model, actor, args, device, frames=None):
    """The authors' meta-test protocol (MIER-wR): per task collect adapt_batch steps with phi_0, adapt phi with the
    inner loop (all tasks in one batched pass), then one deterministic episode with phi_T. Returns the mean return."""
    phi0 = model.context.detach()
    data = []
    for task in tasks:
        env.set_task(task)
        data.append(rollout(env, actor, phi0, args.adapt_batch, device, deterministic=False)[0])
    batch = to_torch({k: np.stack([d[k] for d in data]) for k in FIELDS}, device)
    phi = adapt(model, batch, [args.inner_lr] * args.inner_steps, args.grad_clip, create_graph=False).detach()
    returns = []
    for i, task in enumerate(tasks):
        env.set_task(task)
        returns += rollout(env, actor, phi[i], env.horizon, device, deterministic=True, episodes=1,
                           frames=frames if i == 0 else None)[1]
    return float(np.mean(returns))


# ----------------------------------------------------------------------------------------------------------------
# Plumbing: the authors' per-env values, argument checks, --help, progress lines, checkpoints, signals

# mier_public configs/default.py overridden by configs/envs/{benchmarks,ood}/<env>.json (configs/exps/mier-*.json)
# buffer_size is ours (authors: replay_buffer_max_sample_size 1e6 per task): enough that a paper-size run evicts
# nothing (cheetah: ~22k transitions per task; walker-rand-params: 2k + 1000 epochs x 5/40 x 1k = 127k on average,
# ~155k for the most sampled of its 40 tasks; humanoid-dir: 0.4k + 200 x 5/100 x 1k = 10.4k, ~21k at most), and no
# larger: the arrays are allocated whole (pages are touched as they fill; 100 humanoid tasks x 30k x 775 floats).
DEFAULTS = dict(num_epochs=400, initial_repeats=5, tasks_per_epoch=5, steps_prior=400, steps_posterior=600,
                train_steps=1000, adapt_batch=200, context_dim=5, sac_hidden="300,300,300", sac_steps_per_epoch=1000,
                context_steps=10, finetune_steps=100, buffer_size=100_000)
PAPER_DEFAULTS: dict[str, dict] = {
    "cheetah-vel-ood-hard": {},  # ood/cheetah-vel-hard.json
    "cheetah-vel-ood-medium": {},  # ood/cheetah-vel-medium.json
    "cheetah-vel": {},  # benchmarks/cheetah-vel.json (in distribution)
    # benchmarks/walker-rand-params.json (40 train / 10 test tasks, in distribution; the authors' ood config needs
    # their task_mode 'ood' split, which envs does not build) and benchmarks/humanoid-dir.json (100 / 30)
    "walker-rand-params": dict(num_epochs=1000, adapt_batch=400, buffer_size=200_000),
    "humanoid-dir": dict(num_epochs=200, initial_repeats=1, adapt_batch=400, buffer_size=30_000),
    "ant-dir-ood": dict(num_epochs=600, adapt_batch=400, sac_hidden="256,256", sac_steps_per_epoch=50,
                        context_steps=20, finetune_steps=0),
    "cheetah-negated-joints": dict(context_dim=10, adapt_batch=400, sac_hidden="256,256", finetune_steps=0),
    "ant-negated-joints": dict(num_epochs=600, sac_hidden="256,256", finetune_steps=0),
    # Not in the paper: a cheap reward-shift family (dense goal reward) for smoke and learning tests.
    "point-robot": dict(num_epochs=50, steps_prior=100, steps_posterior=100, train_steps=100, adapt_batch=50,
                        sac_hidden="64,64", sac_steps_per_epoch=100, context_steps=10, finetune_steps=0),
}
SUPPORTED = tuple(PAPER_DEFAULTS)
# --help's cost line: seconds per meta-training step (model meta-update + SAC update) at paper size on
# cheetah-vel-ood-hard, on the shared 2-core CPU at load average 5-6 (`--num-epochs 1 --train-steps 20`)
STEP_SECONDS = 0.9
# larger models and adaptation batches: one meta-training step (meta_update + policy_update at paper size) timed
# against cheetah-vel-ood-hard's in one process, alternately, one torch thread (medians of 3)
STEP_RATIO = {"walker-rand-params": 2.1, "humanoid-dir": 4.0}
REDUCED = {  # a reduced run that shows learning within an hour (benchmarks/mier.md)
    name: "--num-epochs 40 --initial-repeats 1 --train-steps 500 --meta-batch 8 --adapt-batch 128 --model-hidden 128 "
          "--sac-hidden 64,64 --num-eval-tasks 10 --eval-interval 2 (25-33 min a run; the curves: benchmarks/mier.md)"
    for name in ("cheetah-vel-ood-hard", "cheetah-vel")}
# Only Alg. 2 reads these: on --resume before Alg. 2 has begun, a typed value is used (Alg. 2 of another size from
# the same meta-trained checkpoint)
ALG2_FLAGS = ("relabel", "relabel_tasks", "extrapolation_epochs", "sac_steps_per_epoch", "sac_repeat", "sac_batch",
              "real_ratio", "relabel_interval", "rollout_batch", "cross_tasks", "context_steps", "finetune_steps",
              "train_val_ratio")
RUN_FLAGS = ("num_epochs", "cuda", "capture_video", "run_dir", "save_model")  # on --resume the typed value is used


def fail(message: str) -> NoReturn:
    """A bad input: one line on stderr and exit code 2, as tyro does for a malformed flag."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_args(args: Args) -> envs.TaskEnv:
    """Every argument checked before anything runs (one line, exit code 2, at the first violation). The task-count
    checks need the family, so it is built last (seeded with the checked seed) and returned."""
    def need(ok, name, allowed):
        if not ok:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)}: {allowed}")

    if args.env not in SUPPORTED:
        why = "unknown" if args.env not in envs.names() else "mier.py has no authors' configuration for it"
        fail(f"--env {args.env}: {why}; it serves: {', '.join(SUPPORTED)}")
    need(0 <= args.seed < 2**31, "seed", "must be in [0, 2**31)")
    for name in ("num_epochs", "initial_repeats", "tasks_per_epoch", "steps_prior", "steps_posterior", "buffer_size",
                 "train_steps", "meta_batch", "adapt_batch", "context_dim", "model_hidden", "model_layers",
                 "inner_steps", "eval_interval", "extrapolation_epochs", "sac_steps_per_epoch", "sac_repeat",
                 "sac_batch", "relabel_interval", "rollout_batch", "cross_tasks", "context_steps"):
        need(getattr(args, name) >= 1, name, "must be >= 1")
    need(args.finetune_steps >= 0, "finetune_steps", "must be >= 0")
    for name in ("model_lr", "inner_lr", "grad_clip", "sac_lr"):
        need(getattr(args, name) > 0, name, "must be > 0")
    need(0 < args.gamma <= 1, "gamma", "must be in (0, 1]")
    need(0 < args.tau <= 1, "tau", "must be in (0, 1]")
    need(0 <= args.real_ratio < 1, "real_ratio", "must be in [0, 1)")
    need(0 < args.train_val_ratio <= 1, "train_val_ratio", "must be in (0, 1]")
    for name in ("target_entropy", "log_alpha_init"):
        need(np.isfinite(getattr(args, name)), name, "must be a finite number")
    need(all(h.isdigit() and int(h) > 0 for h in args.sac_hidden.split(",")), "sac_hidden",
         "must be positive integers separated by commas")
    need(args.buffer_size >= args.steps_prior + args.steps_posterior, "buffer_size",
         f"must hold one collection (--steps-prior + --steps-posterior = {args.steps_prior + args.steps_posterior})")
    need(args.rollout_batch >= args.cross_tasks, "rollout_batch", f"must be >= --cross-tasks {args.cross_tasks}")
    try:
        env = envs.make(args.env, seed=args.seed, **({"render_mode": "rgb_array"} if args.capture_video else {}))
    except ValueError as e:
        fail(f"--capture-video: {e}" if args.capture_video else f"--env {args.env}: {e}")
    n_train, n_test = len(env.train_tasks), len(env.test_tasks)
    need(args.meta_batch <= n_train, "meta_batch", f"must be <= the {n_train} train tasks of {args.env}")
    for name in ("num_eval_tasks", "relabel_tasks"):
        need(getattr(args, name) is None or 1 <= getattr(args, name) <= n_test, name,
             f"must be in [1, {n_test}] (the test tasks of {args.env})")
    return env


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


def help_text(env_name: str) -> str:
    """tyro's description: the paper defaults resolved for --env, what a paper-size run costs, a reduced run."""
    head = __doc__.split("\n\n")[0]
    if env_name not in PAPER_DEFAULTS:  # tyro keeps paragraphs (blank-line separated) and joins lines within one
        rows = [f"{name}: " + (" ".join(f"{k}={v}" for k, v in row.items()) or "(all envs' values)")
                for name, row in [("(all envs)", DEFAULTS), *PAPER_DEFAULTS.items()]]
        return head + "\n\npaper defaults per --env (flags override):\n\n" + "\n\n".join(rows)
    row = {**DEFAULTS, **PAPER_DEFAULTS[env_name]}
    text = f"paper defaults for --env {env_name}: " + " ".join(f"{k}={v}" for k, v in row.items())
    ratio = STEP_RATIO.get(env_name)
    hours = row["num_epochs"] * row["train_steps"] * STEP_SECONDS * (ratio or 1) / 3600
    cost = (f"a paper-size run costs ~{hours:.0f} h on a 2-core CPU (measured: {STEP_SECONDS} s per meta-training "
            "step at paper size on cheetah-vel-ood-hard" + (f", x {ratio} on {env_name}" if ratio else "")
            + f", times {row['num_epochs']} epochs x {row['train_steps']} steps; Alg. 2 and evaluations extra)")
    if env_name == "point-robot":
        cost = "a default point-robot run takes a few minutes on a 2-core CPU (tests/test_mier.py learns in ~20 s)"
    reduced = f"\n\nreduced run: python mier.py --env {env_name} {REDUCED[env_name]}" if env_name in REDUCED else ""
    return f"{head}\n\n{text}\n\n{cost}{reduced}"


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


def resumed_args(given: Args, ckpt: dict, path: str, argv: list[str]) -> Args:
    """The checkpoint's arguments. A typed flag that differs: --env is an error; RUN_FLAGS, and ALG2_FLAGS while
    Alg. 2 has not begun, take the typed value; any other keeps the checkpoint's. Each difference: one warning."""
    args, names = Args(**ckpt["args"]), {f.name for f in fields(Args)}
    typed = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    typed = {n[3:] if n.startswith("no_") and n[3:] in names else n for n in typed} & names - {"resume"}
    if "env" in typed and given.env != args.env:
        fail(f"--resume {path}: written for --env {args.env}, not --env {given.env}")
    warnings = []
    for name in sorted(typed):
        new, old, flag = getattr(given, name), getattr(args, name), "--" + name.replace("_", "-")
        if new == old:
            continue
        if name in RUN_FLAGS or (name in ALG2_FLAGS and not ckpt["extrapolation_returns"]):
            warnings.append(f"warning: {flag} {new} (the checkpoint's run had {old}): using {new}")
            setattr(args, name, new)
        else:
            warnings.append(f"warning: {flag} {new} differs from the checkpoint's {old}: using the checkpoint's {old}")
    if args.num_epochs < ckpt["epoch"] or (ckpt["extrapolation_returns"] and args.num_epochs != ckpt["epoch"]):
        fail(f"--num-epochs {args.num_epochs}: the checkpoint's run is at epoch {ckpt['epoch']}"
             + (" and has begun Alg. 2" if ckpt["extrapolation_returns"] else ""))
    for line in warnings:
        print(line, file=sys.stderr)
    args.resume = given.resume
    if "run_dir" not in typed:
        args.run_dir = os.path.dirname(os.path.abspath(path))
    return args


def parse_command_line(argv: list[str]) -> tuple[Args, envs.TaskEnv, Optional[dict]]:
    """argv -> tyro -> --resume merge -> paper defaults for --env -> check_args: the run's arguments, its env and
    the checkpoint to continue from (None for a new run). Nothing is written before this returns."""
    env_name = next((a[len("--env="):] for a in argv if a.startswith("--env=")), None)
    if env_name is None and "--env" in argv[:-1]:
        env_name = argv[argv.index("--env") + 1]
    args = parse_args(help_text(env_name or Args.env), argv)
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        args.resume = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
        args = resumed_args(args, ckpt, args.resume, argv)
    for key, value in {**DEFAULTS, **PAPER_DEFAULTS.get(args.env, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    env = check_args(args)
    if args.run_dir is None:
        args.run_dir = f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    return args, env, ckpt


def keep_rows(src: str, dst: str, last_iteration: int) -> None:
    """Rewrite dst (atomically) as src's eval.jsonl rows up to `last_iteration`: on resume, rows written after the
    checkpoint (and a half-written last line) are dropped and will be written again."""
    rows = []
    if os.path.isfile(src):
        with open(src) as f:
            for line in f:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if json.loads(line)["iteration"] <= last_iteration:
                        rows.append(line if line.endswith("\n") else line + "\n")
    with open(dst + ".tmp", "w") as f:
        f.writelines(rows)
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    env = writer = saved = None  # saved: the last finished checkpoint, for the message when stopped
    try:
        args, env, ckpt = parse_command_line(sys.argv[1:])
        print(f"{SCRIPT} " + " ".join(f"{k}={v}" for k, v in asdict(args).items()), flush=True)
        relabel_mode = "reward" if env.varies == "reward" else "dynamics"  # Sec. 3: reward-only vs one-step rollouts

        # TRY NOT TO MODIFY: seeding, output folder, logging
        torch.manual_seed(args.seed)  # numpy randomness all comes from `rng`
        torch.backends.cudnn.deterministic = args.torch_deterministic
        rng = np.random.default_rng(args.seed)
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        os.makedirs(args.run_dir, exist_ok=True)
        ckpt_path, eval_path = os.path.join(args.run_dir, "checkpoint.pt"), os.path.join(args.run_dir, "eval.jsonl")
        if os.path.exists(ckpt_path + ".tmp"):  # left by a run killed while writing
            os.remove(ckpt_path + ".tmp")
        with open(os.path.join(args.run_dir, "args.json"), "w") as f:
            json.dump(asdict(args), f, indent=2)

        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        train_tasks, test_tasks = env.train_tasks, env.test_tasks
        n_eval, n_relabel = args.num_eval_tasks or len(test_tasks), args.relabel_tasks or len(test_tasks)
        model = DynamicsModel(obs_dim, act_dim, args.context_dim, args.model_hidden, args.model_layers,
                              learn_context_init=args.learn_context_init).to(device)
        model_opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.model_lr)
        sac = SAC(obs_dim + args.context_dim, act_dim, [int(h) for h in args.sac_hidden.split(",")],
                  args.log_alpha_init).to(device)
        sac_opts = sac.optimizers(args.sac_lr)
        # Alg. 1: the adaptation buffer holds only phi_0 data; the replay buffer R(T) holds all data of task T
        adapt_buffer = MultiTaskReplayBuffer(len(train_tasks), args.buffer_size, obs_dim, act_dim)
        replay = MultiTaskReplayBuffer(len(train_tasks), args.buffer_size, obs_dim, act_dim)
        stateful = dict(model=model, model_opt=model_opt, sac=sac, q_opt=sac_opts[0], actor_opt=sac_opts[1],
                        alpha_opt=sac_opts[2], adapt_buffer=adapt_buffer, replay=replay)
        start_epoch, env_steps, extrapolation_returns, wall = 0, 0, [], 0.0
        if ckpt is None:
            env.reset(seed=args.seed)
        else:
            for key, obj in stateful.items():
                obj.load_state_dict(ckpt[key])
            start_epoch, env_steps, wall = ckpt["epoch"], ckpt["env_steps"], ckpt["wall_time"]
            extrapolation_returns = ckpt["extrapolation_returns"]
            rng.bit_generator.state = ckpt["rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            if ckpt["cuda_rng"] is not None and device.type == "cuda":
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            env.np_random.bit_generator.state = ckpt["env_rng"]
            keep_rows(os.path.join(os.path.dirname(os.path.abspath(args.resume)), "eval.jsonl"), eval_path, start_epoch)
            saved = f"{args.resume} (epoch {start_epoch})"
        start_time = time.time() - wall
        writer = SummaryWriter(args.run_dir, purge_step=env_steps + 1 if ckpt else None)
        if ckpt is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)

        def checkpoint(epoch):  # only at the end of an epoch or of a test task's Alg. 2: resume stays exact
            global saved
            if args.save_model:
                with signals_held():
                    save_checkpoint(ckpt_path, {
                        "env": args.env, "args": asdict(args), "epoch": epoch, "env_steps": env_steps,
                        "wall_time": time.time() - start_time, "extrapolation_returns": extrapolation_returns,
                        **{k: v.state_dict() for k, v in stateful.items()}, "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(), "env_rng": env.np_random.bit_generator.state,
                        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None})
                    done = len(extrapolation_returns)
                    saved = (f"{ckpt_path} (epoch {epoch}"
                             + (f", {done}/{n_relabel} test tasks relabeled)" if done else ")"))

        def log_eval(row):
            for k, v in row.items():
                if "/" in k:
                    writer.add_scalar(k, v, row["env_steps"])
            with open(eval_path, "a") as f:
                f.write(json.dumps(row) + "\n")

        total_steps = (len(train_tasks) * args.initial_repeats * args.steps_prior
                       + args.num_epochs * args.tasks_per_epoch * (args.steps_prior + args.steps_posterior))
        n_evals = sum((e + 1) % args.eval_interval == 0 or e + 1 == args.num_epochs
                      for e in range(start_epoch, args.num_epochs))
        progress = Progress({"collect": total_steps - env_steps, "update": (args.num_epochs - start_epoch) *
                             args.train_steps, "eval": 2 * n_evals, "relabel": 0})
        last_eval = float("nan")

        def status(epoch):
            return f"epoch {epoch}/{args.num_epochs} | env steps {env_steps:,}/{total_steps:,}"

        progress.step("collect", 0, f"{SCRIPT} --env {args.env}: {status(start_epoch)} | run dir {args.run_dir}",
                      force=True)
        if start_epoch == 0:  # initial exploration with phi_0 for every train task (a checkpoint comes after it)
            for task_id in range(len(train_tasks)):
                for _ in range(args.initial_repeats):
                    n, _ = collect(env, task_id, model, sac.actor, adapt_buffer, replay, args, device,
                                   with_updated_context=False)
                    env_steps += n
                    progress.step("collect", n, f"initial exploration: task {task_id + 1}/{len(train_tasks)} | "
                                  f"{status(0)}")

        # ALGO LOGIC: Alg. 1, meta-training
        for epoch in range(start_epoch, args.num_epochs):
            t0 = time.time()
            episode_returns = []
            for task_id in rng.choice(len(train_tasks), args.tasks_per_epoch):  # with replacement, as the authors
                n, returns = collect(env, task_id, model, sac.actor, adapt_buffer, replay, args, device,
                                     with_updated_context=True)
                env_steps, episode_returns = env_steps + n, episode_returns + returns
                progress.step("collect", n, f"collecting | {status(epoch + 1)} | last eval return {last_eval:.1f}")
            t_collect = time.time() - t0

            # the epoch's meta-batch of tasks is fixed, as the authors; each step: one model meta-update (line 11),
            # then one SAC update on the same D_eval with each task's phi_T (line 12)
            tasks = rng.choice(len(train_tasks), args.meta_batch, replace=False)
            t_model = t_sac = 0.0
            for step in range(args.train_steps):
                t1 = time.time()
                adapt_batch = to_torch(adapt_buffer.sample(tasks, args.adapt_batch, rng), device)
                eval_np = replay.sample(tasks, args.adapt_batch, rng)
                phi_T, model_loss = meta_update(model, model_opt, adapt_batch, to_torch(eval_np, device), args)
                t2 = time.time()
                q_loss, actor_loss, alpha = policy_update(sac, sac_opts, eval_np, phi_T, args, device)
                t_model, t_sac = t_model + t2 - t1, t_sac + time.time() - t2
                progress.step("update", 1, f"meta-update {step + 1}/{args.train_steps} | {status(epoch + 1)} | "
                              f"last eval return {last_eval:.1f}")
            t_update = time.time() - t0 - t_collect

            with torch.no_grad():
                pre = nll(model, adapt_batch, model.context.expand(len(tasks), -1)).mean().item()
            for tag, value in (("losses/model_nll_post_adaptation", model_loss),
                               ("losses/model_nll_pre_adaptation", pre), ("losses/qf_loss", q_loss),
                               ("losses/actor_loss", actor_loss), ("losses/alpha", alpha),
                               ("losses/context_norm", phi_T.norm(dim=-1).mean().item())):
                writer.add_scalar(tag, value, env_steps)
            if episode_returns:  # collections shorter than an episode finish none
                writer.add_scalar("charts/episodic_return", float(np.mean(episode_returns)), env_steps)
            writer.add_scalar("charts/SPS", int(env_steps / (time.time() - start_time)), env_steps)

            if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.num_epochs:
                t3 = time.time()
                frames = [] if args.capture_video else None
                ret = evaluate(env, test_tasks[:n_eval], model, sac.actor, args, device, frames)
                progress.step("eval", 1, f"evaluating | {status(epoch + 1)}")
                ret_train = evaluate(env, train_tasks[:n_eval], model, sac.actor, args, device)
                progress.step("eval", 1, f"evaluating | {status(epoch + 1)}")
                t_eval, last_eval = time.time() - t3, ret
                log_eval({"iteration": epoch + 1, "env_steps": env_steps, "wall_time": time.time() - start_time,
                          "phase": "meta-train", "eval/return": ret, "eval/return_train_tasks": ret_train,
                          "time/collect": t_collect, "time/update": t_update, "time/relabel": 0.0, "time/eval": t_eval,
                          "time/model_update": t_model / args.train_steps, "time/sac_update": t_sac / args.train_steps})
                if frames:
                    envs.save_video(frames, os.path.join(args.run_dir, "videos", f"epoch{epoch + 1}.gif"))
            checkpoint(epoch + 1)
            progress.step("update", 0, f"{status(epoch + 1)} done | model {t_model / args.train_steps * 1e3:.1f} ms, "
                          f"SAC {t_sac / args.train_steps * 1e3:.1f} ms per step | eval return {last_eval:.2f}",
                          force=True)

        # ALGO LOGIC: Alg. 2, experience relabeling on each test task (MIER); MIER-wR stops above
        if args.relabel:
            progress.remaining["relabel"] = ((n_relabel - len(extrapolation_returns)) * args.extrapolation_epochs
                                             * args.sac_steps_per_epoch)
            progress.step("relabel", 0, f"Alg. 2 ({relabel_mode} relabeling, env.varies = {env.varies}) on test tasks "
                          f"{len(extrapolation_returns) + 1}-{n_relabel} of {n_relabel}", force=True)
            for j in range(len(extrapolation_returns), n_relabel):
                def on_step(e, s):  # a progress line at least every 30 s of Alg. 2
                    progress.step("relabel", 1, f"Alg. 2 ({relabel_mode} relabeling): test task {j + 1}/{n_relabel} "
                                  f"| epoch {e + 1}/{args.extrapolation_epochs} | SAC step {s + 1}")

                result = experience_relabeling(env, test_tasks[j], model, sac, sac_opts, replay, relabel_mode, args,
                                               device, rng, on_step=on_step)
                extrapolation_returns.append(result)
                checkpoint(args.num_epochs)
                r = result["returns"]
                progress.step("relabel", 0, f"Alg. 2: test task {j + 1}/{n_relabel} return {r[0]:.2f} (adapted) -> "
                              f"{r[-1]:.2f} (relabeled); model held-out NLL {result['val_nll']:.3f}", force=True)
            # one eval row per Alg. 2 epoch, averaged over test tasks (the first: adapted, not yet relabeled)
            R = np.array([e["returns"] for e in extrapolation_returns])
            T = np.array([e["timings"] for e in extrapolation_returns]).mean(0)
            nll_T = float(np.mean([e["val_nll"] for e in extrapolation_returns]))
            for i in range(R.shape[1]):
                t = T[max(i - 1, 0)]  # env steps: adaptation data + one evaluation episode (at most) per epoch
                log_eval({"iteration": args.num_epochs + 1 + i, "wall_time": time.time() - start_time,
                          "env_steps": env_steps + len(R) * (args.adapt_batch + (i + 1) * env.horizon),
                          "phase": "relabel", "eval/return": float(R[:, i].mean()), "relabel/model_val_nll": nll_T,
                          "relabel/fraction_relabeled": 1.0 - int(args.sac_batch * args.real_ratio) / args.sac_batch,
                          "time/collect": t[0], "time/update": t[1], "time/relabel": t[2], "time/eval": t[3],
                          "time/relabel_round": t[4]})
            print(f"MIER, {len(R)} test tasks: return {R[:, 0].mean():.2f} (adapted) -> {R[:, -1].mean():.2f}")
        print(f"done: eval.jsonl and TensorBoard logs in {args.run_dir}"
              + (f", checkpoint {ckpt_path}" if args.save_model else ""), flush=True)
    except KeyboardInterrupt as e:
        name = e.args[0] if e.args and e.args[0] in ("SIGINT", "SIGTERM") else "SIGINT"
        print(f"stopped by {name}; " + (f"the last finished checkpoint is {saved}" if saved
                                        else "no checkpoint was written yet"), file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name])
    finally:
        if writer is not None:
            writer.close()
        if env is not None:
            env.close()
