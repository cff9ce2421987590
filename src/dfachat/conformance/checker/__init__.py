"""The model checker (``dfachat check``): one server core and N clients, every interleaving.

It describes neither the protocol nor the server again: clients run the
:mod:`dfachat.fsm` engines generated from :mod:`dfachat.spec`, and the server
is :class:`dfachat.server.core.ServerCore`, the very object the reference
server runs. What this package adds is only the environment (docs/CHECKING.md):

* :mod:`.model` -- the world: N clients, bounded FIFO channels, budgets for
  drops, timeouts and restarts, and the values clients choose from
  (:class:`Domain`, :class:`ModelConfig`); the server's steps feed the core;
* :mod:`.properties` -- the properties, one named function each, citing rules;
* :mod:`.explore` -- breadth-first, depth-first and random exploration with
  fingerprints, symmetry and partial-order reduction (:func:`check`);
* :mod:`.parallel` -- breadth-first search with several processes;
* :mod:`.report` -- summaries, message sequence charts (ASCII, Mermaid), JSON traces;
* :mod:`.command` -- ``dfachat check``.
"""


from dfachat.conformance.checker.explore import (
    Checker,
    CheckResult,
    Violation,
    check,
    coverage_report,
)
from dfachat.conformance.checker.model import (
    DOMAIN,
    ClientSpec,
    Domain,
    Model,
    ModelConfig,
    Step,
    View,
)
from dfachat.conformance.checker.properties import (
    PROPERTIES,
    Property,
    always,
    eventually,
    sometimes,
)
from dfachat.conformance.checker.report import (
    message_from_json,
    message_json,
    msc_mermaid,
    msc_text,
    summary_json,
    summary_text,
    trace_json,
)

__all__ = [
    "DOMAIN",
    "PROPERTIES",
    "CheckResult",
    "Checker",
    "ClientSpec",
    "Domain",
    "Model",
    "ModelConfig",
    "Property",
    "Step",
    "View",
    "Violation",
    "always",
    "check",
    "coverage_report",
    "eventually",
    "message_from_json",
    "message_json",
    "msc_mermaid",
    "msc_text",
    "sometimes",
    "summary_json",
    "summary_text",
    "trace_json",
]
