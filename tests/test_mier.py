"""mier.py: the inner loop against a hand-computed step, the second-order outer gradient, the relabeler, and
tiny end-to-end runs of MIER-wR / MIER (reward-only and dynamics relabeling), checkpoint and resume."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs  # noqa: E402
import mier  # noqa: E402

ARGS = types.SimpleNamespace(inner_lr=0.01, inner_steps=2, grad_clip=10.0, first_order=False)


def random_batch(T, B, obs_dim, act_dim, gen, dtype=torch.float64):
    return (torch.randn(T, B, obs_dim, generator=gen, dtype=dtype), torch.rand(T, B, act_dim, generator=gen, dtype=dtype),
            torch.randn(T, B, generator=gen, dtype=dtype), torch.randn(T, B, obs_dim, generator=gen, dtype=dtype))


def hand_gradient(model, batch, phi):
    """d NLL / d phi for a linear model (no hidden layer), derived on paper and written in numpy."""
    W = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    hi, lo = model.max_logvar.detach().double().numpy(), model.min_logvar.detach().double().numpy()
    obs, act, rew, next_obs = (x.numpy() for x in batch)
    B, k = len(rew), 1 + obs.shape[-1]
    x = np.concatenate([obs, act, np.broadcast_to(phi, (B, len(phi)))], -1)
    out = x @ W.T + b
    mean, raw = out[:, :k], out[:, k:]
    softplus, sigmoid = lambda z: np.log1p(np.exp(z)), lambda z: 1 / (1 + np.exp(-z))
    lv1 = hi - softplus(hi - raw)
    logvar = lo + softplus(lv1 - lo)
    dlogvar_draw = sigmoid(hi - raw) * sigmoid(lv1 - lo)
    err = mean - np.concatenate([rew[:, None], next_obs - obs], -1)
    weight = np.concatenate([[1.0 / B], np.full(k - 1, 1.0 / (B * (k - 1)))])  # reward mean + state mean
    d_mean = weight * 2 * err * np.exp(-logvar)
    d_raw = weight * (1 - err**2 * np.exp(-logvar)) * dlogvar_draw
    d_x = np.concatenate([d_mean, d_raw], -1) @ W  # (B, inputs)
    return d_x[:, -len(phi):].sum(0)


@pytest.mark.parametrize("scale", [1.0, 50.0])  # below and above the inner gradient clip (norm 10)
def test_inner_step_equals_hand_computed_gradient_step(scale):
    gen = torch.Generator().manual_seed(0)
    obs_dim, act_dim, d = 3, 2, 4
    model = mier.DynamicsModel(obs_dim, act_dim, d, hidden=8, layers=0).double()
    with torch.no_grad():
        model.head.weight.mul_(scale)
        model.context.copy_(torch.randn(d, generator=gen, dtype=torch.float64))
    batch = random_batch(2, 16, obs_dim, act_dim, gen)
    phi1 = mier.adapt(model, batch, [0.01], 10.0, create_graph=False).detach().numpy()
    for t in range(2):  # each task adapts on its own data only
        g = hand_gradient(model, tuple(x[t] for x in batch), model.context.detach().numpy())
        if scale > 1:
            assert np.linalg.norm(g) > 10.0
        g = g * min(1.0, 10.0 / np.linalg.norm(g))
        np.testing.assert_allclose(phi1[t], model.context.detach().numpy() - 0.01 * g, rtol=1e-9, atol=1e-12)


def meta_loss(model, adapt_batch, eval_batch, create_graph=True):
    phi = mier.adapt(model, adapt_batch, [0.5, 0.5], 10.0, create_graph=create_graph)
    return mier.nll(model, eval_batch, phi).mean()


def test_outer_gradient_reaches_theta_through_adapted_phi():
    """The meta-gradient equals finite differences of theta -> J(theta, phi_T(theta)) (second order, Eq. J); the
    first-order gradient, which ignores how theta moves phi_T, does not."""
    gen = torch.Generator().manual_seed(1)
    model = mier.DynamicsModel(3, 2, 2, hidden=6, layers=1).double()
    adapt_batch, eval_batch = random_batch(2, 8, 3, 2, gen), random_batch(2, 8, 3, 2, gen)
    w = model.body[0].weight  # theta entries multiplying phi: they shape the adaptation
    (exact,) = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch), w)
    (first_order,) = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch, create_graph=False), w)
    (grad_phi0,) = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch), model.context)
    assert grad_phi0.abs().sum() > 0  # phi_0 is meta-learned
    eps = 1e-6
    for i, j in [(0, 5), (1, 6), (3, 5), (2, 0)]:  # columns 5, 6 are phi's, 0 is an observation's
        values = []
        for step in (eps, -2 * eps, eps):
            with torch.no_grad():
                w[i, j] += step
            values.append(meta_loss(model, adapt_batch, eval_batch, create_graph=False).item())
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(exact[i, j].item() - numeric) < 1e-6 * max(1.0, abs(numeric))
    assert (exact - first_order).abs().max() > 1e-4


def test_meta_update_matches_per_task_loop():
    """The batched inner loop gives the same phi_T and meta-gradient as adapting each task on its own."""
    gen = torch.Generator().manual_seed(2)
    model = mier.DynamicsModel(3, 2, 2, hidden=6, layers=2).double()
    adapt_batch, eval_batch = random_batch(3, 8, 3, 2, gen), random_batch(3, 8, 3, 2, gen)
    batched = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch), list(model.parameters()))
    looped = [torch.zeros_like(p) for p in model.parameters()]
    for t in range(3):
        one = lambda b: tuple(x[t:t + 1] for x in b)  # noqa: E731
        grads = torch.autograd.grad(meta_loss(model, one(adapt_batch), one(eval_batch)) / 3, list(model.parameters()))
        looped = [a + g for a, g in zip(looped, grads)]
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)


class FakeEnv:
    """evaluate() only: terminates where next_obs[0] > 0, so relabeled terminals are checkable."""

    @staticmethod
    def evaluate(obs, action, next_obs, task):
        return np.zeros(next_obs.shape[:-1]), next_obs[..., 0] > 0


@pytest.mark.parametrize("mode", ["reward", "dynamics"])
def test_relabeled_rewards_and_next_states_come_from_adapted_model(mode):
    torch.manual_seed(3)
    obs_dim, act_dim, d, n = 3, 2, 2, 64
    model = mier.DynamicsModel(obs_dim, act_dim, d, hidden=16, layers=2)
    with torch.no_grad():  # a near-zero variance makes the sampled prediction the mean
        model.max_logvar.fill_(-40.0)
        model.min_logvar.fill_(-50.0)
    actor = mier.Actor(obs_dim + d, act_dim, [16])
    rng = np.random.default_rng(0)
    data = dict(obs=rng.normal(size=(n, obs_dim)), act=rng.uniform(-1, 1, (n, act_dim)), rew=rng.normal(size=n),
                next_obs=rng.normal(size=(n, obs_dim)), term=np.zeros(n))
    data = {k: v.astype(np.float32) for k, v in data.items()}
    phi_T = torch.tensor([1.5, -2.0])
    out = mier.relabel(model, actor, phi_T, data, FakeEnv(), None, mode, torch.device("cpu"))
    with torch.no_grad():
        obs, act = torch.as_tensor(out["obs"]), torch.as_tensor(out["act"])
        mean_T, _ = model(obs, act, phi_T)
        mean_0, _ = model(obs, act, model.context)
    np.testing.assert_allclose(out["rew"], mean_T[:, 0].numpy(), atol=1e-5)
    assert np.abs(out["rew"] - mean_0[:, 0].numpy()).max() > 1e-3  # phi_T, not phi_0, labeled the data
    np.testing.assert_array_equal(out["obs"], data["obs"])
    if mode == "reward":  # (s, a, s') kept, only r replaced
        np.testing.assert_array_equal(out["act"], data["act"])
        np.testing.assert_array_equal(out["next_obs"], data["next_obs"])
    else:  # a from the policy, s' from the model
        assert np.abs(out["act"] - data["act"]).max() > 1e-3 and np.abs(out["act"]).max() <= 1.0
        np.testing.assert_allclose(out["next_obs"], (obs + mean_T[:, 1:]).numpy(), atol=1e-5)
    np.testing.assert_array_equal(out["term"], (out["next_obs"][:, 0] > 0).astype(np.float32))


# ---------------------------------------------------------------- end to end (subprocess, tiny flags)
TINY = ["--num-epochs", "1", "--train-steps", "3", "--initial-repeats", "1", "--tasks-per-epoch", "2",
        "--steps-prior", "20", "--steps-posterior", "20", "--adapt-batch", "20", "--meta-batch", "3",
        "--num-eval-tasks", "2", "--relabel-tasks", "2", "--extrapolation-epochs", "2", "--sac-steps-per-epoch", "4",
        "--relabel-interval", "2", "--rollout-batch", "200", "--cross-tasks", "4", "--sac-hidden", "32,32",
        "--model-hidden", "32", "--context-steps", "3", "--finetune-steps", "2"]


def run(*flags, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "mier.py", *flags], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def read_rows(run_dir):
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_mier_wr_then_resume_into_mier(tmp_path):
    """MIER-wR for one epoch; then resume from its checkpoint for a second epoch followed by Alg. 2 (reward-only
    relabeling on point-robot)."""
    d = str(tmp_path / "run")
    out = run("--env", "point-robot", "--seed", "3", "--run-dir", d, "--no-relabel", *TINY).stdout
    assert "epoch 1/1" in out and "relabeling" not in out
    rows = read_rows(d)
    assert [r["iteration"] for r in rows] == [1] and rows[0]["phase"] == "meta-train"
    for key in ("env_steps", "wall_time", "eval/return", "eval/return_train_tasks", "time/collect", "time/update",
                "time/relabel", "time/eval", "time/model_update", "time/sac_update"):
        assert np.isfinite(rows[0][key]), key
    ckpt = torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["replay"]["size"].sum() > 0
    assert ckpt["model"]["context"].abs().sum() > 0  # phi_0 moved: the outer loop updated it
    out = run("--env", "point-robot", "--seed", "3", "--resume", os.path.join(d, "checkpoint.pt"),
              "--num-epochs", "2", *TINY[2:]).stdout
    assert "resumed from" in out and "epoch 2/2" in out and "epoch 1/2" not in out
    assert "reward relabeling" in out and out.count("relabeling: test task") == 2
    rows = read_rows(d)
    assert [r["phase"] for r in rows] == ["meta-train"] * 2 + ["relabel"] * 3  # adapted, then after each epoch
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1]["env_steps"] > rows[0]["env_steps"] and rows[2]["time/relabel"] > 0
    assert all(np.isfinite(r["eval/return"]) for r in rows)


def test_mier_dynamics_relabeling_end_to_end(tmp_path):
    """A dynamics-shift family: Alg. 2 relabels with one-step model rollouts."""
    d = str(tmp_path / "nj")
    out = run("--env", "cheetah-negated-joints", "--run-dir", d, *TINY).stdout
    assert "dynamics relabeling" in out and out.count("relabeling: test task") == 2
    rows = read_rows(d)
    assert [r["phase"] for r in rows] == ["meta-train"] + ["relabel"] * 3
    assert rows[1]["time/relabel_round"] > 0 and all(np.isfinite(r["eval/return"]) for r in rows)


@pytest.mark.parametrize("flags, message", [
    (dict(env="sawyer-push"), "mier.py serves the families"),
    (dict(env="no-such-env"), "mier.py serves the families"),
    (dict(meta_batch=500), "larger than the 80 train tasks"),
    (dict(relabel_tasks=21), "--relabel-tasks must be in [1, 20]"),
    (dict(rollout_batch=5), "--rollout-batch 5 must be >= --cross-tasks 20"),
    (dict(adapt_batch=0), "--adapt-batch must be >= 1"),
    (dict(steps_prior=10**6), "--buffer-size must hold"),
    (dict(sac_hidden="64,x"), "--sac-hidden"),
])
def test_bad_input_rejected(flags, message):
    args = mier.Args(**{"env": "point-robot", **flags})
    with pytest.raises(SystemExit) as e:
        mier.make_env(args)
    assert str(e.value).startswith("error:") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags", [["--env", "ant-goal"], ["--env", "point-robot", "--meta-batch", "81"],
                                   ["--resume", "/nonexistent/checkpoint.pt"]])
def test_bad_input_cli_one_line_error(flags, tmp_path):
    proc = run(*flags, "--run-dir", str(tmp_path / "bad"), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert not os.path.exists(tmp_path / "bad")
