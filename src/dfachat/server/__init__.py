"""The reference server (``dfachat server``): asyncio I/O around :class:`dfachat.fsm.ServerSession`.

Not built yet: this package is where the server lands (it is the only code,
with :mod:`dfachat.client`, that touches sockets).
"""
