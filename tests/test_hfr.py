"""Tests of hfr.py: Eq. 8 / Algorithm 1 on a hand-computed 3-task example, the buffer routing of every relabeler
(rewards and terminals of env.evaluate for the chosen task), each --relabel mode end to end, exact resume after
SIGTERM, bad input, and a learning run. PEARL's own parts are tested in test_pearl.py (hfr.py is pearl.py + HFR)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import envs
import hfr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2, LN4, LN8 = np.log(2.0), np.log(4.0), np.log(8.0)


# ---------------------------------------------------------------------------------------------- Eq. 8 by hand
def test_eq8_hand_computed():
    # log Z_j = log mean_m exp U_j(tau_m) over M = 2 draws: task 0 {0, 0} -> 0; task 1 {0, ln 3} -> ln 2;
    # task 2 {ln 2, ln 6} -> ln 4
    draws = torch.tensor([[0.0, 0.0], [0.0, np.log(3.0)], [LN2, np.log(6.0)]], dtype=torch.float64)
    log_z = hfr.log_mean_exp(draws, 1).numpy()
    np.testing.assert_allclose(log_z, [0.0, LN2, LN4], atol=1e-12)
    # U(tau) = (ln 2, ln 4, ln 4): U - log Z = (ln 2, ln 2, 0), so q is proportional to (2, 2, 1)
    u = np.array([LN2, LN4, LN4])
    np.testing.assert_allclose(hfr.relabel_distribution(u, log_z), [0.4, 0.4, 0.2], atol=1e-12)
    # temperature epsilon = 1/2 squares the weights: (4, 4, 1) / 9  (§5.2)
    np.testing.assert_allclose(hfr.relabel_distribution(u, log_z, epsilon=0.5), [4 / 9, 4 / 9, 1 / 9], atol=1e-12)
    # without the partition function (Fig. 8b) q is proportional to exp(U) = (2, 4, 4)
    np.testing.assert_allclose(hfr.relabel_distribution(u, 0.0), [0.2, 0.4, 0.4], atol=1e-12)
    # huge utilities (Q is ~ -1000 on four-corners) must not overflow
    np.testing.assert_allclose(hfr.relabel_distribution(u - 1000.0, log_z), [0.4, 0.4, 0.2], atol=1e-12)


def test_sample_categorical_follows_q():
    rng = np.random.default_rng(0)
    assert set(hfr.sample_categorical(np.repeat([[0.0, 1.0, 0.0]], 1000, 0), rng).tolist()) == {1}
    soft = hfr.relabel_distribution(np.array([LN2, LN8, LN4]), np.zeros(3))  # (2, 8, 4) / 14
    counts = np.bincount(hfr.sample_categorical(np.repeat(soft[None], 20000, 0), rng), minlength=3) / 20000
    np.testing.assert_allclose(counts, [2 / 14, 8 / 14, 4 / 14], atol=0.015)


# ---------------------------------------------------------------------------------------------- the relabeler
def make(relabel="hfr", **kw):
    """A Relabeler on the first 3 tasks of four-corners, tiny networks."""
    env = envs.make("four-corners", seed=0)
    args = hfr.Args(**{**dict(env="four-corners", relabel=relabel, num_train_tasks=3, meta_batch=2, net_size=8,
                              encoder_size=8, embedding_batch_size=4, utility_batch_size=5, num_initial_steps=20,
                              replay_buffer_size=1000, relabel_prob=1.0), **kw})
    args = hfr.resolve_args(args, env)
    torch.manual_seed(0)
    obs_dim, act_dim = 2, 2
    ctx_dim = obs_dim + act_dim + 1
    agent = hfr.PEARL(obs_dim, act_dim, ctx_dim, args)
    train_tasks = env.train_tasks[:3]
    rl_buf, enc_buf = (hfr.TaskReplayBuffers(3, 1000, obs_dim, act_dim) for _ in range(2))
    return hfr.Relabeler(env, agent, train_tasks, rl_buf, enc_buf, args, obs_dim, act_dim, ctx_dim, "cpu")


def q_equals_relu_of_first_obs(agent):
    """Set both critics to Q(s, a, z) = relu(s[0]), so that Eq. 9 is hand-computable from the start states."""
    for qf in (agent.qf1, agent.qf2):
        with torch.no_grad():
            for layer in qf.net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.zero_(), layer.bias.zero_()
                    layer.weight[0, 0] = 1.0


def diagonal_trajectory(env, task, reward_delay=1):
    """(0, 0) -> (1, 1) in 10 steps of a = (1, 1): through task (1, 1)'s trap, ending at its goal."""
    pos = np.linspace(0.0, 1.0, 11, dtype=np.float32)[:, None].repeat(2, 1)
    traj = {"obs": pos[:-1], "act": np.ones((10, 2), np.float32), "next_obs": pos[1:]}
    args = hfr.Args(critic_dense_reward=False, reward_delay=reward_delay)
    traj["rew"], traj["critic_rew"], traj["done"] = hfr.trajectory_rewards(env, traj, task, args)
    return traj


