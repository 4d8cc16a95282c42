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
from pyweave.host import HostStateError
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
    except (StoreError, ClusterError, HostStateError) as err:
        say(str(err))
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except SystemExit:
        raise
    except typer.Abort:
        sys.exit(1)
    except Exception as err:  # click's usage errors and the like
        # Typer 0.2x vendors click (typer._click), so its usage errors are not click's own
        # ClickException: recognise either by what they do, a message to show and an exit code.
        show, exit_code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
