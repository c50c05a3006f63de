"""What SIL imitates in an mcat.py run: read a run's checkpoint (its replay buffer, actor and critics) and say which
stored transitions SIL's prioritized sample favours, by the step's phase within the reward delay and by the return
of its episode.

SIL (Oh et al. 2018) should imitate the actions of the agent's good episodes: P(i) ~ (R_i - V(s_i))_+^alpha, with
R the discounted return-to-go and V = min_k Q_k(s, pi(s)) (mcat.py's sil_advantage). With rewards paid every n steps
and no phase in the observation, R also depends on how far the step is from the next payment, which V cannot see.
This script measures both dependences on the buffer as it is at the checkpoint (and reads the sample the run
itself draws from, its stored priorities, whichever --sil-form it used), and how the sample would rank
episodes if V were replaced by the buffer's mean R at each phase (a V that sees the phase and fits these returns)
or by its mean R over all steps, and with each critic alone or their mean as V (how much of V's offset is the
twin minimum). It also reads each critic at the stored actions against R, and the step down that TD3's clipped
double-Q target takes per bootstrap (what compounds into the critics' offset):

    python benchmarks/sil_diagnostic.py benchmarks/runs/mcat-single-armature0.2-delay500/td3_sil__seed1 \\
        --name mcat-sil-diagnostic-armature0.2-delay500

It prints a table and writes benchmarks/results/<name>.json (with --name). Single-task runs only (--mode transfer,
one buffer, zero context), the runs of benchmarks/mcat.md (d).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_mcat():
    sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location("mcat_script", os.path.join(ROOT, "mcat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def episode_ids(t: np.ndarray) -> np.ndarray:
    """Consecutive stored steps form one episode from each t == 0 on (mcat.py stores whole episodes contiguously)."""
    return np.cumsum(t == 0) - 1


def running_returns(rew: np.ndarray, t: np.ndarray, gamma: float) -> np.ndarray:
    """ret_t = gamma * ret_{t-1} + r_t from each episode's start (what VecNormalize's return statistics track)."""
    out, acc = np.zeros(len(rew)), 0.0
    for i, (r, step) in enumerate(zip(rew, t)):
        acc = (0.0 if step == 0 else gamma * acc) + r
        out[i] = acc
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")  # undefined: one episode, or a constant
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def diagnose(run_dir: str, bins: int = 5) -> dict:
    mcat = load_mcat()
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
    args, buf = ckpt["args"], ckpt["buffer"]
    if buf["obs"].shape[0] != 1:
        raise SystemExit(f"error: {run_dir}: {buf['obs'].shape[0]} task buffers; this reads single-task runs only")
    n = int(buf["size"][0])
    if n < int(args["buffer_size"]):  # the buffer has not wrapped: its filled part starts at 0
        order = np.arange(n)
    else:  # the oldest transition sits at the write pointer
        order = (int(buf["ptr"][0]) + np.arange(n)) % n
    obs, act, delta = (torch.as_tensor(buf[k][0, order]) for k in ("obs", "act", "delta"))
    ret, rew, t = (buf[k][0, order] for k in ("ret", "rew", "t"))
    first = int(np.argmax(t == 0))  # drop a partial episode the FIFO cut at the front
    obs, act, delta, ret, rew, t = obs[first:], act[first:], delta[first:], ret[first:], rew[first:], t[first:]
    obs_dim, act_dim = obs.shape[-1], act.shape[-1]
    nets = {}
    for name, cls in (("actor", mcat.Actor), ("qf1", mcat.QNetwork), ("qf2", mcat.QNetwork),
                      ("actor_t", mcat.Actor), ("qf1_t", mcat.QNetwork), ("qf2_t", mcat.QNetwork)):
        nets[name] = cls(obs_dim, act_dim, args["context_dim"])
        nets[name].load_state_dict(ckpt[name])
    z = torch.zeros(len(obs), args["context_dim"])
    with torch.no_grad():
        pi = nets["actor"](obs, z)
        q1, q2 = (nets[k](obs, pi, z).squeeze(-1).numpy() for k in ("qf1", "qf2"))
        # Q at the stored action: what each critic says the buffer's own transitions are worth, beside their R
        q_stored = {k: float(nets[k](obs, act, z).mean()) for k in ("qf1", "qf2")}
        # TD3's clipped double-Q target takes min(Q1', Q2') at (s', pi'(s') + clipped noise) (mcat.py td3_update);
        # against their mean that is a step down of gamma * E[mean - min] at every bootstrap, which compounds over
        # the 1 / (1 - gamma) horizon. The noise is drawn from a fixed generator, so the number is reproducible.
        g = torch.Generator().manual_seed(0)
        noise = (torch.randn(act.shape, generator=g) * args["policy_noise"]).clamp(-args["noise_clip"],
                                                                                 args["noise_clip"])
        next_obs = obs + delta
        next_act = (nets["actor_t"](next_obs, z) + noise).clamp(-1.0, 1.0)
        qt1, qt2 = (nets[k](next_obs, next_act, z) for k in ("qf1_t", "qf2_t"))
        min_step = args["gamma"] * float(((qt1 + qt2) / 2 - torch.min(qt1, qt2)).mean())
    v = np.minimum(q1, q2)
    adv = ret - v
    clip, alpha, delay = args["sil_adv_clip"], args["sil_alpha"], args["reward_delay"]

    def sample_mass(a: np.ndarray, unit: float = 1.0) -> np.ndarray:
        """SIL's sampling probabilities p^alpha / sum, p = (a / unit)_+ clipped at `clip` (freshly computed)."""
        m = np.maximum(np.minimum(a / unit, clip), 1e-6) ** alpha
        return m / m.sum()

    mass = sample_mass(adv)
    ep = episode_ids(t)
    ep_return = np.bincount(ep, weights=rew)
    ep_mass = np.bincount(ep, weights=mass)
    ep_steps = np.bincount(ep)
    phase = t % delay
    edges = np.linspace(0, delay, min(bins, delay) + 1).astype(int)  # no empty bin: a dense reward has one phase
    by_phase = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (phase >= lo) & (phase < hi)
        by_phase.append({"phase": f"{lo}-{hi - 1}", "share_of_steps": float(m.mean()), "mean_R": float(ret[m].mean()),
                         "mean_V": float(v[m].mean()), "share_R_above_V": float((adv[m] > 0).mean()),
                         "share_of_SIL_mass": float(mass[m].sum())})
    top = ep_return >= np.quantile(ep_return, 0.9)
    # Oh et al.'s MuJoCo runs see rewards divided by the std of the running discounted return (baselines'
    # VecNormalize, ret = gamma * ret + r per episode), so their clip of 1 is one such std: the same ranking on that
    # scale, to tell the clip's unit apart from what R - V itself can rank
    sigma = float(running_returns(rew, t, args["gamma"]).std())
    mass_oh = sample_mass(adv, sigma)

    def ranking(v_ref: np.ndarray) -> dict:
        """The same sample with V replaced by a reference baseline, in raw units and on Oh et al.'s scale."""
        a = ret - v_ref
        out = {"share_R_above_V": float((a > 0).mean())}
        for key, unit in (("raw", 1.0), ("return_std_scale", sigma)):
            top_mass = np.bincount(ep, weights=sample_mass(a, unit))[top].sum()
            out[key] = {"share_clipped": float((a / unit >= clip).mean()),
                        "SIL_mass_on_top_10pct_episodes": float(top_mass)}
        return out

    # The sample the run itself draws from: the priorities p^alpha that its SIL form stored, each as last computed
    # (what mcat.py's sample_prioritized reads), whichever form (--sil-form) and return (--sil-nstep) it used
    stored = None
    if "priority" in buf:  # checkpoints written before SIL's prioritized sample have none
        m = buf["priority"][0, order][first:].astype(float)
        m = m / m.sum()
        stored = {"sil_form": args.get("sil_form", "imitation"), "sil_nstep": int(args.get("sil_nstep", 0)),
                  "share_of_SIL_mass_by_phase": [float(m[(phase >= lo) & (phase < hi)].sum())
                                                 for lo, hi in zip(edges[:-1], edges[1:])],
                  "SIL_mass_on_top_10pct_episodes": float(np.bincount(ep, weights=m)[top].sum()),
                  "spearman_episode_return_vs_SIL_mass_per_step": spearman(ep_return,
                                                                           np.bincount(ep, weights=m) / ep_steps)}
    # What V would have to be for the sample to rank episodes: the buffer's own mean R at each phase (a V that
    # sees the phase and is fitted to these returns), and its mean R over all steps (fitted, but phase-blind)
    phase_mean = np.bincount(phase, weights=ret, minlength=delay) / np.maximum(np.bincount(phase, minlength=delay), 1)
    return {"run_dir": os.path.relpath(run_dir, ROOT), "iteration": int(ckpt["iteration"]),
            "env_steps": int(ckpt["env_steps"]), "reward_delay": delay, "sil_adv_clip": clip, "sil_alpha": alpha,
            "transitions": int(len(ret)), "episodes": int(len(ep_return)),
            "share_R_above_V": float((adv > 0).mean()), "share_clipped": float((adv >= clip).mean()),
            "mean_R_minus_V": float(adv.mean()), "mean_V": float(v.mean()), "mean_R": float(ret.mean()),
            "mean_reward_per_step": float(rew.mean()),
            "episode_return": {"min": float(ep_return.min()), "median": float(np.median(ep_return)),
                               "max": float(ep_return.max())},
            "by_phase": by_phase,
            "spearman_episode_return_vs_SIL_mass_per_step": spearman(ep_return, ep_mass / ep_steps),
            "SIL_mass_on_top_10pct_episodes": float(ep_mass[top].sum()),
            "steps_in_top_10pct_episodes": float(ep_steps[top].sum() / ep_steps.sum()),
            "spearman_phase_vs_R_minus_V": spearman(phase.astype(float), adv),
            "return_std_scale": {"sigma": sigma, "share_clipped": float((adv / sigma >= clip).mean()),
                                 "SIL_mass_on_top_10pct_episodes": float(np.bincount(ep, weights=mass_oh)[top].sum())},
            "reference_V": {"phase_mean_R": ranking(phase_mean[phase]),
                            "buffer_mean_R": ranking(np.full_like(ret, ret.mean()))},
            "stored_priorities": stored,
            "mean_Q_at_stored_action": q_stored,
            "target_min_step": {"per_bootstrap": min_step, "over_horizon": min_step / (1 - args["gamma"])},
            # how much of V's offset below R is the twin minimum: each critic alone and their mean as V
            "critic_V": {key: {"mean_V": float(q.mean()), **ranking(q)}
                         for key, q in (("qf1", q1), ("qf2", q2), ("mean_of_critics", (q1 + q2) / 2))}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="an mcat.py single-task run directory with checkpoint.pt")
    p.add_argument("--bins", type=int, default=5, help="phase bins within the reward delay (default 5)")
    p.add_argument("--name", default=None, help="write benchmarks/results/<name>.json")
    a = p.parse_args(argv)
    if not os.path.isfile(os.path.join(a.run_dir, "checkpoint.pt")):
        raise SystemExit(f"error: run_dir: no checkpoint.pt in {a.run_dir}")
    if a.bins < 1:
        raise SystemExit(f"error: --bins: {a.bins}; must be >= 1")
    r = diagnose(a.run_dir, a.bins)
    print(f"{r['run_dir']} at {r['env_steps']:,} env steps: {r['transitions']:,} stored transitions, "
          f"{r['episodes']} episodes (return {r['episode_return']['min']:.0f} / {r['episode_return']['median']:.0f} / "
          f"{r['episode_return']['max']:.0f} min / median / max)")
    print(f"  R > V on {r['share_R_above_V']:.1%} of them, clipped at {r['sil_adv_clip']} on {r['share_clipped']:.1%}; "
          f"mean R {r['mean_R']:.1f}, mean V {r['mean_V']:.1f}")
    print(f"  {'phase':>9} {'steps':>6} {'mean R':>8} {'mean V':>8} {'R > V':>6} {'SIL mass':>9}")
    for b in r["by_phase"]:
        print(f"  {b['phase']:>9} {b['share_of_steps']:6.1%} {b['mean_R']:8.1f} {b['mean_V']:8.1f} "
              f"{b['share_R_above_V']:6.1%} {b['share_of_SIL_mass']:9.1%}")
    print(f"  the best 10% of episodes hold {r['steps_in_top_10pct_episodes']:.1%} of the steps and "
          f"{r['SIL_mass_on_top_10pct_episodes']:.1%} of SIL's sampling mass; Spearman(episode return, mass per "
          f"step) {r['spearman_episode_return_vs_SIL_mass_per_step']:+.2f}; Spearman(phase, R - V) "
          f"{r['spearman_phase_vs_R_minus_V']:+.2f}")
    o = r["return_std_scale"]
    print(f"  on Oh et al.'s scale ((R - V) / {o['sigma']:.1f}, the std of the running discounted return): clipped on "
          f"{o['share_clipped']:.1%}, the best 10% of episodes hold {o['SIL_mass_on_top_10pct_episodes']:.1%} of the "
          "mass")
    for key, what in (("phase_mean_R", "V = the buffer's mean R at the step's phase"),
                      ("buffer_mean_R", "V = the buffer's mean R")):
        ref = r["reference_V"][key]
        print(f"  with {what}: R > V on {ref['share_R_above_V']:.1%}, clipped on {ref['raw']['share_clipped']:.1%} "
              f"({ref['return_std_scale']['share_clipped']:.1%} on Oh et al.'s scale), the best 10% of episodes hold "
              f"{ref['raw']['SIL_mass_on_top_10pct_episodes']:.1%} "
              f"({ref['return_std_scale']['SIL_mass_on_top_10pct_episodes']:.1%}) of the mass")
    st = r["stored_priorities"]
    if st is not None:
        nstep = f", --sil-nstep {st['sil_nstep']}" if st["sil_nstep"] else ""
        print(f"  the run's own sample (its stored priorities, --sil-form {st['sil_form']}{nstep}): the best 10% of "
              f"episodes hold {st['SIL_mass_on_top_10pct_episodes']:.1%} of the mass; Spearman(episode return, mass "
              f"per step) {st['spearman_episode_return_vs_SIL_mass_per_step']:+.2f}; by phase bin "
              + " / ".join(f"{x:.1%}" for x in st["share_of_SIL_mass_by_phase"]))
    q = r["mean_Q_at_stored_action"]
    print(f"  at the stored actions: mean Q1 {q['qf1']:.1f}, Q2 {q['qf2']:.1f}, against mean R {r['mean_R']:.1f} "
          f"(mean reward per step {r['mean_reward_per_step']:.4f})")
    m = r["target_min_step"]
    print(f"  the clipped double-Q target steps down by {m['per_bootstrap']:.4f} per bootstrap against the target "
          f"critics' mean ({m['over_horizon']:.1f} over the 1 / (1 - gamma) horizon)")
    for key, what in (("qf1", "V = Q1(s, pi(s))"), ("qf2", "V = Q2(s, pi(s))"),
                      ("mean_of_critics", "V = the critics' mean at pi(s)")):
        ref = r["critic_V"][key]
        print(f"  with {what} (mean {ref['mean_V']:.1f}): R > V on {ref['share_R_above_V']:.1%}, clipped on "
              f"{ref['raw']['share_clipped']:.1%}, the best 10% of episodes hold "
              f"{ref['raw']['SIL_mass_on_top_10pct_episodes']:.1%} "
              f"({ref['return_std_scale']['SIL_mass_on_top_10pct_episodes']:.1%} on Oh et al.'s scale) of the mass")
    if a.name:
        out = os.path.join(ROOT, "benchmarks", "results", f"{a.name}.json")
        with open(out, "w") as f:
            json.dump(r, f, indent=1)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
