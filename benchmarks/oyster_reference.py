"""The authors' PEARL (katerakelly/oyster) as a reference beside pearl.py: run it, read its logs, compare.

pearl.py is compared with the authors' code run locally at the same config. Their code is not part of this
repository; this file only starts it and reads what it writes. Set-up (Python 3.11, one venv for their code):

    git clone https://github.com/katerakelly/oyster && cd oyster && git checkout 44e20fd
    python -m venv venv && venv/bin/pip install torch==2.13.0 numpy==1.23.5 gym==0.26.2 gtimer click \
        python-dateutil joblib

and these three import fixes, nothing else (numpy 1.23.5 keeps their `np.bool`; gym 0.26.2 keeps `gym.Env`):
  1. rlkit/envs/__init__.py imports only `point_robot` instead of every env module (the others need mujoco_py);
  2. rlkit/envs/wrappers.py imports `mujoco_py` inside `initialize_camera`, the one method that uses it, instead
     of at module level;
  3. rlkit/core/rl_algorithm.py, the two `np.stack(e['sparse_reward'] for e in p['env_infos'])`: a list instead
     of a generator (numpy >= 1.24 refuses generators; the same two lines fail on any recent numpy).

Their launcher sets no seed; `run` seeds python, numpy and torch with --seed when training starts (after the env
constructor has reseeded numpy with 1337 for its task list), runs one torch thread, on the CPU, and sets
`dump_eval_paths` so that every meta-test trajectory is saved and success can be read back. Flags after the
config are `key=value` overrides of their config (algo_params keys, or net_size):

    python benchmarks/oyster_reference.py run --oyster OYSTER_DIR --env sparse-point-robot --seed 1 \
        --out benchmarks/runs/oyster/sparse-point-robot/s1 net_size=64 meta_batch=8 ...

`summarize` reads the runs (progress.csv and the eval trajectory pickles) into the results format of
benchmarks/run.py, so benchmarks/compare.py can overlay them with pearl.py's curves:
    eval/return             AverageReturn_all_test_tasks: mean over test tasks of the mean over num_evals runs of
                            the LAST trajectory's return (sparse return on sparse-point-robot), as their log has it
    eval/return_train_tasks AverageReturn_all_train_tasks, the same protocol on as many sampled train tasks
    eval/success_rate       any success among the posterior trajectories (those after num_exp_traj_eval
                            exploration trajectories), per run, averaged over runs and test tasks (HFR's metric)
    eval/success_rate_last  success of the last trajectory, averaged the same way
  (success of a trajectory: some step inside the goal radius, i.e. a positive sparse reward).

    python benchmarks/oyster_reference.py summarize --env sparse-point-robot --name oyster-sparse-point-robot \
        --config "net_size=64 ..." benchmarks/runs/oyster/sparse-point-robot/s1 .../s2 .../s3

With --reuse it keeps the finished seeds that the results file already holds at the same env and overrides, so a
comparison can be finished over several sittings from the run dirs of the last one alone.

`step` checks that one gradient step of pearl.py computes what theirs computes: their launcher builds their
networks and algorithm at a config (sparse-point-robot, their constructors and `_do_training`, with `train`
replaced), pearl.py's networks get the same initial weights, and both take K steps on the same random RL batches
and contexts with the same Gaussian noise for z and for the policy's action (their two `rsample`s and pearl.py's
`sample_z` / `randn_like` read it from a file); then every parameter, target V included, is compared
(overrides: the keys of STEP_FLAGS, given to both; --theirs-only KEY=VALUE to their code alone):

    python benchmarks/oyster_reference.py step --oyster OYSTER_DIR --steps 50 net_size=64 meta_batch=8 \
        batch_size=128 embedding_batch_size=256

`table` prints, for two or more results files, each variant's metric averaged over the run and over its last
20 % per seed, with the mean and a 95 % confidence interval over seeds (Student t):

    python benchmarks/oyster_reference.py table benchmarks/results/oyster-sparse-point-robot.json \
        benchmarks/results/pearl-vs-oyster-sparse-point-robot.json --metric eval/success_rate
"""

