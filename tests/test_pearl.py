"""Tests of pearl.py: the posterior and KL against closed forms, where the encoder's gradients come from, the
meta-test protocol, the buffers, and tiny end-to-end runs (updates, evaluation, checkpoint, exact resume,
determinism, one-line errors)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import envs
import pearl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-train-tasks", "4", "--meta-batch", "2", "--num-initial-steps", "20", "--num-tasks-sample", "1",
        "--num-steps-prior", "20", "--num-extra-rl-steps-posterior", "20", "--num-train-steps-per-itr", "3",
        "--batch-size", "8", "--embedding-batch-size", "8", "--net-size", "16", "--encoder-size", "16",
        "--num-evals", "1", "--num-steps-per-eval", "40"]


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


def run(*flags, check=True):
    p = subprocess.run([sys.executable, "pearl.py", *flags], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def evals(run_dir):
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


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
    res = pearl.meta_test(env, agent, env.test_tasks[:2], args, ctx_dim, torch.device("cpu"))
    assert len(res["online_returns"]) == 5


# ------------------------------------------------------------------------------------ buffers
def test_buffer_fifo_and_sampling():
    buf = pearl.TaskReplayBuffers(2, 10, obs_dim=1, act_dim=1)
    buf.add_trajectory(0, np.arange(7 * buf.width, dtype=np.float32).reshape(7, buf.width))
    buf.add_trajectory(0, np.arange(7 * buf.width, dtype=np.float32).reshape(7, buf.width) + 1000)
    assert buf.size[0] == 10 and buf.size[1] == 0 and buf.ptr[0] == 4
    kept = set(buf.data[0, :, 0].tolist())
    assert kept == set((np.arange(4, 7) * buf.width).tolist()) | set((np.arange(7) * buf.width + 1000).tolist())
    buf.add_trajectory(1, np.ones((3, buf.width), np.float32))
    s = buf.sample(np.array([1, 0, 1]), 50, np.random.default_rng(0))
    assert s.shape == (3, 50, buf.width) and (s[0] == 1).all() and (s[2] == 1).all()
    assert set(s[1, :, 0].tolist()) <= kept
    buf.clear(0)
    assert buf.size[0] == 0 and buf.size[1] == 3


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
    assert enc.size[1] == 60 and not (enc.data[1, :60] == 7.0).all(1).any()  # cleared, then prior + posterior only
    np.testing.assert_array_equal(rl.data[1, 50:110], enc.data[1, :60])


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
    rows = rl.data[0, :40]
    dense = env.evaluate_dense(rows[:, :o], rows[:, o:a], rows[:, a + 1:a + 1 + o], task)
    sparse, _ = env.evaluate(rows[:, :o], rows[:, o:a], rows[:, a + 1:a + 1 + o], task)
    np.testing.assert_allclose(rows[:, a], dense, rtol=1e-6)
    np.testing.assert_allclose(enc.data[0, :40, a], sparse, rtol=1e-6)
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
        assert (buf.data[0, :60, obs_dim + act_dim].nonzero()[0] % 30 == [6, 13, 20, 27, 29] * 2).all()


# ------------------------------------------------------------------------------------ end to end
def test_end_to_end_checkpoint_exact_resume_and_determinism(tmp_path):
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    run("--env", "point-robot", *TINY, "--num-iterations", "2", "--run-dir", a)
    run("--env", "point-robot", *TINY, "--num-iterations", "3", "--run-dir", b)
    ea, eb = evals(a), evals(b)
    assert [e["iteration"] for e in ea] == [1, 2] and os.path.exists(os.path.join(a, "checkpoint.pt"))
    for key in ("env_steps", "wall_time", "eval/return", "eval/return_train_tasks", "time/collect", "time/update",
                "time/relabel", "time/eval", "losses/qf_loss", "losses/policy_loss", "losses/kl_loss"):
        assert key in ea[0], key
    assert ea[0]["time/update"] > 0 and ea[1]["env_steps"] > ea[0]["env_steps"]
    losses = [k for k in ea[0] if k.startswith("losses/") or k.startswith("eval/")]
    for i in range(2):  # same seed => identical losses and evaluations
        assert {k: ea[i][k] for k in losses} == {k: eb[i][k] for k in losses}
    run("--resume", a, "--num-iterations", "3")  # continues in a's directory, from its checkpoint
    ea = evals(a)
    assert [e["iteration"] for e in ea] == [1, 2, 3]
    assert {k: ea[2][k] for k in losses} == {k: eb[2][k] for k in losses}, "resume is not exact"
    run("--env", "point-robot", *TINY, "--num-iterations", "1", "--seed", "2", "--run-dir", c)
    assert evals(c)[0]["losses/qf_loss"] != eb[0]["losses/qf_loss"]


def test_end_to_end_sparse_bf16_video_deterministic_encoder(tmp_path):
    d = str(tmp_path / "s")
    p = run("--env", "sparse-point-robot", *TINY, "--num-steps-posterior", "20", "--num-exp-traj-eval", "1",
            "--num-iterations", "1", "--bf16", "--capture-video", "--no-use-information-bottleneck",
            "--use-next-obs-in-context", "True", "--run-dir", d)
    e = evals(d)[0]
    assert 0.0 <= e["eval/success_rate"] <= 1.0 and e["losses/kl_loss"] == 0.0
    assert os.path.getsize(os.path.join(d, "videos", "iteration_1.gif")) > 0
    assert "iteration 1/1" in p.stdout
    saved = json.load(open(os.path.join(d, "args.json")))
    assert saved["critic_dense_reward"] is True and saved["bf16"] is True and saved["embedding_batch_size"] == 8


@pytest.mark.parametrize("flags, needle", [
    (["--env", "point-robot", "--meta-batch", "81"], "--meta-batch 81 > the 80 train tasks"),
    (["--env", "no-such-env"], "unknown env"),
    (["--resume", "/nonexistent/checkpoint.pt"], "no checkpoint"),
    (["--env", "point-robot", "--batch-size", "0"], "--batch-size must be positive"),
    (["--env", "point-robot", "--reward-delay", "0"], "--reward-delay must be >= 1"),
])
def test_bad_input_is_a_one_line_error(flags, needle):
    p = run(*flags, "--run-dir", "/tmp/pearl-test-never-created", check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
