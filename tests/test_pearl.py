"""Tests of pearl.py: the posterior and KL against closed forms, where the encoder's gradients come from, the
meta-test protocol, the buffers, every bad input as a one-line error, checkpoints and resume, SIGTERM, and tiny
end-to-end runs (exact resume, determinism, a learning run)."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import envs
import pearl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--env", "point-robot", "--num-train-tasks", "4", "--meta-batch", "2", "--num-initial-steps", "20",
        "--num-tasks-sample", "1", "--num-steps-prior", "20", "--num-extra-rl-steps-posterior", "20",
        "--num-train-steps-per-itr", "3", "--batch-size", "8", "--embedding-batch-size", "8", "--net-size", "16",
        "--encoder-size", "16", "--num-evals", "1", "--num-steps-per-eval", "40"]
# a run that learns within ~15 s of CPU: 5 iterations x 320 gradient steps, 16 train tasks, nets 32
LEARN = ["--env", "point-robot", "--num-train-tasks", "16", "--meta-batch", "8", "--num-initial-steps", "100",
         "--num-tasks-sample", "4", "--num-steps-prior", "40", "--num-extra-rl-steps-posterior", "40", "--batch-size",
         "64", "--embedding-batch-size", "32", "--net-size", "32", "--encoder-size", "32", "--num-evals", "1",
         "--num-steps-per-eval", "60", "--reward-scale", "5", "--learning-rate", "1e-3", "--num-iterations", "5",
         "--num-train-steps-per-itr", "320", "--eval-interval", "5", "--no-save-model"]
IGNORED = ("wall_time", "charts/SPS")  # and time/*: the fields an exact resume may change


def tiny_args(env, **kw):
    args = pearl.Args(env=env.name, num_train_tasks=4, meta_batch=2, num_initial_steps=20, num_tasks_sample=1,
                      num_steps_prior=20, num_steps_posterior=20, num_extra_rl_steps_posterior=20,
                      num_train_steps_per_itr=1, batch_size=8, embedding_batch_size=8, net_size=16, encoder_size=16,
                      num_evals=1, num_steps_per_eval=100, num_exp_traj_eval=2, replay_buffer_size=1000)
    return pearl.resolve_args(dataclasses.replace(args, **kw), env)


def tiny_agent(env, args):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    ctx_dim = obs_dim + act_dim + 1
    torch.manual_seed(0)
    return pearl.PEARL(obs_dim, act_dim, ctx_dim, args), obs_dim, act_dim, ctx_dim


def run(*flags, check=True, script="pearl.py"):
    p = subprocess.run([sys.executable, script, *flags], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def evals(run_dir):
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


def comparable(row):
    return {k: v for k, v in row.items() if k not in IGNORED and not k.startswith("time/")}


# ------------------------------------------------------------------------------------ posterior and KL
def test_product_of_gaussians_closed_form():
    # N(1, 1) x N(3, 1) -> N(2, 1/2); N(0, 1) x N(4, 3) -> var 3/4, mean 3/4 * 4/3 = 1
    mu = torch.tensor([[[1.0], [3.0]], [[0.0], [4.0]]])
    var = torch.tensor([[[1.0], [1.0]], [[1.0], [3.0]]])
    m, v = pearl.product_of_gaussians(mu, var)
    torch.testing.assert_close(m, torch.tensor([[2.0], [1.0]]))
    torch.testing.assert_close(v, torch.tensor([[0.5], [0.75]]))
    # random factors against the precision-weighted formula in float64
    g = torch.Generator().manual_seed(0)
    mu, var = torch.randn(3, 7, 5, generator=g), torch.rand(3, 7, 5, generator=g) + 0.1
    m, v = pearl.product_of_gaussians(mu, var)
    prec = (1 / var.double()).sum(1)
    torch.testing.assert_close(v.double(), 1 / prec)
    torch.testing.assert_close(m.double(), (mu.double() / var.double()).sum(1) / prec)
    # variances are clamped at 1e-7: a zero variance cannot divide by zero
    m, v = pearl.product_of_gaussians(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))
    assert torch.isfinite(m).all() and v.item() == pytest.approx(1e-7)


def test_kl_to_standard_normal_closed_form():
    assert pearl.kl_to_standard_normal(torch.zeros(5), torch.ones(5)).item() == 0.0
    assert pearl.kl_to_standard_normal(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(0.5)
    mu, var = torch.randn(4, 5), torch.rand(4, 5) + 0.05
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, var.sqrt()),
                                            torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(pearl.kl_to_standard_normal(mu, var), ref)


def test_deterministic_encoder_is_mean_of_outputs():
    enc = pearl.ContextEncoder(ctx_dim=4, latent=3, hidden=8, ib=False)
    c = torch.randn(2, 6, 4)
    m, v = enc(c)
    assert v is None and m.shape == (2, 3)
    torch.testing.assert_close(m, enc.net(c).mean(1))
    assert torch.equal(pearl.sample_z(m, v), m)


# ------------------------------------------------------------------------------------ gradients
def test_encoder_gets_gradients_only_from_q_loss_and_kl():
    env = envs.make("point-robot")
    args = tiny_args(env)
    agent, obs_dim, act_dim, ctx_dim = tiny_agent(env, args)
    T, B = 3, 5
    obs, act, nobs = torch.randn(T * B, obs_dim), torch.rand(T * B, act_dim) * 2 - 1, torch.randn(T * B, obs_dim)
    rew, done, context = torch.randn(T * B, 1), torch.zeros(T * B, 1), torch.randn(T, 7, ctx_dim)
    qf_loss, kl_loss, z, _ = pearl.critic_and_encoder_loss(agent, obs, act, rew, nobs, done, context, args)
    assert not z.requires_grad and z.shape == (T * B, args.latent_size)
    assert torch.equal(z[:B], z[:1].expand(B, -1))  # one z per task, shared by its rows
    vf_loss, policy_loss, _ = pearl.actor_and_value_loss(agent, obs, z, args)
    (vf_loss + policy_loss).backward()
    assert all(p.grad is None for p in agent.encoder.parameters()), "policy / V loss reached the encoder"
    assert all(p.grad is None for p in [*agent.qf1.parameters(), *agent.qf2.parameters()]), "Q weights got policy grads"
    assert all(p.grad is not None for p in [*agent.policy.parameters(), *agent.vf.parameters()])
    assert all(p.requires_grad for p in agent.qf1.parameters())  # unfrozen again
    (qf_loss + kl_loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.encoder.parameters())
    assert all(p.grad is None for p in agent.target_vf.parameters())


def test_gradient_step_is_batched_and_finite():
    env = envs.make("point-robot")
    args = tiny_args(env)
    agent, obs_dim, act_dim, ctx_dim = tiny_agent(env, args)
    optims = pearl.make_optimizers(agent, 3e-4)
    batch = torch.randn(3, 8, 2 * obs_dim + act_dim + 2)
    batch[..., -1] = 0
    before = [p.clone() for p in agent.target_vf.parameters()]
    losses = pearl.gradient_step(agent, optims, batch, torch.randn(3, 5, ctx_dim), args, obs_dim, act_dim)
    assert all(torch.isfinite(v) for v in losses.values())
    after = list(agent.target_vf.parameters())
    vf = list(agent.vf.parameters())
    for b, a, v in zip(before, after, vf):  # Polyak: target <- target + tau (v - target)
        torch.testing.assert_close(a, b + args.soft_target_tau * (v - b))


def test_bf16_keeps_the_value_heads_in_float32():
    env = envs.make("point-robot")
    agent, obs_dim, act_dim, _ = tiny_agent(env, tiny_args(env, bf16=True))
    for q, width in ((agent.qf1, obs_dim + act_dim + 5), (agent.vf, obs_dim + 5)):
        q.net[-1].bias.data.fill_(-1000.0)  # Q of about -1e3, where bfloat16's values are 4 or 8 apart
        x = torch.randn(64, width)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, hidden = q(x), q.net[:-1](x)
            rounded = q.net[-1](hidden)
        head = q.net[-1]
        assert hidden.dtype == torch.bfloat16 and out.dtype == torch.float32 and rounded.dtype == torch.bfloat16
        torch.testing.assert_close(out, hidden.float() @ head.weight.T + head.bias, rtol=0, atol=1e-4)
        assert (out % 4 != 0).any() and (rounded.float() % 4 == 0).all()  # bfloat16 would round to its grid


def test_four_corners_draws_a_meta_batch_of_8_from_its_4_tasks():
    args, *_ = pearl.parse_command_line(["--env", "four-corners"])
    assert (args.meta_batch, args.batch_size, args.num_train_tasks) == (8, 256, 4)  # the authors' config


# ------------------------------------------------------------------------------------ meta-test protocol
@pytest.mark.parametrize("k", [1, 3])
def test_meta_test_uses_prior_for_exactly_num_exp_traj_eval_trajectories(k, monkeypatch):
    env = envs.make("point-robot", seed=0)  # H = 20, 100 eval steps = 5 trajectories
    args = tiny_args(env, num_exp_traj_eval=k)
    agent, _, _, ctx_dim = tiny_agent(env, args)
    seen = []
    real = pearl.infer_posterior
    monkeypatch.setattr(pearl, "infer_posterior", lambda a, c, d, dev: seen.append(len(c)) or real(a, c, d, dev))
    env.reset(seed=0)
    out = pearl.meta_test_run(env, agent, env.test_tasks[0], args, ctx_dim, torch.device("cpu"))
    assert out["z_source"] == ["prior"] * k + ["posterior"] * (5 - k)
    # the posterior is re-inferred after every trajectory from ALL context gathered so far
    assert seen == [20 * j for j in range(k, 6)]
    done = []
    res = pearl.meta_test(env, agent, env.test_tasks[:2], args, ctx_dim, torch.device("cpu"),
                          after_task=lambda: done.append(1))
    assert len(res["online_returns"]) == 5 and len(done) == 2


def test_success_rate_is_any_success_after_the_exploration_trajectories(monkeypatch):
    env = envs.make("sparse-point-robot", seed=0)
    args = tiny_args(env, num_exp_traj_eval=2, num_evals=3)
    runs = iter([[True, True, False, False], [False, False, True, False], [False, False, False, True],  # task 1
                 [True, False, False, False]] + [[False] * 4] * 2)  # task 2: an exploration success only

    def hand_built(env, agent, task, args, ctx_dim, device, render=False):
        success = next(runs)
        return {"returns": [0.0] * 4, "success": success, "z_source": ["prior"] * 2 + ["posterior"] * 2}

    monkeypatch.setattr(pearl, "meta_test_run", hand_built)
    res = pearl.meta_test(env, None, env.test_tasks[:2], args, 5, torch.device("cpu"))
    # the authors' "Success Rate": task 1 (0 + 1 + 1) / 3, task 2 0 (exploration successes do not count)
    assert res["success_rate"] == pytest.approx((2 / 3 + 0) / 2)
    assert res["success_rate_last"] == pytest.approx((1 / 3 + 0) / 2)  # the last trajectory's, task 1 only


# ------------------------------------------------------------------------------------ buffers
def test_buffer_fifo_and_sampling():
    buf = pearl.TaskReplayBuffers(2, 10, obs_dim=1, act_dim=1)
    buf.add_trajectory(0, np.arange(7 * buf.width, dtype=np.float32).reshape(7, buf.width))
    buf.add_trajectory(0, np.arange(7 * buf.width, dtype=np.float32).reshape(7, buf.width) + 1000)
    assert buf.size[0] == 10 and buf.size[1] == 0 and buf.ptr[0] == 4
    kept = set(buf.data[0][:, 0].tolist())
    assert kept == set((np.arange(4, 7) * buf.width).tolist()) | set((np.arange(7) * buf.width + 1000).tolist())
    buf.add_trajectory(1, np.ones((3, buf.width), np.float32))
    s = buf.sample(np.array([1, 0, 1]), 50, np.random.default_rng(0))
    assert s.shape == (3, 50, buf.width) and (s[0] == 1).all() and (s[2] == 1).all()
    assert set(s[1, :, 0].tolist()) <= kept
    buf.clear(0)
    assert buf.size[0] == 0 and buf.size[1] == 3


def test_buffers_grow_with_the_data_and_sample_as_a_preallocated_buffer_would():
    buf = pearl.TaskReplayBuffers(50, 1_000_000, obs_dim=6, act_dim=4)  # sawyer-push at the authors' capacity
    assert sum(a.nbytes for a in buf.data) == 0  # nothing allocated up front
    buf.add_trajectory(3, np.ones((150, buf.width), np.float32))
    assert sum(a.nbytes for a in buf.data) == 1024 * buf.width * 4  # one task's first 1024 rows
    # against the preallocated (tasks, capacity, width) layout: same rows, same draws from the same generator
    ref, grown = np.zeros((3, 50, 5), np.float32), pearl.TaskReplayBuffers(3, 50, obs_dim=1, act_dim=1)
    ptr, size, ops = np.zeros(3, int), np.zeros(3, int), np.random.default_rng(0)
    for step in range(60):
        task, n = int(ops.integers(3)), int(ops.integers(1, 30))
        if ops.random() < 0.1:
            grown.clear(task)
            ptr[task] = size[task] = 0
            continue
        rows = ops.standard_normal((n, 5)).astype(np.float32)
        grown.add_trajectory(task, rows)
        ref[task, (ptr[task] + np.arange(n)) % 50] = rows
        ptr[task], size[task] = (ptr[task] + n) % 50, min(size[task] + n, 50)
        tasks = np.flatnonzero(size)[[0, -1, 0]]
        r1, r2 = np.random.default_rng(step), np.random.default_rng(step)
        idx = r1.integers(0, size[tasks][:, None], size=(3, 7))
        np.testing.assert_array_equal(grown.sample(tasks, 7, r2), ref[tasks[:, None], idx])
    assert grown.size.tolist() == size.tolist() and grown.ptr.tolist() == ptr.tolist()


def test_encoder_buffer_cleared_on_recollection_and_extra_steps_go_to_rl_only():
    env = envs.make("point-robot", seed=0)
    args = tiny_args(env, num_steps_prior=40, num_steps_posterior=20, num_extra_rl_steps_posterior=60)
    agent, obs_dim, act_dim, ctx_dim = tiny_agent(env, args)
    rl = pearl.TaskReplayBuffers(4, 1000, obs_dim, act_dim)
    enc = pearl.TaskReplayBuffers(4, 1000, obs_dim, act_dim)
    old = np.full((50, rl.width), 7.0, np.float32)
    rl.add_trajectory(1, old), enc.add_trajectory(1, old)
    env.reset(seed=0)
    trajs = pearl.collect_for_task(env, agent, 1, env.train_tasks[1], rl, enc, args, ctx_dim,
                                   np.random.default_rng(0), torch.device("cpu"))
    assert sum(len(t["rew"]) for t in trajs) == 120
    assert rl.size[1] == 50 + 120  # RL buffer keeps the old data and gets everything
    assert enc.size[1] == 60 and not (enc.data[1][:60] == 7.0).all(1).any()  # cleared, then prior + posterior only
    np.testing.assert_array_equal(rl.data[1][50:110], enc.data[1][:60])


def test_sparse_point_robot_recipe_critic_dense_encoder_sparse():
    env = envs.make("sparse-point-robot", seed=0)
    args = tiny_args(env)
    assert args.critic_dense_reward and args.num_exp_traj_eval == 2  # the paper's row, flags kept
    agent, obs_dim, act_dim, ctx_dim = tiny_agent(env, args)
    rl = pearl.TaskReplayBuffers(4, 1000, obs_dim, act_dim)
    enc = pearl.TaskReplayBuffers(4, 1000, obs_dim, act_dim)
    env.reset(seed=0)
    task = env.train_tasks[0]
    pearl.collect_data(env, agent, 0, task, 40, rl, enc, args, ctx_dim, np.random.default_rng(0), torch.device("cpu"),
                       update_posterior=False, add_to_encoder=True)
    o, a = obs_dim, obs_dim + act_dim
    rows = rl.data[0][:40]
    dense = env.evaluate_dense(rows[:, :o], rows[:, o:a], rows[:, a + 1:a + 1 + o], task)
    sparse, _ = env.evaluate(rows[:, :o], rows[:, o:a], rows[:, a + 1:a + 1 + o], task)
    np.testing.assert_allclose(rows[:, a], dense, rtol=1e-6)
    np.testing.assert_allclose(enc.data[0][:40, a], sparse, rtol=1e-6)
    assert not np.allclose(dense, sparse)
    hfr = tiny_args(env, critic_dense_reward=False)  # HFR's convention: the env reward everywhere
    assert not hfr.critic_dense_reward


def test_delay_rewards_hand_computed():
    r = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(pearl.delay_rewards(r, 2), [[0, 3, 0, 7, 5], [0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(pearl.delay_rewards(r, 5), [[0, 0, 0, 0, 15], [0, 0, 0, 0, 2]])
    np.testing.assert_array_equal(pearl.delay_rewards(r, 7), [[0, 0, 0, 0, 15], [0, 0, 0, 0, 2]])
    assert pearl.delay_rewards(r, 1) is r


def test_reward_delay_stores_what_the_delayed_env_paid():
    env = envs.make("cheetah-vel", seed=0, reward_delay=7, horizon=30)
    args = tiny_args(env, reward_delay=7)
    agent, obs_dim, act_dim, ctx_dim = tiny_agent(env, args)
    task = env.train_tasks[0]
    env.set_task(task)
    traj = pearl.rollout(env, agent, torch.zeros(1, args.latent_size), torch.device("cpu"), deterministic=False)
    rew, critic, _ = pearl.trajectory_rewards(env, traj, task, args)
    np.testing.assert_allclose(rew, traj["rew"], rtol=1e-9, atol=1e-9)  # env.step's delayed payments
    np.testing.assert_array_equal(rew, critic)
    assert (rew.nonzero()[0] == [6, 13, 20, 27, 29]).all()
    rl = pearl.TaskReplayBuffers(4, 1000, obs_dim, act_dim)
    enc = pearl.TaskReplayBuffers(4, 1000, obs_dim, act_dim)
    pearl.collect_data(env, agent, 0, task, 60, rl, enc, args, ctx_dim, np.random.default_rng(0), torch.device("cpu"),
                       update_posterior=False, add_to_encoder=True)
    for buf in (rl, enc):  # both buffers: zero except at the payment steps of each 30-step episode
        assert (buf.data[0][:60, obs_dim + act_dim].nonzero()[0] % 30 == [6, 13, 20, 27, 29] * 2).all()


# ------------------------------------------------------------------------------------ speed: the fp32 matmul kernel
@pytest.mark.parametrize("shape, n_out", [((64, 20), 300), ((4, 16, 20), 8), ((64, 300), 1), ((8, 20), 30)])
def test_linear_on_onednn_matches_torchs_path_forward_and_backward(shape, n_out, monkeypatch):
    calls = []
    monkeypatch.setattr(pearl, "ONEDNN_LINEAR", lambda *a: calls.append(1) or torch.ops.mkldnn._linear_pointwise(*a))
    torch.manual_seed(0)
    layer = pearl.Linear(shape[-1], n_out)
    x, d = torch.randn(shape, requires_grad=True), torch.randn(*shape[:-1], n_out)
    out = {}
    for kernel in ("default", "onednn"):
        monkeypatch.setattr(pearl, "matmul", kernel)
        y = torch.relu_(layer(x))  # in place, as the networks' ReLU after every hidden layer
        out[kernel] = (y.detach(), *torch.autograd.grad(y, (x, *layer.parameters()), d))
    for a, b in zip(out["default"], out["onednn"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert bool(calls) == (math.prod(shape[:-1]) >= 32 and n_out > 1)  # one row or a 1-wide head: torch's path


def test_a_gradient_step_on_onednn_gives_torchs_losses_and_weights(monkeypatch):
    env = envs.make("point-robot")
    args = tiny_args(env, meta_batch=4, batch_size=16, embedding_batch_size=16, net_size=32, encoder_size=32)
    g = torch.Generator().manual_seed(0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    batch = torch.randn(4, 16, 2 * obs_dim + act_dim + 2, generator=g)
    batch[..., -1] = 0.0
    context = torch.randn(4, 16, obs_dim + act_dim + 1, generator=g)
    result = {}
    for kernel in ("default", "onednn"):
        monkeypatch.setattr(pearl, "matmul", kernel)
        agent, *_ = tiny_agent(env, args)
        optims = pearl.make_optimizers(agent, args.learning_rate)
        torch.manual_seed(1)
        losses = [pearl.gradient_step(agent, optims, batch, context, args, obs_dim, act_dim) for _ in range(2)]
        result[kernel] = ({k: float(v) for step in losses for k, v in step.items()}, agent.state_dict())
    (loss_a, state_a), (loss_b, state_b) = result["default"], result["onednn"]
    assert loss_b == pytest.approx(loss_a, rel=1e-4, abs=1e-6)
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("env_name, expected", [
    ("hopper-rand-params", dict(meta_batch=10, num_train_steps_per_itr=4000, num_extra_rl_steps_posterior=600,
                                embedding_batch_size=100, num_exp_traj_eval=2, num_evals=2, num_train_tasks=40,
                                use_next_obs_in_context=True, reward_scale=5.0)),
    ("walker-rand-params", dict(meta_batch=10, num_train_steps_per_itr=4000, embedding_batch_size=100,
                                num_train_tasks=40, use_next_obs_in_context=True)),
    ("humanoid-dir", dict(meta_batch=16, num_train_steps_per_itr=4000, num_extra_rl_steps_posterior=600,
                          embedding_batch_size=256, num_exp_traj_eval=2, num_evals=1, num_train_tasks=100,
                          use_next_obs_in_context=False)),
])
def test_new_families_take_the_authors_configs(env_name, expected):  # oyster configs/*.json
    args = pearl.resolve_args(pearl.Args(env=env_name), envs.make(env_name))
    assert {k: getattr(args, k) for k in expected} == expected


def test_matmul_auto_is_measured_once_and_recorded_in_the_args():
    args, *_ = pearl.parse_command_line(["--env", "point-robot", "--net-size", "16", "--no-cuda"])
    assert args.matmul in ("default", "onednn") and set(pearl.matmul_rates) == {"default", "onednn"}
    args, *_ = pearl.parse_command_line(["--env", "point-robot", "--matmul", "onednn"])
    assert args.matmul == "onednn"
    assert pearl.keep_freed_memory()  # glibc: mallopt is there


def test_a_tiny_run_on_onednn_logs_what_torchs_path_logs(tmp_path):
    flags = [*TINY, "--meta-batch", "2", "--batch-size", "16", "--embedding-batch-size", "16", "--num-iterations", "1"]
    rows, out = {}, {}
    for kernel in ("default", "onednn"):  # 2 tasks x 16 rows, nets 16: products that Linear sends to oneDNN
        out[kernel] = run(*flags, "--matmul", kernel, "--run-dir", str(tmp_path / kernel)).stdout
        rows[kernel] = [comparable(r) for r in evals(str(tmp_path / kernel))]
    assert "fp32 matmul on the CPU: onednn (as --matmul" in out["onednn"]
    for a, b in zip(rows["default"], rows["onednn"]):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k


# ------------------------------------------------------------------------------------ the command line
BAD = [  # (argv, the flag the one-line error names)
    (["--seed", "-1"], "--seed -1"),
    (["--seed", "2147483648"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--env", "no-such-env"], "--env no-such-env: unknown"),
    (["--no-such-flag", "3"], "--no-such-flag"),
    (["--learning-rate", "-1e-3"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--discount", "2"], "--discount"),
    (["--discount", "0"], "--discount"),
    (["--soft-target-tau", "0"], "--soft-target-tau"),
    (["--reward-scale", "0"], "--reward-scale"),
    (["--kl-lambda", "-1"], "--kl-lambda"),
    (["--batch-size", "0"], "--batch-size"),
    (["--meta-batch", "0"], "--meta-batch"),
    (["--num-iterations", "0"], "--num-iterations"),
    (["--num-initial-steps", "0"], "--num-initial-steps"),
    (["--num-train-tasks", "81"], "--num-train-tasks 81"),
    (["--num-steps-prior", "0", "--num-steps-posterior", "0"], "--num-steps-prior"),
    (["--num-steps-posterior", "-1"], "--num-steps-posterior"),
    (["--num-steps-per-eval", "20"], "--num-steps-per-eval 20"),  # = 1 prior trajectory of H 20: no posterior one
    (["--reward-delay", "0"], "--reward-delay"),
    (["--replay-buffer-size", "0"], "--replay-buffer-size"),
    (["--resume", "/nonexistent/checkpoint.pt"], "--resume"),
    (["--matmul", "mkl"], "--matmul"),
]


@pytest.mark.parametrize("argv, needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_a_one_line_error(argv, needle, one_line_error):
    argv = argv if "--env" in argv else ["--env", "point-robot", *argv]
    assert needle in one_line_error(pearl.parse_command_line, argv)


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    p = run("--env", "point-robot", "--seed", "-1", "--run-dir", str(tmp_path / "never"), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.strip() == (
        "error: --seed -1: must be in [0, 2**31)")
    assert not (tmp_path / "never").exists()  # nothing written


def test_help_shows_the_paper_defaults_of_the_chosen_env(capsys):
    with pytest.raises(SystemExit) as e:
        pearl.parse_command_line(["--env", "sparse-point-robot", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "paper defaults for --env sparse-point-robot:" in out
    assert "num_exp_traj_eval=5" in out and "critic_dense_reward=True" in out and "num_train_tasks=80" in out
    with pytest.raises(SystemExit):
        pearl.parse_command_line(["--env", "no-such-env", "--help"])
    assert "sparse-point-robot: num_initial_steps=200" in " ".join(capsys.readouterr().out.split())


def test_progress_eta_comes_from_the_measured_rates(monkeypatch, capsys):
    clock = iter([100.0, 102.0, 103.0, 110.0])
    monkeypatch.setattr(pearl, "time", type("Clock", (), {"time": staticmethod(lambda: next(clock))}))
    progress = pearl.Progress({"collect": 10, "update": 4}, every=30.0)
    progress.step("collect", 5, "a", force=True)  # 2 s for 5 steps: 2 s left for collect, update not measured
    progress.step("update", 1, "b")  # 1 s for 1 step, within 30 s of the last line: nothing printed
    progress.step("update", 1, "c", force=True)  # update 8 s / 2 steps: 2 x 4 s + collect 2 s = 10 s left
    assert capsys.readouterr().out.splitlines() == ["[0:00:02] a | ETA measuring", "[0:00:10] c | ETA 0:00:10"]


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted tiny run of 3 iterations."""
    d = str(tmp_path_factory.mktemp("pearl") / "a")
    run(*TINY, "--num-iterations", "3", "--run-dir", d)
    return d


