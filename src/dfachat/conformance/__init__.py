"""The model checker (``dfachat check``) and, later, the conformance fuzzer (``dfachat fuzz``).

Both derive the protocol from :mod:`dfachat.spec` and run the :mod:`dfachat.fsm`
engine as their model; neither describes it again.

The checker (docs/CHECKING.md):

* :mod:`.model` -- one server and N clients running the real engines, joined by
  bounded FIFO channels; the values clients choose from (:class:`Domain`) and
  the bounds (:class:`ModelConfig`);
* :mod:`.properties` -- the properties, one named function each, citing rules;
* :mod:`.explore` -- breadth-first, depth-first and random exploration with
  fingerprints, symmetry and partial-order reduction (:func:`check`);
* :mod:`.parallel` -- breadth-first search with several processes;
* :mod:`.report` -- summaries, message sequence charts (ASCII, Mermaid), JSON traces.
"""

from dfachat.conformance.explore import Checker, CheckResult, Violation, check, coverage_report
from dfachat.conformance.model import DOMAIN, ClientSpec, Domain, Model, ModelConfig, Step, View
from dfachat.conformance.properties import PROPERTIES, Property, always, eventually, sometimes
from dfachat.conformance.report import (
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
