"""Tests for the docker-run-style argument parser behind ``pyweave run``."""

from __future__ import annotations

from typing import Any

import pytest

from pyweave.dockerargs import DockerArgsError, RunSpec, container_create_kwargs, parse_run_args

NO_ENV: dict[str, str] = {}


def parse(*args: str, environ: dict[str, str] | None = None) -> RunSpec:
    return parse_run_args(list(args), environ=NO_ENV if environ is None else environ)


def test_image_only() -> None:
    assert parse("busybox") == RunSpec(image="busybox", command=())


def test_command_is_kept_untouched() -> None:
    spec = parse("busybox", "ping", "-c", "1", "--name", "x", "-t", "--", "-e")
    assert spec.image == "busybox"
    assert spec.command == ("ping", "-c", "1", "--name", "x", "-t", "--", "-e")
    assert spec.name is None and not spec.tty


@pytest.mark.parametrize("image", ["busybox", "ubuntu:22.04", "localhost:5000/img", "ghcr.io/a/b@sha256:00"])
def test_image_references(image: str) -> None:
    assert parse("-t", image, "sh").image == image


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["-t"], "tty"),
        (["--tty"], "tty"),
        (["--tty=true"], "tty"),
        (["-t=true"], "tty"),
        (["-i"], "stdin_open"),
        (["--interactive"], "stdin_open"),
        (["--interactive=1"], "stdin_open"),
        (["-d"], "detach"),
        (["--detach"], "detach"),
        (["--detach=True"], "detach"),
        (["--rm"], "auto_remove"),
        (["--rm=t"], "auto_remove"),
        (["--privileged"], "privileged"),
        (["--privileged=TRUE"], "privileged"),
    ],
)
def test_boolean_options(args: list[str], field: str) -> None:
    spec = parse(*args, "busybox")
    assert getattr(spec, field) is True
    assert spec.image == "busybox"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["-t", "--tty=false"], "tty"),
        (["-i", "-i=false"], "stdin_open"),
        (["--rm", "--rm=0"], "auto_remove"),
        (["--privileged=F"], "privileged"),
    ],
)
def test_boolean_options_can_be_switched_off(args: list[str], field: str) -> None:
    assert getattr(parse(*args, "busybox"), field) is False


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ("-ti", {"tty": True, "stdin_open": True}),
        ("-it", {"tty": True, "stdin_open": True}),
        ("-dit", {"tty": True, "stdin_open": True, "detach": True}),
        ("-tid", {"tty": True, "stdin_open": True, "detach": True}),
        ("-dt", {"tty": True, "detach": True}),
        ("-it=false", {"tty": False, "stdin_open": True}),
    ],
)
def test_combined_short_flags(cluster: str, expected: dict[str, bool]) -> None:
    spec = parse(cluster, "busybox")
    for field, value in expected.items():
        assert getattr(spec, field) is value


VALUE_OPTIONS: list[tuple[str, str | None, str, str, Any]] = [
    ("--name", None, "web1", "name", "web1"),
    ("--hostname", "-h", "web1.example", "hostname", "web1.example"),
    ("--env", "-e", "FOO=bar", "environment", ("FOO=bar",)),
    ("--volume", "-v", "/srv/data:/data:ro", "volumes", ("/srv/data:/data:ro",)),
    ("--workdir", "-w", "/app", "working_dir", "/app"),
    ("--label", "-l", "role=web", "labels", (("role", "web"),)),
    ("--entrypoint", None, "/bin/sh", "entrypoint", "/bin/sh"),
    ("--cap-add", None, "NET_ADMIN", "cap_add", ("NET_ADMIN",)),
]


def _value_forms() -> list[Any]:
    forms = []
    for long, short, value, field, expected in VALUE_OPTIONS:
        spellings = [[long, value], [f"{long}={value}"]]
        if short:
            spellings += [[short, value], [f"{short}{value}"], [f"{short}={value}"]]
        for args in spellings:
            forms.append(pytest.param(args, field, expected, id=" ".join(args)))
    return forms