def test_sigterm_then_resume_equals_an_uninterrupted_run(finished, tmp_path):
    b = str(tmp_path / "b")
    proc = subprocess.Popen([sys.executable, "pearl.py", *TINY, "--num-iterations", "3", "--run-dir", b], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    while not os.path.exists(os.path.join(b, "checkpoint.pt")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    line = err.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("stopped by SIGTERM; the last finished checkpoint is ")
    assert "Traceback" not in err and f"{b}/checkpoint.pt (iteration " in line[0]
    stopped_at = pearl.load_checkpoint(b)["iteration"]
    assert 1 <= stopped_at < 3
    with open(os.path.join(b, "eval.jsonl"), "a") as f:  # a row a crashed run wrote after its last checkpoint
        f.write(json.dumps({"iteration": stopped_at + 1, "eval/return": 0.0}) + "\n")
    p = run("--resume", b, "--num-iterations", "3")
    assert "resumed from" in p.stdout and "warning" not in p.stderr
    a_rows, b_rows = evals(finished), evals(b)
    assert [r["iteration"] for r in b_rows] == [1, 2, 3]
    assert [comparable(r) for r in b_rows] == [comparable(r) for r in a_rows], "resume is not exact"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(b).Reload().Scalars("eval/return")
    assert [e.step for e in events] == [r["env_steps"] for r in a_rows]  # TensorBoard repeats no step either


def test_resume_warns_per_differing_flag_and_refuses_other_runs(finished, tmp_path, capsys):
    args, *_ = pearl.parse_command_line(["--resume", finished, "--num-iterations", "5", "--learning-rate", "0.01",
                                         "--no-save-model", "--seed", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --learning-rate 0.01 differs from the checkpoint's 0.0003: using the checkpoint's 0.0003",
                   "warning: --num-iterations 5 (the checkpoint's run had 3): using 5",
                   "warning: --save-model False (the checkpoint's run had True): using False"]
    assert args.num_iterations == 5 and args.learning_rate == 3e-4 and not args.save_model
    assert args.run_dir == finished and args.num_train_tasks == 4  # the run's directory and arguments
    ckpt = os.path.join(finished, "checkpoint.pt")
    torch.save({"format": 1, "script": "hfr.py"}, tmp_path / "other.pt")
    with open(ckpt, "rb") as f:
        data = f.read()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for argv, needle in ((["--resume", finished, "--env", "cheetah-vel"], "written for --env point-robot, not"),
                         (["--resume", str(tmp_path / "other.pt")], "written by hfr.py, not pearl.py"),
                         (["--resume", str(tmp_path / "truncated.pt")], "not a readable checkpoint"),
                         (["--resume", str(tmp_path / "empty.pt")], "not a readable checkpoint"),
                         (["--resume", finished, "--num-iterations", "2"], "at iteration 3")):
        with pytest.raises(SystemExit) as e:
            pearl.parse_command_line(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_a_checkpoint_from_before_matmul_resumes_on_torchs_path(finished, tmp_path):
    ckpt = torch.load(os.path.join(finished, "checkpoint.pt"), weights_only=False)
    assert ckpt["args"]["matmul"] in ("default", "onednn")  # auto is resolved before the run starts
    del ckpt["args"]["matmul"]
    torch.save(ckpt, tmp_path / "old.pt")
    args, *_ = pearl.parse_command_line(["--resume", str(tmp_path / "old.pt")])
    assert args.matmul == "default"  # the kernel that run used, so it continues exactly


def test_end_to_end_logs_and_checkpoint(finished):
    rows = evals(finished)
    assert [r["iteration"] for r in rows] == [1, 2, 3] and rows[1]["env_steps"] > rows[0]["env_steps"]
    for key in ("env_steps", "wall_time", "eval/return", "eval/return_prior", "eval/return_train_tasks",
                "eval/online_returns", "time/collect", "time/update", "time/relabel", "time/eval", "losses/qf_loss",
                "losses/policy_loss", "losses/kl_loss", "charts/episodic_return"):
        assert key in rows[0], key
    ckpt = pearl.load_checkpoint(finished)
    assert ckpt["script"] == "pearl.py" and ckpt["env"] == "point-robot" and ckpt["iteration"] == 3
    assert ckpt["rl_buffer"]["size"].sum() == sum(len(r) for r in ckpt["rl_buffer"]["rows"]) > 0
    assert ckpt["args"]["replay_buffer_size"] == 1_000_000  # the authors' capacity per task


def test_end_to_end_sparse_bf16_video_deterministic_encoder(tmp_path):
    d = str(tmp_path / "s")
    p = run(*TINY[2:], "--env", "sparse-point-robot", "--num-steps-posterior", "20", "--num-exp-traj-eval", "1",
            "--num-iterations", "1", "--bf16", "--capture-video", "--no-use-information-bottleneck",
            "--use-next-obs-in-context", "True", "--run-dir", d)
    e = evals(d)[0]
    assert e["losses/kl_loss"] == 0.0 and np.isfinite(e["losses/qf_loss"])
    assert os.path.getsize(os.path.join(d, "videos", "iteration_1.gif")) > 0
    lines = p.stdout.strip().splitlines()
    assert lines[1].startswith("fp32 matmul on the CPU: ")  # the kernel, and why
    assert lines[2].startswith("[0:00:") and "iteration 1/1 | starting" in lines[2]  # the first progress line
    assert lines[-1] == f"done: eval.jsonl and TensorBoard logs in {d}, checkpoint {d}/checkpoint.pt"
    saved = json.load(open(os.path.join(d, "args.json")))
    assert saved["critic_dense_reward"] is True and saved["bf16"] is True and saved["embedding_batch_size"] == 8


def untrained_return(module, argv):
    """Alg. 2's return of the untrained agent of this run (same seed, same eval env)."""
    args, env, eval_env, _ = module.parse_command_line(argv)
    torch.manual_seed(args.seed)
    eval_env.reset(seed=args.seed + 10_000)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = module.PEARL(obs_dim, act_dim, obs_dim + act_dim + 1, args)
    return module.meta_test(eval_env, agent, env.test_tasks, args, obs_dim + act_dim + 1, torch.device("cpu"))["return"]


def test_learns_on_point_robot(tmp_path):
    d = str(tmp_path / "learn")
    run(*LEARN, "--run-dir", d)
    before, after = untrained_return(pearl, LEARN), evals(d)[-1]["eval/return"]
    assert after > before + 2.5, (before, after)  # untrained: about -20.6 (standing still); trained: about -16


# ------------------------------------------------------------------------------------ pixel observations
needs_gl = pytest.mark.skipif(envs.NO_OPENGL, reason="no offscreen OpenGL here; apt-get install libosmesa6 "
                                                     "or set MUJOCO_GL=egl")
# visual-reacher with 2 test tasks and horizon 10, so that a run renders a few hundred frames
SMALL_VISUAL_REACHER = ("import envs, runpy, sys; make = envs.make; "
                        "envs.make = lambda name, **kw: make(name, **kw, n_test_tasks=2, horizon=10); "
                        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
PIXEL_TINY = ["--env", "visual-reacher", "--num-train-tasks", "2", "--meta-batch", "2", "--num-initial-steps", "20",
              "--num-tasks-sample", "1", "--num-steps-prior", "10", "--num-steps-posterior", "10",
              "--num-extra-rl-steps-posterior", "10", "--num-train-steps-per-itr", "2", "--batch-size", "4",
              "--embedding-batch-size", "4", "--net-size", "16", "--encoder-size", "16", "--num-evals", "1",
              "--num-steps-per-eval", "20", "--num-exp-traj-eval", "1", "--num-iterations", "1", "--no-cuda"]


def pixel_obs(n, state_dim=2, image_shape=(3, 64, 64), seed=0):
    """n observations as visual-reacher writes them: the state, then a channel-first image of values k / 255."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, int(np.prod(image_shape))), dtype=np.uint8) / np.float32(255)
    return np.concatenate([rng.uniform(-0.2, 0.2, (n, state_dim)).astype(np.float32), image], 1)


def pixel_agent(module, next_obs_in_context=False):
    env = envs.make("visual-reacher")  # builds without OpenGL; only reset and step render
    args = module.resolve_args(module.Args(env="visual-reacher", net_size=16, encoder_size=16,
                                           use_next_obs_in_context=next_obs_in_context), env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    ctx_dim = obs_dim + act_dim + 1 + (obs_dim if next_obs_in_context else 0)
    torch.manual_seed(0)
    return module.PEARL(obs_dim, act_dim, ctx_dim, args, env.image_shape), args, obs_dim, act_dim, ctx_dim


@pytest.mark.parametrize("next_obs_in_context", [False, True])
def test_pixel_networks_read_conv_features_and_never_the_state(next_obs_in_context):
    agent, args, obs_dim, act_dim, ctx_dim = pixel_agent(pearl, next_obs_in_context)
    assert obs_dim == 2 + 3 * 64 * 64 and agent.pixels.convs(torch.zeros(1, 3, 64, 64)).shape == (1, 32 * 25 * 25)
    L, f = args.latent_size, agent.pixels.out_dim  # f = 50 features per observation
    assert agent.policy.net[0].in_features == f + L and agent.qf1.net[0].in_features == f + act_dim + L
    assert agent.vf.net[0].in_features == f + L
    assert agent.encoder.net[0].in_features == f + act_dim + 1 + (f if next_obs_in_context else 0)
    obs = torch.from_numpy(pixel_obs(6))
    assert agent.features(obs).shape == (6, f) and agent.features(obs.reshape(2, 3, -1)).shape == (2, 3, f)
    rows = torch.from_numpy(pearl.pack({"obs": obs.numpy(), "act": np.ones((6, act_dim), np.float32),
                                        "next_obs": pixel_obs(6, seed=1), "done": np.zeros(6)}, np.ones(6)))
    context, z = rows[None, :, :ctx_dim], torch.randn(6, L)
    moved, other_image = obs.clone(), obs.clone()  # the state perturbed; the image perturbed
    moved[:, :2] += 1.0
    other_image[:, 2:] = torch.from_numpy(pixel_obs(6, seed=2)[:, 2:])
    moved_context = context.clone()
    moved_context[..., :2] += 1.0
    if next_obs_in_context:
        moved_context[..., obs_dim + act_dim + 1:][..., :2] -= 1.0
    act = rows[:, obs_dim:obs_dim + act_dim]

    @torch.no_grad()
    def seen(o, c):  # what the policy does, what Q says and the posterior mean
        s = agent.features(o)
        return agent.policy.act(s, z, deterministic=True), agent.qf1(torch.cat([s, act, z], -1)), agent.posterior(c)[0]

    base, perturbed, changed = seen(obs, context), seen(moved, moved_context), seen(other_image, context)
    for a, b in zip(base, perturbed):
        assert torch.equal(a, b)  # bit for bit: the state numbers reach no network
    assert not torch.equal(base[0], changed[0]) and not torch.equal(base[1], changed[1])  # the image does


def test_pixel_encoder_learns_from_the_q_loss_and_kl_only():
    agent, args, obs_dim, act_dim, ctx_dim = pixel_agent(pearl)
    T, B = 2, 3
    obs, nobs = torch.from_numpy(pixel_obs(T * B)), torch.from_numpy(pixel_obs(T * B, seed=1))
    act, rew, done = torch.rand(T * B, act_dim) * 2 - 1, torch.randn(T * B, 1), torch.zeros(T * B, 1)
    context = torch.from_numpy(pearl.pack({"obs": pixel_obs(T * 4, seed=2), "act": np.zeros((T * 4, act_dim)),
                                           "next_obs": pixel_obs(T * 4, seed=3), "done": np.zeros(T * 4)},
                                          np.ones(T * 4))[:, :ctx_dim]).reshape(T, 4, ctx_dim)
    s = agent.features(obs)
    qf_loss, kl_loss, z, _ = pearl.critic_and_encoder_loss(agent, s, act, rew, agent.features(nobs).detach(), done,
                                                           context, args)
    vf_loss, policy_loss, _ = pearl.actor_and_value_loss(agent, s.detach(), z, args)
    (vf_loss + policy_loss).backward()
    assert all(p.grad is None for p in agent.pixels.parameters()), "policy / V loss reached the conv encoder"
    (qf_loss + kl_loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.pixels.parameters())
    optims = pearl.make_optimizers(agent, 3e-4)  # the conv encoder steps with the context encoder, once
    assert {id(p) for p in agent.pixels.parameters()} <= {id(p) for g in optims["encoder"].param_groups
                                                          for p in g["params"]}
    assert not any(id(p) == id(q) for k in ("qf", "vf", "policy") for g in optims[k].param_groups
                   for p in g["params"] for q in agent.pixels.parameters())
    batch = torch.from_numpy(pearl.pack({"obs": obs.numpy(), "act": act.numpy(), "next_obs": nobs.numpy(),
                                         "done": np.zeros(T * B)}, rew[:, 0].numpy())).reshape(T, B, -1)
    losses = pearl.gradient_step(agent, optims, batch, context, args, obs_dim, act_dim)
    assert all(torch.isfinite(v) for v in losses.values())


def test_images_are_stored_as_uint8_and_sampled_back_bit_for_bit():
    obs_dim, act_dim, image_size = 2 + 3 * 16 * 16, 2, 3 * 16 * 16
    buf = pearl.TaskReplayBuffers(2, 50, obs_dim, act_dim, image_size)
    rows = pearl.pack({"obs": pixel_obs(30, image_shape=(3, 16, 16)), "act": np.full((30, 2), 0.3, np.float32),
                       "next_obs": pixel_obs(30, image_shape=(3, 16, 16), seed=1), "done": np.zeros(30)},
                      np.linspace(-1, 0, 30))
    buf.add_trajectory(1, rows)
    assert buf.images[1].dtype == np.uint8 and buf.images[1].shape[1] == 2 * image_size
    assert buf.data[1].dtype == np.float32 and buf.data[1].shape[1] == 2 * 2 + act_dim + 2  # states, a, r, done
    stored = (buf.images[1].nbytes + buf.data[1].nbytes) / len(buf.data[1])
    assert stored < rows.nbytes / len(rows) / 3.9  # bytes per transition: ~4x less than float32 rows
    out = buf.sample(np.array([1, 1]), 200, np.random.default_rng(0))
    seen = {r.tobytes() for r in rows}
    assert out.dtype == np.float32 and all(r.tobytes() in seen for r in out.reshape(-1, buf.width))  # exact rows
    again = pearl.TaskReplayBuffers(2, 50, obs_dim, act_dim, image_size)
    again.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(again.sample(np.array([1]), 30, np.random.default_rng(1)),
                                  buf.sample(np.array([1]), 30, np.random.default_rng(1)))


def test_a_pixel_family_without_opengl_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(envs, "NO_OPENGL", True)
    with pytest.raises(SystemExit) as e:
        pearl.parse_command_line(["--env", "visual-reacher"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: --env visual-reacher: ") \
        and "OpenGL" in err[0], err


@needs_gl
def test_end_to_end_on_visual_reacher(tmp_path):
    d = str(tmp_path / "pixels")
    p = subprocess.run([sys.executable, "-c", SMALL_VISUAL_REACHER, "pearl.py", *PIXEL_TINY, "--run-dir", d],
                       cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    e = evals(d)[0]
    assert np.isfinite(e["eval/return"]) and np.isfinite(e["losses/qf_loss"]) and "eval/success_rate" in e
    buffer = pearl.load_checkpoint(d)["rl_buffer"]
    n = int(buffer["size"].sum())
    assert n >= 70 and sum(len(x) for x in buffer["images"]) == n  # 2 x 20 initial + 30 collected, whole episodes
    assert all(x.dtype == np.uint8 and x.shape[1] == 2 * 3 * 64 * 64 for x in buffer["images"])
    assert all(x.shape[1] == 8 for x in buffer["rows"])  # fingertip, action, reward, next fingertip, done
