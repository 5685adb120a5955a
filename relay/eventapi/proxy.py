"""The outbound proxy between the relay and Scalepoint, if there is one.

``RELAY_HTTPS_PROXY`` names it for every request to Scalepoint (the token endpoint and the
EventApi, ``https://`` or ``http://``). Without it the relay reads the environment as curl and
Python's own ``urllib`` do: ``https_proxy``/``HTTPS_PROXY`` for ``https://`` URLs,
``http_proxy``/``HTTP_PROXY`` for ``http://`` ones (the lower-case name first), and
``no_proxy``/``NO_PROXY`` lists the hosts reached directly, whichever proxy is set.

The proxy is an HTTP proxy: plain requests go to it as they are, and ``https://`` requests
through a ``CONNECT`` tunnel, so TLS is still verified end to end against the partner's
certificate. A proxy URL may carry credentials (``http://user:password@proxy:3128``); they go
only into the ``Proxy-Authorization`` header: ``str(proxy)`` and every message show the proxy
as ``http://proxy:3128`` and the variable it came from.

The environment is read once, when a session is made, not per request.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from relay.config import Settings, env_name, proxy_problem
from relay.errors import ConfigurationError

SETTING = env_name("https_proxy")


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to send requests through, and the variable that named it."""

    url: str = field(repr=False)  # credentials included: for the HTTP client only
    variable: str

    def __str__(self) -> str:
        return f"{shown(self.url)} ({self.variable})"


def shown(url: str) -> str:
    """A proxy URL as it may be printed: scheme, host and port, never the credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def proxy_for(url: str, settings: Settings) -> Proxy | None:
    """The proxy for requests to ``url``, or None to connect directly.

    Raises ConfigurationError, naming the variable, for a proxy URL that cannot be used."""
    target = urlsplit(url)
    if _bypassed(target.netloc.rpartition("@")[2]):
        return None
    if settings.https_proxy is not None:
        return Proxy(settings.https_proxy, SETTING)
    found = _from_environment(target.scheme)
    if found is None:
        return None
    variable, value = found
    if "://" not in value:
        value = f"http://{value}"  # as curl reads proxy:3128
    problem = proxy_problem(value)
    if problem is not None:
        raise ConfigurationError(
            f"{variable}: {problem} (or set {SETTING}, which the relay uses instead)"
        )
    return Proxy(value, variable)


def _from_environment(scheme: str) -> tuple[str, str] | None:
    for variable in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        value = os.environ.get(variable, "").strip()
        if value:
            return variable, value
    return None


def _bypassed(host: str) -> bool:
    """NO_PROXY read by Python's urllib: ``*``, host names, domain suffixes (no CIDR)."""
    return bool(urllib.request.proxy_bypass(host))