import argparse
import csv
import glob
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OYSTER_COMMIT = "44e20fd"


def load_runner():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args, overrides: list[str]) -> None:
    """Start their launcher on their config with the overrides and a seed (in their checkout, their venv)."""
    if not os.path.isfile(os.path.join(args.oyster, "launch_experiment.py")):
        raise SystemExit(f"error: --oyster {args.oyster}: no launch_experiment.py there (a checkout of oyster)")
    os.makedirs(args.out, exist_ok=True)
    python = args.python or os.path.join(args.oyster, "venv", "bin", "python")
    code = f"""
import json, random, sys
import numpy as np, torch
torch.set_num_threads(1)
import launch_experiment as le
from configs.default import default_config
variant = le.deep_update_dict(json.load(open({os.path.join('configs', args.env + '.json')!r})), default_config)
for kv in {overrides!r}:
    k, v = kv.split('=', 1)
    v = json.loads(v)
    (variant if k in ('net_size', 'latent_size') else variant['algo_params'])[k] = v
    if k == 'embedding_batch_size':
        variant['algo_params']['embedding_mini_batch_size'] = v
variant['algo_params']['dump_eval_paths'] = True
variant['util_params'].update(use_gpu=False, base_log_dir={os.path.abspath(args.out)!r})
class Seeded(le.PEARLSoftActorCritic):
    def train(self):
        random.seed({args.seed}); np.random.seed({args.seed}); torch.manual_seed({args.seed})
        return super().train()
le.PEARLSoftActorCritic = Seeded
le.experiment(variant)
"""
    with open(os.path.join(args.out, "command.json"), "w") as f:
        json.dump({"env": args.env, "seed": args.seed, "overrides": overrides, "oyster_commit": OYSTER_COMMIT}, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(os.path.join(args.out, "stdout.log"), "w") as log:
        rc = subprocess.run([python, "-c", code], cwd=args.oyster, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"error: their run exited with {rc}; see {args.out}/stdout.log")
    open(os.path.join(args.out, "DONE"), "w").close()


def read_run(run_dir: str, n_exp: int, n_test: int, n_tasks: int) -> list[dict]:
    """One run's evaluations as eval.jsonl-like rows (see the module docstring for each metric)."""
    logs = glob.glob(os.path.join(run_dir, "*", "*", "progress.csv"))
    if len(logs) != 1:
        raise SystemExit(f"error: {run_dir}: expected one <env>/<time>/progress.csv, found {len(logs)}")
    log_dir = os.path.dirname(logs[0])
    with open(logs[0]) as f:
        table = list(csv.DictReader(f))
    rows = []
    for epoch, rec in enumerate(table):
        row = {"iteration": epoch + 1, "env_steps": int(float(rec["Number of env steps total"])),
               "eval/return": float(rec["AverageReturn_all_test_tasks"]),
               "eval/return_train_tasks": float(rec["AverageReturn_all_train_tasks"])}
        last, post_any = [], []
        for task in range(n_tasks - n_test, n_tasks):  # their test tasks are the last n_test of the list
            for path in sorted(glob.glob(os.path.join(log_dir, "eval_trajectories", f"task{task}-epoch{epoch}-run*.pkl"))):
                with open(path, "rb") as f:
                    trajs = pickle.load(f)
                success = [bool(np.any(np.asarray([e["sparse_reward"] for e in t["env_infos"]]) > 0))
                           for t in trajs] if "sparse_reward" in trajs[0]["env_infos"][0] else None
                if success is not None:
                    last.append(success[-1])
                    post_any.append(any(success[n_exp:]))
        if last:
            row.update({"eval/success_rate": float(np.mean(post_any)), "eval/success_rate_last": float(np.mean(last))})
        rows.append(row)
    return rows


VARIANT = "authors' PEARL"  # the one variant of a results file that summarize writes


def summarize(args) -> None:
    runner = load_runner()
    config = json.load(open(os.path.join(args.oyster, "configs", args.env + ".json"))) if args.oyster else {}
    n_exp = args.num_exp_traj_eval
    out = os.path.join(args.out, "results", args.name + ".json")
    seeds = {}
    for run_dir in args.runs:
        with open(os.path.join(run_dir, "command.json")) as f:
            cmd = json.load(f)
        rows = read_run(run_dir, n_exp, args.num_test_tasks, args.num_tasks)
        seeds[str(cmd["seed"])] = {"command": cmd, "finished": os.path.exists(os.path.join(run_dir, "DONE")),
                                   "evals": rows}
    if args.reuse and os.path.exists(out):  # finished seeds of an earlier sitting, at the same env and overrides
        overrides = args.config.split()
        for seed, rec in json.load(open(out))["variants"][VARIANT]["seeds"].items():
            same = rec["command"]["env"] == args.env and rec["command"]["overrides"] == overrides
            if seed not in seeds and rec["finished"] and same:
                seeds[seed] = rec
                print(f"kept seed {seed} from {out}")
    for seed, rec in seeds.items():
        if rec["command"]["env"] != args.env or rec["command"]["overrides"] != args.config.split():
            raise SystemExit(f"error: seed {seed} ran --env {rec['command']['env']} with "
                             f"{' '.join(rec['command']['overrides'])!r}, not --env {args.env} --config {args.config!r}")
    seeds = dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))
    metrics = ["eval/return", "eval/success_rate", "eval/success_rate_last", "eval/return_train_tasks"]
    runs = [rec["evals"] for rec in seeds.values()]
    curves = {m: c for m in metrics if (c := runner.curve(runs, m)) is not None}
    result = {"name": args.name, "script": f"oyster {OYSTER_COMMIT}", "env": args.env, "common": args.config,
              "seeds": [int(s) for s in seeds], "config_file": config,
              "variants": {VARIANT: {"flags": args.config, "curves": curves, "seeds": seeds}}}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    runner.plot(out[:-5] + ".png", f"katerakelly/oyster {OYSTER_COMMIT} --env {args.env} {args.config}",
                result["variants"], [m for m in metrics if m in curves])
    print(f"wrote {out} and {out[:-5]}.png")


