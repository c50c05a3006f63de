"""`python -m envs`: list every task family as a Markdown table (the README's env table comes from here).

A family whose package is not installed (envs.MissingDependency) gets a row saying what to install."""

import envs

print("| name | varies | train / test tasks | horizon | task dim | success | source |")
print("|---|---|---|---|---|---|---|")
for name in envs.names():
    try:
        env = envs.make(name)
    except envs.MissingDependency as e:
        print(f"| `{name}` | | | | | | not available here: {e} |")
        continue
    env = getattr(env, "unwrapped", env)
    print(f"| `{name}` | {env.varies} | {len(env.train_tasks)} / {len(env.test_tasks)} | {env.horizon} | "
          f"{env.task_dim} | {'yes' if env.has_success else ''} | {env.source} |")
    env.close()
