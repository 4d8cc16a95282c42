"""Parse the ``docker run``-style part of ``pyweave run``.

``pyweave run [ADDRESS...] [DOCKER-RUN-OPTIONS] IMAGE [COMMAND [ARG...]]``
lets users start a container the way they would with ``docker run`` and have
pyweave attach it to its networks. pyweave does not wrap the docker CLI: it
creates the container through the Docker SDK, so this module reads the options
the way docker's own flag parser (pflag, non-interspersed) does and turns them
into SDK keyword arguments.

Only options that do not touch networking are accepted. The container's
network belongs to pyweave (it is created with ``network_mode="none"`` and
given the ADDRESS arguments), so options such as ``--net``, ``-p`` or ``--dns``
are refused with a message listing what is supported, instead of being
silently ignored.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DockerArgsError", "RunSpec", "container_create_kwargs", "parse_run_args"]

USAGE = "pyweave run [ADDRESS...] [OPTIONS] IMAGE [COMMAND]"

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_CAPABILITY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_WHITESPACE = " \t\n\r\v\f"
_HOSTNAME_MAX = 64  # Linux HOST_NAME_MAX; longer names make the container fail at start
_VOLUME_MODES = ("ro", "rw")
_TRUE_WORDS = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE_WORDS = frozenset({"0", "f", "F", "FALSE", "false", "False"})

_NETWORK_OPTIONS = frozenset({
    "--net", "--network", "--network-alias", "--net-alias", "--link",
    "-p", "--publish", "-P", "--publish-all", "--expose",
    "--ip", "--ip6", "--link-local-ip", "--mac-address",
    "--dns", "--dns-search", "--dns-option", "--dns-opt", "--add-host",
})


@dataclass(frozen=True)
class RunSpec:
    """What ``pyweave run`` should create, as given on the command line."""

    image: str
    command: tuple[str, ...]
    tty: bool = False
    stdin_open: bool = False
    detach: bool = False
    name: str | None = None
    hostname: str | None = None
    environment: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    working_dir: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    auto_remove: bool = False
    entrypoint: str | None = None
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    restart: str | None = None  # docker's restart policy: no, always, unless-stopped, on-failure[:N]


class DockerArgsError(ValueError):
    """A ``pyweave run`` option that cannot be used; the message is shown to the user."""


@dataclass(frozen=True)
class _Option:
    field: str
    long: str
    short: str | None = None
    takes_value: bool = False
    repeatable: bool = False
    example: str = ""


_OPTIONS: tuple[_Option, ...] = (
    _Option("tty", "--tty", "t"),
    _Option("stdin_open", "--interactive", "i"),
    _Option("detach", "--detach", "d"),
    _Option("name", "--name", takes_value=True, example="web"),
    _Option("hostname", "--hostname", "h", takes_value=True, example="web1"),
    _Option("environment", "--env", "e", takes_value=True, repeatable=True, example="KEY=VALUE"),
    _Option("volumes", "--volume", "v", takes_value=True, repeatable=True, example="/srv/data:/data"),
    _Option("working_dir", "--workdir", "w", takes_value=True, example="/app"),
    _Option("labels", "--label", "l", takes_value=True, repeatable=True, example="role=web"),
    _Option("auto_remove", "--rm"),
    _Option("entrypoint", "--entrypoint", takes_value=True, example="/bin/sh"),
    _Option("privileged", "--privileged"),
    _Option("cap_add", "--cap-add", takes_value=True, repeatable=True, example="NET_ADMIN"),
    _Option("restart", "--restart", takes_value=True, example="unless-stopped"),
)
_BY_LONG: dict[str, _Option] = {opt.long: opt for opt in _OPTIONS}
_BY_SHORT: dict[str, _Option] = {opt.short: opt for opt in _OPTIONS if opt.short}

_SUPPORTED = (
    "supported: "
    + ", ".join(f"-{o.short}" if o.short else o.long for o in _OPTIONS)
    + " (long forms "
    + ", ".join(o.long for o in _OPTIONS if o.short)
    + " also work)"
)


def _unsupported(option: str) -> DockerArgsError:
    message = f"option {option} is not supported by pyweave run; {_SUPPORTED}"
    if option in _NETWORK_OPTIONS:
        message += (
            f". pyweave owns the container's network: give addresses before the image"
            f" ({USAGE}) instead of {option}"
        )
    return DockerArgsError(message)


def _missing_value(opt: _Option, spelled: str) -> DockerArgsError:
    return DockerArgsError(
        f"option {spelled} needs a value (e.g. {spelled} {opt.example});"
        f" write {opt.long}=VALUE if the value starts with '-'"
    )


def _parse_bool(spelled: str, text: str) -> bool:
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise DockerArgsError(
        f"option {spelled} is a switch: got {spelled}={text!r}, use {spelled}, {spelled}=true or {spelled}=false"
    )


def _matching(pattern: re.Pattern[str], message: str) -> Callable[[str], str]:
    """A validator: the value if the whole of it matches pattern, else DockerArgsError(message), in
    which `{value!r}` stands for the value."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise DockerArgsError(message.format(value=value))
        return value

    return check


