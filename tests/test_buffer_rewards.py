"""benchmarks/buffer_rewards.py counts the transitions that reach a goal, as stored and under any train task."""

import importlib.util
import os

import numpy as np
import pytest
import torch

import envs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("buffer_rewards", os.path.join(ROOT, "benchmarks", "buffer_rewards.py"))
buffer_rewards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(buffer_rewards)


def test_counts_goal_reaching_transitions_as_stored_and_under_some_train_task(tmp_path):
    env = envs.make("sawyer-push")  # sparse: reward 0 when the puck (obs[3:5]) is within 0.07 of the goal, else -1
    o, a = env.observation_space.shape[0], env.action_space.shape[0]
    rows = np.zeros((3, 10, 2 * o + a + 2), np.float32)  # 3 tasks x 10 transitions, the puck at its start
    rows[..., 3:5] = rows[..., o + a + 1 + 3:o + a + 1 + 5] = (0.0, 0.6)
    rows[1, 4, o + a + 1 + 3:o + a + 1 + 5] = env.train_tasks[5, :2]  # lands on train task 5's goal
    for t in range(3):  # stored rewards as a run would store them for task t
        r, _ = env.evaluate(rows[t, :, :o], rows[t, :, o:o + a], rows[t, :, o + a + 1:2 * o + a + 1], env.train_tasks[t])
        rows[t, :, o + a] = r
    rows[2, 0, o + a] = 0.0  # and one stored reward above the floor (a relabeled success, say)
    assert (rows[..., o + a] == -1).sum() == 29  # task 5's goal is not task 1's: stored as a failure
    torch.save({"args": {"env": "sawyer-push"}, "iteration": 7,
                "rl_buffer": {"rows": [rows[t] for t in range(3)]}}, tmp_path / "checkpoint.pt")
    s = buffer_rewards.run_stats(str(tmp_path))
    assert s["transitions"] == 30 and s["lowest_reward"] == -1.0 and s["iteration"] == 7
    assert s["fraction_stored_above_lowest"] == pytest.approx(1 / 30)
    assert s["fraction_above_lowest_under_some_train_task"] == pytest.approx(1 / 30)  # the one landing on goal 5


def test_a_directory_without_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint.pt"):
        buffer_rewards.run_stats(str(tmp_path))
    torch.save({"script": "mier.py", "rl_buffer": {}}, tmp_path / "checkpoint.pt")  # another script's checkpoint
    with pytest.raises(SystemExit, match="not a pearl.py / hfr.py checkpoint"):
        buffer_rewards.run_stats(str(tmp_path))
