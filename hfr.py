"""HFR: Hindsight Foresight Relabeling for Meta-Reinforcement Learning (Wan, Peng, Gangwani, ICLR 2022) on PEARL.

Paper: https://arxiv.org/abs/2109.09031   Authors' code: michaelwan11/hfr (built on oyster, PEARL's code).
This file is pearl.py (PEARL, arXiv:1903.08254) plus HFR's relabeler: `diff pearl.py hfr.py` shows what HFR adds.
Equation and algorithm numbers in comments are the PEARL paper's own:
    Eq. 1  E_T[ E_{z~q(z|c)}[ R(T, z) + beta KL( q(z|c) || N(0, I) ) ] ]   -> kl_lambda * KL, R = the critic loss
    Eq. 2  q(z | c_1:N) ~ prod_n Psi(z | c_n), Gaussian factors             -> ContextEncoder, product_of_gaussians
    Eq. 3  L_critic = E[ (Q(s, a, z) - (r + V_bar(s', z_bar)))^2 ]         -> Q loss, trains Q and the encoder
    Eq. 4  L_actor  = E[ KL( pi(a|s, z_bar) || exp(Q(s, a, z_bar)) / Z(s) ) ] -> policy loss, z detached
    Alg. 1 meta-training (collect data per task, then gradient steps); Alg. 2 meta-testing
plus SAC-v1's V loss (Haarnoja et al. 2018), which the authors' code trains beside Eq. 3 and Eq. 4;
and, for the relabeler, the HFR paper's ("Algorithm 1" is HFR's algorithm box, "Alg. 1" PEARL's):
    Eq. 8  q(psi | tau) ~ p(psi) exp(U_psi(tau) - log Z(psi)); §5.2's temperature exp(. / eps) -> relabel_distribution
    Eq. 9  U_psi(tau) (Eq. 4) ~ E_{s1 ~ B_psi, a1 ~ pi(.|s1, z ~ q(z|tau under r_psi))} Q(s1, a1, z)  -> utility
    Algorithm 1: ComputeUtility -> utility, GetLogPartition -> Relabeler.update_log_partition

What the file does: a context encoder q(z|c) turns a batch of transitions (s, a, r[, s']) of one task into a
Gaussian over a latent z (a product of per-transition Gaussian factors, Eq. 2); the SAC policy, twin Q and V are
conditioned on z. Meta-training (Alg. 1) collects data per task with z from the prior and from the posterior,
keeps an RL buffer and an encoder buffer per task, and takes gradient steps on a meta-batch of tasks as one
batched (tasks, batch, .) computation. Meta-test (Alg. 2): explore with z from the prior, then act with the
posterior inferred from the context gathered online (the protocol of the authors' code).
HFR: for half of the collection calls (never the initial data) each trajectory is rewritten with every train task's
reward (env.evaluate), scored by how well the policy adapted on it would do on each task (Eq. 9, one batched pass),
and stored, with the rewards and terminals of the task drawn from Eq. 8, in THAT task's buffers instead of its own.
Baselines: --relabel hipi (per transition, Q - log Z, HIPI), random (a uniform task per trajectory), none (PEARL).
Pixel families (env.renders_observations: visual-reacher) need no flag: a conv encoder gives every network features of
each observation's image; the state numbers before it (what the reward reads) reach only env.evaluate; images: uint8.

Reproduce the paper's Four-Corners comparison (Fig. 2; the authors' config, a meta-batch of 8 from the 4 tasks):
    for r in hfr hipi random none; do python hfr.py --env four-corners --relabel $r; done
The headline run (Sawyer push, Fig. 6; `--help` says what it costs):
    python hfr.py --env sawyer-push
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import json
import os
import random
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Callable, Literal, NoReturn, Optional

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
    """seed of the experiment (torch, numpy, env resets)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available (falls back to the CPU otherwise)"""
    capture_video: bool = False
    """write a GIF of one meta-test episode (first test task, last trajectory) to run_dir/videos/"""
    save_model: bool = True
    """write run_dir/checkpoint.pt (atomically) after every iteration"""
    env: str = "cheetah-vel"
    """task family (python -m envs lists them)"""
    num_iterations: Optional[int] = None
    """outer iterations (collect, train, evaluate); the run length, as in the authors' configs"""
    bf16: bool = False
    """run the networks' hidden layers under bfloat16 autocast (value heads, targets and losses stay float32)"""
    matmul: Literal["auto", "default", "onednn"] = "auto"
    """fp32 products on the CPU: torch's path (MKL), oneDNN, or auto: the faster here, measured at start"""
    resume: Optional[str] = None
    """continue from this checkpoint.pt (or a run directory containing one), with the hyperparameters stored in it"""
    run_dir: Optional[str] = None
    """output directory (default runs/{env}__{exp_name}__{seed}__{unix time}/)"""

    # ---- PEARL: None = the authors' value for --env (--help --env E prints them for E), a flag overrides it
    num_train_tasks: Optional[int] = None
    """use only the first N train tasks of the env (default: all)"""
    meta_batch: Optional[int] = None
    """tasks per gradient step, drawn with replacement (so it may exceed the train tasks, as on four-corners)"""
    num_initial_steps: Optional[int] = None
    """transitions collected per train task at iteration 0 with z from the prior"""
    num_tasks_sample: Optional[int] = None
    """train tasks sampled (with replacement) for new data per iteration"""
    num_steps_prior: Optional[int] = None
    """transitions per sampled task with z ~ prior (RL and encoder buffers)"""
    num_steps_posterior: Optional[int] = None
    """transitions per sampled task with z ~ posterior (RL and encoder buffers)"""
    num_extra_rl_steps_posterior: Optional[int] = None
    """transitions per sampled task with z ~ posterior (RL buffer only)"""
    num_train_steps_per_itr: Optional[int] = None
    """gradient steps per iteration"""
    batch_size: Optional[int] = None
    """RL transitions per task in a gradient step"""
    embedding_batch_size: Optional[int] = None
    """context transitions per task fed to the encoder"""
    num_evals: Optional[int] = None
    """meta-test runs per task"""
    num_steps_per_eval: Optional[int] = None
    """env steps per meta-test run (several trajectories)"""
    num_exp_traj_eval: Optional[int] = None
    """meta-test trajectories with z from the prior before the posterior is used"""
    discount: Optional[float] = None
    """discount factor gamma"""
    reward_scale: Optional[float] = None
    """reward multiplier in the Q target: the inverse SAC temperature (there is no alpha)"""
    kl_lambda: Optional[float] = None
    """weight of KL(q(z|c) || N(0, I)), summed over the meta-batch"""
    use_next_obs_in_context: Optional[bool] = None
    """context transitions are (s, a, r, s') instead of (s, a, r) (default: True for dynamics families)"""
    critic_dense_reward: Optional[bool] = None
    """critic on the dense reward (env.evaluate_dense), encoder on the env's: PEARL's sparse-point-robot recipe"""
    reward_delay: int = 1
    """pay rewards as their sum every N steps and at the episode end (MCAT's delayed rewards, envs.DelayedReward)"""
    use_information_bottleneck: bool = True
    """probabilistic z (product of Gaussians + KL); False: z = mean of deterministic encoder outputs"""
    latent_size: int = 5
    """dimension of z"""
    net_size: int = 300
    """width of the 3 hidden layers of the policy, Q and V networks"""
    encoder_size: int = 200
    """width of the 3 hidden layers of the context encoder"""
    learning_rate: float = 3e-4
    """Adam learning rate of the policy, Q, V and encoder"""
    soft_target_tau: float = 0.005
    """Polyak rate of the target V"""
    policy_mean_reg_weight: float = 1e-3
    """L2 weight on the policy mean"""
    policy_std_reg_weight: float = 1e-3
    """L2 weight on the policy log-std"""
    replay_buffer_size: int = 1_000_000
    """transitions per task in each of the RL and encoder buffers (FIFO; the authors' 1e6); memory follows the data"""
    eval_interval: int = 1
    """evaluate every N iterations (and after the last)"""
    video_interval: int = 25
    """with --capture-video, write a GIF at evaluations of every N-th iteration (and after the last)"""

    relabel: Literal["hfr", "hipi", "random", "none"] = "hfr"
    """hfr (Eq. 8-9), hipi (per transition, Q - log Z), random (a uniform task, every call) or none (PEARL)"""
    utility_batch_size: Optional[int] = None
    """N: start states per task in Eq. 9 (Fig. 8a); default 256, four-corners 1024, ant-goal-sparse 64"""
    epsilon: float = 1.0
    """temperature of the relabel distribution, q ~ exp((U - log Z) / epsilon) (§5.2)"""
    hardmax: bool = False
    """relabel to the argmax of U - log Z instead of sampling from Eq. 8 (§5.2, epsilon -> 0; Fig. 8e-h)"""
    partition: bool = True
    """subtract log Z in Eq. 8; --no-partition drops it (Fig. 8b)"""
    learned_reward: bool = False
    """relabel rewards with a model r(s, a, task) fit to the RL batches, terminals with env.evaluate (Fig. 8c/d)"""
    relabel_prob: float = 0.5
    """chance that a collection call's trajectories are relabeled (hfr, hipi); the others stay with their task"""
    log_partition_samples: int = 20
    """M: contexts per task averaged in log Z (Algorithm 1, GetLogPartition)"""


# ---------------------------------------------------------------------------------------------- networks
class ContextEncoder(nn.Module):
    """q(z | c), Eq. 2: an MLP 3x200 per context transition; with the information bottleneck each transition gives
    a Gaussian factor Psi(z | c_n) (mean, softplus variance) and the posterior is their product; without it z is the
    mean of the outputs (a deterministic z)."""

    def __init__(self, ctx_dim: int, latent: int, hidden: int, ib: bool):
        super().__init__()
        self.latent, self.ib = latent, ib
        self.net = mlp([ctx_dim, hidden, hidden, hidden, 2 * latent if ib else latent], 3e-3)

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """context (..., N, ctx_dim) -> posterior mean and variance (..., latent), in float32."""
        out = self.net(context).float()
        if not self.ib:
            return out.mean(-2), None
        return product_of_gaussians(out[..., : self.latent], F.softplus(out[..., self.latent:]))


