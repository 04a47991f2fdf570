"""Throughput of our SAC against Stable-Baselines3's SAC and a CleanRL-style reference loop.

All three train on the same environment (``era.rl.envs``, actions in [-1, 1]) with the same
network sizes (2 x 256, ELU), batch size, one gradient update per environment step and one torch
thread, measured side by side in one process with the repetitions interleaved (a, b, c, a, b, c,
...) so that load from other processes on the machine hits all of them alike. Two figures each:

* ``train_sps``: environment steps per second of the full training loop (act, step, store,
  update) after ``--warmup`` random steps (median over ``--repeats``);
* ``updates_per_s``: gradient updates per second on each one's filled buffer, nothing else
  running, interleaved in small blocks (see ``time_updates``).

A second table compares our own heads: SAC-ERA (exact and delta) against SAC(auto-alpha), the
per-update time ratio (ERA drops the temperature update but adds its entropy solve). Ours also
runs compiled (``SACConfig.compile``, ``--sac.compile``): the compile happens on the first
update, after the warm-up and outside the timed steps; its wall time is reported separately
(``compile_s``): the first repetition's on an empty inductor cache (a fresh directory), as on
a fresh machine; later repetitions reuse the graphs this process has compiled already.
``AsyncVectorEnv`` against ``SyncVectorEnv`` (the choice in ``era.rl.envs``) is timed as well.

Time is this process's CPU time (one torch thread), not wall time: on a machine shared with
other jobs, CPU time measures the work each implementation does, wall time mostly the load.
The vectorised-env comparison is the exception: its worker processes' CPU time is not ours to
count, so it uses wall time and is only indicative.

    OMP_NUM_THREADS=1 python benchmarks/rl_throughput.py --env Hopper-v5 --repeats 3
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import nn

from era.rl.envs import make_vector_env

Update = Callable[[], object]
# The machine is shared: wall time depends on what other processes do at that second. The CPU
# time of this (single-threaded) process counts only the work of the implementation measured.
cpu_clock = time.process_time


@dataclass
class Args:
    env: str = "Hopper-v5"
    """task to train on"""
    warmup: int = 1000
    """random steps that fill the buffer before timing"""
    steps: int = 1000
    """timed training steps (one gradient update each)"""
    blocks: int = 20
    """update-only measurement: rounds of interleaving"""
    per_block: int = 5
    """update-only measurement: consecutive updates of one implementation per round"""
    hidden: int = 256
    """hidden width of actor and critics (two hidden layers)"""
    batch_size: int = 256
    """transitions per update"""
    repeats: int = 3
    """interleaved repetitions per implementation (the median is reported)"""
    compiled: bool = True
    """also time our SAC and SAC-ERA exact with --sac.compile"""
    out: Path = Path("benchmarks/results/rl_throughput.json")
    """JSON result"""


# --- CleanRL-style reference: one file, plain tensors, a tanh-Gaussian actor and two critics ---


class RefActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU()
        )
        self.mean = nn.Linear(hidden, act_dim)
        self.log_std = nn.Linear(hidden, act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised squashed sample and its log-probability."""
        h = self.net(obs)
        mean, log_std = self.mean(h), -5.0 + 3.5 * (torch.tanh(self.log_std(h)) + 1)
        std = log_std.exp()
        x = mean + std * torch.randn_like(mean)
        log_prob = -0.5 * ((x - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
        log_prob -= 2 * (np.log(2) - x - F.softplus(-2 * x))  # log |d tanh(x) / dx|
        return torch.tanh(x), log_prob.sum(-1)


def ref_critic(obs_dim: int, act_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(obs_dim + act_dim, hidden),
        nn.ELU(),
        nn.Linear(hidden, hidden),
        nn.ELU(),
        nn.Linear(hidden, 1),
    )


class ReferenceSAC:
    """SAC with automatic temperature, written as plainly as CleanRL writes it."""

    def __init__(self, obs_dim: int, act_dim: int, args: Args):
        self.args = args
        self.actor = RefActor(obs_dim, act_dim, args.hidden)
        self.q1, self.q2 = (ref_critic(obs_dim, act_dim, args.hidden) for _ in range(2))
        self.q1_target, self.q2_target = (
            ref_critic(obs_dim, act_dim, args.hidden) for _ in range(2)
        )
        self.q1_target.load_state_dict(self.q1.state_dict())
        self.q2_target.load_state_dict(self.q2.state_dict())
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=3e-4)
        self.target_entropy = -float(act_dim)
        size = args.warmup + args.steps
        self.obs = torch.zeros(size, obs_dim)
        self.next_obs = torch.zeros(size, obs_dim)
        self.actions = torch.zeros(size, act_dim)
        self.rewards = torch.zeros(size)
        self.terminated = torch.zeros(size)
        self.size = 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.size
        self.obs[i], self.actions[i], self.next_obs[i] = map(
            torch.as_tensor, (obs, action, next_obs)
        )
        self.rewards[i], self.terminated[i] = float(reward), float(terminated)
        self.size += 1

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs))[0].numpy()

    def update(self) -> None:
        idx = torch.randint(0, self.size, (self.args.batch_size,))
        obs, act, rew = self.obs[idx], self.actions[idx], self.rewards[idx]
        next_obs, term = self.next_obs[idx], self.terminated[idx]
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor(next_obs)
            sa = torch.cat([next_obs, next_act], -1)
            q_next = torch.min(self.q1_target(sa), self.q2_target(sa)).squeeze(-1)
            target = rew + 0.99 * (1 - term) * (q_next - alpha * next_logp)
        sa = torch.cat([obs, act], -1)
        q_loss = F.mse_loss(self.q1(sa).squeeze(-1), target) + F.mse_loss(
            self.q2(sa).squeeze(-1), target
        )
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        pi, logp = self.actor(obs)
        sa = torch.cat([obs, pi], -1)
        actor_loss = (alpha * logp - torch.min(self.q1(sa), self.q2(sa)).squeeze(-1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha.exp() * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for net, target_net in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), target_net.parameters(), strict=True):
                    tp.lerp_(p, 0.005)


