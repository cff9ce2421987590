"""The model checker (``dfachat check``) and the conformance fuzzer (``dfachat fuzz``).

Not built yet. Both will derive the protocol from :mod:`dfachat.spec` and run
the :mod:`dfachat.fsm` engine as their model; neither describes it again.
"""
