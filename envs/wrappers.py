"""DelayedReward: MCAT's sparse-reward construction (Guo et al. 2022, Sec. 5.2; guoyijie/MCAT delay_reward_env.py).

The per-step rewards of an episode are accumulated and the running sum is paid out every `delay` steps and at the
end of the episode (terminated or truncated); every other step returns 0. Over a whole episode the returns are
equal; only their timing changes. `envs.make(name, reward_delay=D)` wraps with it (D = 200 / 350 / 500 in the
paper's Table 4).

The delayed reward depends on the history, not on one transition, so `evaluate` (forwarded to the wrapped env)
still returns the DENSE per-step reward; `step` reports it as info["dense_reward"]. Every other TaskEnv member
(train_tasks, set_task, varies, horizon, ...) is forwarded to the wrapped env.
"""

from __future__ import annotations

import gymnasium as gym


class DelayedReward(gym.Wrapper):
    def __init__(self, env: gym.Env, delay: int):
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 1:
            raise ValueError(f"reward_delay must be a positive integer, got {delay!r}")
        super().__init__(env)
        self.delay = delay
        self._sum = 0.0
        self._t = 0

    def reset(self, **kwargs):
        self._sum, self._t = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._sum += reward
        self._t += 1
        info["dense_reward"] = reward
        if terminated or truncated or self._t % self.delay == 0:
            reward, self._sum = self._sum, 0.0
        else:
            reward = 0.0
        return obs, reward, terminated, truncated, info

    def __getattr__(self, name):
        # gymnasium 1.x wrappers do not forward attributes; the TaskEnv protocol members live on the inner env
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.env, name)