@pytest.mark.parametrize(("args", "field", "expected"), _value_forms())
def test_value_options_in_every_form(args: list[str], field: str, expected: Any) -> None:
    spec = parse(*args, "busybox", "true")
    assert getattr(spec, field) == expected
    assert spec.image == "busybox"
    assert spec.command == ("true",)


@pytest.mark.parametrize(
    ("args", "expected_env"),
    [
        (["-te", "FOO=1"], ("FOO=1",)),
        (["-teFOO=1"], ("FOO=1",)),
        (["-ite=FOO=1"], ("FOO=1",)),
        (["-dite", "A=1", "-e", "B=2"], ("A=1", "B=2")),
    ],
)
def test_value_flag_at_end_of_cluster(args: list[str], expected_env: tuple[str, ...]) -> None:
    spec = parse(*args, "busybox")
    assert spec.tty
    assert spec.environment == expected_env


def test_value_of_cluster_flag_is_the_rest_of_the_word() -> None:
    spec = parse("-tei", "busybox")
    assert spec.tty and not spec.stdin_open
    assert spec.environment == ("i",)


def test_repeatable_options_accumulate_in_order() -> None:
    spec = parse(
        "-e", "A=1", "--env=B=2", "-eC=3",
        "-v", "/a:/a", "--volume", "vol:/b:rw",
        "-l", "x=1", "--label", "y",
        "--cap-add", "NET_ADMIN", "--cap-add=SYS_TIME",
        "busybox",
    )
    assert spec.environment == ("A=1", "B=2", "C=3")
    assert spec.volumes == ("/a:/a", "vol:/b:rw")
    assert spec.labels == (("x", "1"), ("y", ""))
    assert spec.cap_add == ("NET_ADMIN", "SYS_TIME")


def test_single_value_options_last_one_wins() -> None:
    spec = parse("--name", "first", "--name", "second", "-w", "/a", "-w", "/b", "busybox")
    assert spec.name == "second"
    assert spec.working_dir == "/b"


def test_env_value_may_contain_equals_and_be_empty() -> None:
    assert parse("-e", "A=b=c", "-e", "EMPTY=", "busybox").environment == ("A=b=c", "EMPTY=")


def test_env_key_alone_is_taken_from_environment_like_docker() -> None:
    spec = parse("-e", "HOME", "-e", "UNSET", "busybox", environ={"HOME": "/root"})
    assert spec.environment == ("HOME=/root", "UNSET")


def test_label_value_may_contain_equals() -> None:
    assert parse("-l", "a=b=c", "busybox").labels == (("a", "b=c"),)


def test_entrypoint_may_be_empty() -> None:
    assert parse("--entrypoint=", "busybox").entrypoint == ""
    assert parse("--entrypoint", "", "busybox").entrypoint == ""


def test_double_dash_ends_options() -> None:
    spec = parse("-t", "--", "busybox", "-i")
    assert spec.tty and not spec.stdin_open
    assert spec.image == "busybox"
    assert spec.command == ("-i",)


def test_option_values_are_not_taken_for_the_image() -> None:
    spec = parse("--name", "busybox", "alpine", "sh")
    assert spec.name == "busybox"
    assert spec.image == "alpine"
    assert spec.command == ("sh",)


def test_boolean_long_option_does_not_take_next_word() -> None:
    spec = parse("--tty", "true")
    assert spec.tty
    assert spec.image == "true"


def test_everything_at_once() -> None:
    spec = parse(
        "-dit", "--name=web", "-h", "web.local", "-e", "A=1", "-v", "/srv:/srv:ro",
        "-w", "/srv", "-l", "tier=front", "--rm", "--entrypoint", "/bin/sh",
        "--privileged", "--cap-add", "NET_ADMIN", "nginx:1.25", "-c", "nginx -g 'daemon off;'",
    )
    assert spec == RunSpec(
        image="nginx:1.25",
        command=("-c", "nginx -g 'daemon off;'"),
        tty=True,
        stdin_open=True,
        detach=True,
        name="web",
        hostname="web.local",
        environment=("A=1",),
        volumes=("/srv:/srv:ro",),
        working_dir="/srv",
        labels=(("tier", "front"),),
        auto_remove=True,
        entrypoint="/bin/sh",
        privileged=True,
        cap_add=("NET_ADMIN",),
    )