def under_every_task(rel, traj):
    """Hindsight: the trajectory's (reward, critic reward, terminated) under every train task, (K, T) each."""
    return hfr.trajectory_rewards(rel.env, traj, rel.tasks[:, None], rel.args)


def fill_start_states(rel, first_coordinates, n=4):
    for j, c in enumerate(first_coordinates):
        rows = np.zeros((n, rel.start_buf.width), np.float32)
        rows[:, 0] = c
        rel.start_buf.add_trajectory(j, rows)


def test_utility_and_relabel_distribution_of_algorithm_1():
    rel = make()
    q_equals_relu_of_first_obs(rel.agent)
    fill_start_states(rel, [LN2, LN4, LN4])  # task j's start states all have s[0] = c_j, so U_j = c_j
    traj = diagonal_trajectory(rel.env, rel.tasks[0])
    rew, _, _ = under_every_task(rel, traj)
    rng = np.random.default_rng(0)
    rel.log_z[:] = [0.0, LN2, LN4]
    np.testing.assert_allclose(rel.hfr_distribution(traj, rew, rng), [[0.4, 0.4, 0.2]], atol=1e-6)
    # log Z on every task's recent original data: a constant Q gives log Z_j = U_j = c_j, so q is uniform
    for j in range(3):
        rel.orig_buf.add_trajectory(j, hfr.pack(traj, traj["rew"]))
    rel.update_log_partition(rng)
    np.testing.assert_allclose(rel.log_z, [LN2, LN4, LN4], atol=1e-6)
    np.testing.assert_allclose(rel.hfr_distribution(traj, rew, rng), [[1 / 3] * 3], atol=1e-6)


def test_hardmax_relabels_every_trajectory_to_the_argmax_task():
    rel = make(hardmax=True)
    q_equals_relu_of_first_obs(rel.agent)
    # U - log Z = (ln 2, ln 8, ln 4) with log Z = 0: task 1 wins. Each stored trajectory adds its start state
    # (s[0] = 0) to the chosen task's start states; 40 rows keep that from changing the argmax.
    fill_start_states(rel, [LN2, LN8, LN4], n=40)
    rel.end_collection()
    rel.store([diagonal_trajectory(rel.env, rel.tasks[0]) for _ in range(5)], 0, np.random.default_rng(0),
              add_to_encoder=True, may_relabel=True)
    assert rel.rl_buf.size.tolist() == rel.enc_buf.size.tolist() == [0, 50, 0]
    assert rel.pop_stats()["relabel/entropy"] == 0.0


def test_no_partition_drops_log_z():
    rel = make(partition=False)
    q_equals_relu_of_first_obs(rel.agent)
    fill_start_states(rel, [LN2, LN4, LN4])
    rel.log_z[:] = [0.0, LN2, LN4]  # ignored
    traj = diagonal_trajectory(rel.env, rel.tasks[0])
    q = rel.hfr_distribution(traj, under_every_task(rel, traj)[0], np.random.default_rng(0))
    np.testing.assert_allclose(q, [[0.2, 0.4, 0.4]], atol=1e-6)
    rel.update_log_partition(np.random.default_rng(0))  # not computed at all without the partition function
    assert rel.log_z.tolist() == [0.0, LN2, LN4]


