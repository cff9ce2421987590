"""The conformance fuzzer (``dfachat fuzz``): Hypothesis against a live implementation over real sockets.

* :mod:`.verdicts` -- the check catalogue (one check per spec rule and role,
  h2spec's way), :class:`Verdicts`, :class:`RunResult`, sequence charts;
* :mod:`.report` -- terminal summary, JSON, JUnit XML, one self-contained HTML page;
* :mod:`.wire` -- the target's address, TLS, ``--target-cmd``;
* :mod:`.oracle` -- server mode's driver: the engines and a reference model judge each frame;
* :mod:`.values` -- generated values and malformed frames, from the spec and the error classes;
* :mod:`.server_mode` -- the ``RuleBasedStateMachine`` (swarm, coverage steering, rounds);
* :mod:`.client_plan`, :mod:`.client_play`, :mod:`.client_mode` -- client mode: what
  one session does (drawn from the spec), playing the server for it and judging
  the client, and the run around it (docs/CLIENT-FUZZING.md);
* :mod:`.cases` -- case files and replay (checker traces too);
* :mod:`.command` -- the ``dfachat fuzz`` handlers.
"""

from dfachat.conformance.fuzz.verdicts import (
    CHECKS,
    Chart,
    ChartEvent,
    Check,
    CheckStatus,
    Failure,
    Level,
    RunResult,
    Verdicts,
    check_for,
    checks_for,
    define_check,
)

__all__ = [
    "CHECKS",
    "Chart",
    "ChartEvent",
    "Check",
    "CheckStatus",
    "Failure",
    "Level",
    "RunResult",
    "Verdicts",
    "check_for",
    "checks_for",
    "define_check",
]
