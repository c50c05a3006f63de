"""Tests of hipi.py: the relabeler against hand-computed cases, the relabeled rewards against env.evaluate, and
every mode end to end through the command line (tiny flags, seconds)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import envs
import hipi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Args:
    """The fields of hipi.Args that relabel() reads."""

    def __init__(self, relabel_fraction=0.5, gamma=0.5, no_partition=False):
        self.relabel_fraction, self.gamma, self.no_partition = relabel_fraction, gamma, no_partition


class StubActor:
    """pi(. | s, psi) = tanh N(s * psi, 1), so for the stored action a = 0: -log pi(0 | s, psi) = (s psi)^2 / 2 + C
    with C = log(2 pi) / 2 (1-D obs, tasks and actions)."""

    def __call__(self, obs, task):
        return obs * task, torch.zeros_like(obs)


C = 0.5 * math.log(2 * math.pi)


def stub_q(obs, task, act):
    """Q1(s', a', psi) = s' + psi."""
    return obs[:, 0] + task[:, 0]


class LineEnv:
    """A hand-built 1-D goal family: r = 0 and terminal within 0.5 of the goal, else r = -1."""

    def evaluate(self, obs, action, next_obs, task):
        at = np.abs(np.asarray(next_obs, float)[..., 0] - np.asarray(task, float)[..., 0]) < 0.5
        shape = np.broadcast_shapes(np.shape(obs)[:-1], np.shape(next_obs)[:-1], np.shape(task)[:-1])
        return np.broadcast_to(at - 1.0, shape).copy(), np.broadcast_to(at, shape).copy()


# 3 transitions x 3 tasks, gamma = 0.5, stored actions 0; by hand,
# L[i, j] = r_ij + (s_i psi_j)^2 / 2 + C + 0.5 (1 - d_ij) (s'_i + psi_j):
S, S2, PSI = [1.0, 2.0, 3.0], [0.0, 1.0, -1.0], [0.0, 1.0, 2.0]
R = [[0, -1, -1], [-1, 0, -1], [-1, -1, 0]]
D = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
L_HAND = np.array([[0.0, 0.0, 2.0],     # row 0: 0 | -1 + 0.5 + 0.5 * 1 | -1 + 2 + 0.5 * 2
                   [-0.5, 2.0, 8.5],    # row 1: -1 + 0 + 0.5 * 1 | 0 + 2 | -1 + 8 + 0.5 * 3
                   [-1.5, 3.5, 18.0]]) + C  # row 2: -1 + 0 - 0.5 | -1 + 4.5 + 0 | 0 + 18
# log Z_j - C = log sum_i exp(L[i, j] - C): log(1 + e^-0.5 + e^-1.5), log(1 + e^2 + e^3.5), log(e^2 + e^8.5 + e^18)
LOGZ_HAND = np.array([0.604131, 3.725802, 18.000075]) + C


def hand_logits():
    t = lambda x: torch.tensor(x, dtype=torch.float32)
    col = lambda x: t(x)[:, None]
    return hipi.utility(StubActor(), stub_q, col(S), torch.zeros(3, 1), col(S2), col(PSI), t(R), t(D), 0.5)


def test_logit_matrix_and_log_partition_3x3():
    L = hand_logits()
    np.testing.assert_allclose(L.numpy(), L_HAND, atol=1e-5)
    np.testing.assert_allclose(hipi.log_partition(L).numpy(), LOGZ_HAND, atol=1e-5)
    log_q = hipi.relabel_distribution(L).numpy()
    expected = L_HAND - LOGZ_HAND[None]
    expected = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(log_q), expected, atol=1e-5)
    # Fig. 8's ablation: without log Z the rows are plain softmaxes of L, and row 0 then prefers task 2
    # (largest raw logit) whereas the partition moves its mass to task 0
    plain = np.exp(hipi.relabel_distribution(L, partition=False).numpy())
    np.testing.assert_allclose(plain, np.exp(L_HAND) / np.exp(L_HAND).sum(1, keepdims=True), atol=1e-5)
    assert plain[0].argmax() == 2 and np.exp(log_q[0]).argmax() == 0


def test_batched_logits_equal_one_pair_at_a_time_with_real_networks():
    torch.manual_seed(0)
    actor, qf1 = hipi.Actor(3, 2, 2, 16), hipi.SoftQNetwork(3, 2, 2, 16)
    obs, next_obs, cands = torch.randn(5, 3), torch.randn(5, 3), torch.randn(4, 2)
    act, rew = torch.rand(5, 2) * 2 - 1, torch.randn(5, 4)
    with torch.no_grad():  # gamma = 0 leaves the deterministic part r - log pi(a_i | s_i, psi_j)
        L = hipi.utility(actor, qf1, obs, act, next_obs, cands, rew, torch.zeros(5, 4), 0.0)
        loop = [[rew[i, j] - actor.log_prob(obs[i:i + 1], cands[j:j + 1], act[i:i + 1])[0] for j in range(4)]
                for i in range(5)]
    np.testing.assert_allclose(L.numpy(), np.array(loop, dtype=np.float32), rtol=1e-5, atol=1e-5)


