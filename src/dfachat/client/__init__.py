"""The reference clients (library, ``dfachat client``, ``dfachat gui``) around
:class:`dfachat.fsm.ClientSession`.

Not built yet: this package is where the clients land.
"""