def run_reference(args: Args) -> tuple[float, Update]:
    envs = make_vector_env(args.env, seed=0)
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    agent = ReferenceSAC(obs_dim, act_dim, args)
    obs, _ = envs.reset(seed=0)
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = cpu_clock()
        if step < args.warmup:
            action = envs.action_space.sample()
        else:
            action = agent.act(obs)
        next_obs, reward, terminated, truncated, info = envs.step(action)
        real_next = next_obs.copy()
        if "final_obs" in info:
            real_next[info["_final_obs"]] = np.stack(info["final_obs"][info["_final_obs"]])
        agent.add(obs[0], action[0], reward[0], real_next[0], terminated[0])
        obs = next_obs
        if step >= args.warmup:
            agent.update()
    train_sps = args.steps / (cpu_clock() - start)
    return train_sps, agent.update


# --- Stable-Baselines3 ---


def run_sb3(args: Args) -> tuple[float, Update]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from era.rl.envs import make_env

    class StartClock(BaseCallback):
        """Note the time when the warm-up ends; SB3 trains from then on."""

        def _on_step(self) -> bool:
            if self.num_timesteps == args.warmup:
                self.start = cpu_clock()
            return True

    model = SAC(
        "MlpPolicy",
        make_env(args.env, seed=0),
        learning_starts=args.warmup,
        batch_size=args.batch_size,
        train_freq=1,
        gradient_steps=1,
        buffer_size=args.warmup + args.steps,
        policy_kwargs={"net_arch": [args.hidden, args.hidden], "activation_fn": nn.ELU},
        device="cpu",
        seed=0,
    )
    clock = StartClock()
    model.learn(args.warmup + args.steps, callback=clock)
    train_sps = args.steps / (cpu_clock() - clock.start)
    return train_sps, lambda: model.train(gradient_steps=1, batch_size=args.batch_size)