def test_row_sampling_follows_the_softmax():
    log_q = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]))
    n = 30_000
    rows = np.repeat(log_q, n, axis=0)
    picks = hipi.sample_rows(rows, np.random.default_rng(0)).reshape(3, n)
    freq = np.stack([(picks == j).mean(1) for j in range(3)], axis=1)
    # binomial standard error <= 0.0029 at n = 30,000: 5 sigma
    np.testing.assert_allclose(freq, np.exp(log_q), atol=0.015)
    assert np.array_equal(picks, hipi.sample_rows(rows, np.random.default_rng(0)).reshape(3, n))


@pytest.mark.parametrize("kind", ["hipi", "random"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_original_task_kept_for_the_requested_fraction(kind, fraction):
    rng = np.random.default_rng(1)
    B = 4000
    batch = {"obs": rng.normal(size=(B, 1)), "act": np.zeros((B, 1)), "next_obs": rng.normal(size=(B, 1)),
             "task": np.full((B, 1), -5.0), "rew": np.full(B, -1.0), "term": np.zeros(B, bool)}
    candidates = np.array([[10.0], [11.0], [12.0]])  # none equals a commanded task: every change is visible
    tasks, rew, term, stats = hipi.relabel(kind, batch, LineEnv(), None, None, candidates, StubActor(), stub_q,
                                           Args(relabel_fraction=fraction), rng, "cpu")
    changed = np.any(tasks != batch["task"], axis=1)
    assert abs(changed.mean() - fraction) < 0.03 and stats["relabel/fraction_changed"] == changed.mean()
    assert np.all(np.isin(tasks[changed, 0], candidates[:, 0]))
    assert np.all(tasks[~changed] == -5.0)


def rollout_buffer(env, n, seed):
    """Random-action transitions of `env` in a ReplayBuffer, one sampled task per episode."""
    rng = np.random.default_rng(seed)
    rb = hipi.ReplayBuffer(n, env.observation_space.shape[0], 2, env.task_dim)
    task = env.sample_tasks(1, rng)[0]
    env.set_task(task)
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        next_obs, r, term, trunc, _ = env.step(a)
        rb.add(obs, a, r, next_obs, term, task, term or trunc)
        obs = next_obs
        if term or trunc:
            task = env.sample_tasks(1, rng)[0]
            env.set_task(task)
            obs, _ = env.reset()
    return rb


@pytest.mark.parametrize("kind", ["hipi", "random", "final", "future"])
def test_relabeled_rewards_equal_env_evaluate(kind):
    env = envs.make("four-rooms", seed=0)
    rb = rollout_buffer(env, 400, seed=0)
    torch.manual_seed(0)
    actor, qf1 = hipi.Actor(2, 2, 2, 16), hipi.SoftQNetwork(2, 2, 2, 16)
    rng = np.random.default_rng(0)
    idx = rng.integers(rb.size, size=64)
    batch = {k: getattr(rb, k)[idx] for k in ("obs", "act", "next_obs", "task", "rew", "term")}
    # stored rewards are what env.step returned for the commanded task
    np.testing.assert_array_equal(batch["rew"], env.evaluate(batch["obs"], batch["act"], batch["next_obs"],
                                                             batch["task"])[0])
    cands = env.achieved_task(batch["next_obs"], batch["task"]) if kind == "hipi" else batch["task"]
    tasks, rew, term, _ = hipi.relabel(kind, batch, env, rb, idx, cands, actor, qf1, Args(0.5, 0.99), rng, "cpu")
    r, d = env.evaluate(batch["obs"], batch["act"], batch["next_obs"], tasks)
    np.testing.assert_array_equal(rew, r)
    np.testing.assert_array_equal(term, d)
    changed = np.nonzero(np.any(tasks != batch["task"], axis=1))[0]
    assert 0.3 < len(changed) / len(idx) < 0.7
    if kind in ("final", "future"):  # HER goals come from the same episode, at or after the transition
        ahead = (rb.ep_end[idx] - idx) % rb.capacity
        offsets = {i: [k for k in range(ahead[i] + 1)
                       if np.array_equal(tasks[i], rb.next_obs[(idx[i] + k) % rb.capacity])] for i in changed}
        assert all(offsets.values())
        if kind == "final":
            assert all(ahead[i] in o for i, o in offsets.items())
        else:
            assert all(min(o) < 4 for o in offsets.values())
            assert (rew[changed] == 0).sum() > 0  # offset 0 relabels to the goal the transition reached: r = 0


def test_log_prob_of_a_sampled_action_matches_sample():
    torch.manual_seed(0)
    actor = hipi.Actor(3, 2, 2, 16)
    obs, task = torch.randn(50, 3), torch.randn(50, 2)
    a, logp = actor.sample(obs, task)
    np.testing.assert_allclose(actor.log_prob(obs, task, a).detach().numpy(), logp.detach().numpy(), atol=1e-3)


def test_trajectory_returns_end_at_the_first_terminal_under_each_task():
    # one trajectory of 4 valid steps plus one padded step, positions 1, 2, 3, 4 (then 2 in the padding)
    data = {"obs": np.zeros((1, 5, 1)), "act": np.zeros((1, 5, 1)),
            "next_obs": np.array([[[1.0], [2.0], [3.0], [4.0], [2.0]]]), "length": np.array([4])}
    R, length = hipi.trajectory_returns(LineEnv(), data, np.array([[2.0], [10.0], [1.0]]))
    np.testing.assert_array_equal(R, [[-1.0, -4.0, 0.0]])  # goal 2 reached at step 2, 10 never, 1 at step 1
    np.testing.assert_array_equal(length, [[2, 4, 1]])


# ---------------------------------------------------------------------------------------------- end to end
def run(*flags, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "hipi.py"), *flags], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


TINY = ["--learning-starts", "30", "--eval-every", "40", "--batch-size", "16", "--hidden", "16",
        "--num-eval-tasks", "1"]


def records(run_dir):
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_rl_mode_end_to_end_with_checkpoint_resume_and_dataset(tmp_path):
    d = str(tmp_path / "run")
    run("--env", "four-rooms", "--total-timesteps", "80", "--run-dir", d, "--save-dataset", str(tmp_path / "ds.npz"),
        "--dataset-episodes", "12", *TINY)
    recs = records(d)
    assert [r["env_steps"] for r in recs] == [40, 80]
    last = recs[-1]
    for key in ("eval/return", "eval/success_rate", "eval/return_train_tasks", "time/collect", "time/update",
                "time/relabel", "time/eval", "relabel/entropy", "relabel/mean_log_partition", "losses/qf_loss"):
        assert key in last, key
    assert last["grad_steps"] == 40 and last["time/relabel"] > 0
    assert 0 < last["relabel/fraction_changed"] <= 1
    assert os.path.isfile(os.path.join(d, "checkpoint.pt")) and os.path.isfile(os.path.join(d, "args.json"))
    p = run("--env", "four-rooms", "--total-timesteps", "120", "--resume", os.path.join(d, "checkpoint.pt"), *TINY)
    assert "resumed from" in p.stdout
    assert [r["env_steps"] for r in records(d)] == [40, 80, 120] and records(d)[-1]["grad_steps"] == 40

    # HIPI-BC on the saved trajectories: both the relabeled and the task-agnostic policy are evaluated
    with np.load(tmp_path / "ds.npz") as f:
        assert f["obs"].shape == (12, 75, 2) and f["length"].min() >= 1
    b = str(tmp_path / "bc")
    p = run("--mode", "bc", "--env", "four-rooms", "--dataset", str(tmp_path / "ds.npz"), "--run-dir", b,
            "--num-eval-tasks", "1", "--bc-max-epochs", "3", "--bc-candidates", "8")
    rec = records(b)[-1]
    for key in ("eval/return", "eval/return_agnostic", "eval/success_rate", "time/relabel", "relabel/entropy"):
        assert key in rec, key
    assert "task-agnostic BC" in p.stdout


@pytest.mark.parametrize("env,flags", [("four-rooms", ["--relabel", "final"]),
                                       ("four-rooms", ["--relabel", "future", "--no-partition"]),
                                       ("four-rooms", ["--relabel", "random"]),
                                       ("four-corners", ["--relabel", "hipi", "--num-candidates", "2"]),
                                       ("point-robot", ["--relabel", "none"])])
def test_other_modes_run(tmp_path, env, flags):
    run("--env", env, "--total-timesteps", "40", "--run-dir", str(tmp_path), "--no-save-model", *TINY, *flags)
    rec = records(str(tmp_path))[-1]
    assert rec["grad_steps"] == 11 and ("relabel/fraction_changed" in rec) == ("none" not in flags)


@pytest.mark.parametrize("flags,needle", [
    (["--env", "no-such-env"], "unknown env"),
    (["--env", "point-trajectory", "--relabel", "final"], "goal family"),
    (["--relabel-fraction", "1.5"], "--relabel-fraction"),
    (["--batch-size", "0"], "--batch-size"),
    (["--mode", "bc", "--dataset", "/no/such.npz"], "--dataset"),
    (["--resume", "/no/such/checkpoint.pt"], "no such checkpoint"),
])
def test_bad_input_is_a_one_line_error(tmp_path, flags, needle):
    p = run("--run-dir", str(tmp_path), *flags, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
