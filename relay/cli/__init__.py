"""The ``relay`` command: ``relay.cli.main`` holds the group and its error boundary; each
module adds its commands (``service``, ``operators``, ``inbox``, ``tools``)."""

from relay.cli import inbox, operators, service, tools
from relay.cli.main import error_boundary, main, summarise

summarise()
del inbox, operators, service, tools

__all__ = ["error_boundary", "main"]
