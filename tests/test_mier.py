"""mier.py: the inner loop against a hand-computed step, the second-order outer gradient, phi_0 fixed at zero by
default, the relabeler, every bad input as one line, checkpoints and an exact resume after SIGTERM, and a learning
test on point-robot."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
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


@pytest.mark.parametrize("learn_context_init", [False, True])
def test_outer_gradient_reaches_theta_through_adapted_phi(learn_context_init):
    """The meta-gradient equals finite differences of theta -> J(theta, phi_T(theta)) (second order, Eq. J), with
    phi_0 fixed (the default) or learned; the first-order gradient, which ignores how theta moves phi_T, does not."""
    gen = torch.Generator().manual_seed(1)
    model = mier.DynamicsModel(3, 2, 2, hidden=6, layers=1, learn_context_init=learn_context_init).double()
    adapt_batch, eval_batch = random_batch(2, 8, 3, 2, gen), random_batch(2, 8, 3, 2, gen)
    w = model.body[0].weight  # theta entries multiplying phi: they shape the adaptation
    (exact,) = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch), w)
    (first_order,) = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch, create_graph=False), w)
    if learn_context_init:  # --learn-context-init: phi_0 is meta-learned
        (grad_phi0,) = torch.autograd.grad(meta_loss(model, adapt_batch, eval_batch), model.context)
        assert grad_phi0.abs().sum() > 0
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
    model = mier.DynamicsModel(3, 2, 2, hidden=6, layers=2, learn_context_init=True).double()
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


def test_phi0_stays_zero_and_out_of_the_optimizer_by_default():
    """The authors keep the initial context at zero and out of the trained variables (the default); with
    --learn-context-init the outer loop moves it. The optimizer is built as mier.py builds it."""
    assert mier.Args().learn_context_init is False
    gen = torch.Generator().manual_seed(4)
    adapt_batch, eval_batch = random_batch(3, 8, 3, 2, gen, torch.float32), random_batch(3, 8, 3, 2, gen, torch.float32)
    for learn in (False, True):
        model = mier.DynamicsModel(3, 2, 2, hidden=8, layers=1, learn_context_init=learn)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        before = [p.detach().clone() for p in model.body.parameters()]
        for _ in range(3):
            mier.meta_update(model, optimizer, adapt_batch, eval_batch, ARGS)
        in_optimizer = any(p is model.context for group in optimizer.param_groups for p in group["params"])
        assert in_optimizer == learn and (model.context.abs().sum() > 0) == learn
        assert all((a - b).abs().max() > 0 for a, b in zip(before, model.body.parameters()))  # theta is trained


# ---------------------------------------------------------------- command line, in process
BAD_INPUTS = [  # (flags after --env point-robot, text the one error line must contain)
    (["--gamma", "2"], "--gamma 2.0"), (["--gamma", "0"], "--gamma 0.0"), (["--gamma", "nan"], "--gamma nan"),
    (["--tau", "1.5"], "--tau 1.5"), (["--sac-lr", "-0.001"], "--sac-lr -0.001"), (["--model-lr", "-1"], "--model-lr"),
    (["--inner-lr", "0"], "--inner-lr"), (["--grad-clip", "0"], "--grad-clip"), (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2**31)], "--seed"), (["--num-epochs", "0"], "--num-epochs 0"),
    (["--adapt-batch", "0"], "--adapt-batch"),
    (["--finetune-steps", "-1"], "--finetune-steps"), (["--real-ratio", "1"], "--real-ratio"),
    (["--train-val-ratio", "0"], "--train-val-ratio"), (["--target-entropy", "inf"], "--target-entropy"),
    (["--meta-batch", "81"], "--meta-batch 81"), (["--relabel-tasks", "21"], "--relabel-tasks 21"),
    (["--num-eval-tasks", "0"], "--num-eval-tasks 0"), (["--rollout-batch", "5"], "--rollout-batch 5"),
    (["--steps-prior", "1000000"], "--buffer-size"), (["--sac-hidden", "64,x"], "--sac-hidden"),
    (["--env", "no-such-env"], "--env no-such-env: unknown"), (["--env", "sawyer-push"], "--env sawyer-push"),
    (["--env", "hopper-rand-params"], "--env hopper-rand-params: mier.py has no authors' configuration"),
    (["--buffer-size", "0"], "--buffer-size 0"),
    (["--num-epochs", "x"], "--num-epochs"), (["--no-such-flag"], "--no-such-flag"),
    (["--resume", "/nonexistent/checkpoint.pt"], "--resume /nonexistent"),
]


@pytest.fixture
def one_error_line(one_line_error):
    """The one stderr line of a command line that mier.parse_command_line refuses with exit code 2."""
    return lambda argv: one_line_error(mier.parse_command_line, argv)


@pytest.mark.parametrize("flags, text", BAD_INPUTS, ids=[" ".join(f) for f, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_flag(flags, text, one_error_line):
    assert text in one_error_line(["--env", "point-robot", *flags])


@pytest.mark.parametrize("env_name, texts", [
    ("ant-dir-ood", ["paper defaults for --env ant-dir-ood: num_epochs=600", "context_steps=20", "costs ~150 h"]),
    ("cheetah-vel-ood-hard", ["num_epochs=400", "sac_hidden=300,300,300", "costs ~100 h", "reduced run: python"]),
    ("no-such-env", ["paper defaults per --env", "cheetah-negated-joints: context_dim=10"])])
def test_help_shows_the_resolved_paper_defaults_of_the_chosen_env(env_name, texts, capsys):
    with pytest.raises(SystemExit) as e:
        mier.parse_command_line(["--env", env_name, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # the terminal's width wraps the lines
    assert e.value.code == 0 and all(t in out for t in texts), out


@pytest.mark.parametrize("env_name, row", [
    ("walker-rand-params", dict(num_epochs=1000, initial_repeats=5, adapt_batch=400, sac_hidden="300,300,300")),
    ("humanoid-dir", dict(num_epochs=200, initial_repeats=1, adapt_batch=400, sac_hidden="300,300,300"))])
def test_benchmark_families_take_the_authors_benchmark_configs(env_name, row):
    """mier_public configs/envs/benchmarks/{walker-rand-params,humanoid-dir}.json over configs/default.py, with a
    buffer that holds a paper-size run's data of the most sampled task."""
    args, env, _ = mier.parse_command_line(["--env", env_name])
    assert all(getattr(args, k) == v for k, v in row.items())
    assert (args.steps_prior, args.steps_posterior, args.train_steps, args.tasks_per_epoch) == (400, 600, 1000, 5)
    draws, p = args.num_epochs * args.tasks_per_epoch, 1 / len(env.train_tasks)  # collections: Binomial(draws, p)
    most = draws * p + 4 * np.sqrt(draws * p * (1 - p))  # 4 standard deviations above a task's expected count
    assert args.initial_repeats * args.steps_prior + most * 1000 <= args.buffer_size and (len(env.train_tasks), len(env.test_tasks)) == {
        "walker-rand-params": (40, 10), "humanoid-dir": (100, 30)}[env_name]