def time_updates(updates: dict[str, Update], blocks: int, per_block: int) -> dict[str, float]:
    """Gradient updates per second of each implementation on its own filled buffer.

    Finely interleaved (``per_block`` updates of each in turn, ``blocks`` times) so that the
    load of other processes, which changes by the second on a shared machine, falls on all of
    them alike; each update function is warmed up first.
    """
    for update in updates.values():
        for _ in range(5):
            update()
    seconds = dict.fromkeys(updates, 0.0)
    for _ in range(blocks):
        for name, update in updates.items():
            start = cpu_clock()
            for _ in range(per_block):
                update()
            seconds[name] += cpu_clock() - start
    return {name: blocks * per_block / t for name, t in seconds.items()}


# --- ours: the same pieces era.rl.sac.train uses (envs, buffer, agent.act / agent.update) ---


def _our_agent(args: Args, head: str, era_mode: str = "exact", compile: bool = False):
    from era.rl.config import SACConfig, TrainConfig
    from era.rl.sac import build

    sac = SACConfig(
        hidden=args.hidden,
        batch_size=args.batch_size,
        learning_starts=args.warmup,
        compile=compile,
    )
    config = TrainConfig(env=args.env, head=head, era_mode=era_mode, sac=sac, progress=False)
    return build(config)


def run_ours(
    args: Args, head: str = "alpha", era_mode: str = "exact", compile: bool = False
) -> tuple[float, Update, float]:
    """Train env steps/s, the update function and the wall time of the first update and action
    (the compile, for a compiled agent)."""
    from era.rl.buffer import ReplayBuffer

    envs, agent = _our_agent(args, head, era_mode, compile)
    buffer = ReplayBuffer(
        args.warmup + args.steps, envs.observation_space.shape[0], envs.action_space.shape[0]
    )
    obs = envs.obs
    start, first_call_s = 0.0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            wall = time.perf_counter()
            agent.update(*buffer.sample(args.batch_size))
            agent.act(obs)
            first_call_s = time.perf_counter() - wall
            start = cpu_clock()
        if step < args.warmup:
            action = torch.rand(1, *envs.action_space.shape).numpy() * 2 - 1
        else:
            action = agent.act(obs)
        result = envs.step(action)
        buffer.add(obs, action, result.reward, result.next_obs, result.terminated)
        obs = result.obs
        if step >= args.warmup:
            agent.update(*buffer.sample(args.batch_size))
    train_sps = args.steps / (cpu_clock() - start)
    envs.close()
    return train_sps, lambda: agent.update(*buffer.sample(args.batch_size)), first_call_s


# --- vectorised stepping: SyncVectorEnv (our choice) against AsyncVectorEnv ---