def test_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYWEAVE_TEST_VAR", "42")
    assert parse_run_args(["-e", "PYWEAVE_TEST_VAR", "busybox"]).environment == ("PYWEAVE_TEST_VAR=42",)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--net", "host"], "--net"),
        (["--net=host"], "--net"),
        (["--network", "bridge"], "--network"),
        (["-p", "80:80"], "-p"),
        (["-p80:80"], "-p"),
        (["--publish=80:80"], "--publish"),
        (["-P"], "-P"),
        (["--ip", "10.0.0.1"], "--ip"),
        (["--mac-address", "02:42:ac:11:00:02"], "--mac-address"),
        (["--dns", "8.8.8.8"], "--dns"),
        (["--add-host", "a:1.2.3.4"], "--add-host"),
        (["-tp", "80:80"], "-p"),
        (["-itP"], "-P"),
    ],
)
def test_network_options_are_refused_with_a_hint(args: list[str], option: str) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse(*args, "busybox")
    message = str(excinfo.value)
    assert message.startswith(f"option {option} is not supported by pyweave run; supported: -t, -i, -d, --name")
    assert "give addresses before the image" in message


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--help"], "--help"),
        (["-u", "root"], "-u"),
        (["--user=root"], "--user"),
        (["--memory", "1g"], "--memory"),
        (["--env-file", "f"], "--env-file"),
        (["--memory", "1g"], "--memory"),
        (["--TTY"], "--TTY"),
        (["--nam", "web"], "--nam"),
        (["-tx"], "-x"),
    ],
)
def test_other_options_are_refused(args: list[str], option: str) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse(*args, "busybox")
    message = str(excinfo.value)
    assert message.startswith(f"option {option} is not supported by pyweave run;")
    for supported in ("-t", "-i", "-d", "--name", "-h", "-e", "-v", "-w", "-l", "--rm",
                      "--entrypoint", "--privileged", "--cap-add", "--tty", "--interactive",
                      "--detach", "--hostname", "--env", "--volume", "--workdir", "--label"):
        assert f" {supported}," in message or f" {supported} " in message
    assert "give addresses" not in message


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--name"], "--name"),
        (["--hostname"], "--hostname"),
        (["-h"], "-h"),
        (["-e"], "-e"),
        (["--env"], "--env"),
        (["-v"], "-v"),
        (["--volume"], "--volume"),
        (["-w"], "-w"),
        (["--workdir"], "--workdir"),
        (["-l"], "-l"),
        (["--label"], "--label"),
        (["--entrypoint"], "--entrypoint"),
        (["--cap-add"], "--cap-add"),
        (["-te"], "-e"),
    ],
)
def test_value_option_without_value_at_the_end(args: list[str], option: str) -> None:
    with pytest.raises(DockerArgsError, match=f"option {option} needs a value"):
        parse(*args)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--name", "--rm", "busybox"], "--name"),
        (["-e", "-t", "busybox"], "-e"),
        (["-w", "--", "busybox"], "-w"),
    ],
)
def test_value_option_followed_by_an_option(args: list[str], option: str) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse(*args)
    message = str(excinfo.value)
    assert f"option {option} needs a value" in message
    assert "=VALUE" in message


@pytest.mark.parametrize(
    "args",
    [[], ["-t"], ["-it", "--rm"], ["--name", "web"], ["--"], ["-t", "--"], [""]],
)
def test_no_image(args: list[str]) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse(*args)
    assert str(excinfo.value) == "no image given: pyweave run [ADDRESS...] [OPTIONS] IMAGE [COMMAND]"


@pytest.mark.parametrize("args", [["-"], ["--", "-x"], ["--", "--rm"]])
def test_dash_words_are_not_images(args: list[str]) -> None:
    with pytest.raises(DockerArgsError, match="is not an image name"):
        parse(*args)


