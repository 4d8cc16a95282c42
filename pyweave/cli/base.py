"""What every command shares: the typer apps, errors and exit codes, and the host's context.

Exit codes follow weave's: 0 ok, 1 error, 3 already running (2: usage errors, from click). A command
fails by raising `CliError` (through `fail`); `pyweave.cli.main` turns it into the message and the code.
Nothing here imports gRPC, Docker or pyroute2: `pyweave --help` and `pyweave version` stay fast, and
each command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import time
from typing import NoReturn

import typer

from pyweave.host import HostConfig, HostState

EXIT_ERROR = 1
EXIT_RUNNING = 3

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    help="pyweave: multi-host networking for Docker containers (etcd + kernel VXLAN), as weave does it.",
    context_settings={"help_option_names": ["--help"]},
)
status_app = typer.Typer(help="Show this host, its peers and the store.", invoke_without_command=True)
app.add_typer(status_app, name="status")


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, code)


_TRACE = os.environ.get("PYWEAVE_TRACE") == "1"
_T0 = time.monotonic()


def trace(step: str) -> None:
    """With PYWEAVE_TRACE=1, the time since the command started, per step, on stderr (the bench
    reports where a `pyweave run` spends its time from these)."""
    if _TRACE:
        typer.echo(f"trace {(time.monotonic() - _T0) * 1000:7.1f} ms {step}", err=True)


def say(message: str) -> None:
    """A note for the user, on stderr (stdout carries the command's output)."""
    typer.echo(message, err=True)


def open_store(endpoints: list[str]):
    """The store as the CLI talks to it: etcd's JSON gateway (`store.http`), no gRPC to load. Over
    TLS (https:// endpoints) with this host's certificate files (`pyweave.storetls`)."""
    from store.http import HttpStore

    tls = None
    if any(e.lower().startswith("https://") for e in endpoints):
        from pyweave.storetls import client_tls

        state = HostState()
        tls = client_tls(state, state.load())
    return HttpStore(endpoints, timeout=2.0, tls=tls)


class Context:
    """This host as a command sees it: its state directory, its launch config, the store."""

    def __init__(self) -> None:
        from store.cluster import Cluster

        self.state = HostState()
        config = self.state.load()
        if config is None:
            fail("pyweave is not launched on this host; run `pyweave launch`")
        self.config: HostConfig = config
        endpoints = os.environ.get("PYWEAVE_STORE")
        if endpoints:
            from pyweave.cli.inputs import InputError, store_endpoints

            try:
                self.raw = open_store(store_endpoints(endpoints, what="PYWEAVE_STORE="))
            except InputError as err:
                fail(str(err))
        else:
            self.raw = open_store(config.store)
        self.cluster = Cluster(self.raw)

    @property
    def me(self) -> str:
        return self.config.name

    def require_agent(self) -> int:
        pid = self.state.agent_pid()
        if pid is None:
            fail("pyweave is not running on this host; run `pyweave launch`")
        return pid