# ---------------------------------------------------------------- end to end (subprocess, tiny flags)
TINY = ["--env", "cheetah-negated-joints", "--num-epochs", "3", "--train-steps", "3", "--initial-repeats", "1",
        "--tasks-per-epoch", "2", "--steps-prior", "20", "--steps-posterior", "20", "--adapt-batch", "20",
        "--meta-batch", "3", "--num-eval-tasks", "2", "--relabel-tasks", "2", "--extrapolation-epochs", "2",
        "--sac-steps-per-epoch", "4", "--relabel-interval", "2", "--rollout-batch", "200", "--cross-tasks", "4",
        "--sac-hidden", "32,32", "--model-hidden", "32", "--context-steps", "3", "--finetune-steps", "2"]
NOT_LOGGED = ("wall_time", "time/")  # wall-clock fields differ between any two runs


def run(*flags, check=True, timeout=240):
    proc = subprocess.run([sys.executable, "mier.py", *flags], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def read_rows(run_dir):
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(NOT_LOGGED)} for line in f]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """MIER on a dynamics-shift family, uninterrupted: 3 epochs of Alg. 1, then Alg. 2 with one-step model rollouts."""
    d = str(tmp_path_factory.mktemp("mier") / "reference")
    proc = run(*TINY, "--relabel", "--seed", "3", "--run-dir", d)
    assert "Alg. 2 (dynamics relabeling" in proc.stdout and "Alg. 2: test task 2/2" in proc.stdout
    return d


