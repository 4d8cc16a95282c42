"""The `pyweave` command: weave's CLI, writing intents into etcd and waiting for the agent.

The CLI never touches the kernel itself: `launch` asks `dataplane.host` which interface is the
underlay and whether the address range collides with a route, `reset` asks it to remove pyweave's
devices, and everything else is an intent in the store that this host's agent applies. Modules, one
per concern: `lifecycle` (launch, stop, reset, rmpeer), `containers` (run, attach, detach, expose,
hide, ps), `status` (status, peers, ipam, report, version), `names` (dns-*), `waiting` (the waits
for the agent and the peers), `forms` (weave's address spellings), `base` (apps, errors, context).
"""

from __future__ import annotations

import sys

import typer

# Importing a command module registers its commands; `--help` lists them in this order.
# isort: off
from pyweave.cli import lifecycle, status, containers, names  # noqa: F401
# isort: on
from pyweave.cli.base import EXIT_ERROR, CliError, app, say, trace
from store.errors import ClusterError, StoreError

__all__ = ["app", "main"]


def main() -> None:
    # Commands raise CliError; translate it once here into a message and an exit code.
    trace("imported")
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CliError as err:
        say(str(err))
        sys.exit(err.code)
    except (StoreError, ClusterError) as err:
        say(str(err))
        sys.exit(EXIT_ERROR)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except SystemExit:
        raise
    except Exception as err:  # click's usage errors and the like
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise
