"""Bytes to typed messages and back, generated from the spec's schemas.

* :func:`encode` -- a message to one frame;
* :func:`decode_frame` -- exactly one frame to a message;
* :class:`FrameDecoder` -- a byte stream, in any split, to messages;
* :mod:`.messages` -- the typed message classes (``MSG``, ``DELIVER`` ...);
* :mod:`.oracle` -- the same codec run by construct on the schemas, the reference.
"""

from dfachat.codec import messages
from dfachat.codec.frames import (
    GENERATED_SOURCE,
    FrameDecoder,
    UnsupportedEncoding,
    decode_frame,
    encode,
    python_codec,
)
from dfachat.codec.messages import MESSAGE_CLASSES, MESSAGE_CLASSES_BY_CODE, Message, Record

__all__ = [
    "GENERATED_SOURCE",
    "MESSAGE_CLASSES",
    "MESSAGE_CLASSES_BY_CODE",
    "FrameDecoder",
    "Message",
    "Record",
    "UnsupportedEncoding",
    "decode_frame",
    "encode",
    "messages",
    "python_codec",
]
