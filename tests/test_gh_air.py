"""Tests of gh_air.py: the relabelers on hand-built cases, insertion of both copies, the time-limit terminal, the
SAC step, and the whole script (learning, resume, signals, bad input). Whole runs execute the script's __main__
in this process (runpy), except the two that must prove what a real process does (no traceback, SIGTERM)."""

import contextlib
import copy
import io
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import envs
import gh_air

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "gh_air.py")

# Hand-built example: 4 cached trajectories (rows) scored under 3 candidate latents (columns).
REFERENCE = np.array([[1.0, 5.0, 0.0],
                      [2.0, 5.0, 10.0],
                      [3.0, 5.0, 20.0],
                      [4.0, 5.0, 30.0]])
NEW = np.array([[4.0, 5.0, 25.0]])     # the new trajectory's returns under the 3 candidates
VALUES = np.array([[3.5, 6.0, 0.0]])   # V(s0, v_k)


def test_percentile_hand_computed():
    # candidate 0: 4 >= 1,2,3,4 -> 4/4; candidate 1: 5 >= 5 (ties count, Eq. 3 uses >=) -> 4/4;
    # candidate 2: 25 >= 0,10,20 but not 30 -> 3/4
    np.testing.assert_array_equal(gh_air.percentile(NEW, REFERENCE), [[1.0, 1.0, 0.75]])


def test_advantage_score_is_return_minus_value():
    np.testing.assert_array_equal(gh_air.advantage(NEW, VALUES), [[0.5, -1.0, 25.0]])


def test_air_breaks_percentile_ties_by_advantage():
    pct, adv = gh_air.percentile(NEW, REFERENCE), gh_air.advantage(NEW, VALUES)
    # candidates 0 and 1 tie at the top percentile; 0 has the higher advantage (0.5 > -1). Candidate 2 has by
    # far the highest return and advantage but a lower percentile, so AIR must not pick it.
    assert gh_air.air_choice(pct, adv, 1).tolist() == [[0]]
    assert gh_air.air_choice(pct, adv, 3).tolist() == [[0, 1, 2]]
    # the tie-break really decides: flip the advantages of the tied pair and the choice flips
    assert gh_air.air_choice(pct, adv[:, [1, 0, 2]], 1).tolist() == [[1]]


def test_advantage_relabeling_takes_highest_advantage():
    adv = gh_air.advantage(NEW, VALUES)
    assert gh_air.advantage_choice(adv, 1).tolist() == [[2]]
    assert gh_air.advantage_choice(adv, 2).tolist() == [[2, 0]]


