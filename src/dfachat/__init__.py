"""dfachat: a chat protocol defined once as a formal spec.

Everything else -- codec, sans-IO engine, server, clients, model checker,
conformance fuzzer, diagrams -- is generated from :mod:`dfachat.spec`.
"""

__version__ = "0.1.0"

from dfachat.errors import DfachatError  # noqa: E402

__all__ = ["DfachatError", "__version__"]
