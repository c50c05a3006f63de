"""MIER: Model Identification and Experience Relabeling (and MIER-wR, without relabeling).

Paper: R. Mendonca*, X. Geng*, C. Finn, S. Levine, "Meta-Reinforcement Learning Robust to Distributional Shift
via Model Identification and Experience Relabeling" (2020). Numbering used in the comments:
  Eq. A   an adaptation step A_MAML (Sec. 2): phi_T = phi - alpha grad_phi E_{D_adapt}[-log p(s', r | s, a; theta, phi)]
  Eq. J   the model meta-loss (Sec. 2):        J(theta, phi) = E_{D_eval}[-log p(s', r | s, a; theta, phi_T)]
  Eq. R   Relabel(D, theta, phi_T) (Sec. 3):   s in D; a ~ pi(a | s, phi_T); (s', r) ~ p(s', r | s, a; theta, phi_T)
  Alg. 1  Model Identification Meta-Training;  Alg. 2  Experience Relabeling Adaptation.

A Gaussian model p(s', r | s, a; theta, phi) predicts [r, s' - s] from [s, a, phi], phi a small latent context.
Adapting to a task changes ONLY phi, by gradient steps on the model's negative log-likelihood (Eq. A); theta and
phi's initialization are meta-trained through those steps on a second batch (Eq. J, second order). SAC on
[s, phi_T] learns from all tasks' data, each with its adapted context (Alg. 1): that alone is MIER-wR. At meta-test
time MIER adapts phi further and keeps training SAC for the test task on meta-training transitions relabeled by
the adapted model (Eq. R, Alg. 2): the reward only for reward shifts, one-step model rollouts for dynamics shifts.

Defaults follow the authors' configs (configs/default.py, configs/envs/ood/*.json, configs/exps/mier-*.json);
see docs/mier.md for every deviation. Reproduce the paper's extrapolation comparison (Fig. 3) at full size:
    python mier.py --env cheetah-vel-ood-hard --no-relabel     # MIER-wR
    python mier.py --env cheetah-vel-ood-hard --relabel        # MIER (same meta-training, then Alg. 2)
and the reduced versions this CPU can run: benchmarks/mier.md.
"""