def test_percentile_batch_is_rowwise():
    new = np.concatenate([NEW, [[0.0, 4.0, 30.0]]])
    np.testing.assert_array_equal(gh_air.percentile(new, REFERENCE), [[1.0, 1.0, 0.75], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def reacher():
    return envs.make("point-reacher", seed=0)


def collect(env, n, seed=0, time_limit_terminal=False):
    torch.manual_seed(seed)
    actor = gh_air.Actor(env.observation_space.shape[0], env.action_space.shape[0], env.task_dim, (8, 8))
    env_list = [envs.make("point-reacher", seed=i) for i in range(n)]
    tasks = env.sample_tasks(n, np.random.default_rng(seed))
    return gh_air.rollout(env_list, tasks, actor, "cpu", deterministic=False,
                          time_limit_terminal=time_limit_terminal), actor


def test_trajectory_returns_match_a_loop_over_env_evaluate(reacher):
    (traj, ep_ret, _), _ = collect(reacher, 3)
    cands = reacher.sample_tasks(4, np.random.default_rng(1))
    gamma = 0.9
    got = gh_air.trajectory_returns(reacher, traj, None, cands, gamma, max_elements=50)  # forces chunking
    for i in range(3):
        for k in range(4):
            r, _ = reacher.evaluate(traj["obs"][i], traj["act"][i], traj["next_obs"][i], cands[k])
            disc = gamma ** np.arange(len(r)) * traj["mask"][i]
            assert got[i, k] == pytest.approx((r * disc).sum(), rel=1e-12, abs=1e-12)
    # under its own latent and gamma = 1, the return is what env.step paid
    own = gh_air.trajectory_returns(reacher, traj, None, traj["task"], 1.0)
    np.testing.assert_allclose(np.diag(own), ep_ret, rtol=1e-12)
    # per-trajectory candidates (Advantage relabeling): row i scored under its own candidate set
    per = np.stack([cands, cands[::-1], cands[[1, 0, 3, 2]]])
    got = gh_air.trajectory_returns(reacher, traj, None, per, gamma, max_elements=50)
    for i in range(3):
        np.testing.assert_allclose(got[i], gh_air.trajectory_returns(
            reacher, {k: v[i: i + 1] for k, v in traj.items()}, None, per[i], gamma)[0], rtol=1e-12)


def test_reward_features_give_the_same_returns():
    env = envs.make("cheetah-multi-objective", seed=0, horizon=30)
    torch.manual_seed(0)
    actor = gh_air.Actor(env.observation_space.shape[0], env.action_space.shape[0], env.task_dim, (8, 8))
    tasks = env.sample_tasks(2, np.random.default_rng(0))
    traj, _, _ = gh_air.rollout([env, envs.make("cheetah-multi-objective", seed=1, horizon=30)], tasks, actor,
                                "cpu", deterministic=False)
    cands = env.sample_tasks(5, np.random.default_rng(1))
    phi = gh_air.discounted_feature_sums(env, traj, 0.99)
    np.testing.assert_allclose(gh_air.trajectory_returns(env, traj, phi, cands, 0.99),
                               gh_air.trajectory_returns(env, traj, None, cands, 0.99), rtol=1e-9, atol=1e-9)
    per = np.stack([cands, cands[::-1]])
    np.testing.assert_allclose(gh_air.trajectory_returns(env, traj, phi, per, 0.99),
                               gh_air.trajectory_returns(env, traj, None, per, 0.99), rtol=1e-9, atol=1e-9)


def test_state_value_is_min_q_at_the_mean_action(reacher):
    torch.manual_seed(0)
    od, ad, td = reacher.observation_space.shape[0], reacher.action_space.shape[0], reacher.task_dim
    actor, q1, q2 = gh_air.Actor(od, ad, td, (8, 8)), gh_air.SoftQNetwork(od, ad, td, (8,)), \
        gh_air.SoftQNetwork(od, ad, td, (8,))
    obs0 = np.random.default_rng(0).normal(size=(2, od)).astype(np.float32)
    cands = reacher.sample_tasks(3, np.random.default_rng(0))
    v = gh_air.state_value(actor, q1, q2, obs0, cands, "cpu")
    assert v.shape == (2, 3)
    with torch.no_grad():
        for b in range(2):
            for k in range(3):
                s, z = torch.tensor(obs0[b:b + 1]), torch.tensor(cands[k:k + 1], dtype=torch.float32)
                mean, _ = actor(s, z)
                a = torch.tanh(mean)
                assert v[b, k] == pytest.approx(min(q1(s, a, z).item(), q2(s, a, z).item()), rel=1e-5)
    per = np.stack([cands, cands[::-1]])  # per start state: row 1 sees the candidates reversed
    np.testing.assert_allclose(gh_air.state_value(actor, q1, q2, obs0, per, "cpu"), [v[0], v[1, ::-1]], rtol=1e-6)


def test_both_copies_inserted_with_rewards_of_env_evaluate_and_the_terminal_kept(reacher):
    (traj, ep_ret, _), _ = collect(reacher, 2, time_limit_terminal=True)
    h = reacher.horizon
    buf = gh_air.ReplayBuffer(100, reacher.observation_space.shape[0], reacher.action_space.shape[0],
                              reacher.task_dim)
    relabels = reacher.sample_tasks(2, np.random.default_rng(5))[:, None]  # (B=2, m=1, d)
    relabels[1, 0] = traj["task"][1]  # trajectory 1 "relabeled" with its own latent: stored once only
    frac = gh_air.insert(buf, reacher, traj, relabels)
    assert frac == 0.5 and buf.size == 3 * h
    stored = [(0, traj["task"][0]), (0, relabels[0, 0]), (1, traj["task"][1])]  # (trajectory, latent) per copy
    for c, (i, z) in enumerate(stored):
        rows = slice(c * h, (c + 1) * h)
        r, _ = reacher.evaluate(traj["obs"][i], traj["act"][i], traj["next_obs"][i], z)
        np.testing.assert_array_equal(buf.obs[rows], traj["obs"][i])
        np.testing.assert_array_equal(buf.act[rows], traj["act"][i])
        np.testing.assert_allclose(buf.rew[rows], r.astype(np.float32))
        # the time-limit terminal at t = H is stored with the original AND the relabeled copy
        np.testing.assert_array_equal(buf.done[rows], np.arange(h) == h - 1)
        np.testing.assert_allclose(buf.task[rows], np.broadcast_to(z, (h, len(z))).astype(np.float32))
    # the original copies carry exactly what env.step paid
    assert buf.rew[:h].sum() == pytest.approx(ep_ret[0], rel=1e-5)
    assert not np.allclose(buf.rew[h:2 * h], buf.rew[:h])  # the relabeled copy really has other rewards


def test_time_limit_is_a_terminal_only_where_asked(reacher):
    (with_t, _, _), _ = collect(reacher, 2, time_limit_terminal=True)
    (without, _, _), _ = collect(reacher, 2, time_limit_terminal=False)
    h = reacher.horizon
    np.testing.assert_array_equal(with_t["terminal"], np.broadcast_to(np.arange(h) == h - 1, (2, h)))
    assert not without["terminal"].any()
    np.testing.assert_allclose(with_t["next_obs"][:, -1, -1], 1.0)  # the observation carries t/H = 1 there
    assert gh_air.PAPER_DEFAULTS["point-reacher"]["time_limit_terminal"]
    assert gh_air.PAPER_DEFAULTS["point-trajectory"]["time_limit_terminal"]
    assert not gh_air.DEFAULTS["time_limit_terminal"]  # cheetah and ant: no time in the observation


def small_sac(seed=0, od=5, ad=2, td=6):
    torch.manual_seed(seed)
    actor = gh_air.Actor(od, ad, td, (16, 16))
    qf1, qf2 = gh_air.SoftQNetwork(od, ad, td, (16, 16)), gh_air.SoftQNetwork(od, ad, td, (16, 16))
    nets = dict(actor=actor, qf1=qf1, qf2=qf2, qf1_target=copy.deepcopy(qf1), qf2_target=copy.deepcopy(qf2))
    log_alpha = torch.zeros(1, requires_grad=True)
    opts = dict(q=torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=0.1),
                actor=torch.optim.Adam(actor.parameters(), lr=0.1), alpha=torch.optim.Adam([log_alpha], lr=0.1))
    g = torch.Generator().manual_seed(seed + 1)
    batch = [torch.randn(8, od, generator=g), torch.rand(8, ad, generator=g) * 2 - 1, torch.randn(8, generator=g),
             torch.randn(8, od, generator=g), torch.zeros(8), torch.rand(8, td, generator=g)]
    return nets, opts, log_alpha, batch


def test_bootstrap_is_masked_at_a_terminal():
    nets, _, _, (obs, act, rew, next_obs, _, z) = small_sac()
    done = torch.tensor([1.0, 0.0] * 4)
    alpha, gamma = torch.tensor(0.5), 0.97
    torch.manual_seed(3)
    y = gh_air.soft_q_target(rew, done, next_obs, z, nets["actor"], nets["qf1_target"], nets["qf2_target"], alpha,
                             gamma)
    torch.testing.assert_close(y[::2], rew[::2], rtol=0, atol=0)  # t = H: y = r, nothing bootstrapped
    torch.manual_seed(3)  # the same next actions, by hand
    a2, logp2, _ = nets["actor"].get_action(next_obs, z)
    with torch.no_grad():
        q_next = torch.min(nets["qf1_target"](next_obs, a2, z), nets["qf2_target"](next_obs, a2, z))
    torch.testing.assert_close(y[1::2], (rew + gamma * (q_next - alpha * logp2))[1::2])


def test_sac_step_in_the_authors_order():
    """alpha first; the policy loss against the critics before their step, with the new alpha."""
    nets, opts, log_alpha, batch = small_sac()
    before = {k: copy.deepcopy(v) for k, v in nets.items()}
    torch.manual_seed(5)
    losses = gh_air.sac_update(batch, nets, opts, log_alpha, -2.0, 0.97, 0.005)
    assert losses["losses/alpha"] == pytest.approx(log_alpha.exp().item()) and log_alpha.item() != 0.0
    torch.manual_seed(5)  # replay the policy's first draw with the networks as they were
    obs, z = batch[0], batch[5]
    new_act, logp, _ = before["actor"].get_action(obs, z)
    with torch.no_grad():
        q = torch.min(before["qf1"](obs, new_act, z), before["qf2"](obs, new_act, z))
        expected = (log_alpha.exp() * logp - q).mean().item()
    assert losses["losses/actor_loss"] == pytest.approx(expected, rel=1e-5)
    for k in ("actor", "qf1", "qf2"):  # every network took a step
        assert any(not torch.equal(p, q) for p, q in zip(nets[k].parameters(), before[k].parameters())), k


def test_networks_start_as_rlkit_initialises_them():
    torch.manual_seed(0)
    actor, q = gh_air.Actor(5, 2, 6, (300, 300)), gh_air.SoftQNetwork(5, 2, 6, (300, 300))
    for net, last, w in ((q, q.net[-1], 3e-3), (actor, actor.mean, 1e-3), (actor, actor.log_std, 1e-3)):
        assert last.weight.abs().max() <= w and last.bias.abs().max() <= w
        hidden = [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 300]
        for m in hidden:
            assert torch.all(m.bias == 0.1) and m.weight.abs().max() <= 1 / np.sqrt(300)
            assert m.weight.abs().max() > 0.9 / np.sqrt(300)  # the bound is used, not the default init
    # log-probability: tanh change of variables with rlkit's epsilon 1e-6
    obs, z = torch.randn(4, 5), torch.rand(4, 6)
    torch.manual_seed(1)
    a, logp, _ = actor.get_action(obs, z)
    torch.manual_seed(1)
    mean, log_std = actor(obs, z)
    u = mean + log_std.exp() * torch.randn_like(mean)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)
    torch.testing.assert_close(logp, ref.sum(-1))