def run_vector(args: Args, asynchronous: bool, num_envs: int = 4, steps: int = 500) -> float:
    """Environment steps per second (summed over the copies) with zero actions."""
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    from era.rl.envs import make_env

    cls = AsyncVectorEnv if asynchronous else SyncVectorEnv
    envs = cls(
        [lambda i=i: make_env(args.env, i) for i in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    envs.reset(seed=0)
    action = np.zeros(envs.action_space.shape, dtype=np.float32)
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(action)
    sps = steps * num_envs / (time.perf_counter() - start)
    envs.close()
    return sps


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    # An empty inductor cache, so that the first compile is timed as on a fresh machine.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rl_throughput_inductor_")
    runs: dict[str, Callable[[], tuple]] = {
        "ours (SAC auto-alpha)": lambda: run_ours(args, "alpha"),
        "Stable-Baselines3 SAC": lambda: run_sb3(args),
        "CleanRL-style reference": lambda: run_reference(args),
        "ours (SAC-ERA exact)": lambda: run_ours(args, "era", "exact"),
        "ours (SAC-ERA delta)": lambda: run_ours(args, "era", "delta"),
    }
    if args.compiled:
        runs["ours compiled (SAC auto-alpha)"] = lambda: run_ours(args, "alpha", compile=True)
        runs["ours compiled (SAC-ERA exact)"] = lambda: run_ours(args, "era", compile=True)
    train_sps: dict[str, list[float]] = {name: [] for name in runs}
    compile_s: dict[str, list[float]] = {name: [] for name in runs if "compiled" in name}
    vector: dict[str, list[float]] = {"SyncVectorEnv x4": [], "AsyncVectorEnv x4": []}
    updates: dict[str, Update] = {}
    for rep in range(args.repeats):  # interleaved: every implementation once per repetition
        for name, fn in runs.items():
            sps, updates[name], *first_call_s = fn()
            train_sps[name].append(sps)
            if name in compile_s:
                compile_s[name] += first_call_s
            print(f"[{rep + 1}/{args.repeats}] {name}: {sps:.1f} train steps/s", flush=True)
        for name in vector:
            vector[name].append(run_vector(args, asynchronous=name.startswith("Async")))
            print(f"[{rep + 1}/{args.repeats}] {name}: {vector[name][-1]:.0f} steps/s", flush=True)
    update_rate = time_updates(updates, args.blocks, args.per_block)
    print(f"updates/s: {update_rate}", flush=True)

    table = {
        n: {"train_sps": statistics.median(train_sps[n]), "updates_per_s": update_rate[n]}
        for n in runs
    }
    ours, sb3 = table["ours (SAC auto-alpha)"], table["Stable-Baselines3 SAC"]
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "median": table,
        "train_sps_samples": train_sps,
        "ours_over_sb3": {k: ours[k] / sb3[k] for k in ours},
        "era_update_time_over_alpha": {
            mode: ours["updates_per_s"] / table[f"ours (SAC-ERA {mode})"]["updates_per_s"]
            for mode in ("exact", "delta")
        },
        "compile_s": compile_s,
        "vector_env_sps": {n: statistics.median(v) for n, v in vector.items()},
        "vector_env_samples": vector,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [
        "| implementation | train env steps/s (median) | gradient updates/s |",
        "|---|---:|---:|",
    ]
    for name, row in result["median"].items():
        lines.append(f"| {name} | {row['train_sps']:.0f} | {row['updates_per_s']:.0f} |")
    ratio = result["ours_over_sb3"]
    lines.append("")
    lines.append(
        f"ours / SB3: train steps/s x{ratio['train_sps']:.2f}, "
        f"updates/s x{ratio['updates_per_s']:.2f}"
    )
    era = result["era_update_time_over_alpha"]
    lines.append(
        f"update time SAC-ERA / SAC(auto-alpha): exact {era['exact']:.2f}, delta {era['delta']:.2f}"
    )
    table = result["median"]
    if "ours compiled (SAC-ERA exact)" in table:
        sb3 = table["Stable-Baselines3 SAC"]
        for name in ("ours compiled (SAC auto-alpha)", "ours compiled (SAC-ERA exact)"):
            lines.append(
                f"{name} / SB3: train steps/s x{table[name]['train_sps'] / sb3['train_sps']:.2f}, "
                f"updates/s x{table[name]['updates_per_s'] / sb3['updates_per_s']:.2f}"
            )
        exact_c = table["ours compiled (SAC-ERA exact)"]["updates_per_s"]
        lines.append(
            "update time SAC-ERA exact compiled / SAC(auto-alpha) eager: "
            f"{table['ours (SAC auto-alpha)']['updates_per_s'] / exact_c:.2f}, / compiled: "
            f"{table['ours compiled (SAC auto-alpha)']['updates_per_s'] / exact_c:.2f}"
        )
        times = "; ".join(
            f"{n}: " + ", ".join(f"{t:.0f}" for t in ts) for n, ts in result["compile_s"].items()
        )
        lines.append(f"compile wall time per repetition (s; first: empty cache): {times}")
    vec = ", ".join(f"{n}: {v:.0f} steps/s" for n, v in result["vector_env_sps"].items())
    lines.append(f"vectorised stepping: {vec}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
