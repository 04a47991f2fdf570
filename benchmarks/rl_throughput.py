"""Throughput of our SAC (one seed, and five seeds vectorised) against Stable-Baselines3's SAC and a
CleanRL-style reference loop, beside the machine's own matrix-product rate.

All three train on the same environment (``era.rl.envs``, actions in [-1, 1]) with the same
network sizes (2 x 256, ELU), batch size, one gradient update per environment step and one torch
thread, measured side by side in one process with the repetitions interleaved (a, b, c, a, b, c,
...) so that load from other processes on the machine hits all of them alike. Two figures each:

* ``train_sps``: environment steps per second of the full training loop (act, step, store,
  update) after ``--warmup`` random steps (median over ``--repeats``);
* ``updates_per_s``: gradient updates per second on each one's filled buffer, nothing else
  running, interleaved in small blocks (see ``time_updates``).

Ours also runs vectorised: ``--seeds`` seeds (default 5) stacked along a seed axis in one
process (``era.rl.sac``). Its figures are *seed*-updates (and seed-steps) per second: one
vectorised update advances every seed by one update. The arithmetic limit beside each row is
the machine's one-thread rate of a 256x256x256 matrix product (fp32, and bf16 for the
``--sac.amp bf16`` rows) divided by the matmul FLOPs of one SAC update (``update_flops``); the
``% of limit`` column says how much of an update's time is arithmetic, the rest is overhead.

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

When torch sees a GPU (and ``--gpu``, the default), the table gains GPU rows: Stable-Baselines3
and our vectorised SAC and SAC-ERA exact (eager and compiled) with networks, replay buffer and
updates on CUDA, environments on the CPU (``--device cuda`` of ``era rl train``). A GPU works
asynchronously, so these rows are timed in wall time with the device synchronised at each
reading; their limit is the GPU's rate for the same 256x256x256 product (launch overhead
included: that is the size an update multiplies), and their ``x SB3`` is against SB3 on the GPU.

    OMP_NUM_THREADS=1 python benchmarks/rl_throughput.py --env Hopper-v5 --repeats 3

(``--steps 300 --repeats 1`` for the quick run on a loaded machine.)
"""

from __future__ import annotations

import dataclasses
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
from _measure import environment
from torch import nn

from era.rl.envs import make_vector_env

Update = Callable[[], object]
# The machine is shared: wall time depends on what other processes do at that second. The CPU
# time of this (single-threaded) process counts only the work of the implementation measured.
cpu_clock = time.process_time


def wall_clock(device: str) -> float:
    """Wall time after the device's queued work has finished (a GPU runs asynchronously)."""
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter()


def clock_for(device: str) -> Callable[[], float]:
    """The clock of one device's rows: this process's CPU time on the CPU, wall time on a GPU."""
    return cpu_clock if device == "cpu" else lambda: wall_clock(device)


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
    """also time our vectorised SAC and SAC-ERA exact with --sac.compile"""
    seeds: int = 5
    """seeds of the vectorised rows"""
    train_loops: bool = True
    """also time the full training loops (train env steps/s), not only the updates"""
    gpu: bool = True
    """also time SB3 and our vectorised rows on CUDA when torch sees a GPU"""
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


def run_sb3(args: Args, device: str = "cpu") -> tuple[float, Update]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from era.rl.envs import make_env

    clock = clock_for(device)

    class StartClock(BaseCallback):
        """Note the time when the warm-up ends; SB3 trains from then on."""

        def _on_step(self) -> bool:
            if self.num_timesteps == args.warmup:
                self.start = clock()
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
        device=device,
        seed=0,
    )
    start_clock = StartClock()
    model.learn(args.warmup + args.steps, callback=start_clock)
    train_sps = args.steps / (clock() - start_clock.start)
    return train_sps, lambda: model.train(gradient_steps=1, batch_size=args.batch_size)


