"""Conformance: two tools, each in its own room, that judge implementations against the spec.

* :mod:`.checker` -- the model checker (``dfachat check``): explores the
  reference server core with N model clients and proves properties that cite
  the spec's rules, or prints the shortest counterexample;
* :mod:`.fuzz` -- the conformance fuzzer (``dfachat fuzz``): drives any
  implementation over TCP with spec-generated traffic and judges what it sends
  with the engines and the same server core as its oracle.

Shared by both: :mod:`.strategies` (values drawn from the spec's schemas) and
:mod:`.scenarios` (worked conversations, also drawn as sequence diagrams).
Neither tool describes the protocol again: both derive it from
:mod:`dfachat.spec` and run the :mod:`dfachat.fsm` engines.
"""