def mlp(sizes: list[int], last_init: float) -> nn.Sequential:
    """rlkit's Mlp: ReLU hidden layers with its `fanin_init` (U(+-1/sqrt(size[0])) of the (out, in) weight, i.e.
    the fan-out, kept as the authors ran it) and biases 0.1; last layer U(+-last_init) for weight and bias."""
    layers = []
    for i in range(len(sizes) - 1):
        lin = Linear(sizes[i], sizes[i + 1])  # nn.Linear (the speed section picks its fp32 kernel)
        if i < len(sizes) - 2:
            nn.init.uniform_(lin.weight, -1 / np.sqrt(lin.weight.shape[0]), 1 / np.sqrt(lin.weight.shape[0]))
            nn.init.constant_(lin.bias, 0.1)
            layers += [lin, nn.ReLU(inplace=True)]
        else:
            nn.init.uniform_(lin.weight, -last_init, last_init)
            nn.init.uniform_(lin.bias, -last_init, last_init)
            layers.append(lin)
    return nn.Sequential(*layers)


def product_of_gaussians(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: the posterior of independent Gaussian factors N(mu_n, var_n) over the context axis -2,
    var = 1 / sum_n 1/var_n,  mu = var * sum_n mu_n / var_n."""
    var = var.clamp(min=1e-7)
    post_var = 1.0 / torch.reciprocal(var).sum(-2)
    return post_var * (mu / var).sum(-2), post_var


def kl_to_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Eq. 1's KL( N(mu, diag var) || N(0, I) ), summed over the latent dims: 0.5 sum(var + mu^2 - 1 - log var)."""
    return 0.5 * (var + mu.square() - 1.0 - var.log()).sum(-1)


def sample_z(mu: torch.Tensor, var: Optional[torch.Tensor]) -> torch.Tensor:
    """One reparameterized z per task (the mean itself without the information bottleneck)."""
    return mu if var is None else mu + var.sqrt() * torch.randn_like(mu)


class TanhGaussianPolicy(nn.Module):
    """pi(a | s, z): MLP 3x300 -> mean and log-std (clamped to [-20, 2]); a = tanh(mean + std * eps)."""

    def __init__(self, obs_dim: int, latent: int, act_dim: int, hidden: int):
        super().__init__()
        self.act_dim = act_dim
        self.net = mlp([obs_dim + latent, hidden, hidden, hidden, 2 * act_dim], 1e-3)

    def mean_log_std(self, obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([obs, z], -1)).float()
        return out[..., : self.act_dim], out[..., self.act_dim:].clamp(-20.0, 2.0)

    def forward(self, obs: torch.Tensor, z: torch.Tensor):
        """Reparameterized action, its log-prob (float32) and the pre-squash mean / log-std (regularized)."""
        mean, log_std = self.mean_log_std(obs, z)
        eps = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * eps
        action = torch.tanh(pre_tanh)
        # log N(pre_tanh; mean, std) - log(1 - tanh^2 + 1e-6), rlkit's TanhNormal with its epsilon
        log_pi = (-0.5 * eps.square() - log_std - 0.5 * np.log(2 * np.pi)
                  - torch.log(1.0 - action.square() + 1e-6)).sum(-1, keepdim=True)
        return action, log_pi, mean, log_std

    def act(self, obs: torch.Tensor, z: torch.Tensor, *, deterministic: bool) -> torch.Tensor:

        mean, log_std = self.mean_log_std(obs, z)
        return torch.tanh(mean if deterministic else mean + log_std.exp() * torch.randn_like(mean))


class Critic(nn.Module):
    """An MLP 3x300 on a concatenated input: Q([s, a, z]) or V([s, z]). Under --bf16 the hidden layers run in
    bfloat16 and the value head (the last Linear) in float32: with reward_scale 100 Q reaches -1e3..-1e4, where
    bfloat16's 8 bits of mantissa round to steps of 8..64, coarser than the differences the targets carry."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = mlp([in_dim, hidden, hidden, hidden, 1], 3e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[:-1](x)
        with torch.autocast(x.device.type, enabled=False):
            return self.net[-1](h.float())


class PixelEncoder(nn.Module):
    """Pixel families: an observation's image (its last C*H*W entries, values k/255) -> 50 features, which the
    context encoder, policy and critics read in place of the observation; the state numbers before the image never
    reach it. HFR gives no architecture for its visual reacher (code not released), so this is SAC-AE's encoder
    (Yarats et al. 2019, arXiv:1910.01741): 4 conv layers of 32 3x3 filters, strides 2, 1, 1, 1, ReLUs, a Linear
    to 50, LayerNorm, tanh. Deviations from SAC-AE: one encoder, head included, for all networks (SAC-AE's actor
    has its own head), torch's default initialization (SAC-AE: orthogonal), no decoder."""

    def __init__(self, image_shape: tuple[int, int, int], features: int = 50):
        super().__init__()
        c, h, w = self.image_shape = tuple(image_shape)
        self.image_size, self.out_dim = c * h * w, features
        self.convs = nn.Sequential(nn.Conv2d(c, 32, 3, stride=2), nn.ReLU(inplace=True), nn.Conv2d(32, 32, 3),
                                   nn.ReLU(inplace=True), nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
                                   nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True), nn.Flatten())
        flat = 32 * ((h - 3) // 2 - 5) * ((w - 3) // 2 - 5)  # 64 x 64 -> 31 x 31 -> 25 x 25 feature maps
        self.head = nn.Sequential(Linear(flat, features), nn.LayerNorm(features), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (..., state_dim + C*H*W) -> features (..., 50)."""
        image = obs[..., obs.shape[-1] - self.image_size:].reshape(-1, *self.image_shape)
        return self.head(self.convs(image)).reshape(*obs.shape[:-1], self.out_dim)


class PEARL(nn.Module):
    """All networks of the agent: encoder, policy, twin Q, V and the Polyak-averaged target V; for a pixel family
    (image_shape given) also the PixelEncoder shared by all of them, which `features` and `posterior` apply."""

    def __init__(self, obs_dim: int, act_dim: int, ctx_dim: int, args: Args,
                 image_shape: Optional[tuple[int, int, int]] = None):
        super().__init__()
        L, h = args.latent_size, args.net_size
        self.obs_dim, self.act_dim, self.pixels = obs_dim, act_dim, None
        if image_shape is not None:  # the networks read features: one per observation, two in an (s, a, r, s') row
            self.pixels = PixelEncoder(image_shape)
            ctx_dim -= (ctx_dim - act_dim - 1) // obs_dim * (obs_dim - self.pixels.out_dim)
            obs_dim = self.pixels.out_dim
        self.encoder = ContextEncoder(ctx_dim, L, args.encoder_size, ib=args.use_information_bottleneck)
        self.policy = TanhGaussianPolicy(obs_dim, L, act_dim, h)
        self.qf1, self.qf2 = Critic(obs_dim + act_dim + L, h), Critic(obs_dim + act_dim + L, h)
        self.vf, self.target_vf = Critic(obs_dim + L, h), Critic(obs_dim + L, h)
        self.target_vf.load_state_dict(self.vf.state_dict())
        self.target_vf.requires_grad_(False)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """What the networks read of observations (..., obs_dim): the PixelEncoder's features for a pixel family,
        else the observations themselves."""
        return obs if self.pixels is None else self.pixels(obs)

    def posterior(self, context: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """q(z | c), Eq. 2, of context rows (..., N, ctx_dim) = (s, a, r[, s']), their observations as `features`."""
        if self.pixels is None:
            return self.encoder(context)
        o, a = self.obs_dim, self.obs_dim + self.act_dim + 1
        next_obs = [self.features(context[..., a:])] if context.shape[-1] > a else []
        return self.encoder(torch.cat([self.features(context[..., :o]), context[..., o:a], *next_obs], -1))


def make_optimizers(agent: PEARL, lr: float) -> dict[str, torch.optim.Optimizer]:
    """Separate Adams as the authors' code (one for both Q nets: Adam is per-parameter, so this equals two).
    fused=True: one kernel per optimizer step instead of a dozen passes over the parameters. A PixelEncoder steps
    with the context encoder: both learn from Eq. 3 and the KL only (as SAC-AE's encoder, from the critic's loss)."""
    kw = dict(lr=lr, fused=True)
    pixels = [] if agent.pixels is None else list(agent.pixels.parameters())
    return {"qf": torch.optim.Adam([*agent.qf1.parameters(), *agent.qf2.parameters()], **kw),
            "encoder": torch.optim.Adam([*agent.encoder.parameters(), *pixels], **kw),
            "vf": torch.optim.Adam(agent.vf.parameters(), **kw),
            "policy": torch.optim.Adam(agent.policy.parameters(), **kw)}


# ---------------------------------------------------------------------------------------------- replay buffers
class TaskReplayBuffers:
    """One FIFO buffer of `capacity` transitions per train task. A row packs a transition as
    [obs, act, reward, next_obs, done] (float32), so the encoder's context (s, a, r[, s']) is a prefix of the row.
    Whole trajectories go in (`add_trajectory`), random transitions of many tasks come out (`sample`). Each task's
    arrays grow with what they hold (doubling, up to the capacity), so memory follows the data, not the capacity:
    the authors' 1e6 per task is affordable, and no large array is preallocated (numpy asks the kernel for 2 MB
    transparent huge pages on arrays of 4 MB and more, and each task's first rows would fault one in). Images (the
    last image_size entries of obs and of next_obs, values k/255) are kept as the bytes k, the other columns as
    float32: a 64 x 64 pixel transition takes 24.6 kB instead of 98 kB, and comes out of `sample` bit for bit."""

    def __init__(self, n_tasks: int, capacity: int, obs_dim: int, act_dim: int, image_size: int = 0):
        self.capacity, self.width, self.image_size = capacity, 2 * obs_dim + act_dim + 2, image_size
        self.image_at = (obs_dim - image_size, self.width - 1 - image_size)  # first columns of obs's, next_obs's image
        image = np.zeros(self.width, bool)
        for start in self.image_at:
            image[start:start + image_size] = True
        self.floats, self.pixels = np.flatnonzero(~image), np.flatnonzero(image)  # column indices
        self.data = [np.zeros((0, len(self.floats)), np.float32) for _ in range(n_tasks)]
        self.images = [np.zeros((0, len(self.pixels)), np.uint8) for _ in range(n_tasks)]
        self.size = np.zeros(n_tasks, np.int64)
        self.ptr = np.zeros(n_tasks, np.int64)

    def add_trajectory(self, task: int, rows: np.ndarray) -> None:
        held = min(self.size[task] + len(rows), self.capacity)
        if held > len(self.data[task]):  # not full yet, so rows 0..size-1 are the data: copy them to larger arrays
            n = min(max(held, 2 * len(self.data[task]), 1024), self.capacity)
            for arrays in (self.data, self.images):
                grown = np.empty((n, arrays[task].shape[1]), arrays[task].dtype)
                grown[: self.size[task]] = arrays[task][: self.size[task]]
                arrays[task] = grown
        idx = (self.ptr[task] + np.arange(len(rows))) % self.capacity
        self.data[task][idx] = rows[:, self.floats]
        self.images[task][idx] = np.rint(rows[:, self.pixels] * 255)
        self.ptr[task] = (self.ptr[task] + len(rows)) % self.capacity
        self.size[task] = held

    def clear(self, task: int) -> None:
        self.size[task] = self.ptr[task] = 0

    def sample(self, tasks: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """(len(tasks), n, width): n transitions drawn uniformly with replacement from each task's buffer."""
        idx = rng.integers(0, self.size[tasks][:, None], size=(len(tasks), n))
        floats = np.stack([self.data[t][i] for t, i in zip(tasks, idx)])
        if not self.image_size:
            return floats  # all of the row
        images, size = np.stack([self.images[t][i] for t, i in zip(tasks, idx)]), self.image_size
        rows = np.empty((len(tasks), n, self.width), np.float32)
        rows[..., self.floats] = floats
        for k, start in enumerate(self.image_at):  # k / 255 as the env computes it (slices: 10x faster than indices)
            np.divide(images[..., k * size:(k + 1) * size], np.float32(255), out=rows[..., start:start + size])
        return rows

    def state_dict(self) -> dict:
        return {"rows": [self.data[t][: self.size[t]].copy() for t in range(len(self.size))],
                "images": [self.images[t][: self.size[t]].copy() for t in range(len(self.size))],
                "size": self.size.copy(), "ptr": self.ptr.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.size[:], self.ptr[:] = state["size"], state["ptr"]
        self.data = [np.array(rows, np.float32).reshape(-1, len(self.floats)) for rows in state["rows"]]
        images = state.get("images") or [np.zeros((len(rows), 0)) for rows in self.data]  # older checkpoints: none
        self.images = [np.array(x, np.uint8).reshape(len(rows), len(self.pixels)) for rows, x in zip(self.data, images)]


def pack(traj: dict, reward: np.ndarray) -> np.ndarray:
    """Buffer rows [obs, act, reward, next_obs, done] of a trajectory, with the given reward column."""
    return np.concatenate([traj["obs"], traj["act"], reward[:, None], traj["next_obs"], traj["done"][:, None]],
                          1, dtype=np.float32)


def delay_rewards(rew: np.ndarray, delay: int) -> np.ndarray:
    """Per-step rewards (..., T) of one whole episode as envs.DelayedReward pays them: zero, except the sum of
    the last `delay` steps at every delay-th step and the sum of the remainder at the final step."""
    if delay == 1:
        return rew
    paid = np.zeros(rew.shape[-1], dtype=bool)
    paid[delay - 1::delay] = paid[-1] = True
    cumulative = np.cumsum(rew, -1)[..., paid]
    out = np.zeros_like(rew)
    out[..., paid] = np.diff(cumulative, axis=-1, prepend=0.0)
    return out


def trajectory_rewards(env: envs.TaskEnv, traj: dict, task: np.ndarray, args: Args):
    """(reward the encoder sees, reward the critic is trained on, terminated) of a whole episode under `task`;
    env.evaluate gives per-step rewards, so a delayed-reward run delays them here as the env wrapper did."""
    rew, done = env.evaluate(traj["obs"], traj["act"], traj["next_obs"], task)
    critic = env.evaluate_dense(traj["obs"], traj["act"], traj["next_obs"], task) if args.critic_dense_reward else rew
    return delay_rewards(rew, args.reward_delay), delay_rewards(critic, args.reward_delay), done


# ---------------------------------------------------------------------------------------------- HFR: the relabeler
def relabel_distribution(utility, log_z, epsilon: float = 1.0) -> np.ndarray:
    """Eq. 8 as probabilities, with §5.2's temperature: q(j | tau) = softmax_j((U_j(tau) - log Z_j) / epsilon) over
    the last axis (the uniform prior p(psi) cancels; epsilon = 1 is Eq. 8 itself)."""
    logits = (np.asarray(utility, np.float64) - np.asarray(log_z, np.float64)) / epsilon
    q = np.exp(logits - logits.max(-1, keepdims=True))
    return q / q.sum(-1, keepdims=True)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log (1/M) sum_m exp(x_m) along dim: Algorithm 1's Monte-Carlo log Z, via a stable logsumexp."""
    return torch.logsumexp(x, dim) - np.log(x.shape[dim])


def sample_categorical(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of the probabilities q (..., K), by the inverse CDF of that row."""
    cdf = q.cumsum(-1)
    cdf[..., -1] = 1.0  # rounding must not leave a sliver of probability past the last task
    return (cdf > rng.random(q.shape[:-1] + (1,))).argmax(-1)


@torch.inference_mode()
def utility(agent: PEARL, context: torch.Tensor, start_obs: torch.Tensor) -> torch.Tensor:
    """Eq. 9 (Algorithm 1, ComputeUtility) for a batch (...) of (trajectory, task) pairs: the trajectory under the
    task's reward, context (..., T, ctx_dim), gives z ~ q(z | context) (the adaptation f_phi); the task's start states
    (..., N, obs_dim) and a1 ~ pi(. | s1, z) give U = mean_n min(Q1, Q2)(s1_n, a1_n, z), no -log pi (the authors')."""
    s1 = agent.features(start_obs)  # as the networks read them
    z = sample_z(*agent.posterior(context))[..., None, :].expand(*s1.shape[:-1], -1)
    s_a_z = torch.cat([s1, agent.policy.act(s1, z, deterministic=False), z], -1)
    return torch.min(agent.qf1(s_a_z), agent.qf2(s_a_z)).float().mean((-2, -1))


class Relabeler:
    """Where collected trajectories go (the authors' relabel_hfr_q) and HFR's state: orig_buf, each task's ORIGINAL data
    of its latest collection (for the collection posterior and log Z); start_buf, the first transition of every
    trajectory in a task's RL buffer (s1 ~ B_psi of Eq. 9); lazy clearing of the encoder buffers (docs/hfr.md)."""

    def __init__(self, env, agent, train_tasks, rl_buf, enc_buf, args, obs_dim, act_dim, ctx_dim, device):
        K = len(train_tasks)
        self.env, self.agent, self.tasks, self.rl_buf, self.enc_buf = env, agent, train_tasks, rl_buf, enc_buf
        self.args, self.obs_dim, self.act_dim, self.ctx_dim, self.device = args, obs_dim, act_dim, ctx_dim, device
        per_call = max(args.num_initial_steps,
                       args.num_steps_prior + args.num_steps_posterior + args.num_extra_rl_steps_posterior)
        self.orig_buf = TaskReplayBuffers(K, per_call + 3 * env.horizon, obs_dim, act_dim, rl_buf.image_size)
        self.start_buf = TaskReplayBuffers(K, max(args.replay_buffer_size // env.horizon, 1), obs_dim, act_dim,
                                           rl_buf.image_size)
        self.log_z = np.zeros(K)  # Algorithm 1's log Z: refreshed after each iteration's collection, zeros before
        self.cleared, self.reward_model, self.reward_optim = np.zeros(K, bool), None, None
        if args.learned_reward:  # r(s, a, task), an MLP like the critics (Fig. 8c/d, in the block below)
            self.reward_model = Critic(obs_dim + act_dim + env.task_dim, args.net_size).to(device)
            self.reward_optim = torch.optim.Adam(self.reward_model.parameters(), lr=args.learning_rate)
        self.seconds, self.stats = 0.0, dict.fromkeys(("trajs", "relabeled", "steps", "moved", "decisions", "hits",
                                                       "informative", "entropy", "log_z"), 0.0)

    def tensor(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, np.float32), device=self.device)

    def end_collection(self) -> None:
        """Each task's encoder buffer is cleared when the next iteration's data first reaches it (the authors'
        should_clear flags, reset after collection; so in iteration 0 the initial pool stays beside the new data)."""
        self.cleared[:] = False

    def hfr_distribution(self, traj: dict, rew: np.ndarray, rng) -> np.ndarray:
        """Foresight: U_j of Eq. 9 for every task j in one batched pass, then Eq. 8. -> (1, K)"""
        K, col = len(self.tasks), self.obs_dim + self.act_dim
        context = np.repeat(pack(traj, rew[0])[None], K, 0)
        context[:, :, col] = rew  # hindsight: r_t replaced by r_psi_j(s_t, a_t), task j in row j
        start_obs = self.start_buf.sample(np.arange(K), self.args.utility_batch_size, rng)[..., :self.obs_dim]
        u = utility(self.agent, self.tensor(context[..., :self.ctx_dim]), self.tensor(start_obs)).cpu().numpy()
        return self.eq8(u[None], self.log_z)

    def eq8(self, u: np.ndarray, log_z) -> np.ndarray:
        """Eq. 8 over the train tasks (the last axis) for scores u, log Z subtracted."""
        if not self.args.partition or self.args.hardmax:  # the ablations, in the block below
            return self.ablated_distribution(u, log_z)
        return relabel_distribution(u, log_z, self.args.epsilon)

    @torch.inference_mode()
    def update_log_partition(self, rng) -> None:
        """Algorithm 1, GetLogPartition, all tasks at once: log Z_j = log mean_m exp U_j(tau_m), tau_m = H transitions
        of task j's recent original data; once per iteration after collection (the next one relabels with it)."""
        if self.args.relabel != "hfr" or not self.args.partition:
            return
        t0 = time.time()
        tasks = np.flatnonzero((self.orig_buf.size > 0) & (self.start_buf.size > 0))
        u = []
        for _ in range(self.args.log_partition_samples):  # one batched pass over all tasks per draw
            context = self.orig_buf.sample(tasks, self.env.horizon, rng)[..., :self.ctx_dim]
            start_obs = self.start_buf.sample(tasks, self.args.utility_batch_size, rng)[..., :self.obs_dim]
            u.append(utility(self.agent, self.tensor(context), self.tensor(start_obs)))
        self.log_z[tasks] = log_mean_exp(torch.stack(u), 0).cpu().numpy()
        self.seconds += time.time() - t0

    def store(self, batch: list[dict], task_idx: int, rng, *, add_to_encoder: bool, may_relabel: bool) -> None:
        """§4.2: a collection call's trajectories go to their task's buffers or, relabeled, to a task drawn from q."""
        for traj in batch:  # the originals always go to the task's recent-data buffer
            self.orig_buf.add_trajectory(task_idx, pack(traj, traj["rew"]))
        mode, s = self.args.relabel, self.stats
        relabel = may_relabel and mode != "none" and (mode == "random" or rng.random() < self.args.relabel_prob)
        s["trajs"] += len(batch) if may_relabel else 0
        if not relabel:
            for traj in batch:
                self.add(np.full(len(traj["rew"]), task_idx), traj, traj["rew"], traj["critic_rew"], traj["done"],
                         add_to_encoder=add_to_encoder)
            return
        t0 = time.time()
        for traj in batch:  # hindsight (Algorithm 1, ComputeUtility: r_t -> r_psi(s_t, a_t)), (K, T), then foresight
            rew, critic, done = trajectory_rewards(self.env, traj, self.tasks[:, None], self.args)
            best = rew if mode == "hipi" else rew.max(1, keepdims=True)  # best reward per decision, for hit_rate
            if self.reward_model is not None:  # Fig. 8c/d, in the block below
                rew = critic = self.predicted_reward(traj)
            q = self.hfr_distribution(traj, rew, rng) if mode == "hfr" else self.baseline_distribution(traj, rng)
            choice, T, t = sample_categorical(q, rng), len(traj["rew"]), np.arange(len(traj["rew"]))
            dest = np.broadcast_to(choice, (T,))  # a task per trajectory (per transition: HIPI)
            self.add(dest, traj, rew[dest, t], critic[dest, t], done[dest, t], add_to_encoder=add_to_encoder)
            s["relabeled"], s["steps"], s["decisions"] = s["relabeled"] + 1, s["steps"] + T, s["decisions"] + len(q)
            s["moved"] += (dest != task_idx).sum()
            s["hits"] += (best[choice, np.arange(len(q))] > best.min(0)).sum()  # above the floor of all K tasks
            s["informative"] += (best.max(0) > best.min(0)).sum()  # above the floor under some task
            s["entropy"] -= (q * np.log(np.where(q > 0, q, 1.0))).sum(-1).sum()  # H(q) in nats, 0 log 0 = 0
        self.seconds += time.time() - t0

    def add(self, dest: np.ndarray, traj: dict, rew, critic_rew, done, *, add_to_encoder: bool) -> None:
        """Transition t of traj, with the given rewards and terminals, into task dest[t]'s buffers."""
        rl_rows, enc_rows = (pack(dict(traj, done=done), r) for r in (critic_rew, rew))
        self.start_buf.add_trajectory(dest[0], rl_rows[:1])
        for j in np.unique(dest):  # insertion only: one slice per receiving task (a single one unless HIPI)
            self.rl_buf.add_trajectory(j, rl_rows[dest == j])
            if add_to_encoder:
                if not self.cleared[j]:
                    self.enc_buf.clear(j)
                    self.cleared[j] = True
                self.enc_buf.add_trajectory(j, enc_rows[dest == j])

    def pop_stats(self) -> dict:
        """relabel/* and time/relabel (a part of time/collect, and of time/update) of the iteration, then reset."""
        s = self.stats
        log_z = self.log_z.mean() if self.args.relabel == "hfr" else s["log_z"] / max(s["relabeled"], 1)
        out = {"relabel/fraction_relabeled": s["relabeled"] / max(s["trajs"], 1),
               "relabel/fraction_to_other_task": s["moved"] / max(s["steps"], 1),
               "relabel/entropy": s["entropy"] / max(s["decisions"], 1), "relabel/log_z_mean": float(log_z),
               "relabel/hit_rate": s["hits"] / s["informative"] if s["informative"] else float("nan"),
               "time/relabel": self.seconds}
        self.stats, self.seconds = dict.fromkeys(s, 0.0), 0.0
        return out

    def state_dict(self) -> dict:
        parts = {"orig_buf": self.orig_buf, "start_buf": self.start_buf, "reward_model": self.reward_model,
                 "reward_optim": self.reward_optim}
        return {"log_z": self.log_z.copy(), "cleared": self.cleared.copy(),
                **{k: v.state_dict() for k, v in parts.items() if v is not None}}

    def load_state_dict(self, state: dict) -> None:
        self.log_z[:], self.cleared[:] = state["log_z"], state["cleared"]
        for k in ("orig_buf", "start_buf") + (("reward_model", "reward_optim") if self.reward_model else ()):
            getattr(self, k).load_state_dict(state[k])

    # ---- baselines and ablations (not part of Algorithm 1) -------------------------------------------------------
    @torch.inference_mode()
    def baseline_distribution(self, traj: dict, rng) -> np.ndarray:
        """--relabel random: a uniform task per trajectory, (1, K). --relabel hipi, HIPI as the authors ran it
        (relabel_hipi), per transition, (T, K): z_j from a context batch of task j's encoder buffer,
        Q_j(s_t, a_t) = min(Q1, Q2)(s_t, a_t, z_j), log Z_j = log mean_t exp Q_j, p(j | s_t, a_t) ~ exp(Q_j - log Z_j)
        (its argmax with --hardmax)."""
        K, T = len(self.tasks), len(traj["obs"])
        if self.args.relabel == "random":
            return np.full((1, K), 1.0 / K)
        context = self.enc_buf.sample(np.arange(K), self.args.embedding_batch_size, rng)
        z = sample_z(*self.agent.posterior(self.tensor(context[..., :self.ctx_dim])))
        obs, act = self.agent.features(self.tensor(traj["obs"])), self.tensor(traj["act"])
        s_a_z = torch.cat([obs.expand(K, T, -1), act.expand(K, T, -1), z[:, None].expand(K, T, -1)], -1)
        q = torch.min(self.agent.qf1(s_a_z), self.agent.qf2(s_a_z)).float()[..., 0]
        log_z = log_mean_exp(q, 1).cpu().numpy()
        self.stats["log_z"] += log_z.mean()
        return self.eq8(q.T.cpu().numpy(), log_z)

    def ablated_distribution(self, u: np.ndarray, log_z) -> np.ndarray:
        """--no-partition (Fig. 8b): Eq. 8 without log Z; --hardmax (Fig. 8e-h, §5.2's epsilon -> 0): all the mass
        on the argmax of U - log Z."""
        log_z = np.asarray(log_z if self.args.partition else 0.0, np.float64)
        logits = (np.asarray(u, np.float64) - log_z) / self.args.epsilon
        return np.eye(logits.shape[-1])[logits.argmax(-1)] if self.args.hardmax else relabel_distribution(logits, 0.0)

    @torch.inference_mode()
    def predicted_reward(self, traj: dict) -> np.ndarray:
        """--learned-reward (Fig. 8c/d): the reward model's r(s, a, task) for every train task, (K, T)."""
        K, T = len(self.tasks), len(traj["obs"])
        obs, act = (self.tensor(traj[k]).expand(K, T, -1) for k in ("obs", "act"))
        x = torch.cat([obs, act, self.tensor(self.tasks)[:, None].expand(K, T, -1)], -1)
        return self.reward_model(x)[..., 0].cpu().numpy()

    def reward_model_step(self, batch: torch.Tensor, tasks: np.ndarray) -> torch.Tensor:
        """Fit r(s, a, task) by MSE to the RL batch of a gradient step, as the authors train theirs beside Q."""
        t0, a = time.time(), self.obs_dim + self.act_dim
        task = self.tensor(self.tasks[tasks])[:, None].expand(-1, batch.shape[1], -1)
        loss = F.mse_loss(self.reward_model(torch.cat([batch[..., :a], task], -1))[..., 0], batch[..., a])
        self.reward_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.reward_optim.step()
        self.seconds += time.time() - t0
        return loss.detach()


# ---------------------------------------------------------------------------------------------- Alg. 1: collect data
@torch.inference_mode()
def rollout(env, agent: PEARL, z: torch.Tensor, device, *, deterministic: bool, render: bool = False) -> dict:
    """One episode of the current task with a fixed z; the final transition is kept (oyster commit 062870e)."""
    obs, _ = env.reset()
    steps, frames, success = [], [], False
    while True:
        s = torch.as_tensor(obs, device=device)[None]
        a = agent.policy.act(agent.features(s), z, deterministic=deterministic)[0].cpu().numpy()
        next_obs, r, term, trunc, info = env.step(a)
        steps.append((obs, a, r, next_obs, term))
        success = success or bool(info.get("success", False))
        if render:
            frames.append(env.render())
        obs = next_obs
        if term or trunc:
            break
    o, a, r, o2, d = (np.array(x) for x in zip(*steps))
    return {"obs": o, "act": a, "rew": r, "next_obs": o2, "done": d, "return": float(r.sum()),
            "success": success, "frames": frames}


@torch.inference_mode()
def infer_posterior(agent: PEARL, context: np.ndarray, ctx_dim: int, device) -> torch.Tensor:
    """z ~ q(z | c) for one task from buffer rows (N, width): the first ctx_dim columns are (s, a, r[, s'])."""
    mu, var = agent.posterior(torch.as_tensor(context[None, :, :ctx_dim], device=device))
    return sample_z(mu, var)


def collect_data(env, agent, task_idx, task, n_samples, relabeler, args, ctx_dim, rng, device, *,
                 update_posterior: bool, add_to_encoder: bool, may_relabel: bool) -> list[dict]:
    """Alg. 1's "sample z ~ q(z|c), gather data, update c" (oyster's collect_data): whole trajectories from
    z ~ prior (a new z each trajectory) until n_samples transitions; with update_posterior, z is re-inferred after
    every trajectory from a fresh context batch of the task's recent data. Returns the trajectories (stored)."""
    env.set_task(task)
    z = torch.randn(1, args.latent_size, device=device)
    trajs, n = [], 0
    while n < n_samples:
        batch = []
        while n < n_samples:  # prior phase: one call for all its trajectories; posterior phase: one each
            traj = rollout(env, agent, z, device, deterministic=False)
            traj["rew"], traj["critic_rew"], traj["done"] = trajectory_rewards(env, traj, task, args)
            batch.append(traj)
            n += len(traj["rew"])
            if update_posterior:
                break
            z = torch.randn_like(z)  # a new z from the prior for every trajectory
        # to the buffers of their own task or of the task HFR draws for each
        relabeler.store(batch, task_idx, rng, add_to_encoder=add_to_encoder, may_relabel=may_relabel)
        trajs += batch
        if update_posterior:
            z = infer_posterior(agent, relabeler.orig_buf.sample(np.array([task_idx]), args.embedding_batch_size,
                                                                 rng)[0], ctx_dim, device)
    return trajs


def collect_for_task(env, agent, task_idx, task, relabeler, args, ctx_dim, rng, device) -> list[dict]:
    """One sampled task's data in an iteration (oyster rl_algorithm.train): its recent data is cleared first, so
    that the context comes from data of the current policy; then prior, posterior and extra RL-only posterior steps."""
    relabeler.orig_buf.clear(task_idx)  # (its encoder buffer: when data first reaches it, see Relabeler)
    trajs = []
    for n, posterior, to_enc in ((args.num_steps_prior, False, True), (args.num_steps_posterior, True, True),
                                 (args.num_extra_rl_steps_posterior, True, False)):
        if n > 0:
            trajs += collect_data(env, agent, task_idx, task, n, relabeler, args, ctx_dim, rng, device,
                                  update_posterior=posterior, add_to_encoder=to_enc, may_relabel=True)
    return trajs


# ---------------------------------------------------------------------------------------------- Alg. 1: gradient step
def critic_and_encoder_loss(agent: PEARL, obs, act, rew, next_obs, done, context, args: Args):
    """Eq. 3 (Q loss, the only loss besides the KL that reaches the encoder) + Eq. 1's kl_lambda * KL summed over
    the meta-batch. RL inputs are (tasks * batch, .) rows, task-major, obs and next_obs as the networks read them
    (PEARL.features); the context is (tasks, embedding batch, .) buffer rows."""
    mu, var = agent.posterior(context)
    z = sample_z(mu, var).repeat_interleave(obs.shape[0] // mu.shape[0], 0)  # one z per task, for all its rows
    s_a_z = torch.cat([obs, act, z], -1)
    q1, q2 = agent.qf1(s_a_z).float(), agent.qf2(s_a_z).float()
    with torch.no_grad():
        v_next = agent.target_vf(torch.cat([next_obs, z], -1)).float()
        q_target = args.reward_scale * rew + (1.0 - done) * args.discount * v_next
    qf_loss = F.mse_loss(q1, q_target) + F.mse_loss(q2, q_target)
    if var is None:  # deterministic encoder: no information bottleneck
        return qf_loss, torch.zeros((), device=obs.device), z.detach(), {"q1": q1.mean().detach()}
    kl_loss = args.kl_lambda * kl_to_standard_normal(mu, var).sum()  # summed over tasks, as the authors
    return qf_loss, kl_loss, z.detach(), {"q1": q1.mean().detach(), "z_var": var.mean().detach()}


def actor_and_value_loss(agent: PEARL, obs, z, args: Args):
    """SAC-v1 V loss and the policy loss (Eq. 4), with z detached (the encoder learns only from Eq. 3 + KL).
    Called after the Q step, so both see the updated Q, as in the authors' code. The Q weights are frozen here:
    the policy needs dQ/da, not dQ/dtheta, which saves a third of the Q backward."""
    action, log_pi, mean, log_std = agent.policy(obs, z)
    for q in (agent.qf1, agent.qf2):
        q.requires_grad_(False)
    s_a_z = torch.cat([obs, action, z], -1)
    min_q = torch.min(agent.qf1(s_a_z), agent.qf2(s_a_z)).float()
    for q in (agent.qf1, agent.qf2):
        q.requires_grad_(True)
    vf_loss = F.mse_loss(agent.vf(torch.cat([obs, z], -1)).float(), (min_q - log_pi).detach())
    policy_loss = ((log_pi - min_q).mean() + args.policy_mean_reg_weight * mean.square().mean()
                   + args.policy_std_reg_weight * log_std.square().mean())
    return vf_loss, policy_loss, {"log_pi": log_pi.mean().detach()}


def gradient_step(agent: PEARL, optims: dict, batch: torch.Tensor, context: torch.Tensor, args: Args,
                  obs_dim: int, act_dim: int) -> dict:
    """One PEARL gradient step on the whole meta-batch: batch (tasks, batch_size, width) rows of the RL buffers,
    context (tasks, embedding_batch_size, ctx_dim). Returns the losses as 0-d tensors (no host sync)."""
    o, a = obs_dim, obs_dim + act_dim
    batch = batch.reshape(-1, batch.shape[-1])  # 2-D rows: in-place ReLUs on 3-D views would cost copies
    obs, act, rew, next_obs, done = (batch[:, :o], batch[:, o:a], batch[:, a:a + 1], batch[:, a + 1:a + 1 + o],
                                     batch[:, -1:])
    autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with autocast:
        obs = agent.features(obs)  # a PixelEncoder's features: once per step, trained by Eq. 3 and the KL only
        with torch.no_grad():
            next_obs = agent.features(next_obs)  # (no target encoder: the target V reads the online one, as DrQ-v2)
        qf_loss, kl_loss, z, stats = critic_and_encoder_loss(agent, obs, act, rew, next_obs, done, context, args)
    for k in ("qf", "encoder"):
        optims[k].zero_grad(set_to_none=True)
    (qf_loss + kl_loss).backward()
    optims["qf"].step(), optims["encoder"].step()

    with autocast:
        vf_loss, policy_loss, stats2 = actor_and_value_loss(agent, obs.detach(), z, args)  # features as read above
    for k in ("vf", "policy"):
        optims[k].zero_grad(set_to_none=True)
    (vf_loss + policy_loss).backward()  # disjoint parameters: one backward = the authors' two
    optims["vf"].step(), optims["policy"].step()
    with torch.no_grad():
        tgt, src = list(agent.target_vf.parameters()), list(agent.vf.parameters())
        torch._foreach_lerp_(tgt, src, args.soft_target_tau)
    return {"qf_loss": qf_loss.detach(), "kl_loss": kl_loss.detach(), "vf_loss": vf_loss.detach(),
            "policy_loss": policy_loss.detach(), **stats, **stats2}


# ---------------------------------------------------------------------------------------------- Alg. 2: meta-test
@torch.inference_mode()
def meta_test_run(env, agent, task, args, ctx_dim, device, *, render: bool = False) -> dict:
    """Alg. 2 as the authors run it for one task (rl_algorithm.collect_paths): trajectories until num_steps_per_eval
    transitions, deterministic actions; z ~ prior (resampled each trajectory) for the first num_exp_traj_eval
    trajectories, then z from the posterior of ALL context gathered online, re-inferred after every trajectory."""
    env.set_task(task)
    z, z_from = torch.randn(1, args.latent_size, device=device), "prior"
    context, trajs, z_source, n = [], [], [], 0
    while n < args.num_steps_per_eval:
        last = n + env.horizon >= args.num_steps_per_eval  # render only what can be the last trajectory
        traj = rollout(env, agent, z, device, deterministic=True, render=render and last)
        context.append(pack(traj, traj["rew"]))
        trajs.append(traj)
        z_source.append(z_from)
        n += len(traj["rew"])
        if len(trajs) >= args.num_exp_traj_eval:
            z, z_from = infer_posterior(agent, np.concatenate(context), ctx_dim, device), "posterior"
        else:
            z = torch.randn_like(z)
    return {"returns": [t["return"] for t in trajs], "success": [t["success"] for t in trajs], "z_source": z_source,
            "frames": trajs[-1]["frames"]}


def meta_test(env, agent, tasks, args, ctx_dim, device, after_task: Callable[[], None] = lambda: None) -> dict:
    """Means over tasks of means over num_evals runs, as the authors report them: the LAST trajectory's return; the
    return with z from the prior (the level before adaptation); success ("Success Rate" of the authors' code): any
    trajectory after the num_exp_traj_eval exploration ones reached the goal; the last trajectory's success; and
    the online returns per trajectory index."""
    last, prior, succ, succ_last, online = [], [], [], [], []
    for task in tasks:
        runs = [meta_test_run(env, agent, task, args, ctx_dim, device) for _ in range(args.num_evals)]
        last.append(np.mean([r["returns"][-1] for r in runs]))
        prior.append(np.mean([ret for r in runs for ret, z in zip(r["returns"], r["z_source"]) if z == "prior"]))
        succ.append(np.mean([any(s for s, z in zip(r["success"], r["z_source"]) if z == "posterior") for r in runs]))
        succ_last.append(np.mean([r["success"][-1] for r in runs]))
        k = min(len(r["returns"]) for r in runs)
        online.append(np.mean([r["returns"][:k] for r in runs], 0))
        after_task()
    k = min(len(o) for o in online)
    return {"return": float(np.mean(last)), "return_prior": float(np.mean(prior)), "success_rate": float(np.mean(succ)),
            "success_rate_last": float(np.mean(succ_last)),
            "online_returns": np.mean([o[:k] for o in online], 0).round(4).tolist()}


# ---------------------------------------------------------------------------------------------- speed
# Speed only, nothing a reader of the algorithm needs, and nothing that changes a result beyond fp32 rounding: which
# library multiplies the fp32 matrices on the CPU, and malloc keeping freed memory. torch's own fp32 path is its
# BLAS (MKL in the x86 wheels), which on AMD EPYC runs these layer shapes at about half the rate of oneDNN, also
# shipped in torch (benchmarks/speed.md). --matmul auto measures both at start and keeps the faster; the run's args
# (and so its checkpoint) record the choice.
ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)  # x @ w.T + b; x 2-D (copied if transposed)
matmul = "default"  # the kernel of Linear's fp32 CPU products, set once at start by speed_setup
matmul_rates: dict[str, float] = {}  # GFLOP/s per kernel, measured by fastest_matmul


class Linear(nn.Linear):
    """nn.Linear whose fp32 CPU products of 32 rows or more run on oneDNN under --matmul onednn; single rows
    (acting) and 1-wide heads stay on torch's path, whose per-call overhead is lower. A 3-D input is multiplied as
    2-D rows and the result reshaped back as torch's matmul does it, not as a view (torch's linear returns one for
    a contiguous 3-D input), which would turn the in-place ReLU after it into copies of the activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        if (matmul == "onednn" and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
                and self.out_features > 1 and len(x) >= 32 and not torch.is_autocast_enabled("cpu")):
            y = OneDNNLinear.apply(x, self.weight, self.bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        return y if len(shape) == 2 else torch.ops.aten._unsafe_view(y, (*shape[:-1], self.out_features))


class OneDNNLinear(torch.autograd.Function):
    """x @ w.T + b for 2-D x, forward and backward on oneDNN, except the input gradient through fewer than 16
    outputs (there torch's path is faster). oneDNN copies a transposed first operand, so the weight gradient
    transposes the smaller of x and the output gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return ONEDNN_LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ONEDNN_LINEAR(g, weight.t(), None, "none", [], "") if weight.shape[0] >= 16 else g @ weight
        if ctx.needs_input_grad[1]:
            if weight.shape[0] < weight.shape[1]:
                grad_w = ONEDNN_LINEAR(g.t(), x.t(), None, "none", [], "")
            else:
                grad_w = ONEDNN_LINEAR(x.t(), g.t(), None, "none", [], "").t()
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def fastest_matmul(width: int, rows: int = 1024, rounds: int = 3) -> str:
    """'onednn' if a Linear (rows x width -> width) forward and backward runs at least 1.1x as fast on oneDNN as on
    torch's path here (CPU time, best of `rounds` after a warm-up, interleaved), else 'default'. The run's seeded
    random streams are untouched."""
    global matmul
    if ONEDNN_LINEAR is None or not torch.backends.mkldnn.is_available():
        return "default"
    g, before = torch.Generator().manual_seed(0), matmul
    with torch.random.fork_rng(devices=[]):
        layer = Linear(width, width)
    x, d = torch.randn(rows, width, generator=g, requires_grad=True), torch.randn(rows, width, generator=g)
    seconds = {"default": [], "onednn": []}
    for kernel in ("default", "onednn") * (rounds + 1):
        matmul = kernel
        t0 = time.process_time()
        torch.autograd.grad(layer(x), (x, *layer.parameters()), d)
        seconds[kernel].append(time.process_time() - t0)
    matmul = before
    matmul_rates.update({k: 6 * rows * width**2 / max(min(t[1:]), 1e-9) / 1e9 for k, t in seconds.items()})
    return "onednn" if matmul_rates["onednn"] >= 1.1 * matmul_rates["default"] else "default"


def keep_freed_memory() -> bool:
    """glibc's malloc hands freed blocks of 128 KB and more back to the kernel, so every gradient step faults its
    activations in again, page by page (thousands of page faults a step, up to ~15 % of a bf16 step on AMD EPYC).
    Keep them: blocks up to 32 MB (glibc's largest setting) come from the heap, which is not trimmed. Peak memory is
    what a step needs either way. False where the C library has no mallopt."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, 32 * 2**20) and libc.mallopt(-1, 2**31 - 1))  # M_MMAP_ and M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def speed_setup(kernel: str, width: int) -> str:
    """This run's speed settings: the kernel of Linear's fp32 CPU products, and malloc keeping freed memory.
    Returns the log line that says which and why."""
    global matmul
    matmul = kernel
    why = (f"measured at start, forward + backward at 1024 x {width} x {width}, {torch.get_num_threads()} thread(s): "
           + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in matmul_rates.items()) if matmul_rates
           else "as --matmul or the resumed run's args give it")
    kept = "kept" if keep_freed_memory() else "returned to the kernel (no mallopt here)"
    return f"fp32 matmul on the CPU: {kernel} ({why}); memory freed between steps: {kept}"


# ---------------------------------------------------------------------------------------------- plumbing
# The authors' configs (reference: oyster configs/default.py + configs/*.json; HFR configs/*.json for the
# families HFR added). Keys left out take DEFAULTS. Envs not listed get DEFAULTS with 3 trajectories per eval run.
DEFAULTS = dict(num_iterations=500, meta_batch=16, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400,
                num_steps_posterior=0, num_extra_rl_steps_posterior=400, num_train_steps_per_itr=2000,
                batch_size=256, embedding_batch_size=64, num_evals=2, num_steps_per_eval=600, num_exp_traj_eval=1,
                discount=0.99, reward_scale=5.0, kl_lambda=0.1, critic_dense_reward=False)
_HFR = dict(num_train_steps_per_itr=1000, num_exp_traj_eval=2, num_steps_per_eval=600)  # 600: 4 Sawyer episodes
PAPER_DEFAULTS = {
    # PEARL (oyster)
    "cheetah-vel": dict(num_extra_rl_steps_posterior=600, embedding_batch_size=100, num_exp_traj_eval=2, num_evals=1),
    "cheetah-dir": dict(meta_batch=4, num_steps_prior=1000, num_extra_rl_steps_posterior=1000,
                        embedding_batch_size=256, num_evals=4, num_exp_traj_eval=2),
    "ant-dir": dict(meta_batch=4, num_extra_rl_steps_posterior=600, num_train_steps_per_itr=4000,
                    embedding_batch_size=256, num_evals=4, num_exp_traj_eval=2),
    "ant-goal": dict(meta_batch=10, num_extra_rl_steps_posterior=600, num_train_steps_per_itr=4000,
                     embedding_batch_size=256, kl_lambda=1.0),
    "point-robot": dict(num_initial_steps=200, num_steps_prior=200, num_extra_rl_steps_posterior=200,
                        num_train_steps_per_itr=1000, reward_scale=100.0, num_steps_per_eval=60),
    "sparse-point-robot": dict(num_initial_steps=200, num_tasks_sample=10, num_steps_prior=100,
                               num_steps_posterior=900, num_extra_rl_steps_posterior=0, num_train_steps_per_itr=1000,
                               embedding_batch_size=1024, discount=0.9, reward_scale=100.0, kl_lambda=1.0,
                               num_exp_traj_eval=5, num_steps_per_eval=400, critic_dense_reward=True),
    "humanoid-dir": dict(num_extra_rl_steps_posterior=600, num_train_steps_per_itr=4000, num_evals=1,
                         num_exp_traj_eval=2, embedding_batch_size=256),
    # HFR (michaelwan11/hfr), PEARL's defaults underneath. four-corners: a meta-batch of 8 drawn (with
    # replacement, as every meta-batch here) from its 4 tasks, 256 transitions each, as the authors' config
    "four-corners": dict(_HFR, num_iterations=300, meta_batch=8, num_initial_steps=200,
                         num_tasks_sample=10, num_steps_prior=100, num_steps_posterior=900,
                         num_extra_rl_steps_posterior=0, reward_scale=100.0, kl_lambda=1.0,
                         embedding_batch_size=1024, num_exp_traj_eval=5, num_steps_per_eval=400, discount=0.9),
    "sawyer-push": dict(_HFR, num_iterations=90, num_tasks_sample=10, num_steps_posterior=600,
                        num_extra_rl_steps_posterior=0, reward_scale=100.0),
    "sawyer-reach": dict(_HFR, num_iterations=40, num_tasks_sample=10, num_steps_posterior=600,
                         num_extra_rl_steps_posterior=0, reward_scale=10.0),
    "cheetah-vel-sparse": dict(_HFR, num_iterations=160, num_steps_posterior=600, num_extra_rl_steps_posterior=0,
                               embedding_batch_size=100),
    "ant-goal-sparse": dict(_HFR, num_iterations=180, num_tasks_sample=10, num_steps_posterior=600,
                            num_extra_rl_steps_posterior=0, kl_lambda=1.0, embedding_batch_size=256),
    "cheetah-highdim": dict(_HFR, num_iterations=180, num_tasks_sample=10, num_extra_rl_steps_posterior=600,
                            embedding_batch_size=100),
    "ant-vel": dict(_HFR, num_iterations=160, num_tasks_sample=10, meta_batch=10, num_extra_rl_steps_posterior=600,
                    kl_lambda=1.0, embedding_batch_size=256),
}


# --help's cost line: (seconds per paper-size iteration, seconds of the initial pool) on one core of the project's
# 2-core AMD EPYC (Zen 5), fp32 on oneDNN, from `python benchmarks/speed.py cost SCRIPT --env ENV`
# (benchmarks/speed.md), per script and env; and a reduced run per script and env where one is proposed
PAPER_COST = {("pearl.py", "sparse-point-robot"): (272, 2), ("pearl.py", "cheetah-vel"): (586, 35),
              ("hfr.py", "sawyer-push"): (243, 17), ("hfr.py", "four-corners"): (174, 0)}
REDUCED = {("hfr.py", "sawyer-push"): "python hfr.py --env sawyer-push --net-size 128 --meta-batch 8 --num-iterations "
                                      "50 --eval-interval 5 (the paper's iteration, 10 tasks x 1000 env steps and 1000 "
                                      "gradient steps, at width 128 on 8 tasks per step: ~37 min on one core of that "
                                      "CPU for 0.6 M env steps; that it shows learning is not yet verified)"}



DEFAULTS["utility_batch_size"] = 256  # HFR's N of Eq. 9 (the authors' configs; four-corners 1024, sparse ant-goal 64)
PAPER_DEFAULTS["four-corners"]["utility_batch_size"] = 1024
PAPER_DEFAULTS["ant-goal-sparse"]["utility_batch_size"] = 64
RUN_FLAGS = ("num_iterations", "cuda", "capture_video", "run_dir", "save_model")  # on --resume the typed value is used


def defaults_table() -> str:
    rows = [("(all envs)", DEFAULTS), *PAPER_DEFAULTS.items()]
    return "Per-env defaults (flags override; other envs: the first row, 3 trajectories per eval run):\n" + "\n".join(
        textwrap.fill(f"{name}: " + " ".join(f"{k}={v}" for k, v in row.items()), 110, initial_indent="  ",
                      subsequent_indent="      ") for name, row in rows)


def resolve_args(args: Args, env: envs.TaskEnv) -> Args:
    """Every None field from the --env row of PAPER_DEFAULTS (and all of the family's train tasks)."""
    row = {**DEFAULTS, "num_steps_per_eval": 3 * env.horizon, **PAPER_DEFAULTS.get(args.env, {}),
           "use_next_obs_in_context": "dynamics" in env.varies,  # s' in context: the authors' rand-params choice
           "num_train_tasks": len(env.train_tasks)}
    return dataclasses.replace(args, **{k: v for k, v in row.items() if getattr(args, k) is None})


def fail(message: str) -> NoReturn:
    """A bad input: one line on stderr and exit code 2, as tyro does for a malformed flag."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_args(args: Args) -> tuple[Args, envs.TaskEnv, envs.TaskEnv]:
    """Every argument checked before anything runs (one line, exit code 2, at the first violation). The envs are
    built once the flags they take are checked; the paper defaults for --env are filled in, then checked too.
    Returns the resolved arguments, the training env and the evaluation env."""
    def need(ok, name: str, allowed: str) -> None:
        if not ok:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)}: {allowed}")

    if args.env not in envs.names():
        fail(f"--env {args.env}: unknown; choose one of {', '.join(envs.names())}")
    need(0 <= args.seed < 2**31, "seed", "must be in [0, 2**31)")  # the eval env uses seed + 10000
    need(args.reward_delay >= 1, "reward_delay", "must be >= 1")
    try:
        env = envs.make(args.env, seed=args.seed, reward_delay=args.reward_delay)
        eval_env = envs.make(args.env, seed=args.seed + 10_000, reward_delay=args.reward_delay,
                             **({"render_mode": "rgb_array"} if args.capture_video else {}))
    except ValueError as e:
        fail(f"--capture-video: {e}" if args.capture_video else f"--env {args.env}: {e}")
    if getattr(env, "renders_observations", False) and envs.NO_OPENGL:
        fail(f"--env {args.env}: its observations are rendered images, which need OpenGL: apt-get install libosmesa6, "
             "or set MUJOCO_GL=egl")
    if "dynamics" in env.varies:  # another task's trajectory is valid data for a task only if the physics agree
        fail(f"--env {args.env}: its tasks vary {env.varies}; hfr.py relabels rewards, so it serves the families "
             "whose tasks vary in reward only (python -m envs lists them), e.g. four-corners, sawyer-push")
    args = resolve_args(args, env)
    for name in ("num_iterations", "meta_batch", "num_initial_steps", "num_tasks_sample", "num_train_steps_per_itr",
                 "batch_size", "embedding_batch_size", "num_evals", "num_steps_per_eval", "num_exp_traj_eval",
                 "latent_size", "net_size", "encoder_size", "replay_buffer_size", "eval_interval", "video_interval"):
        need(getattr(args, name) >= 1, name, "must be >= 1")
    for name in ("num_steps_prior", "num_steps_posterior", "num_extra_rl_steps_posterior", "kl_lambda",
                 "policy_mean_reg_weight", "policy_std_reg_weight"):
        need(0 <= getattr(args, name) < float("inf"), name, "must be >= 0 and finite")
    for name in ("reward_scale", "learning_rate"):
        need(0 < getattr(args, name) < float("inf"), name, "must be > 0 and finite")
    need(0 < args.discount <= 1, "discount", "must be in (0, 1]")
    need(0 < args.soft_target_tau <= 1, "soft_target_tau", "must be in (0, 1]")
    n = len(env.train_tasks)
    need(1 <= args.num_train_tasks <= n, "num_train_tasks", f"must be in [1, {n}] (the train tasks of {args.env})")

    need(args.num_steps_prior + args.num_steps_posterior >= 1, "num_steps_prior",
         "and --num-steps-posterior 0: one must be >= 1 (they refill the encoder buffer a sampled task's collection "
         "clears)")
    need(args.num_steps_per_eval > args.num_exp_traj_eval * env.horizon, "num_steps_per_eval",
         f"must exceed --num-exp-traj-eval {args.num_exp_traj_eval} x the horizon {env.horizon}, so that a meta-test "
         "run has a trajectory with z from the posterior")
    need(not args.critic_dense_reward or hasattr(env, "evaluate_dense"), "critic_dense_reward",
         f"needs a family with a dense reward; {args.env} has none")
    need(args.matmul != "onednn" or ONEDNN_LINEAR is not None, "matmul", "this torch has no oneDNN")
    need(args.utility_batch_size >= 1, "utility_batch_size", "must be >= 1")
    need(args.log_partition_samples >= 1, "log_partition_samples", "must be >= 1")
    need(0 < args.epsilon < float("inf"), "epsilon", "must be > 0 and finite")
    need(0 <= args.relabel_prob <= 1, "relabel_prob", "must be in [0, 1]")
    need(not args.learned_reward or args.relabel != "none", "learned_reward", "needs --relabel hfr, hipi or random")
    need(not (args.learned_reward and args.critic_dense_reward), "learned_reward", "needs --critic-dense-reward False")
    need(not (args.learned_reward and getattr(env, "renders_observations", False)), "learned_reward",
         f"its reward model reads observations, and those of {args.env} hold the state the agent must not see")
    return args, env, eval_env


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
    """tyro's description: the paper defaults resolved for --env (every flag whose default is None)."""
    head = __doc__.split("\n\n")[0]
    try:
        args = resolve_args(Args(env=env_name), envs.make(env_name))
    except Exception:  # an unknown --env (or one this machine cannot build): the table of all envs
        return f"{head}\n\n{defaults_table()}"
    resolved = " ".join(f"{f.name}={getattr(args, f.name)}" for f in dataclasses.fields(Args)
                        if f.default is None and f.name not in ("resume", "run_dir"))
    cost = f"{SCRIPT} --env {env_name}: the cost of a paper-size run is not measured yet (python benchmarks/speed.py " \
           f"cost {SCRIPT} --env {env_name} measures it)"
    if (SCRIPT, env_name) in PAPER_COST:
        per_iteration, initial = PAPER_COST[SCRIPT, env_name]
        cost = (f"a paper-size run costs ~{(initial + args.num_iterations * per_iteration) / 3600:.0f} h on a 2-core "
                f"CPU (measured on an AMD EPYC (Zen 5), one thread: {per_iteration} s per iteration x "
                f"{args.num_iterations} iterations + {initial} s initial pool; benchmarks/speed.md)")
    reduced = f"\n\nreduced run: {REDUCED[SCRIPT, env_name]}" if (SCRIPT, env_name) in REDUCED else ""
    resolved = textwrap.fill(f"paper defaults for --env {env_name}: {resolved}", 110)
    return f"{head}\n\n{resolved}\n\n{cost}{reduced}"



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
    """The checkpoint's (resolved) arguments. A typed flag that differs: --env is an error, RUN_FLAGS take the typed
    value, any other keeps the checkpoint's; each difference is one warning line. The run continues in the
    checkpoint's directory unless --run-dir is typed."""
    args = Args(**{"matmul": "default", **ckpt["args"]})  # a checkpoint older than --matmul ran torch's path
    names = {f.name for f in dataclasses.fields(Args)}
    typed = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    typed = {n[3:] if n.startswith("no_") and n[3:] in names else n for n in typed} & names - {"resume"}
    if "env" in typed and given.env != args.env:
        fail(f"--resume {path}: written for --env {args.env}, not --env {given.env}")
    if "num_iterations" in typed and given.num_iterations < ckpt["iteration"]:
        fail(f"--num-iterations {given.num_iterations}: the checkpoint's run is at iteration {ckpt['iteration']}")
    same_dir = "run_dir" in typed and os.path.abspath(given.run_dir) == os.path.abspath(args.run_dir)
    for name in sorted(typed - {"run_dir"} if same_dir else typed):
        new, old, flag = getattr(given, name), getattr(args, name), "--" + name.replace("_", "-")
        if new == old:
            continue
        if name in RUN_FLAGS:
            print(f"warning: {flag} {new} (the checkpoint's run had {old}): using {new}", file=sys.stderr)
            args = dataclasses.replace(args, **{name: new})
        else:
            print(f"warning: {flag} {new} differs from the checkpoint's {old}: using the checkpoint's {old}",
                  file=sys.stderr)
    args = dataclasses.replace(args, resume=given.resume)
    if "run_dir" not in typed:
        args = dataclasses.replace(args, run_dir=os.path.dirname(os.path.abspath(path)))
    return args



def parse_command_line(argv: list[str]) -> tuple[Args, envs.TaskEnv, envs.TaskEnv, Optional[dict]]:
    """argv -> tyro -> --resume merge -> envs -> paper defaults for --env -> checks: the run's arguments, its two
    envs and the checkpoint to continue from (None for a new run). Nothing is written before this returns."""
    head = __doc__.split("\n\n")[0]
    if "-h" in argv or "--help" in argv:  # --help shows the paper defaults of the --env typed beside it
        env_name = next((a[len("--env="):] for a in argv if a.startswith("--env=")), None)
        if env_name is None and "--env" in argv[:-1]:
            env_name = argv[argv.index("--env") + 1]
        head = help_text(env_name or Args.env)
    args = parse_args(head, argv)
    checkpoint = None
    if args.resume is not None:
        checkpoint = load_checkpoint(args.resume)
        path = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
        args = resumed_args(args, checkpoint, path, argv)
    args, env, eval_env = check_args(args)
    if args.matmul == "auto":  # measured once, here: a resumed run keeps the kernel its checkpoint's args name
        cuda = args.cuda and torch.cuda.is_available()
        args = dataclasses.replace(args, matmul="default" if cuda else fastest_matmul(args.net_size))
    if args.run_dir is None:
        args = dataclasses.replace(args, run_dir=f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}")
    return args, env, eval_env, checkpoint


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
    env = eval_env = writer = saved = None  # saved: the last finished checkpoint, named when the run is stopped
    try:
        args, env, eval_env, checkpoint = parse_command_line(sys.argv[1:])
        run_dir = args.run_dir
        os.makedirs(run_dir, exist_ok=True)
        ckpt_path, eval_path = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "eval.jsonl")
        if os.path.exists(ckpt_path + ".tmp"):  # left by a run killed while writing
            os.remove(ckpt_path + ".tmp")
        print("resolved arguments: " + " ".join(f"{k}={v}" for k, v in vars(args).items()), flush=True)
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

        # TRY NOT TO MODIFY: seeding
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        rng = np.random.default_rng(args.seed)
        env.reset(seed=args.seed)
        eval_env.reset(seed=args.seed + 10_000)
        device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            print(speed_setup(args.matmul, args.net_size), flush=True)

        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        ctx_dim = obs_dim + act_dim + 1 + (obs_dim if args.use_next_obs_in_context else 0)
        image_shape = env.image_shape if getattr(env, "renders_observations", False) else None  # a pixel family
        image_size = int(np.prod(image_shape)) if image_shape else 0
        train_tasks, test_tasks = env.train_tasks[: args.num_train_tasks], env.test_tasks
        agent = PEARL(obs_dim, act_dim, ctx_dim, args, image_shape).to(device)
        optims = make_optimizers(agent, args.learning_rate)
        rl_buf = TaskReplayBuffers(len(train_tasks), args.replay_buffer_size, obs_dim, act_dim, image_size)
        enc_buf = TaskReplayBuffers(len(train_tasks), args.replay_buffer_size, obs_dim, act_dim, image_size)
        relabeler = Relabeler(env, agent, train_tasks, rl_buf, enc_buf, args, obs_dim, act_dim, ctx_dim, device)
        start_iter, env_steps, wall_offset = 0, 0, 0.0
        if checkpoint is not None:
            agent.load_state_dict(checkpoint["agent"])
            for k, opt in optims.items():
                opt.load_state_dict(checkpoint["optims"][k])
            rl_buf.load_state_dict(checkpoint["rl_buffer"]), enc_buf.load_state_dict(checkpoint["enc_buffer"])
            relabeler.load_state_dict(checkpoint["relabeler"])
            start_iter, env_steps = checkpoint["iteration"], checkpoint["env_steps"]
            wall_offset = checkpoint["wall_time"]
            rng.bit_generator.state = checkpoint["rng"]["numpy"]
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if device.type == "cuda" and checkpoint["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
            env.np_random.bit_generator.state = checkpoint["rng"]["env"]
            eval_env.np_random.bit_generator.state = checkpoint["rng"]["eval_env"]
            source = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
            keep_rows(os.path.join(source, "eval.jsonl"), eval_path, start_iter)  # logs never repeat a row
            saved = f"{os.path.join(source, 'checkpoint.pt')} (iteration {start_iter})"
            print(f"resumed from {args.resume} at iteration {start_iter} ({env_steps} env steps)", flush=True)
        writer = SummaryWriter(run_dir, purge_step=env_steps + 1 if checkpoint else None)
        if checkpoint is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)


        # progress: env steps of collection, gradient steps, meta-test tasks (whole trajectories overshoot a little)
        per_iteration = args.num_tasks_sample * (args.num_steps_prior + args.num_steps_posterior
                                                 + args.num_extra_rl_steps_posterior)
        total_steps = len(train_tasks) * args.num_initial_steps + args.num_iterations * per_iteration
        n_evals = sum((i + 1) % args.eval_interval == 0 or i + 1 == args.num_iterations
                      for i in range(start_iter, args.num_iterations))
        progress = Progress({"collect": total_steps - env_steps,
                             "update": (args.num_iterations - start_iter) * args.num_train_steps_per_itr,
                             "relabel": args.num_iterations - start_iter,  # log Z, once per iteration
                             "eval": n_evals * (len(test_tasks) + min(len(test_tasks), len(train_tasks)))})
        start_time, start_steps, last_eval = time.time(), env_steps, {}

        def status(it: int, doing: str) -> str:
            shown = (f"return {last_eval['eval/return']:.2f}" if last_eval else "-") + (
                f" success {last_eval['eval/success_rate']:.2f}" if "eval/success_rate" in last_eval else "")
            return (f"iteration {min(it + 1, args.num_iterations)}/{args.num_iterations} | {doing} | "
                    f"env steps {env_steps:,}/~{total_steps:,} | last eval {shown}")

        progress.step("collect", 0, f"{SCRIPT} --env {args.env}: {status(start_iter, 'starting')} | run dir "
                      f"{run_dir}", force=True)
        for it in range(start_iter, args.num_iterations):
            # ---- Alg. 1, collect data: the initial pool (iteration 0, z ~ prior, every train task), then the
            # sampled tasks (with replacement)
            t0, trajs = time.time(), []
            if it == 0:
                for i, task in enumerate(train_tasks):
                    new = collect_data(env, agent, i, task, args.num_initial_steps, relabeler, args, ctx_dim, rng,
                                       device, update_posterior=False, add_to_encoder=True, may_relabel=False)
                    trajs, n = trajs + new, sum(len(t["rew"]) for t in new)
                    env_steps += n
                    progress.step("collect", n, status(it, f"initial pool: task {i + 1}/{len(train_tasks)}"))
            for k in range(args.num_tasks_sample):
                i = int(rng.integers(len(train_tasks)))
                new = collect_for_task(env, agent, i, train_tasks[i], relabeler, args, ctx_dim, rng, device)
                trajs, n = trajs + new, sum(len(t["rew"]) for t in new)
                env_steps += n
                progress.step("collect", n, status(it, f"collecting: task {k + 1}/{args.num_tasks_sample}"))
            relabeler.end_collection()  # after, not before: iteration 0 keeps the initial pool in the encoder buffers
            relabeler.update_log_partition(rng)  # Algorithm 1's log Z for the next iteration's relabeling
            progress.step("relabel", 1, status(it, "log Z of Algorithm 1"))
            t_collect = time.time() - t0

            # ---- Alg. 1, gradient steps on meta-batches of tasks (with replacement)
            t0 = time.time()
            for g in range(args.num_train_steps_per_itr):
                tasks = rng.integers(len(train_tasks), size=args.meta_batch)
                batch = torch.from_numpy(rl_buf.sample(tasks, args.batch_size, rng)).to(device)
                context = torch.from_numpy(enc_buf.sample(tasks, args.embedding_batch_size, rng)[..., :ctx_dim])
                losses = gradient_step(agent, optims, batch, context.to(device), args, obs_dim, act_dim)
                if args.learned_reward:
                    losses["reward_model_loss"] = relabeler.reward_model_step(batch, tasks)
                progress.step("update", 1, status(it, f"gradient step {g + 1}/{args.num_train_steps_per_itr}"))
            t_update = time.time() - t0

            # ---- Alg. 2 on the meta-test tasks, and on as many train tasks (sampled) with the same protocol
            t0, last_iter = time.time(), it == args.num_iterations - 1
            evaluated = (it + 1) % args.eval_interval == 0 or last_iter
            if evaluated:
                def tick():
                    progress.step("eval", 1, status(it, "meta-test"))
                test = meta_test(eval_env, agent, test_tasks, args, ctx_dim, device, after_task=tick)
                some_train = rng.choice(len(train_tasks), min(len(test_tasks), len(train_tasks)), replace=False)
                train = meta_test(eval_env, agent, train_tasks[some_train], args, ctx_dim, device, after_task=tick)
                last_eval = {"eval/return": test["return"], "eval/return_prior": test["return_prior"],
                             "eval/return_train_tasks": train["return"], "eval/online_returns": test["online_returns"]}
                if env.has_success:
                    last_eval.update({"eval/success_rate": test["success_rate"],  # the authors' "Success Rate"
                                      "eval/success_rate_last": test["success_rate_last"],
                                      "eval/success_rate_train_tasks": train["success_rate"]})
                if args.capture_video and ((it + 1) % args.video_interval == 0 or last_iter or it == 0):
                    run = meta_test_run(eval_env, agent, test_tasks[0], args, ctx_dim, device, render=True)
                    if run["frames"] and run["frames"][0] is not None:
                        envs.save_video(run["frames"], os.path.join(run_dir, "videos", f"iteration_{it + 1}.gif"))
            t_eval = time.time() - t0

            # ---- log: TensorBoard, eval.jsonl, checkpoint, progress line
            wall = wall_offset + time.time() - start_time
            sps = int((env_steps - start_steps) / max(time.time() - start_time, 1e-9))
            scalars = {"charts/SPS": sps, "charts/episodic_return": float(np.mean([t["return"] for t in trajs])),
                       "time/collect": t_collect, "time/update": t_update, "time/relabel": 0.0, "time/eval": t_eval,
                       **{f"losses/{k}": float(v) for k, v in losses.items()}, **relabeler.pop_stats()}
            if evaluated:
                scalars.update({k: v for k, v in last_eval.items() if k != "eval/online_returns"})
                with open(eval_path, "a") as f:
                    f.write(json.dumps({"iteration": it + 1, "env_steps": env_steps, "wall_time": round(wall, 2),
                                        **last_eval, **scalars}) + "\n")
            for k, v in scalars.items():
                writer.add_scalar(k, v, env_steps)
            if args.save_model:
                with signals_held():
                    save_checkpoint(ckpt_path, {
                        "env": args.env, "args": dataclasses.asdict(args), "iteration": it + 1, "env_steps": env_steps,
                        "wall_time": wall, "agent": agent.state_dict(),
                        "optims": {k: o.state_dict() for k, o in optims.items()},
                        "rl_buffer": rl_buf.state_dict(), "enc_buffer": enc_buf.state_dict(),
                        "relabeler": relabeler.state_dict(),
                        "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                                "env": env.np_random.bit_generator.state,
                                "eval_env": eval_env.np_random.bit_generator.state}})
                    saved = f"{ckpt_path} (iteration {it + 1})"
            progress.step("eval", 0, status(it, f"done, SPS {sps}, update {t_update:.1f} s"), force=True)
        print(f"done: eval.jsonl and TensorBoard logs in {run_dir}, "
              + (f"checkpoint {ckpt_path}" if args.save_model else "no checkpoint (--no-save-model)"), flush=True)
    except KeyboardInterrupt as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one ending
        name = stop.args[0] if stop.args else "SIGINT"
        print(f"stopped by {name}; " + (f"the last finished checkpoint is {saved}" if saved
                                        else "no checkpoint was written yet"), file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.Signals[name].value)
    finally:
        if writer is not None:
            writer.close()
        for e in (env, eval_env):
            if e is not None:
                e.close()