# the overrides `step` takes, each given to both codes (their config key -> pearl.py's flag)
STEP_FLAGS = {"net_size": "--net-size", "meta_batch": "--meta-batch", "batch_size": "--batch-size",
              "embedding_batch_size": "--embedding-batch-size", "latent_size": "--latent-size",
              "kl_lambda": "--kl-lambda", "discount": "--discount", "reward_scale": "--reward-scale"}


def their_step(args, overrides: list[str], data: str, out: str) -> None:
    """Their side of `step`, in their venv: build with their launcher, then K `_do_training` calls on the file's
    batches and noise instead of `train`; initial and final parameters to `out` (.npz)."""
    python = args.python or os.path.join(args.oyster, "venv", "bin", "python")
    code = f"""
import json
import numpy as np, torch
torch.set_num_threads(1)
import launch_experiment as le
import rlkit.torch.distributions as dist
from configs.default import default_config
variant = le.deep_update_dict(json.load(open('configs/sparse-point-robot.json')), default_config)
for kv in {overrides!r}:
    k, v = kv.split('=', 1)
    (variant if k in ('net_size', 'latent_size') else variant['algo_params'])[k] = json.loads(v)
variant['algo_params']['embedding_mini_batch_size'] = variant['algo_params']['embedding_batch_size']
variant['util_params'].update(use_gpu=False, base_log_dir={os.path.dirname(out)!r})
d = dict(np.load({data!r}))
K, T = d['obs'].shape[:2]
def params(algo):
    nets = dict(encoder=algo.agent.context_encoder, policy=algo.agent.policy, qf1=algo.qf1, qf2=algo.qf2,
                vf=algo.vf, target_vf=algo.target_vf)
    return {{n + '/' + k: v.detach().numpy().copy() for n, m in nets.items() for k, v in m.state_dict().items()}}
class Step(le.PEARLSoftActorCritic):
    def train(self):
        first = params(self)
        k = [0]
        t = lambda name: torch.from_numpy(d[name][k[0]])
        self.sample_sac = lambda indices: [t(n) for n in ('obs', 'act', 'rew', 'next_obs', 'done')]
        self.sample_context = lambda indices: t('context')
        agent = self.agent
        def sample_z():
            agent.z = agent.z_means + torch.sqrt(agent.z_vars) * t('eps_z')
        agent.sample_z = sample_z
        def rsample(tn, return_pretanh_value=False):
            z = tn.normal_mean + tn.normal_std * t('eps_a')
            return (torch.tanh(z), z) if return_pretanh_value else torch.tanh(z)
        dist.TanhNormal.rsample = rsample
        for k[0] in range(K):
            self._do_training(np.arange(T))
        np.savez({out!r}, **{{'first/' + n: v for n, v in first.items()}}, **{{'last/' + n: v for n, v in params(self).items()}})
le.PEARLSoftActorCritic = Step
torch.manual_seed({args.seed})  # their initial weights
le.experiment(variant)
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([python, "-c", code], cwd=args.oyster, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: their step exited with {done.returncode}:\n{done.stderr[-3000:]}")


def step(args, overrides: list[str]) -> None:
    """K gradient steps of theirs and of pearl.py from the same weights on the same data and noise, compared."""
    import tempfile

    import torch

    sys.path.insert(0, ROOT)
    import pearl

    kv = dict(o.split("=", 1) for o in overrides)
    if unknown := sorted(set(kv) - set(STEP_FLAGS)):
        raise SystemExit(f"error: step: overrides {unknown}: allowed are {', '.join(STEP_FLAGS)}")
    T, B = int(kv.get("meta_batch", 16)), int(kv.get("batch_size", 256))
    E, L, H = int(kv.get("embedding_batch_size", 1024)), int(kv.get("latent_size", 5)), int(kv.get("net_size", 300))
    K, obs_dim, act_dim = args.steps, 2, 2
    rng = np.random.default_rng(args.seed)
    f32 = lambda *shape, lo=-1.0, hi=1.0: rng.uniform(lo, hi, (K, *shape)).astype(np.float32)
    # RL rows (dense rewards, as their SAC batch) and contexts (s, a, sparse r: a third of them inside a goal)
    ctx_r = np.where(rng.random((K, T, E, 1)) < 1 / 3, rng.uniform(0.0, 1.0, (K, T, E, 1)), 0.0).astype(np.float32)
    data = dict(obs=f32(T, B, obs_dim), act=f32(T, B, act_dim), rew=f32(T, B, 1, lo=-2.0, hi=0.0),
                next_obs=f32(T, B, obs_dim), done=np.zeros((K, T, B, 1), np.float32),
                context=np.concatenate([f32(T, E, obs_dim), f32(T, E, act_dim), ctx_r], -1),
                eps_z=rng.standard_normal((K, T, L)).astype(np.float32),
                eps_a=rng.standard_normal((K, T * B, act_dim)).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "data.npz"), **data)
        their_step(args, overrides + args.theirs_only, os.path.join(tmp, "data.npz"), os.path.join(tmp, "theirs.npz"))
        theirs = dict(np.load(os.path.join(tmp, "theirs.npz")))

    # pearl.py at the same config, their initial weights (rlkit's fc0..fc2, last_fc [, last_fc_log_std] -> net.0..6)
    argv = ["--env", "sparse-point-robot", "--matmul", "default", *(a for k, v in kv.items() for a in (STEP_FLAGS[k], v))]
    pargs = pearl.parse_command_line(argv)[0]

    def ours_from_theirs(name: str, when: str) -> dict:
        w = {k[len(f"{when}/{name}/"):]: v for k, v in theirs.items() if k.startswith(f"{when}/{name}/")}
        if name == "policy":  # one 2|A| head = their mean head over their log-std head
            for p in ("weight", "bias"):
                w[f"last_fc.{p}"] = np.concatenate([w[f"last_fc.{p}"], w.pop(f"last_fc_log_std.{p}")])
        rename = {f"fc{i}": f"net.{2 * i}" for i in range(3)} | {"last_fc": "net.6"}
        return {rename[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: torch.from_numpy(v) for k, v in w.items()}

    k = [0]
    pearl.sample_z = lambda mu, var: mu + var.sqrt() * torch.from_numpy(data["eps_z"][k[0]])

    def ours(nudge: bool) -> dict:
        """pearl.py's K steps from their initial weights (each moved by one float32 ulp with `nudge`): the networks."""
        agent = pearl.PEARL(obs_dim, act_dim, obs_dim + act_dim + 1, pargs)
        nets = dict(encoder=agent.encoder, policy=agent.policy, qf1=agent.qf1, qf2=agent.qf2, vf=agent.vf,
                    target_vf=agent.target_vf)
        for name, net in nets.items():
            w = ours_from_theirs(name, "first")
            net.load_state_dict({key: torch.nextafter(v, torch.full_like(v, np.inf)) if nudge else v
                                 for key, v in w.items()})
        optims = pearl.make_optimizers(agent, pargs.learning_rate)
        randn_like = torch.randn_like
        torch.randn_like = lambda x: torch.from_numpy(data["eps_a"][k[0]]).to(x.dtype)
        try:
            for k[0] in range(K):
                batch = np.concatenate([data[n][k[0]] for n in ("obs", "act", "rew", "next_obs", "done")], -1)
                pearl.gradient_step(agent, optims, torch.from_numpy(batch), torch.from_numpy(data["context"][k[0]]),
                                    pargs, obs_dim, act_dim)
        finally:
            torch.randn_like = randn_like
        return nets

    mine, nudged = ours(False), ours(True)
    import copy

    twin = copy.deepcopy(mine)
    for name, net in twin.items():
        net.load_state_dict(ours_from_theirs(name, "last"))
    # What the weights compute on the last batch: policy mean and log-std, Q1, Q2, V, target V, and the encoder's
    # per-transition outputs
    obs, act = torch.from_numpy(data["obs"][-1]).flatten(0, 1), torch.from_numpy(data["act"][-1]).flatten(0, 1)
    z = torch.from_numpy(data["eps_z"][-1]).repeat_interleave(B, 0)
    inputs = dict(encoder=torch.from_numpy(data["context"][-1]), policy=torch.cat([obs, z], -1),
                  qf1=torch.cat([obs, act, z], -1), qf2=torch.cat([obs, act, z], -1), vf=torch.cat([obs, z], -1),
                  target_vf=torch.cat([obs, z], -1))
    print(f"{K} gradient steps from the same weights, data and noise (meta-batch {T} x {B}, context {E}, nets {H}); "
          f"max |difference| of the outputs on the last batch, relative to max |output|:")
    print(f"{'network':10s} {'ours vs theirs':>15s} {'ours vs ours from weights 1 ulp away':>37s}")
    worst = 0.0
    with torch.no_grad():
        for name in mine:
            ref = twin[name].net(inputs[name])
            a, b = mine[name].net(inputs[name]), nudged[name].net(inputs[name])
            vs_theirs = float((a - ref).abs().max() / ref.abs().max())
            floor = float((a - b).abs().max() / ref.abs().max())
            worst = max(worst, vs_theirs / max(floor, 1e-6))
            print(f"{name:10s} {vs_theirs:15.2g} {floor:37.2g}")
    # Adam divides each gradient by its running RMS, so in a weight whose gradient is ~0 it turns float32 rounding
    # into whole steps: two equal computations drift apart, as far as the same code started one ulp away drifts.
    # A different loss, gradient route or update order moves the outputs much further than that.
    print("the same computation: ours and theirs differ no more than fp32 rounding makes ours differ from itself"
          if worst < 10 else "THE STEPS DIFFER: more than fp32 rounding makes ours differ from itself")


