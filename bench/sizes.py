"""How big each measurement is: the full run (issue 6's sizes) and the CI smoke size (`--quick`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    throughput_seconds: int
    throughput_repeats: int
    throughput_streams: tuple[int, ...]
    latency_samples: int
    latency_interval: float
    convergence_runs: int
    convergence_hosts: int
    cli_pairs: int
    cli_true_pairs: int  # `pyweave run ... busybox true`, which waits for its 20 s attach timeout
    agent_idle_seconds: float
    agent_churn_endpoints: int
    scale_hosts: tuple[int, ...]
    scale_endpoints_per_host: int
    scale_burst: int
    scale_agents_per_worker: int
    scale_wait_s: tuple[float, ...]  # the least a burst is waited for, per size; beyond it while the agents keep
    # the CPUs busy (bench.scale.BOUND_WAIT), up to scale_converge_timeout and the run's budget
    scale_client_hosts: int  # own etcd client per agent against one shared per process: this size ...
    scale_client_burst: int  # ... and a burst small enough to converge within the budget
    scale_client_wait_s: float
    scale_converge_timeout: float  # the most any wait may be (also the startup's, at least 120 s)
    ghost_hosts: tuple[int, ...]  # section 7: ghost hosts around one real agent, per size
    ghost_endpoints_per_host: int
    ghost_burst: int  # endpoint events per burst: half new endpoints, half deletions
    ghost_rounds: int  # pairs of bursts per size (a burst, then the same undone)
    ghost_wait_s: float  # the most any wait for the kernel may be (a preload, a burst, a cold start)
    ghost_stall_s: float  # ... and how long it goes on without one more entry in the kernel
    ghost_idle_s: float  # the idle agent's RSS is the largest of samples over this window
    ghost_background_s: float  # the agent's CPU with no event, per size (a few full resyncs, every 8 s)
    fanout_watchers: tuple[int, ...]  # tried in order until one receives every event
    fanout_processes: int  # the watchers are spread over this many processes
    fanout_keys: int
    fanout_wait_s: float


FULL = Sizes(
    throughput_seconds=10,
    throughput_repeats=3,
    throughput_streams=(1, 4),
    latency_samples=200,
    latency_interval=0.01,
    convergence_runs=50,
    convergence_hosts=5,
    cli_pairs=10,
    cli_true_pairs=1,
    agent_idle_seconds=20,
    agent_churn_endpoints=100,
    scale_hosts=(50, 100, 200),
    scale_endpoints_per_host=25,
    scale_burst=1000,
    scale_agents_per_worker=50,
    scale_wait_s=(60, 60, 60),
    scale_client_hosts=20,
    scale_client_burst=100,
    scale_client_wait_s=30,
    scale_converge_timeout=480,
    ghost_hosts=(100, 1000, 2000),
    ghost_endpoints_per_host=25,
    ghost_burst=1000,
    ghost_rounds=2,
    ghost_wait_s=600,
    ghost_stall_s=120,
    ghost_idle_s=10,
    ghost_background_s=24,
    fanout_watchers=(2000, 1000, 500),
    fanout_processes=4,
    fanout_keys=1000,
    fanout_wait_s=120,
)

QUICK = Sizes(
    throughput_seconds=1,
    throughput_repeats=1,
    throughput_streams=(1, 4),
    latency_samples=20,
    latency_interval=0.01,
    convergence_runs=3,
    convergence_hosts=2,
    cli_pairs=2,
    cli_true_pairs=0,
    agent_idle_seconds=2,
    agent_churn_endpoints=10,
    scale_hosts=(2, 4),
    scale_endpoints_per_host=3,
    scale_burst=4,
    scale_agents_per_worker=2,
    scale_wait_s=(30, 30),
    scale_client_hosts=2,
    scale_client_burst=2,
    scale_client_wait_s=30,
    scale_converge_timeout=30,
    ghost_hosts=(3, 10),
    ghost_endpoints_per_host=5,
    ghost_burst=20,
    ghost_rounds=1,
    ghost_wait_s=60,
    ghost_stall_s=30,
    ghost_idle_s=1,
    ghost_background_s=1,
    fanout_watchers=(20,),
    fanout_processes=2,
    fanout_keys=20,
    fanout_wait_s=30,
)