def test_reference_run_rows_and_checkpoint(reference_run):
    rows = read_rows(reference_run)
    assert [r["phase"] for r in rows] == ["meta-train"] * 3 + ["relabel"] * 3  # adapted, then after each epoch
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["eval/return"]) for r in rows) and np.isfinite(rows[3]["relabel/model_val_nll"])
    ckpt = torch.load(os.path.join(reference_run, "checkpoint.pt"), weights_only=False)
    assert ckpt["script"] == "mier.py" and ckpt["env"] == "cheetah-negated-joints" and ckpt["epoch"] == 3
    assert len(ckpt["extrapolation_returns"]) == 2 and ckpt["replay"]["size"].sum() > 0
    # phi_0 by default: still zero after 9 meta-updates, and the one model tensor the optimizer does not hold
    assert not ckpt["model"]["context"].any()
    assert len(ckpt["model_opt"]["param_groups"][0]["params"]) == len(ckpt["model"]) - 1


def test_resume_refuses_other_scripts_envs_and_broken_files_in_one_line(reference_run, tmp_path, one_error_line):
    path = os.path.join(reference_run, "checkpoint.pt")
    good = torch.load(path, weights_only=False)
    torch.save({"format": 1, "script": "pearl.py", "args": {}}, tmp_path / "pearl.pt")
    torch.save({**good, "format": 0}, tmp_path / "old_format.pt")
    with open(path, "rb") as f:
        data = f.read()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for argv, text in [(["--resume", str(tmp_path / "pearl.pt")], "written by pearl.py, not mier.py"),
                       (["--resume", str(tmp_path / "old_format.pt")], "checkpoint format 0"),
                       (["--resume", str(tmp_path / "truncated.pt")], "not a readable checkpoint"),
                       (["--resume", str(tmp_path / "empty.pt")], "not a readable checkpoint"),
                       (["--resume", path, "--env", "point-robot"],
                        "written for --env cheetah-negated-joints, not --env point-robot"),
                       (["--resume", path, "--num-epochs", "5"], "at epoch 3 and has begun Alg. 2")]:
        assert text in one_error_line(argv)


def test_resume_restores_the_run_arguments_and_warns_for_each_typed_difference(reference_run, capsys):
    args, env, ckpt = mier.parse_command_line(["--resume", reference_run, "--gamma", "0.5", "--no-save-model",
                                               "--extrapolation-epochs", "7", "--model-hidden", "32"])
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == ["warning: --extrapolation-epochs 7 differs from the checkpoint's 2: using the checkpoint's 2",
                        "warning: --gamma 0.5 differs from the checkpoint's 0.99: using the checkpoint's 0.99",
                        "warning: --save-model False (the checkpoint's run had True): using False"]
    assert (args.env, args.gamma, args.extrapolation_epochs, args.save_model) == ("cheetah-negated-joints", 0.99, 2,
                                                                                  False)
    assert args.run_dir == reference_run and ckpt["epoch"] == 3 and env.name == "cheetah-negated-joints"