def ci95(x: list[float]) -> float:
    """Half-width of the 95 % Student-t confidence interval of the mean of x."""
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    n = len(x)
    return float(t.get(n - 1, 1.96) * np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its 95 % confidence interval (Welch: unequal variances)."""
    from scipy import stats

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(np.mean(a) - np.mean(b)), float(stats.t.ppf(0.975, dof) * np.sqrt(va + vb))


def table(args) -> None:
    print(f"{args.metric}: averaged over the run | over its last 20 % of evaluations (per seed; mean ± 95 % CI)")
    rows = []
    for path in args.results:
        with open(path) as f:
            res = json.load(f)
        for label, v in res["variants"].items():
            whole, tail = [], []
            for seed, s in sorted(v["seeds"].items()):
                ys = [e[args.metric] for e in s["evals"] if args.metric in e]
                if ys:
                    whole.append(float(np.mean(ys)))
                    tail.append(float(np.mean(ys[-max(1, len(ys) // 5):])))
            if not whole:
                continue
            print(f"  {res['script']} {label}: run {np.mean(whole):.3f} ± {ci95(whole):.3f} "
                  f"({', '.join(f'{w:.3f}' for w in whole)}) | last 20 % {np.mean(tail):.3f} ± {ci95(tail):.3f} "
                  f"({', '.join(f'{w:.3f}' for w in tail)})")
            rows.append((f"{res['script']} {label}", whole, tail))
    if len(rows) == 2 and all(len(r[1]) > 1 for r in rows):
        (a, wa, ta), (b, wb, tb) = rows
        (dw, hw), (dt, ht) = welch(wa, wb), welch(ta, tb)
        print(f"  difference, {a} minus {b} (Welch 95 % CI): run {dw:+.3f} ± {hw:.3f} | last 20 % {dt:+.3f} ± {ht:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run their PEARL once")
    r.add_argument("--oyster", required=True, help="their checkout, with the three import fixes")
    r.add_argument("--python", help="their venv's python (default OYSTER/venv/bin/python)")
    r.add_argument("--env", required=True, choices=["sparse-point-robot", "point-robot"])
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--out", required=True)
    s = sub.add_parser("summarize", help="their runs -> benchmarks/results/<name>.json (run.py's format)")
    s.add_argument("runs", nargs="+")
    s.add_argument("--env", required=True, choices=["sparse-point-robot", "point-robot"])
    s.add_argument("--name", required=True)
    s.add_argument("--config", default="", help="the overrides the runs used, recorded in the results")
    s.add_argument("--oyster", help="their checkout, to record its config file in the results")
    s.add_argument("--out", default=os.path.join(ROOT, "benchmarks"), help="folder holding results/ (as run.py's)")
    s.add_argument("--reuse", action="store_true",
                   help="keep the finished seeds that results/<name>.json already holds at the same --env and "
                        "--config, beside the runs given (a comparison finished over several sittings)")
    s.add_argument("--num-exp-traj-eval", type=int, default=None)
    s.add_argument("--num-test-tasks", type=int, default=20)
    s.add_argument("--num-tasks", type=int, default=100)
    g = sub.add_parser("step", help="K gradient steps of theirs and pearl.py from the same weights, compared")
    g.add_argument("--oyster", required=True, help="their checkout, with the three import fixes")
    g.add_argument("--python", help="their venv's python (default OYSTER/venv/bin/python)")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--seed", type=int, default=0, help="seed of the random batches, contexts and noise")
    g.add_argument("--theirs-only", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for their code alone, to see the check fail when the two compute differently")
    t = sub.add_parser("table", help="per-seed run averages with 95 %% CIs of results files")
    t.add_argument("results", nargs="+")
    t.add_argument("--metric", default="eval/return")
    args, extra = p.parse_known_args()
    if args.cmd in ("run", "step"):
        if any("=" not in kv for kv in extra):
            raise SystemExit(f"error: overrides are key=value, got {extra}")
        (run if args.cmd == "run" else step)(args, extra)
        return
    if extra:
        raise SystemExit(f"error: unrecognized arguments {extra}")
    if args.cmd == "summarize":
        if args.num_exp_traj_eval is None:  # their configs: 5 on sparse-point-robot, the default 1 elsewhere
            args.num_exp_traj_eval = 5 if args.env == "sparse-point-robot" else 1
        summarize(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
