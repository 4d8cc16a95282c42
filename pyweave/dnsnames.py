"""The names weaveDNS gives containers, and where it answers: pure rules shared by the planner (which
publishes the names), the CLI (`run` points containers at the service address) and the server
(`pyweave.dns`). No DNS library is needed to know them."""

from __future__ import annotations

SERVICE_ADDRESS = "169.254.53.53"
DEFAULT_DOMAIN = "weave.local."


def normalise_domain(domain: str) -> str:
    return domain.strip().lower().rstrip(".") + "."


def names_of(container_name: str, hostname: str, domain: str) -> list[str]:
    """The names a container gets: its Docker name in the domain, and its hostname if inside it."""
    out = []
    if container_name:
        out.append(f"{container_name.lower()}.{domain}")
    host = hostname.lower().rstrip(".") + "."
    if hostname and host.endswith("." + domain) and host not in out:
        out.append(host)
    return out
