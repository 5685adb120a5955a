"""relay: delivers the rows of an outbox table to Scalepoint's EventApi.

The import package and the command are ``relay``; the distribution (what ``pip install`` and
the wheel are named) is ``scalepoint-outbox-relay``, because ``relay`` on the public package
index is an unrelated project.
"""

DISTRIBUTION = "scalepoint-outbox-relay"