@pytest.mark.parametrize(("args", "word"), [(["--tty=yes"], "--tty"), (["-t=on"], "-t"), (["--rm="], "--rm")])
def test_boolean_option_with_bad_value(args: list[str], word: str) -> None:
    with pytest.raises(DockerArgsError, match=f"option {word} is a switch"):
        parse(*args, "busybox")


@pytest.mark.parametrize("value", ["=VAL", "=", "MY VAR=1"])
def test_bad_environment(value: str) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse("-e", value, "busybox")
    message = str(excinfo.value)
    assert repr(value) in message
    assert "-e" in message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("/data", "write -v SRC:DST[:MODE]"),
        ("data", "write -v SRC:DST[:MODE]"),
        (":/data", "write -v SRC:DST[:MODE]"),
        ("/srv:", "write -v SRC:DST[:MODE]"),
        ("/a:/b:ro:extra", "write -v SRC:DST[:MODE]"),
        ("srv/data:/data", "must be absolute"),
        ("./data:/data", "must be absolute"),
        ("/srv:data", "container path 'data' must be absolute"),
        ("-vol:/data", "neither an absolute host path nor a volume name"),
        ("/srv:/data:z", "mode 'z' is not supported"),
        ("/srv:/data:ro,z", "mode 'ro,z' is not supported"),
    ],
)
def test_bad_volume(value: str, fragment: str) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse(f"--volume={value}", "busybox")
    message = str(excinfo.value)
    assert repr(value) in message
    assert fragment in message


@pytest.mark.parametrize("value", ["vol:/data", "my_vol.1:/data:rw", "/srv:/data", "/srv:/data:ro"])
def test_good_volume(value: str) -> None:
    assert parse("-v", value, "busybox").volumes == (value,)


@pytest.mark.parametrize("value", ["a", "_web", "-web", ".web", "web/1", "web 1", "wéb", ""])
def test_bad_name(value: str) -> None:
    with pytest.raises(DockerArgsError) as excinfo:
        parse(f"--name={value}", "busybox")
    message = str(excinfo.value)
    assert repr(value) in message
    assert "not a valid container name" in message


@pytest.mark.parametrize("value", ["ab", "web1", "Web_1.a-b", "0x"])
def test_good_name(value: str) -> None:
    assert parse("--name", value, "busybox").name == value


@pytest.mark.parametrize("value", ["", "a b", "x" * 65])
def test_bad_hostname(value: str) -> None:
    with pytest.raises(DockerArgsError, match="--hostname"):
        parse(f"--hostname={value}", "busybox")


@pytest.mark.parametrize("value", ["app", "./app", ""])
def test_relative_workdir_is_refused(value: str) -> None:
    with pytest.raises(DockerArgsError, match="must be an absolute path"):
        parse(f"-w={value}", "busybox")


@pytest.mark.parametrize("value", ["=x", "", " =x", "a b=c"])
def test_bad_label(value: str) -> None:
    with pytest.raises(DockerArgsError, match="--label"):
        parse(f"--label={value}", "busybox")


@pytest.mark.parametrize("value", ["", "NET ADMIN", "1CAP", "NET-ADMIN"])
def test_bad_capability(value: str) -> None:
    with pytest.raises(DockerArgsError, match="is not a capability name"):
        parse(f"--cap-add={value}", "busybox")


def test_error_is_a_value_error() -> None:
    assert issubclass(DockerArgsError, ValueError)


def test_create_kwargs_minimal() -> None:
    assert container_create_kwargs(parse("busybox")) == {"image": "busybox"}