def test_candidates_contain_the_batch_latents(reacher):
    own = reacher.sample_tasks(3, np.random.default_rng(0))
    cands = gh_air.sample_candidates(reacher, own, 10, np.random.default_rng(1))
    assert cands.shape == (10, reacher.task_dim)
    np.testing.assert_array_equal(cands[-3:], own)
    # a batch larger than K (the warm-up): no prior draws, the batch's own latents only, as the authors' code
    np.testing.assert_array_equal(gh_air.sample_candidates(reacher, own, 2, np.random.default_rng(1)), own)


def test_advantage_relabeling_draws_candidates_per_trajectory(reacher):
    (traj, _, _), actor = collect(reacher, 3)
    od, ad, td = reacher.observation_space.shape[0], reacher.action_space.shape[0], reacher.task_dim
    nets = (actor, gh_air.SoftQNetwork(od, ad, td, (8,)), gh_air.SoftQNetwork(od, ad, td, (8,)))
    args = gh_air.Args(num_candidates=10, gamma=0.9)
    rng = np.random.default_rng(4)
    z, stats = gh_air.choose_relabels("advantage", reacher, traj, None, nets, args, rng, "cpu")
    assert z.shape == (3, 1, td)
    # each trajectory's candidates: K - 1 prior draws then its own latent (replayed with the same generator)
    rng = np.random.default_rng(4)
    for i in range(3):
        cands = gh_air.sample_candidates(reacher, traj["task"][i: i + 1], 10, rng)
        ret = gh_air.trajectory_returns(reacher, {k: v[i: i + 1] for k, v in traj.items()}, None, cands, 0.9)
        adv = ret - gh_air.state_value(*nets, traj["obs"][i: i + 1, 0], cands, "cpu")
        np.testing.assert_array_equal(z[i, 0], cands[np.argmax(adv[0])])