def test_utility_context_is_the_trajectory_under_each_tasks_reward(monkeypatch):
    rel = make()
    fill_start_states(rel, [0.1, 0.2, 0.3])
    seen = {}

    def spy(agent, context, start_obs):
        seen["context"], seen["start_obs"] = context.numpy(), start_obs.numpy()
        return torch.zeros(context.shape[0])

    monkeypatch.setattr(hfr, "utility", spy)
    traj = diagonal_trajectory(rel.env, rel.tasks[0])
    rel.hfr_distribution(traj, under_every_task(rel, traj)[0], np.random.default_rng(0))
    ctx = seen["context"]
    assert ctx.shape == (3, 10, 5) and seen["start_obs"].shape == (3, 5, 2)  # all tasks in one batched call
    for j in range(3):
        r, _ = rel.env.evaluate(traj["obs"], traj["act"], traj["next_obs"], rel.tasks[j])
        np.testing.assert_array_equal(ctx[j, :, 4], r)
        np.testing.assert_array_equal(ctx[j, :, :2], traj["obs"])
        np.testing.assert_allclose(seen["start_obs"][j, :, 0], [0.1, 0.2, 0.3][j], rtol=1e-6)
    assert len(set(map(tuple, ctx[:, :, 4]))) > 1  # the example does tell the tasks apart


@pytest.mark.parametrize("relabel", ["hfr", "hipi", "random"])
def test_relabeled_rewards_and_terminals_are_env_evaluate_of_the_chosen_task(relabel):
    rel = make(relabel)
    fill_start_states(rel, [0.0, 0.0, 0.0])
    for j in range(3):  # HIPI's z_j come from the encoder buffers
        rel.enc_buf.add_trajectory(j, hfr.pack(diagonal_trajectory(rel.env, rel.tasks[j]), np.zeros(10)))
    rel.end_collection()
    rng = np.random.default_rng(1)
    trajs = [diagonal_trajectory(rel.env, rel.tasks[1]) for _ in range(6)]
    rel.store(trajs, 1, rng, add_to_encoder=True, may_relabel=True)
    assert rel.rl_buf.size.sum() == rel.enc_buf.size.sum() == 60  # each transition exactly once, old context gone
    assert rel.orig_buf.size.tolist() == [0, 60, 0]  # the originals, unchanged, for the task's own posterior
    np.testing.assert_array_equal(rel.orig_buf.data[1][:10, 4], trajs[0]["rew"])
    for j in range(3):
        for buf in (rel.rl_buf, rel.enc_buf):
            rows = buf.data[j][: buf.size[j]]
            r, d = rel.env.evaluate(rows[:, :2], rows[:, 2:4], rows[:, 5:7], rel.tasks[j])
            np.testing.assert_array_equal(rows[:, 4], r)
            np.testing.assert_array_equal(rows[:, -1], d)
    stats = rel.pop_stats()
    assert stats["relabel/fraction_relabeled"] == 1.0 and 0 < stats["relabel/entropy"] <= np.log(3) + 1e-9
    assert stats["time/relabel"] > 0 and rel.pop_stats()["time/relabel"] == 0.0  # reset after each iteration
    if relabel == "random":  # 60 transitions, 6 uniform draws: moving none would be a (1/3)^6 fluke
        assert stats["relabel/entropy"] == pytest.approx(np.log(3)) and stats["relabel/fraction_to_other_task"] > 0