import copy
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Optional

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
    cheetah-vel (the paper's), or point-robot (cheap smoke tests)"""
    num_epochs: Optional[int] = None
    """meta-training epochs (authors: num_train_epochs)"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue from (networks, optimizers, buffers, epoch, RNG state)"""
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
    buffer_size: int = 100_000
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
    """Adam learning rate of the outer loop (theta, log-variance bounds, phi_0)"""
    inner_steps: int = 2
    """gradient steps on phi in the inner loop (Eq. A applied this many times)"""
    inner_lr: float = 0.01
    """inner-loop step size alpha of Eq. A"""
    grad_clip: float = 10.0
    """norm clip of each task's inner gradient and of each outer gradient tensor"""
    learn_context_init: bool = True
    """meta-learn phi_0 with theta (the paper); --no-learn-context-init keeps phi_0 = 0 (the authors' code)"""
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


# The authors' per-env configs: configs/default.py overridden by configs/envs/{benchmarks,ood}/<env>.json.
PAPER = dict(num_epochs=400, initial_repeats=5, tasks_per_epoch=5, steps_prior=400, steps_posterior=600,
             train_steps=1000, adapt_batch=200, context_dim=5, sac_hidden="300,300,300", sac_steps_per_epoch=1000,
             context_steps=10, finetune_steps=100)
ENV_DEFAULTS = {
    "cheetah-vel-ood-hard": {},  # ood/cheetah-vel-hard.json
    "cheetah-vel-ood-medium": {},  # ood/cheetah-vel-medium.json
    "cheetah-vel": {},  # benchmarks/cheetah-vel.json (in distribution)
    "ant-dir-ood": dict(num_epochs=600, adapt_batch=400, sac_hidden="256,256", sac_steps_per_epoch=50,
                        context_steps=20, finetune_steps=0),
    "cheetah-negated-joints": dict(context_dim=10, adapt_batch=400, sac_hidden="256,256", finetune_steps=0),
    "ant-negated-joints": dict(num_epochs=600, sac_hidden="256,256", finetune_steps=0),
    # Not in the paper: a cheap reward-shift family (dense goal reward) for smoke tests of the mechanics.
    "point-robot": dict(num_epochs=50, steps_prior=100, steps_posterior=100, train_steps=100, adapt_batch=50,
                        sac_hidden="64,64", sac_steps_per_epoch=100, context_steps=10, finetune_steps=0),
}
SUPPORTED = tuple(ENV_DEFAULTS)


# ----------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: the model p(s', r | s, a; theta, phi) and its adaptation (Sec. 2)
class DynamicsModel(nn.Module):
    """Gaussian over [r, s' - s] given [s, a, phi]; `context` is phi_0, the (meta-learned) pre-adaptation phi."""

    def __init__(self, obs_dim, act_dim, context_dim, hidden, layers, learn_context_init=True):
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
    if not phi.requires_grad:  # phi_0 frozen (--no-learn-context-init): the inner loop still differentiates phi
        phi = phi.detach().requires_grad_()
    for lr in lrs:
        (grad,) = torch.autograd.grad(nll(model, batch, phi).sum(), phi, create_graph=create_graph)
        grad = grad * (clip / grad.norm(dim=-1, keepdim=True).clamp_min(clip))  # per-task clip_by_norm
        phi = phi - lr * grad
    return phi


def meta_update(model, optimizer, adapt_batch, eval_batch, args):
    """One outer step of Alg. 1 (line 11): theta, phi_0 <- Adam on Eq. J after the inner steps; returns phi_T."""
    lrs = [args.inner_lr] * args.inner_steps
    phi_T = adapt(model, adapt_batch, lrs, args.grad_clip, create_graph=not args.first_order)
    loss = nll(model, eval_batch, phi_T).mean()
    optimizer.zero_grad()
    loss.backward()
    for p in model.parameters():  # the authors clip each gradient tensor by its own norm
        if p.grad is not None:
            nn.utils.clip_grad_norm_(p, args.grad_clip)
    optimizer.step()
    return phi_T.detach(), loss.item()


# ----------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: SAC on [s, phi] (softlearning's SAC: twin Q, target Q, automatic temperature)
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
# Experience relabeling (Sec. 3, Eq. R) and the test-time adaptation of Alg. 2
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


def experience_relabeling(env, test_task, model, sac, sac_opts, replay, mode, args, device, rng):
    """Alg. 2 on one test task, on a copy of the meta-trained SAC (restored afterwards). Returns the evaluation
    returns (before relabeling, then after each epoch), per-epoch timings and the adapted model's held-out NLL."""
    snapshot = copy.deepcopy(dict(sac=sac.state_dict(), opts=[o.state_dict() for o in sac_opts]))
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.set_task(test_task)
    t0 = time.time()
    # line 1: D_adapt from the test task with phi_0; lines 2-3: adapt phi (more steps than in meta-training)
    real_data, _ = rollout(env, sac.actor, model.context.detach(), args.adapt_batch, False, device)
    real = MultiTaskReplayBuffer(1, len(real_data["rew"]), obs_dim, act_dim)
    real.add(0, real_data)
    phi_T, test_model, val_nll = adapt_to_test_task(model, real_data, args, device, rng)
    rounds = -(-args.sac_steps_per_epoch // args.relabel_interval)
    relabeled = MultiTaskReplayBuffer(1, args.rollout_batch * rounds, obs_dim, act_dim)  # one epoch's worth, FIFO
    n_real = int(args.sac_batch * args.real_ratio)
    t_collect = time.time() - t0
    returns = [rollout(env, sac.actor, phi_T, env.horizon, True, device, episodes=1)[1][0]]
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
        t3 = time.time()
        returns.append(rollout(env, sac.actor, phi_T, env.horizon, True, device, episodes=1)[1][0])
        timings.append((t_collect if epoch == 0 else 0.0, t_update, t_relabel, time.time() - t3, t_relabel / rounds))
    sac.load_state_dict(snapshot["sac"])
    for opt, state in zip(sac_opts, snapshot["opts"]):
        opt.load_state_dict(state)
    return dict(returns=returns, timings=timings, val_nll=val_nll)


# ----------------------------------------------------------------------------------------------------------------
# Data collection and evaluation
@torch.no_grad()
def rollout(env, actor, phi, n_steps, deterministic, device, episodes=None, frames=None):
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


def evaluate(env, tasks, model, actor, args, device, frames=None):
    """The authors' meta-test protocol (MIER-wR): per task collect adapt_batch steps with phi_0, adapt phi with the
    inner loop (all tasks in one batched pass), then one deterministic episode with phi_T. Returns the mean return."""
    phi0 = model.context.detach()
    data = []
    for task in tasks:
        env.set_task(task)
        data.append(rollout(env, actor, phi0, args.adapt_batch, False, device)[0])
    batch = to_torch({k: np.stack([d[k] for d in data]) for k in FIELDS}, device)
    phi = adapt(model, batch, [args.inner_lr] * args.inner_steps, args.grad_clip, create_graph=False).detach()
    returns = []
    for i, task in enumerate(tasks):
        env.set_task(task)
        returns += rollout(env, actor, phi[i], env.horizon, True, device, 1, frames if i == 0 else None)[1]
    return float(np.mean(returns))


def make_env(args):
    """The family, with None fields of args filled from its per-env defaults; bad input -> a one-line error."""
    if args.env not in SUPPORTED:
        raise SystemExit(f"error: mier.py serves the families {', '.join(SUPPORTED)}; got '{args.env}'")
    try:
        env = envs.make(args.env, seed=args.seed, **({"render_mode": "rgb_array"} if args.capture_video else {}))
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    filled = []
    for key, value in {**PAPER, **ENV_DEFAULTS[args.env]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
            filled.append(f"{key}={value}")
    print(f"{args.env} per-env defaults: {', '.join(filled)}")
    positive = ("num_epochs", "initial_repeats", "tasks_per_epoch", "steps_prior", "steps_posterior", "buffer_size",
                "train_steps", "meta_batch", "adapt_batch", "context_dim", "model_hidden", "model_layers",
                "inner_steps", "eval_interval", "extrapolation_epochs", "sac_steps_per_epoch", "sac_repeat",
                "sac_batch", "relabel_interval", "rollout_batch", "cross_tasks", "context_steps")
    for name in positive:
        if getattr(args, name) < (minimum := 0 if name == "num_epochs" else 1):
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    n_train, n_test = len(env.train_tasks), len(env.test_tasks)
    if args.meta_batch > n_train:
        raise SystemExit(f"error: --meta-batch {args.meta_batch} is larger than the {n_train} train tasks ({args.env})")
    for name in ("num_eval_tasks", "relabel_tasks"):
        if getattr(args, name) is not None and not 1 <= getattr(args, name) <= n_test:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be in [1, {n_test}] (test tasks of {args.env})")
    if args.rollout_batch < args.cross_tasks:
        raise SystemExit(f"error: --rollout-batch {args.rollout_batch} must be >= --cross-tasks {args.cross_tasks}")
    if args.buffer_size < args.steps_prior + args.steps_posterior:
        raise SystemExit("error: --buffer-size must hold at least one collection (steps-prior + steps-posterior)")
    if not (0.0 <= args.real_ratio < 1.0 and 0.0 < args.train_val_ratio <= 1.0 and args.finetune_steps >= 0):
        raise SystemExit("error: need 0 <= --real-ratio < 1, 0 < --train-val-ratio <= 1, --finetune-steps >= 0")
    if not all(h.isdigit() and int(h) > 0 for h in args.sac_hidden.split(",")):
        raise SystemExit(f"error: --sac-hidden must be positive integers separated by commas, got '{args.sac_hidden}'")
    return env


if __name__ == "__main__":
    args = tyro.cli(Args)
    ckpt = None
    if args.resume is not None:
        if not os.path.isfile(args.resume):
            raise SystemExit(f"error: --resume: no checkpoint at '{args.resume}'")
        ckpt = torch.load(args.resume, weights_only=False)
    env = make_env(args)
    relabel_mode = "reward" if env.varies == "reward" else "dynamics"  # Sec. 3: reward-only vs one-step rollouts

    # TRY NOT TO MODIFY: seeding, output folder, logging
    torch.manual_seed(args.seed)  # numpy randomness all comes from `rng`
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.run_dir is None:
        args.run_dir = (os.path.dirname(os.path.abspath(args.resume)) if args.resume else
                        f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}")
    os.makedirs(args.run_dir, exist_ok=True)
    with open(os.path.join(args.run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=2)
    writer = SummaryWriter(args.run_dir)
    table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    ckpt_path = os.path.join(args.run_dir, "checkpoint.pt")

    def interrupted(*_):  # Ctrl-C: stop without a traceback; the checkpoint on disk is the last finished one
        raise SystemExit(f"interrupted; the last finished checkpoint is in {args.run_dir}")
    signal.signal(signal.SIGINT, interrupted)

    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    train_tasks, test_tasks = env.train_tasks, env.test_tasks
    n_eval = args.num_eval_tasks or len(test_tasks)
    model = DynamicsModel(obs_dim, act_dim, args.context_dim, args.model_hidden, args.model_layers,
                          args.learn_context_init).to(device)
    model_opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.model_lr)
    sac = SAC(obs_dim + args.context_dim, act_dim, [int(h) for h in args.sac_hidden.split(",")],
              args.log_alpha_init).to(device)
    sac_opts = sac.optimizers(args.sac_lr)
    # Alg. 1: the adaptation buffer holds only phi_0 data; the replay buffer R(T) holds all data of task T
    adapt_buffer = MultiTaskReplayBuffer(len(train_tasks), args.buffer_size, obs_dim, act_dim)
    replay = MultiTaskReplayBuffer(len(train_tasks), args.buffer_size, obs_dim, act_dim)
    stateful = dict(model=model, model_opt=model_opt, sac=sac, q_opt=sac_opts[0], actor_opt=sac_opts[1],
                    alpha_opt=sac_opts[2], adapt_buffer=adapt_buffer, replay=replay)
    start_epoch, env_steps, extrapolation_returns = 0, 0, []
    if ckpt is not None:
        for key, obj in stateful.items():
            obj.load_state_dict(ckpt[key])
        start_epoch, env_steps, extrapolation_returns = ckpt["epoch"], ckpt["env_steps"], ckpt["extrapolation_returns"]
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        print(f"resumed from {args.resume} at epoch {start_epoch}")
    env.reset(seed=args.seed + start_epoch)

    def checkpoint(epoch):  # atomic: a temp file in the same folder, then a rename; a crash never leaves half a file
        if args.save_model:
            torch.save({**{k: v.state_dict() for k, v in stateful.items()}, "epoch": epoch, "env_steps": env_steps,
                        "extrapolation_returns": extrapolation_returns, "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state()}, ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)

    def log_eval(row):
        for k, v in row.items():
            if "/" in k:
                writer.add_scalar(k, v, row["env_steps"])
        with open(os.path.join(args.run_dir, "eval.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    def collect(task_id, with_updated_context):
        """Alg. 1 lines 5-8 for one train task: D_adapt with phi_0 (-> both buffers); adapt phi on it (Eq. A); then
        D_eval with phi_T (-> replay buffer only)."""
        global env_steps
        env.set_task(train_tasks[task_id])
        d_adapt, returns = rollout(env, sac.actor, model.context.detach(), args.steps_prior, False, device)
        adapt_buffer.add(task_id, d_adapt), replay.add(task_id, d_adapt)
        env_steps += args.steps_prior
        if with_updated_context:
            batch = to_torch({k: v[None] for k, v in d_adapt.items()}, device)
            phi_T = adapt(model, batch, [args.inner_lr] * args.inner_steps, args.grad_clip, create_graph=False)
            d_eval, more = rollout(env, sac.actor, phi_T[0].detach(), args.steps_posterior, False, device)
            replay.add(task_id, d_eval)
            env_steps += args.steps_posterior
            returns += more
        return returns

    start_time, last_eval = time.time(), float("nan")
    if start_epoch == 0 and env_steps == 0:
        for task_id in range(len(train_tasks)):  # initial exploration with phi_0 for every train task
            for _ in range(args.initial_repeats):
                collect(task_id, with_updated_context=False)
        print(f"initial exploration: {env_steps} env steps in {time.time() - start_time:.1f}s")

    # ALGO LOGIC: Alg. 1, meta-training
    for epoch in range(start_epoch, args.num_epochs):
        t0 = time.time()
        episode_returns = []
        for task_id in rng.choice(len(train_tasks), args.tasks_per_epoch):  # with replacement, as the authors
            episode_returns += collect(task_id, with_updated_context=True)
        t_collect = time.time() - t0

        # the epoch's meta-batch of tasks is fixed, as the authors; each step: one model meta-update, one SAC update
        tasks = rng.choice(len(train_tasks), args.meta_batch, replace=False)
        t_model = t_sac = 0.0
        for step in range(args.train_steps):
            t1 = time.time()
            adapt_batch = to_torch(adapt_buffer.sample(tasks, args.adapt_batch, rng), device)
            eval_np = replay.sample(tasks, args.adapt_batch, rng)
            eval_batch = to_torch(eval_np, device)
            phi_T, model_loss = meta_update(model, model_opt, adapt_batch, eval_batch, args)
            t2 = time.time()
            # SAC on D_eval with each task's adapted context appended, all tasks as one batch (Alg. 1 line 12)
            obs, act, rew, next_obs = (x.flatten(0, 1) for x in eval_batch)
            phi = phi_T.repeat_interleave(args.adapt_batch, 0)
            q_loss, actor_loss, alpha = sac_update(sac, sac_opts, torch.cat([obs, phi], -1), act, rew,
                                                   torch.cat([next_obs, phi], -1),
                                                   torch.as_tensor(eval_np["term"], device=device).flatten(), args)
            t_model, t_sac = t_model + t2 - t1, t_sac + time.time() - t2
        t_update = time.time() - t0 - t_collect

        with torch.no_grad():
            pre = nll(model, adapt_batch, model.context.expand(len(tasks), -1)).mean().item()
        for tag, value in (("losses/model_nll_post_adaptation", model_loss), ("losses/model_nll_pre_adaptation", pre),
                           ("losses/qf_loss", q_loss), ("losses/actor_loss", actor_loss), ("losses/alpha", alpha),
                           ("losses/context_norm", phi_T.norm(dim=-1).mean().item())):
            writer.add_scalar(tag, value, env_steps)
        if episode_returns:  # collections shorter than an episode finish none
            writer.add_scalar("charts/episodic_return", float(np.mean(episode_returns)), env_steps)
        sps = int(env_steps / (time.time() - start_time))
        writer.add_scalar("charts/SPS", sps, env_steps)

        if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.num_epochs:
            t3 = time.time()
            frames = [] if args.capture_video else None
            ret = evaluate(env, test_tasks[:n_eval], model, sac.actor, args, device, frames)
            ret_train = evaluate(env, train_tasks[:n_eval], model, sac.actor, args, device)
            t_eval, last_eval = time.time() - t3, ret
            log_eval({"iteration": epoch + 1, "env_steps": env_steps, "wall_time": time.time() - start_time,
                      "phase": "meta-train", "eval/return": ret, "eval/return_train_tasks": ret_train,
                      "time/collect": t_collect, "time/update": t_update, "time/relabel": 0.0, "time/eval": t_eval,
                      "time/model_update": t_model / args.train_steps, "time/sac_update": t_sac / args.train_steps})
            if frames:
                envs.save_video(frames, os.path.join(args.run_dir, "videos", f"epoch{epoch + 1}.gif"))
        checkpoint(epoch + 1)
        eta = (time.time() - start_time) / (epoch + 1 - start_epoch) * (args.num_epochs - epoch - 1)
        print(f"epoch {epoch + 1}/{args.num_epochs} env_steps {env_steps} SPS {sps} "
              f"model {t_model / args.train_steps * 1e3:.1f}ms sac {t_sac / args.train_steps * 1e3:.1f}ms "
              f"eval/return {last_eval:.2f} ETA {eta / 60:.1f}min", flush=True)

    # ALGO LOGIC: Alg. 2, experience relabeling on each test task (MIER); MIER-wR stops above
    if args.relabel:
        n_relabel, ran = args.relabel_tasks or len(test_tasks), False
        print(f"experience relabeling ({relabel_mode} relabeling, env.varies = {env.varies}) on {n_relabel} test tasks")
        for j in range(len(extrapolation_returns), n_relabel):
            result = experience_relabeling(env, test_tasks[j], model, sac, sac_opts, replay, relabel_mode, args,
                                           device, rng)
            extrapolation_returns.append(result)
            checkpoint(args.num_epochs)
            ran, r = True, result["returns"]
            print(f"relabeling: test task {j + 1}/{n_relabel} return {r[0]:.2f} (adapted) -> {r[-1]:.2f} "
                  f"(relabeled); model held-out NLL {result['val_nll']:.3f}", flush=True)
        if ran:  # one eval row per Alg. 2 epoch, averaged over test tasks (the first: adapted, not yet relabeled)
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
    env.close()
    writer.close()
