"""pyweave's benchmarks: data path, convergence, CLI overhead, agent cost, control-plane scale, one host at scale.

`python -m bench` (as root, Docker running) builds its own lab of host namespaces with
`pyweave_lab.Lab`, measures each section against a reference and a target, and writes
`docs/performance.md` with PNG plots beside it. Figures live here and in that report, never as
assertions in tests: `tests/bench/test_bench_smoke.py` only runs the code paths at a tiny size
(`--quick`) so they cannot rot.

Layout (one module per section, plus the plumbing they share):
    runner          options, the order of sections, signals, the report at the end
    labsession      a launched lab shared by the lab sections (built lazily, always removed)
    handbuilt       the reference overlay: kernel VXLAN set up by hand with `ip`, as a user would
    datapath        sections 1-2: iperf3 throughput and ping latency on four paths
    convergence     section 3: `pyweave run` on A until a container on B gets its first reply
    cli_overhead    section 4: `pyweave run` against `docker run`
    agent_cost      section 5: RSS and CPU of one agent, idle and under endpoint churn
    scale           section 6: hundreds of real agents with recording dataplanes on one etcd
    simhost, scale_worker   the simulated hosts of section 6 and the process that runs them
    ghosts          section 7: one real agent in a lab host of its own, among thousands of ghost hosts
    ghosts_report   section 7's figures, checks, plot and notes
    ghost_writer    the ghost hosts' records, written from inside the lab host (section 7)
    fanout, fanout_watcher  section 7's etcd fan-out: a throwaway etcd, processes of raw watches
    icmp, churn     helpers that run inside lab namespaces (a pinger, an endpoint writer)
    helper          a helper process spoken to in JSON lines
    profiles        py-spy and pyinstrument runs, summarised for the report
    report, plots   markdown and PNG output; stats, machine, procs: small shared pieces

Every process the bench starts is tracked and ended on the way out (also on Ctrl-C and SIGTERM);
every namespace, device and container carries the lab's per-run prefix and is removed with it.
"""