def test_relabeled_rewards_under_reward_delay_are_delayed_rewards_of_the_chosen_task():
    rel = make("random", reward_delay=4)
    fill_start_states(rel, [0.0, 0.0, 0.0])
    rel.end_collection()
    trajs = [diagonal_trajectory(rel.env, rel.tasks[1], reward_delay=4) for _ in range(6)]
    rel.store(trajs, 1, np.random.default_rng(1), add_to_encoder=True, may_relabel=True)
    for j in range(3):
        rows = rel.rl_buf.data[j][: rel.rl_buf.size[j]].reshape(-1, 10, rel.rl_buf.width)  # whole episodes
        for ep in rows:
            r, _ = rel.env.evaluate(ep[:, :2], ep[:, 2:4], ep[:, 5:7], rel.tasks[j])
            np.testing.assert_allclose(ep[:, 4], [0, 0, 0, r[:4].sum(), 0, 0, 0, r[4:8].sum(), 0, r[8:].sum()],
                                       rtol=1e-6)
    assert rel.rl_buf.size[1] < 60  # some episodes did move to other tasks


def line_to(env, task, goal):
    """(0, 0) -> goal in 10 steps; goal (0, 0): standing still at the start, far from every corner."""
    pos = np.linspace(0.0, 1.0, 11, dtype=np.float32)[:, None] * np.asarray(goal, np.float32)
    traj = {"obs": pos[:-1], "act": np.ones((10, 2), np.float32), "next_obs": pos[1:]}
    traj["rew"], traj["critic_rew"], traj["done"] = hfr.trajectory_rewards(env, traj, task, hfr.Args(
        critic_dense_reward=False))
    return traj


@pytest.mark.parametrize("relabel, hardmax_to, expected", [("random", None, 1 / 3), ("hfr", 1, 1.0), ("hfr", 2, 0.0)])
def test_hit_rate_counts_routing_to_a_task_whose_reward_the_trajectory_earned(relabel, hardmax_to, expected):
    """Train tasks 0-2 of four-corners: goals (-1, -1), (1, 1), (1, -1). A trajectory to (1, 1) earns 0 there
    under task 1 (the floor elsewhere: -1): routed to task 1 it is a hit. One standing still earns the floor
    under every task: no task is better for it, so it does not count."""
    rel = make(relabel, hardmax=hardmax_to is not None, replay_buffer_size=200_000)  # keeps 10,000 start states
    q_equals_relu_of_first_obs(rel.agent)
    fill_start_states(rel, [1.0 * (j == hardmax_to) for j in range(3)], n=4000)  # U_j = 1 for the hard-max task
    batch = [line_to(rel.env, rel.tasks[0], (1.0, 1.0)) for _ in range(300)]
    batch += [line_to(rel.env, rel.tasks[0], (0.0, 0.0)) for _ in range(100)]
    rel.store(batch, 0, np.random.default_rng(0), add_to_encoder=False, may_relabel=True)
    assert rel.pop_stats()["relabel/hit_rate"] == pytest.approx(expected, abs=0.06)  # random: 1/K of 300
    assert np.isnan(rel.pop_stats()["relabel/hit_rate"])  # an iteration with nothing to route: undefined


def test_initial_data_and_none_stay_with_their_task():
    for relabel, may_relabel in (("hfr", False), ("none", True)):
        rel = make(relabel)
        rel.store([diagonal_trajectory(rel.env, rel.tasks[2])], 2, np.random.default_rng(0), add_to_encoder=True,
                  may_relabel=may_relabel)
        assert rel.rl_buf.size.tolist() == rel.enc_buf.size.tolist() == [0, 0, 10]
        assert rel.pop_stats()["relabel/fraction_relabeled"] == 0.0


def test_iteration_0_keeps_the_initial_pool_in_the_encoder_buffer_later_iterations_clear_it():
    """The authors' should_clear flags: a task's encoder buffer is cleared when an iteration's data first reaches
    it, and the flags are reset after collection, so the initial pool and iteration 0's data share the buffer."""
    rel, rng = make("none"), np.random.default_rng(0)
    traj = diagonal_trajectory(rel.env, rel.tasks[2])
    rel.store([traj], 2, rng, add_to_encoder=True, may_relabel=False)  # the initial pool
    rel.store([traj], 2, rng, add_to_encoder=True, may_relabel=True)  # iteration 0's collection
    assert rel.enc_buf.size[2] == 20 and rel.rl_buf.size[2] == 20
    rel.end_collection()
    rel.store([traj], 2, rng, add_to_encoder=True, may_relabel=True)  # iteration 1: recent data only
    assert rel.enc_buf.size[2] == 10 and rel.rl_buf.size[2] == 30