def test_sigterm_then_resume_with_alg2_gives_the_uninterrupted_runs_rows(reference_run, tmp_path):
    """MIER-wR stopped by SIGTERM mid-run (exit 143, one line naming the checkpoint); resumed into another folder with
    --relabel, it logs exactly the rows of the uninterrupted MIER run: Alg. 2 from a MIER-wR checkpoint is MIER."""
    killed, resumed = str(tmp_path / "killed"), str(tmp_path / "resumed")
    ckpt = os.path.join(killed, "checkpoint.pt")
    proc = subprocess.Popen([sys.executable, "mier.py", *TINY, "--no-relabel", "--num-epochs", "60", "--seed", "3",
                             "--run-dir", killed], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert err.count("\n") == 1
    assert err.startswith(f"stopped by SIGTERM; the last finished checkpoint is {ckpt} (epoch ")
    stopped_at = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= stopped_at <= 3, f"SIGTERM landed after epoch {stopped_at}: too late for this comparison"
    with open(os.path.join(killed, "eval.jsonl"), "a") as f:  # as if a row had been written after the checkpoint
        f.write(json.dumps({"iteration": stopped_at + 1, "eval/return": 0.0}) + "\n")
    proc = run("--resume", killed, "--num-epochs", "3", "--relabel", "--run-dir", resumed)
    assert len(proc.stderr.splitlines()) == 3 and "--relabel True (the checkpoint's run had False)" in proc.stderr
    assert read_rows(resumed) == read_rows(reference_run)


def test_bad_input_end_to_end_exits_2_with_one_line_and_writes_nothing(tmp_path):
    proc = run("--env", "point-robot", "--gamma", "2", "--run-dir", str(tmp_path / "bad"), check=False)
    assert proc.returncode == 2 and proc.stderr == "error: --gamma 2.0: must be in (0, 1]\n" and proc.stdout == ""
    assert not os.path.exists(tmp_path / "bad")


# ---------------------------------------------------------------- learning
LEARN = ["--env", "point-robot", "--seed", "2", "--num-epochs", "4", "--train-steps", "100", "--eval-interval", "4",
         "--initial-repeats", "1", "--steps-prior", "20", "--steps-posterior", "20", "--adapt-batch", "32",
         "--meta-batch", "16", "--num-eval-tasks", "20", "--sac-hidden", "64,64", "--model-hidden", "32",
         "--model-layers", "2", "--sac-lr", "3e-3", "--model-lr", "3e-3", "--gamma", "0.9", "--log-alpha-init", "-5"]


def test_learns_on_point_robot_beyond_its_untrained_level(tmp_path):
    """400 meta-updates (+ SAC updates) on point-robot: the adapted policy's return on 20 test and 20 train tasks
    beats the untrained agent's (same seed, same protocol) by 3. Standing still scores about -20.9, moving to the
    centre -15.9 and moving to the goal -5.2 (the expectations over the family's start and goal distributions),
    so this tests that SAC on [s, phi_T] learns, not yet that phi_T identifies the goal. A tiny Alg. 2 (reward
    relabeling) runs after it."""
    args, env, _ = mier.parse_command_line(LEARN)
    torch.manual_seed(args.seed)  # as mier.py builds its networks, and evaluates them
    model = mier.DynamicsModel(2, 2, args.context_dim, args.model_hidden, args.model_layers)
    sac = mier.SAC(2 + args.context_dim, 2, [int(h) for h in args.sac_hidden.split(",")], args.log_alpha_init)
    env.reset(seed=args.seed)
    untrained = np.mean([mier.evaluate(env, tasks[:20], model, sac.actor, args, torch.device("cpu"))
                         for tasks in (env.test_tasks, env.train_tasks)])
    d = str(tmp_path / "learn")
    out = run(*LEARN, "--run-dir", d, "--no-save-model", "--relabel-tasks", "1", "--extrapolation-epochs", "1",
              "--sac-steps-per-epoch", "4", "--relabel-interval", "2", "--rollout-batch", "200", "--cross-tasks", "4").stdout
    assert "Alg. 2 (reward relabeling" in out
    rows = read_rows(d)
    assert [r["phase"] for r in rows] == ["meta-train", "relabel", "relabel"]
    learned = (rows[0]["eval/return"] + rows[0]["eval/return_train_tasks"]) / 2
    assert learned > untrained + 3, (learned, untrained)
