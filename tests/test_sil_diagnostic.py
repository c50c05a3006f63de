"""benchmarks/sil_diagnostic.py on a hand-built single-task checkpoint whose critics output 0, so that V = 0 and SIL's
advantage is the stored return R itself."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "sil_diagnostic.py")


@pytest.fixture(scope="module")
def diag():
    spec = importlib.util.spec_from_file_location("sil_diagnostic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(tmp_path, diag, rets, delay=2, clip=1.0, alpha=1.0, capacity=100):
    """One buffer of len(rets) episodes of 4 steps each; critics with a zero last layer (Q = 0 everywhere)."""
    mcat = diag.load_mcat()
    obs_dim, act_dim, ctx = 3, 2, 4
    nets = {"actor": mcat.Actor(obs_dim, act_dim, ctx), "qf1": mcat.QNetwork(obs_dim, act_dim, ctx),
            "qf2": mcat.QNetwork(obs_dim, act_dim, ctx)}
    nets.update({k + "_t": mcat.Actor(obs_dim, act_dim, ctx) if k == "actor" else mcat.QNetwork(obs_dim, act_dim, ctx)
                 for k in ("actor", "qf1", "qf2")})
    for q in ("qf1", "qf2", "qf1_t", "qf2_t"):
        torch.nn.init.zeros_(nets[q].net[-1].weight)
        torch.nn.init.zeros_(nets[q].net[-1].bias)
    ret = np.asarray(rets, np.float32).reshape(-1)
    n = len(ret)
    t = np.tile(np.arange(4), n // 4)
    rew = np.zeros(n, np.float32)
    rew[t == 3] = np.asarray(rets, np.float32)[:, 3]  # an episode's return is its rewards' sum
    buf = {"obs": np.random.default_rng(0).normal(size=(1, n, obs_dim)).astype(np.float32),
           "act": np.zeros((1, n, act_dim), np.float32), "delta": np.zeros((1, n, obs_dim), np.float32),
           "ret": ret[None], "rew": rew[None], "t": t[None],
           "size": np.array([n]), "ptr": np.array([n % capacity])}
    args = {"context_dim": ctx, "gamma": 0.5, "sil_adv_clip": clip, "sil_alpha": alpha, "reward_delay": delay,
            "buffer_size": capacity, "policy_noise": 0.2, "noise_clip": 0.5}
    torch.save({"args": args, "buffer": buf, "iteration": 1, "env_steps": n,
                **{k: v.state_dict() for k, v in nets.items()}}, tmp_path / "checkpoint.pt")
    return str(tmp_path)


def test_mass_follows_the_clipped_return_by_phase_and_episode(diag, tmp_path):
    # episode 0: R = (0.5, -1, 2, 3), episode 1: R = (-2, 0.25, -1, 0.5); V = 0, clip 1, alpha 1, delay 2
    run = write_run(tmp_path, diag, [[0.5, -1.0, 2.0, 3.0], [-2.0, 0.25, -1.0, 0.5]])
    r = diag.diagnose(run, bins=2)
    # R > V on 0.5, 2, 3, 0.25, 0.5: 5 of 8; clipped (R >= 1) on 2 and 3
    assert r["share_R_above_V"] == pytest.approx(5 / 8)
    assert r["share_clipped"] == pytest.approx(2 / 8)
    assert r["mean_V"] == pytest.approx(0.0)
    # priorities min(max(R, 1e-6), 1): 0.5, 1e-6, 1, 1 | 1e-6, 0.25, 1e-6, 0.5 -> total 3.25 + 3e-6
    p = np.array([0.5, 1e-6, 1.0, 1.0, 1e-6, 0.25, 1e-6, 0.5])
    p = p / p.sum()
    phase0, phase1 = p[[0, 2, 4, 6]].sum(), p[[1, 3, 5, 7]].sum()  # t % 2
    assert [b["share_of_SIL_mass"] for b in r["by_phase"]] == pytest.approx([phase0, phase1])
    assert [b["mean_R"] for b in r["by_phase"]] == pytest.approx([(0.5 + 2 - 2 - 1) / 4, (-1 + 3 + 0.25 + 0.5) / 4])
    assert r["episodes"] == 2 and r["episode_return"]["max"] == pytest.approx(3.0)
    assert r["mean_reward_per_step"] == pytest.approx((3.0 + 0.5) / 8)  # rewards 0, 0, 0, 3 | 0, 0, 0, 0.5
    # the better episode (return 3) is the top 10 % and holds p[:4]
    assert r["SIL_mass_on_top_10pct_episodes"] == pytest.approx(p[:4].sum())
    # running returns (gamma 0.5): rewards 0, 0, 0, 3 | 0, 0, 0, 0.5 -> 0, 0, 0, 3, 0, 0, 0, 0.5
    sigma = np.std([0, 0, 0, 3, 0, 0, 0, 0.5])
    assert r["return_std_scale"]["sigma"] == pytest.approx(sigma)
    R = np.array([0.5, -1.0, 2.0, 3.0, -2.0, 0.25, -1.0, 0.5])
    assert r["return_std_scale"]["share_clipped"] == pytest.approx(np.mean(R / sigma >= 1))


def test_reference_baselines_rank_the_same_buffer_by_hand(diag, tmp_path):
    # the buffer above; phase 0 holds R = 0.5, 2, -2, -1 (mean -0.125), phase 1 R = -1, 3, 0.25, 0.5 (mean 0.6875)
    run = write_run(tmp_path, diag, [[0.5, -1.0, 2.0, 3.0], [-2.0, 0.25, -1.0, 0.5]])
    ref = diag.diagnose(run, bins=2)["reference_V"]
    # R - V = 0.625, -1.6875, 2.125, 2.3125 | -1.875, -0.4375, -0.875, -0.1875
    by_phase = ref["phase_mean_R"]
    assert by_phase["share_R_above_V"] == pytest.approx(3 / 8)
    assert by_phase["raw"]["share_clipped"] == pytest.approx(2 / 8)
    # priorities 0.625, 1e-6, 1, 1 | 1e-6 x 4: the better episode holds all but 4e-6 of the mass
    assert by_phase["raw"]["SIL_mass_on_top_10pct_episodes"] == pytest.approx((2.625 + 1e-6) / (2.625 + 5e-6))
    # the buffer's mean R is 2.25 / 8: R - V = 0.21875, -1.28125, 1.71875, 2.71875 | -2.28125, -0.03125, -1.28125,
    # 0.21875 -> priorities 0.21875, 1e-6, 1, 1 | 1e-6, 1e-6, 1e-6, 0.21875
    flat = ref["buffer_mean_R"]
    assert flat["share_R_above_V"] == pytest.approx(4 / 8) and flat["raw"]["share_clipped"] == pytest.approx(2 / 8)
    assert flat["raw"]["SIL_mass_on_top_10pct_episodes"] == pytest.approx((2.21875 + 1e-6) / (2.4375 + 4e-6))
    # on Oh et al.'s scale the clip is at sigma, the std of the running returns 0, 0, 0, 3, 0, 0, 0, 0.5
    sigma = np.std([0, 0, 0, 3, 0, 0, 0, 0.5])
    adv = np.array([0.21875, -1.28125, 1.71875, 2.71875, -2.28125, -0.03125, -1.28125, 0.21875])
    assert flat["return_std_scale"]["share_clipped"] == pytest.approx(np.mean(adv / sigma >= 1))


def test_each_critic_and_their_mean_as_v_by_hand(diag, tmp_path):
    # the buffer above with Q1 = 1 and Q2 = -1.5 everywhere (zero last weight, that bias; target critics 2 and -1):
    # SIL's V is the online critics' minimum, -1.5, and R > V on all but R = -2; with Q1 as V on 2 and 3 only;
    # with Q2 as V it is SIL's own V
    run = write_run(tmp_path, diag, [[0.5, -1.0, 2.0, 3.0], [-2.0, 0.25, -1.0, 0.5]])
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)
    for q, b in (("qf1", 1.0), ("qf2", -1.5), ("qf1_t", 2.0), ("qf2_t", -1.0)):
        last_bias = [k for k in ckpt[q] if k.endswith("bias")][-1]
        ckpt[q][last_bias].fill_(b)
    torch.save(ckpt, os.path.join(run, "checkpoint.pt"))
    r = diag.diagnose(run, bins=2)
    assert r["mean_V"] == pytest.approx(-1.5) and r["share_R_above_V"] == pytest.approx(7 / 8)
    assert r["mean_Q_at_stored_action"] == pytest.approx({"qf1": 1.0, "qf2": -1.5})
    # target critics 2 and -1: mean 0.5, min -1, so the min target steps down gamma * 1.5 = 0.75 per bootstrap,
    # 0.75 / (1 - 0.5) = 1.5 over the horizon (the online critics would give 0.625)
    assert r["target_min_step"] == pytest.approx({"per_bootstrap": 0.75, "over_horizon": 1.5})
    critics = r["critic_V"]
    assert [critics[k]["mean_V"] for k in ("qf1", "qf2", "mean_of_critics")] == pytest.approx([1.0, -1.5, -0.25])
    assert critics["qf1"]["share_R_above_V"] == pytest.approx(2 / 8)
    assert critics["qf2"]["share_R_above_V"] == pytest.approx(7 / 8)
    assert critics["qf2"]["raw"]["SIL_mass_on_top_10pct_episodes"] == pytest.approx(r["SIL_mass_on_top_10pct_episodes"])
    # the mean, V = -0.25: R > V on 0.5, 2, 3, 0.25, 0.5; priorities 0.75, 1e-6, 1, 1 | 1e-6, 0.5, 1e-6, 0.75
    mean = critics["mean_of_critics"]
    assert mean["share_R_above_V"] == pytest.approx(5 / 8) and mean["raw"]["share_clipped"] == pytest.approx(2 / 8)
    assert mean["raw"]["SIL_mass_on_top_10pct_episodes"] == pytest.approx((2.75 + 1e-6) / (4.0 + 3e-6))


def test_a_wrapped_buffer_is_read_from_its_oldest_step_without_the_cut_episode(diag, tmp_path):
    # capacity 6, episodes of 4: A filled slots 0-3, then B slots 4, 5, 0, 1 (write pointer 2). Read from slot 2:
    # A's last two steps (its start was overwritten, so they are dropped), then B's four steps in order.
    run = write_run(tmp_path, diag, [[9.0, 9.0, 9.0, 9.0], [0.1, 0.2, 0.3, 0.4]], capacity=6)
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)
    b = ckpt["buffer"]
    b["ret"] = np.array([[0.3, 0.4, 9.0, 9.0, 0.1, 0.2]], np.float32)
    b["t"] = np.array([[2, 3, 2, 3, 0, 1]])
    b["rew"] = np.array([[0.0, 0.4, 0.0, 9.0, 0.0, 0.0]], np.float32)
    b["obs"], b["act"] = b["obs"][:, :6], b["act"][:, :6]
    b["size"], b["ptr"] = np.array([6]), np.array([2])
    torch.save(ckpt, os.path.join(run, "checkpoint.pt"))
    r = diag.diagnose(run, bins=1)
    assert (r["episodes"], r["transitions"]) == (1, 4)
    assert r["mean_R"] == pytest.approx(0.25) and r["episode_return"]["max"] == pytest.approx(0.4)


def test_a_dense_reward_is_one_phase_bin_whatever_bins_asks(diag, tmp_path):
    # delay 1: every step has phase 0, so --bins 5 gives one bin holding every step and all of SIL's mass
    run = write_run(tmp_path, diag, [[0.5, -1.0, 2.0, 3.0], [-2.0, 0.25, -1.0, 0.5]], delay=1)
    by_phase = diag.diagnose(run, bins=5)["by_phase"]
    assert [b["phase"] for b in by_phase] == ["0-0"]
    assert by_phase[0]["share_of_steps"] == 1.0 and by_phase[0]["share_of_SIL_mass"] == pytest.approx(1.0)
    assert by_phase[0]["mean_R"] == pytest.approx((0.5 - 1 + 2 + 3 - 2 + 0.25 - 1 + 0.5) / 8)


def test_bad_input_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.strip() == f"error: run_dir: no checkpoint.pt in {tmp_path}"


def test_the_runs_own_sample_is_read_from_its_stored_priorities(diag, tmp_path):
    # the buffer above with stored priorities p^alpha = 1, 2, 3, 4 | 0, 0, 0, 10 (sum 20), as a lower-bound run
    # would leave them; phase (t % 2) 0 holds 1 + 3 + 0 + 0, phase 1 holds 2 + 4 + 0 + 10
    run = write_run(tmp_path, diag, [[0.5, -1.0, 2.0, 3.0], [-2.0, 0.25, -1.0, 0.5]])
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)
    assert diag.diagnose(run, bins=2)["stored_priorities"] is None  # a checkpoint without priorities
    ckpt["buffer"]["priority"] = np.array([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 10.0]])
    ckpt["args"].update(sil_form="lower-bound", sil_nstep=5)
    torch.save(ckpt, os.path.join(run, "checkpoint.pt"))
    st = diag.diagnose(run, bins=2)["stored_priorities"]
    assert (st["sil_form"], st["sil_nstep"]) == ("lower-bound", 5)
    assert st["share_of_SIL_mass_by_phase"] == pytest.approx([4 / 20, 16 / 20])
    # episode returns 3 (top) and 0.5; the top episode holds 10 / 20, the other 10 / 20 on the same 4 steps
    assert st["SIL_mass_on_top_10pct_episodes"] == pytest.approx(0.5)
