"""`python -m envs`: list every task family as a Markdown table (the README's env table comes from here)."""

import envs

print("| name | varies | train / test tasks | horizon | task dim | success | source |")
print("|---|---|---|---|---|---|---|")
for name in envs.names():
    env = envs.make(name)
    env = getattr(env, "unwrapped", env)
    print(f"| `{name}` | {env.varies} | {len(env.train_tasks)} / {len(env.test_tasks)} | {env.horizon} | "
          f"{env.task_dim} | {'yes' if env.has_success else ''} | {env.source} |")
    env.close()