def time_updates(
    updates: dict[str, Update], clocks: dict[str, Callable[[], float]], blocks: int, per_block: int
) -> dict[str, float]:
    """Gradient updates per second of each implementation on its own filled buffer, read on
    its own clock (``clock_for``).

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
            clock = clocks[name]
            start = clock()
            for _ in range(per_block):
                update()
            seconds[name] += clock() - start
    return {name: blocks * per_block / t for name, t in seconds.items()}


# --- ours: the same pieces era.rl.sac.train_seeds uses (envs, buffer, agent.act / update) ---


@dataclass(frozen=True)
class Ours:
    """One configuration of our agent."""

    head: str = "alpha"
    era_mode: str = "exact"
    seeds: int = 1
    amp: str = "none"
    compile: bool = False
    device: str = "cpu"

    @property
    def name(self) -> str:
        head = "SAC auto-alpha" if self.head == "alpha" else f"SAC-ERA {self.era_mode}"
        extras = [f"{self.seeds} seeds vectorised" if self.seeds > 1 else "1 seed"]
        extras += ["bf16"] if self.amp == "bf16" else []
        extras += ["compiled"] if self.compile else []
        extras += [self.device] if self.device != "cpu" else []
        return f"ours ({head}; {', '.join(extras)})"


def run_ours(args: Args, ours: Ours) -> tuple[float, Update, float]:
    """Train seed-steps/s, the update function and the wall time of the first update and
    action (the compile, for a compiled agent)."""
    from era.rl.buffer import ReplayBuffer
    from era.rl.config import SACConfig, TrainConfig
    from era.rl.sac import build

    sac = SACConfig(hidden=args.hidden, batch_size=args.batch_size, learning_starts=args.warmup,
                    compile=ours.compile, amp=ours.amp)  # fmt: skip
    config = TrainConfig(env=args.env, head=ours.head, era_mode=ours.era_mode, sac=sac,
                         device=ours.device, progress=False)  # fmt: skip
    envs, agent = build(config, list(range(ours.seeds)))
    envs = envs if isinstance(envs, list) else [envs]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    buffer = ReplayBuffer(args.warmup + args.steps, obs_dim, act_dim, ours.seeds, agent.device)
    clock = clock_for(ours.device)
    obs = np.stack([e.obs[0] for e in envs])
    steps = args.steps if args.train_loops else 0
    start, first_call_s = 0.0, 0.0
    for step in range(args.warmup + steps):
        if step == args.warmup:
            wall = wall_clock(ours.device)
            agent.update(*agent.sample_batch(buffer))
            agent.act(obs)
            first_call_s = wall_clock(ours.device) - wall
            start = clock()
        if step < args.warmup:
            action = (agent.draw("uniform", (act_dim,), stream="explore") * 2 - 1).numpy()
        else:
            action = agent.act(obs)
        results = [env.step(action[i : i + 1]) for i, env in enumerate(envs)]
        buffer.add(obs, action, *(np.stack([getattr(r, k)[0] for r in results])
                                  for k in ("reward", "next_obs", "terminated")))  # fmt: skip
        obs = np.stack([r.obs[0] for r in results])
        if step >= args.warmup:
            agent.update(*agent.sample_batch(buffer))
    if args.train_loops:
        train_sps = ours.seeds * args.steps / (clock() - start)
    else:
        agent.update(*agent.sample_batch(buffer))
        train_sps = float("nan")
    for env in envs:
        env.close()
    return train_sps, lambda: agent.update(*agent.sample_batch(buffer)), first_call_s


def update_flops(args: Args, obs_dim: int, act_dim: int) -> float:
    """Matrix-product FLOPs of one SAC update of one seed (2 hidden layers, twin critics).

    Per linear layer on a batch, a forward product costs ``2 * B * in * out``, and so does each
    of its two backward products (weight gradient, input gradient). Critic step: actor forward on
    s', two target critics forward, two critics forward and backward (no input gradient at the
    first layer). Actor step: actor forward, two critics forward and backward to the action
    (input gradients only), actor backward (no input gradient at the first layer).
    """
    h, b = args.hidden, args.batch_size
    actor = [(obs_dim, h), (h, h), (h, 2 * act_dim)]
    critic = [(obs_dim + act_dim, h), (h, h), (h, 1)]
    f = lambda layers: sum(2 * b * i * o for i, o in layers)
    a, a1, c, c1 = f(actor), f(actor[:1]), f(critic), f(critic[:1])
    critic_step = a + 2 * c + 2 * c + 2 * (2 * c - c1)
    actor_step = a + 2 * c + 2 * c + (2 * a - a1)
    return float(critic_step + actor_step)


def matmul_gflops(
    dtype: torch.dtype, device: str = "cpu", size: int = 256, seconds: float = 1.0
) -> float:
    """GFLOP/s of one ``size^3`` matrix product on ``device`` (on the CPU one thread, this
    process's CPU time), read on the clock of that device's rows."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(10):
        a @ b
    clock = clock_for(device)
    n, start = 0, clock()
    while clock() - start < seconds:
        for _ in range(20):
            a @ b
        n += 20
    return 2 * size**3 * n / (clock() - start) / 1e9


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


SB3_ROW = {"cpu": "Stable-Baselines3 SAC", "cuda": "Stable-Baselines3 SAC (cuda)"}


def rate_key(device: str, amp: str) -> str:
    """Key of a matmul rate: ``none`` / ``bf16`` on the CPU, ``cuda none`` / ``cuda bf16``."""
    return amp if device == "cpu" else f"{device} {amp}"


def matmul_rates(devices: list[str]) -> dict[str, float]:
    """fp32 and bf16 matmul rates on each device, keyed by ``rate_key``."""
    dtypes = {"none": torch.float32, "bf16": torch.bfloat16}
    return {
        rate_key(d, amp): matmul_gflops(dtype, d) for d in devices for amp, dtype in dtypes.items()
    }


def compiled_rows(**common) -> list[Ours]:
    """SAC(auto-alpha) and SAC-ERA exact compiled, fp32 then bf16, with ``common`` settings."""
    return [
        Ours(head, "exact", amp=amp, compile=True, **common)
        for amp in ("none", "bf16")
        for head in ("alpha", "era")
    ]


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    # An empty inductor cache, so that the first compile is timed as on a fresh machine.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rl_throughput_inductor_")
    vector = dict(seeds=args.seeds)
    configs = [
        Ours("alpha"), Ours("era", "exact"), Ours("era", "delta"),
        Ours("alpha", **vector), Ours("era", "exact", **vector), Ours("era", "delta", **vector),
        Ours("alpha", amp="bf16", **vector), Ours("era", "exact", amp="bf16", **vector),
    ]  # fmt: skip
    if args.compiled:
        configs += compiled_rows(**vector)
    devices = ["cpu"] + (["cuda"] if args.gpu and torch.cuda.is_available() else [])
    runs: dict[str, Callable[[], tuple]] = {
        SB3_ROW["cpu"]: lambda: run_sb3(args),
        "CleanRL-style reference": lambda: run_reference(args),
    }
    if "cuda" in devices:
        gpu = dict(seeds=args.seeds, device="cuda")
        configs += [Ours("alpha", **gpu), Ours("era", "exact", **gpu)]
        if args.compiled:
            configs += compiled_rows(**gpu)
        runs[SB3_ROW["cuda"]] = lambda: run_sb3(args, "cuda")
    seeds_of = {name: 1 for name in runs}
    device_of = {name: "cuda" if name == SB3_ROW["cuda"] else "cpu" for name in runs}
    amp_of = {name: "none" for name in runs}
    for ours in configs:
        runs[ours.name] = lambda ours=ours: run_ours(args, ours)
        seeds_of[ours.name], amp_of[ours.name] = ours.seeds, ours.amp
        device_of[ours.name] = ours.device
    probe = make_vector_env(args.env, seed=0)
    flops = update_flops(args, probe.single_observation_space.shape[0],
                         probe.single_action_space.shape[0])  # fmt: skip
    probe.close()
    gflops = matmul_rates(devices)
    print(f"matmul 256^3, one thread: fp32 {gflops['none']:.0f}, bf16 {gflops['bf16']:.0f} "
          f"GFLOP/s; one SAC update {flops / 1e9:.3f} GFLOP", flush=True)  # fmt: skip
    train_sps: dict[str, list[float]] = {name: [] for name in runs}
    compile_s: dict[str, list[float]] = {name: [] for name in runs if "compiled" in name}
    vector_env: dict[str, list[float]] = {"SyncVectorEnv x4": [], "AsyncVectorEnv x4": []}
    updates: dict[str, Update] = {}
    for rep in range(args.repeats):  # interleaved: every implementation once per repetition
        for name, fn in runs.items():
            sps, updates[name], *first_call_s = fn()
            train_sps[name].append(sps)
            if name in compile_s:
                compile_s[name] += first_call_s
            print(f"[{rep + 1}/{args.repeats}] {name}: {sps:.1f} train seed-steps/s", flush=True)
        for name in vector_env:
            vector_env[name].append(run_vector(args, asynchronous=name.startswith("Async")))
            print(f"[{rep + 1}/{args.repeats}] {name}: {vector_env[name][-1]:.0f} steps/s",
                  flush=True)  # fmt: skip
    clocks = {name: clock_for(device_of[name]) for name in runs}
    update_rate = time_updates(updates, clocks, args.blocks, args.per_block)
    gflops_after = matmul_rates(devices)
    limit = {k: (gflops[k] + gflops_after[k]) / 2 * 1e9 / flops for k in gflops}
    table = {}
    for n in runs:
        seed_updates = update_rate[n] * seeds_of[n]
        table[n] = {
            "train_sps": statistics.median(train_sps[n]),
            "seed_updates_per_s": seed_updates,
            "percent_of_limit": 100 * seed_updates / limit[rate_key(device_of[n], amp_of[n])],
        }
    for n, row in table.items():
        row["over_sb3"] = (
            row["seed_updates_per_s"] / table[SB3_ROW[device_of[n]]]["seed_updates_per_s"]
        )
    era_over_alpha = {}
    for ours in configs:
        if ours.head == "era":
            alpha = dataclasses.replace(ours, head="alpha", era_mode="exact")
            if alpha.name in table:
                era_over_alpha[ours.name] = (
                    table[alpha.name]["seed_updates_per_s"] / table[ours.name]["seed_updates_per_s"]
                )
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment("cpu"),
        "matmul_gflops_before": gflops,
        "matmul_gflops_after": gflops_after,
        "update_gflop": flops / 1e9,
        "median": table,
        "train_sps_samples": train_sps,
        "era_update_time_over_alpha": era_over_alpha,
        "compile_s": compile_s,
        "vector_env_sps": {n: statistics.median(v) for n, v in vector_env.items()},
        "vector_env_samples": vector_env,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    g0, g1 = result["matmul_gflops_before"], result["matmul_gflops_after"]
    env = result["environment"]
    lines = [
        f"{env['device']}, torch {env['torch']}, commit {env['git_commit']}, load average "
        f"{env['load_average_1_5_15min'][0]:.1f} at the end.",
        "",
        f"Matrix product 256x256x256, one thread: fp32 {g0['none']:.0f} / {g1['none']:.0f} "
        f"GFLOP/s, bf16 {g0['bf16']:.0f} / {g1['bf16']:.0f} GFLOP/s (before / after the "
        f"timings); one SAC update of one seed is {result['update_gflop']:.3f} GFLOP of "
        "matrix products.",
    ]
    if "cuda none" in g0:
        lines.append(
            f"On the GPU (wall time, synchronised): fp32 {g0['cuda none']:.0f} / "
            f"{g1['cuda none']:.0f} GFLOP/s, bf16 {g0['cuda bf16']:.0f} / {g1['cuda bf16']:.0f} "
            "GFLOP/s; the cuda rows' × SB3 is against SB3 on the GPU."
        )
    lines += [
        "",
        "| implementation | train seed-steps/s | seed-updates/s | × SB3 | % of matmul limit |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["median"].items():
        lines.append(f"| {name} | {row['train_sps']:.0f} | {row['seed_updates_per_s']:.0f} | "
                     f"{row['over_sb3']:.2f} | {row['percent_of_limit']:.0f} |")  # fmt: skip
    lines.append("")
    for name, ratio in result["era_update_time_over_alpha"].items():
        lines.append(f"update time {name} / same with SAC auto-alpha: {ratio:.2f}")
    if result["compile_s"]:
        times = "; ".join(
            f"{n}: " + ", ".join(f"{t:.0f}" for t in ts) for n, ts in result["compile_s"].items()
        )
        lines.append(f"compile wall time per repetition (s; first: empty cache): {times}")
    vec = ", ".join(f"{n}: {v:.0f} steps/s" for n, v in result["vector_env_sps"].items())
    lines.append(f"vectorised stepping: {vec}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