_check_name = _matching(
    _NAME_RE,
    "--name {value!r} is not a valid container name: use at least two characters from"
    " [a-zA-Z0-9_.-], starting with a letter or digit (e.g. --name web1)",
)


def _check_hostname(value: str) -> str:
    if not value or any(c in _WHITESPACE for c in value):
        raise DockerArgsError(f"--hostname {value!r} is not a valid hostname (e.g. --hostname web1)")
    if len(value) > _HOSTNAME_MAX:
        raise DockerArgsError(
            f"--hostname {value!r} is {len(value)} characters long; Linux allows at most {_HOSTNAME_MAX}"
        )
    return value


def _env_checker(environ: Mapping[str, str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        key, has_value, _ = value.partition("=")
        if not key:
            raise DockerArgsError(f"-e {value!r} has an empty variable name: write -e KEY=VALUE or -e KEY")
        if any(c in _WHITESPACE for c in key):
            raise DockerArgsError(f"-e {value!r}: variable name {key!r} contains whitespace")
        if not has_value and key in environ:
            return f"{key}={environ[key]}"
        return value

    return check


def _check_volume(value: str) -> str:
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise DockerArgsError(
            f"-v {value!r} is not a bind: write -v SRC:DST[:MODE], e.g. -v /srv/data:/data:ro"
        )
    source, target = parts[0], parts[1]
    if "/" in source and not posixpath.isabs(source):
        raise DockerArgsError(
            f"-v {value!r}: host path {source!r} must be absolute (e.g. /srv/data:/data)"
        )
    if "/" not in source and not _VOLUME_NAME_RE.fullmatch(source):
        raise DockerArgsError(
            f"-v {value!r}: {source!r} is neither an absolute host path nor a volume name"
            " ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
        )
    if not posixpath.isabs(target):
        raise DockerArgsError(
            f"-v {value!r}: container path {target!r} must be absolute (e.g. /srv/data:/data)"
        )
    if len(parts) == 3 and parts[2] not in _VOLUME_MODES:
        raise DockerArgsError(
            f"-v {value!r}: mode {parts[2]!r} is not supported by pyweave run; use ro or rw"
        )
    return value


def _check_workdir(value: str) -> str:
    if not posixpath.isabs(value):
        raise DockerArgsError(
            f"--workdir {value!r} must be an absolute path inside the container (e.g. -w /app)"
        )
    return value


def _parse_label(value: str) -> tuple[str, str]:
    key, _, label_value = value.partition("=")
    if not key.strip():
        raise DockerArgsError(f"--label {value!r} has an empty key: write -l KEY=VALUE or -l KEY")
    if any(c in _WHITESPACE for c in key):
        raise DockerArgsError(f"--label {value!r}: key {key!r} contains whitespace")
    return (key, label_value)


_RESTART_RE = re.compile(r"(no|always|unless-stopped|on-failure(:[0-9]+)?)")


_check_restart = _matching(
    _RESTART_RE, "--restart {value!r} is not a restart policy: use no, always, unless-stopped or on-failure[:N]"
)
_check_capability = _matching(_CAPABILITY_RE, "--cap-add {value!r} is not a capability name (e.g. --cap-add NET_ADMIN)")


class _Parser:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.values: dict[str, Any] = {}
        self.validators: dict[str, Callable[[str], Any]] = {
            "name": _check_name,
            "hostname": _check_hostname,
            "environment": _env_checker(environ),
            "volumes": _check_volume,
            "working_dir": _check_workdir,
            "labels": _parse_label,
            "cap_add": _check_capability,
            "restart": _check_restart,
        }

    def set_value(self, opt: _Option, value: str) -> None:
        validate = self.validators.get(opt.field)
        checked = validate(value) if validate else value
        if opt.repeatable:
            self.values[opt.field] = self.values.get(opt.field, ()) + (checked,)
        else:
            self.values[opt.field] = checked

    def long_option(self, word: str, rest: list[str]) -> None:
        spelled, has_value, value = word.partition("=")
        opt = _BY_LONG.get(spelled)
        if opt is None:
            raise _unsupported(spelled)
        if not opt.takes_value:
            self.values[opt.field] = _parse_bool(spelled, value) if has_value else True
        elif has_value:
            self.set_value(opt, value)
        elif rest and not rest[0].startswith("-"):
            self.set_value(opt, rest.pop(0))
        else:
            raise _missing_value(opt, spelled)

    def short_cluster(self, word: str, rest: list[str]) -> None:
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            spelled = f"-{letter}"
            opt = _BY_SHORT.get(letter)
            if opt is None:
                raise _unsupported(spelled)
            if letters.startswith("="):
                value, letters = letters[1:], ""
                if opt.takes_value:
                    self.set_value(opt, value)
                else:
                    self.values[opt.field] = _parse_bool(spelled, value)
            elif not opt.takes_value:
                self.values[opt.field] = True
            elif letters:
                self.set_value(opt, letters)
                letters = ""
            elif rest and not rest[0].startswith("-"):
                self.set_value(opt, rest.pop(0))
            else:
                raise _missing_value(opt, spelled)


def parse_run_args(args: Sequence[str], environ: Mapping[str, str] | None = None) -> RunSpec:
    """Read ``[OPTIONS] IMAGE [COMMAND [ARG...]]`` (the addresses already taken off).

    Options end at the first word that is not an option (the image) or at
    ``--``; everything after the image is the command, untouched. As with
    ``docker run``, ``-e KEY`` without ``=`` takes KEY's value from *environ*
    (default: this process's environment) and is passed as bare ``KEY`` if
    it is not set there.
    """
    parser = _Parser(os.environ if environ is None else environ)
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        word = rest.pop(0)
        if word == "--":
            break
        if word.startswith("--"):
            parser.long_option(word, rest)
        else:
            parser.short_cluster(word, rest)
    if not rest or not rest[0]:
        raise DockerArgsError(f"no image given: {USAGE}")
    if rest[0].startswith("-"):
        raise DockerArgsError(f"{rest[0]!r} is not an image name: {USAGE}")
    image, *command = rest
    return RunSpec(image=image, command=tuple(command), **parser.values)


def container_create_kwargs(spec: RunSpec) -> dict[str, Any]:
    """Keyword arguments for the Docker SDK's ``client.containers.create(**kwargs)``.

    Unset options are left out so the SDK's defaults apply; network settings
    are never included, the caller adds them along with its own labels. The
    entrypoint is passed as a one-element list, as docker does, so the SDK
    does not shell-split it; ``--entrypoint ""`` thus clears the image's one.
    """
    kwargs: dict[str, Any] = {"image": spec.image}
    optional: dict[str, Any] = {
        "command": list(spec.command),
        "tty": spec.tty,
        "stdin_open": spec.stdin_open,
        "name": spec.name,
        "hostname": spec.hostname,
        "environment": list(spec.environment),
        "volumes": list(spec.volumes),
        "working_dir": spec.working_dir,
        "labels": dict(spec.labels),
        "privileged": spec.privileged,
        "cap_add": list(spec.cap_add),
        "auto_remove": spec.auto_remove,
    }
    kwargs.update({key: value for key, value in optional.items() if value})
    if spec.entrypoint is not None:
        kwargs["entrypoint"] = [spec.entrypoint]
    if spec.restart and spec.restart != "no":
        name, _, count = spec.restart.partition(":")
        kwargs["restart_policy"] = {"Name": name, "MaximumRetryCount": int(count or 0)}
    return kwargs
