"""A stand-in for Scalepoint: the token endpoint and the EventApi's send and receive
endpoints, with injectable faults. A tool for tests, the demo and benchmarks: nothing in the
product imports it.

Its parts: ``server`` (the application, the send side, the control endpoints), ``command``
(what ``relay emulator`` runs), ``model``
(its configuration, the faults and what it records), ``receive``
(per-route streams and long polls), ``auth`` (client authentication at the token endpoint),
``replies`` (how the partner words its refusals) and ``jsontext`` (JSON read and written as
Scalepoint's Java services would, any number and any depth).
"""

from relay.emulator.command import config_from_options, serve
from relay.emulator.model import EmulatorConfig, Faults, ReceivedEvent, TokenRequest
from relay.emulator.server import Emulator

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "Faults",
    "ReceivedEvent",
    "TokenRequest",
    "config_from_options",
    "serve",
]