def test_warm_up_is_one_batch_of_learning_starts_steps(reacher):
    torch.manual_seed(0)
    actor = gh_air.Actor(5, 2, 6, (8,))
    env_list = [envs.make("point-reacher", seed=i) for i in range(3)]  # fewer envs than warm-up episodes
    args = gh_air.Args(learning_starts=100, episodes_per_iteration=1, time_limit_terminal=True)
    traj, ret = gh_air.warm_up(reacher, env_list, actor, "cpu", args, np.random.default_rng(0))
    assert traj["obs"].shape[:2] == (5, 20) and traj["mask"].all() and ret.shape == (5,)
    assert len(np.unique(traj["task"], axis=0)) == 5 and traj["terminal"][:, -1].all()


# ---------------------------------------------------------------------------------------------- whole runs
TINY = ["--env", "point-reacher", "--total-timesteps", "120", "--learning-starts", "40", "--grad-steps", "3",
        "--batch-size", "16", "--hidden", "16", "16", "--num-candidates", "10", "--cache-size", "8",
        "--eval-every", "2", "--num-eval-tasks", "2", "--seed", "3"]
NOT_COMPARED = ("time/", "wall_time", "charts/SPS")


def run_main(argv):
    """gh_air.py's __main__ in this process; returns (exit code, stdout, stderr)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_argv, out, err, code = sys.argv, io.StringIO(), io.StringIO(), 0
    sys.argv = [SCRIPT, *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(SCRIPT, run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old_argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def compared(rows):
    return [{k: v for k, v in r.items() if not k.startswith(NOT_COMPARED)} for r in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny AIR run: its directory (copy it before writing into it)."""
    d = str(tmp_path_factory.mktemp("trained") / "air")
    code, _, err = run_main([*TINY, "--run-dir", d])
    assert code == 0, err
    return d