def test_learned_reward_replaces_the_reward_but_not_the_terminals():
    rel = make("random", learned_reward=True, learning_rate=1e-2)
    fill_start_states(rel, [0.0, 0.0, 0.0])
    traj = diagonal_trajectory(rel.env, rel.tasks[1])
    rel.end_collection()
    rel.store([traj], 1, np.random.default_rng(0), add_to_encoder=True, may_relabel=True)
    j = int(np.flatnonzero(rel.rl_buf.size)[0])  # the task it went to
    rows = rel.rl_buf.data[j][:10]
    np.testing.assert_allclose(rows[:, 4], rel.predicted_reward(traj)[j], rtol=1e-6)  # the model's reward
    np.testing.assert_array_equal(rows[:, -1], rel.env.evaluate(traj["obs"], traj["act"], traj["next_obs"],
                                                                rel.tasks[j])[1])  # the env's terminals
    batch = torch.from_numpy(np.stack([hfr.pack(traj, traj["critic_rew"])] * 2))
    before = rel.reward_model_step(batch, np.array([1, 1])).item()
    for _ in range(200):
        after = rel.reward_model_step(batch, np.array([1, 1])).item()
    assert after < 0.5 * before


# ---------------------------------------------------------------------------------------------- end to end
TINY = ["--env", "four-corners", "--num-iterations", "2", "--meta-batch", "4", "--num-initial-steps", "40",
        "--num-tasks-sample", "3", "--num-steps-prior", "40", "--num-steps-posterior", "40",
        "--num-train-steps-per-itr", "3", "--batch-size", "16", "--embedding-batch-size", "16",
        "--utility-batch-size", "8", "--num-evals", "1", "--num-steps-per-eval", "40", "--num-exp-traj-eval", "1",
        "--net-size", "16", "--encoder-size", "16", "--log-partition-samples", "3", "--relabel-prob", "1"]
# hfr on 16 point-robot tasks, 5 iterations x 320 gradient steps: learns within ~15 s of CPU
LEARN = ["--env", "point-robot", "--num-train-tasks", "16", "--meta-batch", "8", "--num-initial-steps", "100",
         "--num-tasks-sample", "4", "--num-steps-prior", "40", "--num-extra-rl-steps-posterior", "40", "--batch-size",
         "64", "--embedding-batch-size", "32", "--net-size", "32", "--encoder-size", "32", "--num-evals", "1",
         "--num-steps-per-eval", "60", "--reward-scale", "5", "--learning-rate", "1e-3", "--num-iterations", "5",
         "--num-train-steps-per-itr", "320", "--eval-interval", "5", "--no-save-model", "--utility-batch-size", "16",
         "--log-partition-samples", "5"]


def run(args, check=True):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "hfr.py"), *args], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def comparable(row):
    return {k: v for k, v in row.items() if k not in ("wall_time", "charts/SPS") and not k.startswith("time/")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted tiny --relabel hfr run of 3 iterations."""
    d = str(tmp_path_factory.mktemp("hfr") / "hfr")
    run([*TINY, "--num-iterations", "3", "--run-dir", d])
    return d


@pytest.mark.parametrize("relabel,extra", [("hipi", []), ("random", ["--learned-reward"]), ("none", [])])
def test_each_relabel_mode_end_to_end(relabel, extra, tmp_path):
    d = str(tmp_path / relabel)
    run([*TINY, "--relabel", relabel, "--run-dir", d, *extra])
    last = read_jsonl(os.path.join(d, "eval.jsonl"))[-1]
    assert last["iteration"] == 2 and np.isfinite(last["eval/return"]) and "eval/success_rate" in last
    assert last["time/relabel"] > 0 if relabel != "none" else last["time/relabel"] == 0
    assert last["relabel/fraction_relabeled"] == (0.0 if relabel == "none" else 1.0)
    if extra:
        assert np.isfinite(last["losses/reward_model_loss"])
    assert hfr.load_checkpoint(d)["script"] == "hfr.py"


def test_the_loop_keeps_the_initial_pool_through_iteration_0(tmp_path):
    """One train task, sampled 4 times in iteration 0: its encoder buffer ends with the initial pool (40) and the
    4 x (40 prior + 40 posterior) collected, as the authors' flags leave it (320 if the pool were cleared)."""
    d = str(tmp_path / "pool")
    run([*TINY, "--relabel", "none", "--num-train-tasks", "1", "--num-tasks-sample", "4", "--num-iterations", "1",
         "--run-dir", d])
    ckpt = torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False)
    assert ckpt["enc_buffer"]["size"].tolist() == [360]