def test_create_kwargs_full() -> None:
    spec = parse(
        "-dit", "--name", "web", "-h", "web.local", "-e", "A=1", "-e", "B=2",
        "-v", "/srv:/srv:ro", "-w", "/srv", "-l", "tier=front", "-l", "solo", "--rm",
        "--entrypoint", "/bin/sh -x", "--privileged", "--cap-add", "NET_ADMIN",
        "nginx", "-c", "echo hi",
    )
    assert container_create_kwargs(spec) == {
        "image": "nginx",
        "command": ["-c", "echo hi"],
        "tty": True,
        "stdin_open": True,
        "name": "web",
        "hostname": "web.local",
        "environment": ["A=1", "B=2"],
        "volumes": ["/srv:/srv:ro"],
        "working_dir": "/srv",
        "labels": {"tier": "front", "solo": ""},
        "auto_remove": True,
        "entrypoint": ["/bin/sh -x"],
        "privileged": True,
        "cap_add": ["NET_ADMIN"],
    }


def test_create_kwargs_never_sets_network_or_detach() -> None:
    kwargs = container_create_kwargs(parse("-d", "--rm", "busybox"))
    for key in ("network_mode", "network", "dns", "detach", "ports"):
        assert key not in kwargs


def test_create_kwargs_empty_entrypoint_clears_the_image_one() -> None:
    assert container_create_kwargs(parse("--entrypoint=", "busybox"))["entrypoint"] == [""]


def test_create_kwargs_make_the_engine_api_body_docker_run_would() -> None:
    from pyweave.docker_runtime import create_body

    kwargs = container_create_kwargs(
        parse("-it", "--name", "web", "-e", "A=1", "-v", "/srv:/data:ro", "-l", "k=v", "--rm",
              "--entrypoint", "/bin/sh -x", "--cap-add", "NET_ADMIN", "busybox", "-c", "echo a b")
    )
    body, name = create_body({**kwargs, "network_mode": "none"})
    assert name == "web"
    assert body["Image"] == "busybox"
    assert body["Cmd"] == ["-c", "echo a b"]
    assert body["Entrypoint"] == ["/bin/sh -x"]
    assert body["Env"] == ["A=1"]
    assert body["Labels"] == {"k": "v"}
    assert body["Tty"] is True and body["OpenStdin"] is True
    assert body["HostConfig"]["Binds"] == ["/srv:/data:ro"]
    assert body["HostConfig"]["AutoRemove"] is True
    assert body["HostConfig"]["CapAdd"] == ["NET_ADMIN"]
    assert body["HostConfig"]["NetworkMode"] == "none"


def test_restart_policy_becomes_the_sdk_restart_policy():
    from pyweave.dockerargs import container_create_kwargs, parse_run_args

    assert container_create_kwargs(parse_run_args(["--restart", "always", "busybox"]))["restart_policy"] == {
        "Name": "always",
        "MaximumRetryCount": 0,
    }
    kw = container_create_kwargs(parse_run_args(["--restart=on-failure:3", "busybox"]))
    assert kw["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert "restart_policy" not in container_create_kwargs(parse_run_args(["--restart", "no", "busybox"]))


def test_bad_restart_policy_is_refused():
    import pytest

    from pyweave.dockerargs import DockerArgsError, parse_run_args

    with pytest.raises(DockerArgsError, match="not a restart policy"):
        parse_run_args(["--restart", "sometimes", "busybox"])


def test_create_kwargs_become_the_engine_api_body():
    from pyweave.docker_runtime import create_body

    spec = parse_run_args(["-t", "-i", "--name", "web", "-v", "/srv:/data:ro", "-e", "A=1",
                           "--cap-add", "NET_ADMIN", "--restart", "on-failure:3", "busybox", "sleep", "9"])
    kwargs = container_create_kwargs(spec)
    kwargs.update(network_mode="none", dns=["169.254.53.53"], dns_search=["weave.local"])
    body, name = create_body(kwargs)
    assert name == "web"
    assert body["Image"] == "busybox" and body["Cmd"] == ["sleep", "9"] and body["Tty"] and body["OpenStdin"]
    assert body["Env"] == ["A=1"] and "Volumes" not in body
    host = body["HostConfig"]
    assert host["Binds"] == ["/srv:/data:ro"] and host["CapAdd"] == ["NET_ADMIN"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert (host["NetworkMode"], host["Dns"], host["DnsSearch"]) == ("none", ["169.254.53.53"], ["weave.local"])