@pytest.mark.parametrize("relabel", ["air", "advantage", "random", "none"])
def test_every_relabeler_trains_logs_and_resumes(relabel, trained, tmp_path):
    d = trained if relabel == "air" else str(tmp_path / relabel)
    if relabel != "air":
        code, _, err = run_main([*TINY, "--relabel", relabel, "--run-dir", d])
        assert code == 0, err
    rows = read_jsonl(os.path.join(d, "eval.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 2, 4]  # iteration 0: the warm-up, evaluated before any update
    assert rows[0]["env_steps"] == 40 and rows[0]["grad_updates"] == 0
    assert rows[-1]["env_steps"] == 120 and rows[-1]["grad_updates"] == 4 * 3
    frac = rows[-1]["relabel/fraction_relabeled"]
    assert frac == {"none": 0.0, "random": 1.0}.get(relabel, frac) and 0 <= frac <= 1
    assert ("relabel/chosen_percentile" in rows[-1]) == (relabel == "air")
    if relabel == "air":
        return  # the air run's resume is the exact-resume test below
    code, out, err = run_main(["--resume", d, "--total-timesteps", "160"])
    assert code == 0 and "resumed" in out, err
    assert err.strip() == "warning: --total-timesteps 160 (the checkpoint's run had 120): using 160"
    rows = read_jsonl(os.path.join(d, "eval.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 2, 4, 6] and rows[-1]["env_steps"] == 160
    assert rows[-1]["grad_updates"] == 6 * 3


def test_learning_on_point_trajectory_beats_the_untrained_policy(tmp_path):
    d = str(tmp_path / "learn")
    code, _, err = run_main(["--env", "point-trajectory", "--hidden", "64", "64", "--batch-size", "64",
                             "--grad-steps", "20", "--total-timesteps", "1050", "--learning-starts", "150",
                             "--eval-every", "4", "--num-candidates", "20", "--cache-size", "20", "--seed", "1",
                             "--run-dir", d])
    assert code == 0, err
    rows = read_jsonl(os.path.join(d, "eval.jsonl"))
    untrained, final = rows[0]["eval/return"], rows[-1]["eval/return"]
    assert rows[0]["grad_updates"] == 0 and rows[-1]["env_steps"] == 1050
    assert final > untrained + 1.0, [r["eval/return"] for r in rows]  # about 0.05 -> 4 in 1k env steps


def test_resume_after_a_crash_rewrites_no_row_twice(trained, tmp_path):
    """A run that wrote rows after its last checkpoint and then died resumes from that checkpoint: the rows are
    dropped and written again, so the log equals an uninterrupted run's, row for row."""
    full = str(tmp_path / "full")
    assert run_main([*TINY, "--run-dir", full, "--total-timesteps", "200"])[0] == 0
    d = str(tmp_path / "crashed")
    shutil.copytree(trained, d)
    shutil.copy(os.path.join(d, "checkpoint.pt"), str(tmp_path / "at120.pt"))
    assert run_main(["--resume", d, "--total-timesteps", "200"])[0] == 0  # rows up to iteration 8 ...
    shutil.copy(str(tmp_path / "at120.pt"), os.path.join(d, "checkpoint.pt"))  # ... but the checkpoint of 4
    code, out, err = run_main(["--resume", os.path.join(d, "checkpoint.pt"), "--total-timesteps", "200"])
    assert code == 0 and "resumed" in out, err
    rows = read_jsonl(os.path.join(d, "eval.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 2, 4, 6, 8]
    assert compared(rows) == compared(read_jsonl(os.path.join(full, "eval.jsonl")))


def test_resume_keeps_the_checkpoints_flags_and_says_so(trained, capsys):
    args, *_ = gh_air.parse_command_line(["--resume", trained, "--learning-rate", "0.01", "--hidden", "16", "16",
                                          "--total-timesteps", "300"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --learning-rate 0.01 differs from the checkpoint's 0.003: using the checkpoint's 0.003",
                   "warning: --total-timesteps 300 (the checkpoint's run had 120): using 300"]
    assert args.learning_rate == 0.003 and args.total_timesteps == 300 and args.hidden == (16, 16)
    assert args.run_dir == trained and args.num_eval_tasks == 2  # the rest comes back from the checkpoint


def test_fidelity_analysis_from_a_trained_checkpoint(trained, tmp_path):
    d = str(tmp_path / "fid")
    shutil.copytree(trained, d)
    code, out, err = run_main(["--env", "point-reacher", "--mode", "fidelity", "--resume", d,
                               "--fidelity-tasks", "30"])
    assert code == 0, err
    with open(os.path.join(d, "fidelity.json")) as f:
        out = json.load(f)
    assert set(out) == {"true", "air", "advantage", "reward"} and all(len(v) == 20 for v in out.values())
    assert all(0 <= w <= 1 for v in out.values() for w in v)  # energy weights are >= 0 under the prior


def test_sigterm_stops_with_one_line_and_the_checkpoint_resumes_exactly(tmp_path):
    d = str(tmp_path / "killed")
    p = subprocess.Popen([sys.executable, SCRIPT, *TINY, "--total-timesteps", "10000000", "--run-dir", d],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    ckpt = os.path.join(d, "checkpoint.pt")
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    state = gh_air.load_checkpoint(d)
    assert lines[0] == f"stopped by SIGTERM; the last finished checkpoint is {ckpt} (iteration {state['iteration']})"
    # the stopped run continues from its checkpoint exactly as a run that was never stopped
    end = str(state["env_steps"] + 60)
    code, _, err = run_main(["--resume", d, "--total-timesteps", end])
    assert code == 0, err
    fresh = str(tmp_path / "fresh")
    assert run_main([*TINY, "--total-timesteps", end, "--run-dir", fresh])[0] == 0
    assert compared(read_jsonl(os.path.join(d, "eval.jsonl"))) == compared(
        read_jsonl(os.path.join(fresh, "eval.jsonl")))


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    (["--seed", "-1"], "--seed"), (["--seed", "2147483648"], "--seed"),
    (["--tau", "-1"], "--tau"), (["--tau", "0"], "--tau"), (["--tau", "1.5"], "--tau"),
    (["--learning-rate", "-0.001"], "--learning-rate"), (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"), (["--gamma", "1.5"], "--gamma"), (["--gamma", "0"], "--gamma"),
    (["--total-timesteps", "0"], "--total-timesteps"), (["--num-candidates", "0"], "--num-candidates"),
    (["--num-candidates", "1"], "--num-candidates"),  # K must exceed the batch, whose own latents are candidates
    (["--cache-size", "-3"], "--cache-size"), (["--batch-size", "0"], "--batch-size"),
    (["--buffer-size", "0"], "--buffer-size"), (["--episodes-per-iteration", "0"], "--episodes-per-iteration"),
    (["--eval-every", "0"], "--eval-every"), (["--num-eval-tasks", "0"], "--num-eval-tasks"),
    (["--num-eval-tasks", "26"], "--num-eval-tasks"), (["--grad-steps", "-1"], "--grad-steps"),
    (["--learning-starts", "-1"], "--learning-starts"), (["--hidden", "16", "0"], "--hidden"),
    (["--relabel", "advantage", "--num-relabels", "101"], "--num-relabels"),
    (["--relabel", "bogus"], "--relabel"), (["--mode", "c"], "--mode"), (["--seed", "x"], "--seed"),
    (["--time-limit-terminal", "maybe"], "--time-limit-terminal"), (["--no-such-flag"], "--no-such-flag"),
    (["--env", "no-such-env"], "--env"),
    (["--env", "point-robot"], "--env"),  # a family whose tasks are not latent reward weights GH was written for
    (["--mode", "fidelity"], "--mode"),  # needs a checkpoint
    (["--resume", "/no/such/checkpoint.pt"], "--resume"), (["--resume", __file__], "--resume"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_a_one_line_error(argv, flag, one_line_error):
    assert flag in one_line_error(gh_air.parse_command_line, argv)


def test_checkpoints_that_cannot_be_resumed(trained, tmp_path, capsys):
    def error(argv):
        with pytest.raises(SystemExit) as e:
            gh_air.parse_command_line(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        return err.strip()

    ckpt = os.path.join(trained, "checkpoint.pt")
    assert error(["--resume", ckpt, "--env", "point-trajectory"]) == \
        f"error: --resume {ckpt}: written for --env point-reacher, not --env point-trajectory"
    other = str(tmp_path / "other.pt")
    torch.save({"format": 1, "script": "pearl.py", "args": {}}, other)
    assert error(["--resume", other]) == f"error: --resume {other}: written by pearl.py, not gh_air.py"
    old = str(tmp_path / "old.pt")
    torch.save({"format": 0, "script": "gh_air.py"}, old)
    assert "checkpoint format 0" in error(["--resume", old])
    with open(ckpt, "rb") as f:
        data = f.read()
    for name, content in (("truncated.pt", data[: len(data) // 2]), ("empty.pt", b"")):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(content)
        assert error(["--resume", path]).startswith(f"error: --resume {path}: not a readable checkpoint")
    assert error(["--resume", str(tmp_path)]) == f"error: --resume {tmp_path}: no checkpoint file there"


def test_help_shows_the_paper_defaults_of_the_chosen_env(capsys):
    with pytest.raises(SystemExit) as e:
        gh_air.parse_command_line(["--env", "point-trajectory", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "paper defaults for --env point-trajectory: batch-size=128 grad-steps=100 time-limit-terminal=True " \
           "hidden=400 300 buffer-size=100000 gamma=0.9" in out
    with pytest.raises(SystemExit):
        gh_air.parse_command_line(["--env", "no-such-env", "--help"])  # the table of every family, no error
    out = capsys.readouterr().out
    assert all(f"{name}: batch-size=" in out for name in gh_air.PAPER_DEFAULTS)


def test_humanoid_direction_takes_the_launchers_ant_direction_row():
    """The paper's Humanoid is not in the authors' launcher; it runs with the row of the same reward on the ant."""
    args, env, env_list, _ = gh_air.parse_command_line(["--env", "humanoid-dir-sparse"])
    ant = {**gh_air.DEFAULTS, **gh_air.PAPER_DEFAULTS["ant-dir-sparse"]}
    assert all(getattr(args, k) == v for k, v in ant.items()) and env.horizon == 1000 and len(env_list) == 25


def test_fetch_reach_takes_the_launchers_fetchreach_row_or_names_its_package(capsys):
    row = {**gh_air.DEFAULTS, **gh_air.PAPER_DEFAULTS["fetch-reach"]}
    assert (row["gamma"], row["buffer_size"], row["episodes_per_iteration"], row["hidden"]) == (0.98, 250_000, 5,
                                                                                                 (256, 256))
    assert row["time_limit_terminal"]  # rlkit's TimeLimit returns done at t = 50
    try:
        import gymnasium_robotics  # noqa: F401
    except ImportError:  # not in requirements.txt: one line naming the package, before anything runs
        with pytest.raises(SystemExit) as e:
            gh_air.parse_command_line(["--env", "fetch-reach"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1 and "gymnasium-robotics" in err, err
        return
    args, env, _, _ = gh_air.parse_command_line(["--env", "fetch-reach", "--num-eval-tasks", "5"])
    assert env.horizon == 50 and args.gamma == 0.98


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, SCRIPT, "--seed", "-1", "--run-dir", str(tmp_path / "never")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr == "error: --seed -1: must be in [0, 2**31)\n", p.stderr
    assert not os.path.exists(tmp_path / "never")  # checked before anything runs