def test_hfr_end_to_end_and_exact_resume_after_sigterm(finished, tmp_path):
    rows = read_jsonl(os.path.join(finished, "eval.jsonl"))
    assert [r["iteration"] for r in rows] == [1, 2, 3] and rows[-1]["time/relabel"] > 0
    assert rows[-1]["relabel/fraction_relabeled"] == 1.0 and rows[-1]["relabel/log_z_mean"] != 0.0  # log Z refreshed
    b = str(tmp_path / "b")
    proc = subprocess.Popen([sys.executable, "hfr.py", *TINY, "--num-iterations", "3", "--run-dir", b], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    while not os.path.exists(os.path.join(b, "checkpoint.pt")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().startswith("stopped by SIGTERM; the last finished checkpoint is ") and err.count("\n") == 1
    p = run(["--resume", b, "--num-iterations", "3"])  # the relabeler's buffers, log Z and flags resume too
    assert "resumed from" in p.stdout
    assert [comparable(r) for r in read_jsonl(os.path.join(b, "eval.jsonl"))] == [comparable(r) for r in rows]


BAD = [
    (["--relabel", "bogus"], "--relabel"),
    (["--epsilon", "0"], "--epsilon 0.0"),
    (["--utility-batch-size", "-1"], "--utility-batch-size -1"),
    (["--log-partition-samples", "0"], "--log-partition-samples 0"),
    (["--relabel-prob", "1.5"], "--relabel-prob 1.5"),
    (["--learned-reward", "--relabel", "none"], "--learned-reward"),
    (["--env", "sparse-point-robot", "--learned-reward"], "--learned-reward"),  # its critic is on the dense reward
    (["--env", "cheetah-armature"], "--env cheetah-armature: its tasks vary dynamics"),
    (["--seed", "-1"], "--seed -1"),
    (["--matmul", "mkl"], "--matmul"),
    (["--env", "walker-rand-params"], "--env walker-rand-params: its tasks vary dynamics"),
]


@pytest.mark.parametrize("argv, needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_a_one_line_error(argv, needle, one_line_error):
    argv = argv if "--env" in argv else ["--env", "four-corners", *argv]
    assert needle in one_line_error(hfr.parse_command_line, argv)


def test_bad_input_from_the_command_line_has_no_traceback():
    p = run(["--env", "sparse-point-robot", "--relabel", "bogus"], check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("error: invalid choice 'bogus' for argument '--relabel'. Expected one of ('hfr', "
                                "'hipi', 'random', 'none').")


def test_help_shows_the_relabelers_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        hfr.parse_command_line(["--env", "four-corners", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "paper defaults for --env four-corners:" in out and "utility_batch_size=1024" in out


def test_learns_on_point_robot(tmp_path):
    d = str(tmp_path / "learn")
    run([*LEARN, "--run-dir", d])
    args, env, eval_env, _ = hfr.parse_command_line(LEARN)
    torch.manual_seed(args.seed)
    eval_env.reset(seed=args.seed + 10_000)
    agent = hfr.PEARL(2, 2, 5, args)  # the untrained agent of this run
    before = hfr.meta_test(eval_env, agent, env.test_tasks, args, 5, torch.device("cpu"))["return"]
    after = read_jsonl(os.path.join(d, "eval.jsonl"))[-1]["eval/return"]
    assert after > before + 2.5, (before, after)  # untrained: about -20.6 (standing still); trained: about -16


# ------------------------------------------------------------------------------------ speed section: pearl.py's
def test_the_speed_section_is_pearls_word_for_word():
    def section(name):
        with open(os.path.join(ROOT, name)) as f:
            text = f.read()
        start = text.index("# " + "-" * 94 + " speed\n")
        return text[start:text.index("# " + "-" * 94 + " plumbing", start)]

    assert section("hfr.py") == section("pearl.py")


def test_linear_on_onednn_matches_torchs_path(monkeypatch):
    torch.manual_seed(0)
    layer, x = hfr.Linear(20, 64), torch.randn(2, 32, 20, requires_grad=True)
    out = {}
    for kernel in ("default", "onednn"):
        monkeypatch.setattr(hfr, "matmul", kernel)
        y = torch.relu_(layer(x))
        out[kernel] = (y.detach(), *torch.autograd.grad(y.square().sum(), (x, *layer.parameters())))
    for a, b in zip(out["default"], out["onednn"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_humanoid_dir_takes_the_pearl_authors_config():
    args = hfr.resolve_args(hfr.Args(env="humanoid-dir"), envs.make("humanoid-dir"))
    assert (args.num_train_steps_per_itr, args.num_evals, args.num_exp_traj_eval, args.embedding_batch_size,
            args.num_extra_rl_steps_posterior, args.meta_batch, args.num_train_tasks) == (4000, 1, 2, 256, 600, 16, 100)


# ---------------------------------------------------------------------------------------------- pixel observations
needs_gl = pytest.mark.skipif(envs.NO_OPENGL, reason="no offscreen OpenGL here; apt-get install libosmesa6 "
                                                     "or set MUJOCO_GL=egl")
# visual-reacher with 2 test tasks and horizon 10, so that a run renders a few hundred frames
SMALL_VISUAL_REACHER = ("import envs, runpy, sys; make = envs.make; "
                        "envs.make = lambda name, **kw: make(name, **kw, n_test_tasks=2, horizon=10); "
                        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def pixel_obs(n, seed=0):
    """n visual-reacher observations: the fingertip, then a channel-first 64 x 64 image of values k / 255."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, 3 * 64 * 64), dtype=np.uint8) / np.float32(255)
    return np.concatenate([rng.uniform(-0.2, 0.2, (n, 2)).astype(np.float32), image], 1)


@pytest.mark.parametrize("relabel", ["hfr", "hipi"])
def test_pixel_relabeling_rewards_read_the_state_and_the_networks_only_the_image(relabel):
    env = envs.make("visual-reacher", seed=0)  # builds without OpenGL; only reset and step render
    args = hfr.resolve_args(hfr.Args(env="visual-reacher", relabel=relabel, num_train_tasks=3, net_size=8,
                                     encoder_size=8, embedding_batch_size=4, utility_batch_size=5,
                                     replay_buffer_size=1000, relabel_prob=1.0), env)
    obs_dim, act_dim, K, image_size = env.observation_space.shape[0], 2, 3, 3 * 64 * 64
    ctx_dim = obs_dim + act_dim + 1
    torch.manual_seed(0)
    agent = hfr.PEARL(obs_dim, act_dim, ctx_dim, args, env.image_shape)
    rl_buf, enc_buf = (hfr.TaskReplayBuffers(K, 1000, obs_dim, act_dim, image_size) for _ in range(2))
    rel = hfr.Relabeler(env, agent, env.train_tasks[:K], rl_buf, enc_buf, args, obs_dim, act_dim, ctx_dim, "cpu")
    assert rel.orig_buf.image_size == rel.start_buf.image_size == image_size  # uint8 images there too

    def reaching(j, seed):  # the fingertip moves in a line onto task j's goal
        obs = pixel_obs(11, seed)
        obs[:, :2] = np.linspace(0.0, 1.0, 11)[:, None] * rel.tasks[j]
        traj = {"obs": obs[:-1], "act": np.zeros((10, 2), np.float32), "next_obs": obs[1:]}
        traj["rew"], traj["critic_rew"], traj["done"] = hfr.trajectory_rewards(env, traj, rel.tasks[j], args)
        return traj

    rng = np.random.default_rng(0)
    for j in range(K):  # data of every task: start states (HFR), encoder buffers (HIPI)
        rel.store([reaching(j, j)], j, rng, add_to_encoder=True, may_relabel=False)
    rel.end_collection()
    held = rel.rl_buf.size.copy()
    trajs = [reaching(2, 10 + i) for i in range(4)]
    rel.store(trajs, 0, rng, add_to_encoder=True, may_relabel=True)
    assert rel.rl_buf.size.sum() == held.sum() + 40 and rel.pop_stats()["relabel/fraction_relabeled"] == 1.0
    images = np.rint(np.concatenate([t["obs"] for t in trajs])[:, 2:] * 255).astype(np.uint8)
    for j in range(K):  # every relabeled transition: env.evaluate of its full observation under its new task
        data, image = rel.rl_buf.data[j][held[j]: rel.rl_buf.size[j]], rel.rl_buf.images[j][held[j]: rel.rl_buf.size[j]]
        r, d = env.evaluate(np.pad(data[:, :2], ((0, 0), (0, image_size))), data[:, 2:4],
                            np.pad(data[:, 5:7], ((0, 0), (0, image_size))), rel.tasks[j])
        np.testing.assert_array_equal(data[:, 4], r)
        np.testing.assert_array_equal(data[:, -1], d)
        assert all((row == images).all(1).any() for row in image[:, :image_size])  # the images, byte for byte
    context = torch.from_numpy(hfr.pack(trajs[0], trajs[0]["rew"])[None, :, :ctx_dim])
    start = torch.from_numpy(pixel_obs(5, seed=20))[None]
    moved_context, moved_start = context.clone(), start.clone()
    moved_context[..., :2] += 1.0
    moved_start[..., :2] -= 1.0
    u = []
    for c, s in ((context, start), (moved_context, moved_start)):
        torch.manual_seed(1)
        u.append(hfr.utility(agent, c, s))
    assert torch.equal(*u)  # Eq. 9 sees no state number


def test_learned_reward_is_refused_on_a_pixel_family(monkeypatch, capsys):
    monkeypatch.setattr(envs, "NO_OPENGL", False)  # the check needs no rendering
    with pytest.raises(SystemExit) as e:
        hfr.parse_command_line(["--env", "visual-reacher", "--learned-reward"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: --learned-reward True: "), err


@needs_gl
def test_end_to_end_on_visual_reacher(tmp_path):
    d = str(tmp_path / "pixels")
    argv = ["--env", "visual-reacher", "--num-train-tasks", "2", "--meta-batch", "2", "--num-initial-steps", "20",
            "--num-tasks-sample", "2", "--num-steps-prior", "10", "--num-steps-posterior", "10",
            "--num-extra-rl-steps-posterior", "0", "--num-train-steps-per-itr", "2", "--batch-size", "4",
            "--embedding-batch-size", "4", "--net-size", "16", "--encoder-size", "16", "--utility-batch-size", "4",
            "--log-partition-samples", "2", "--num-evals", "1", "--num-steps-per-eval", "20", "--num-exp-traj-eval",
            "1", "--num-iterations", "1", "--relabel-prob", "1", "--no-cuda", "--run-dir", d]
    p = subprocess.run([sys.executable, "-c", SMALL_VISUAL_REACHER, "hfr.py", *argv], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    last = read_jsonl(os.path.join(d, "eval.jsonl"))[-1]
    assert np.isfinite(last["eval/return"]) and last["relabel/fraction_relabeled"] == 1.0
    assert np.isfinite(last["relabel/log_z_mean"]) and last["relabel/log_z_mean"] != 0.0  # Eq. 9 ran on pixels
    ckpt = hfr.load_checkpoint(d)
    for buffer in (ckpt["rl_buffer"], ckpt["relabeler"]["orig_buf"], ckpt["relabeler"]["start_buf"]):
        assert all(x.dtype == np.uint8 and x.shape[1] == 2 * 3 * 64 * 64 for x in buffer["images"])
