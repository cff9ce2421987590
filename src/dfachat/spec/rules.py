"""The numbered rules of every protocol version.

Every check, error and document cites these ids. A rule's text is normative:
the generated protocol document prints it verbatim, the errors carry its id,
and the state tables point at it. A rule added by a later version says so
(``since``); the document marks it. Limits are written as ``{name}``
placeholders filled from :data:`dfachat.spec.limits.LIMITS`, so a number is
stated once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RULES", "SECTIONS", "Rule", "Section", "rule_text"]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    level: str  # MUST, SHOULD or MAY: how the conformance fuzzer grades a deviation
    text: str
    since: int = 1  # the first protocol version the rule belongs to


@dataclass(frozen=True, slots=True)
class Section:
    number: int
    title: str
    intro: str
    rules: tuple[Rule, ...]


def _section(number: int, title: str, intro: str, *rules: tuple[str, str] | tuple[str, str, int]) -> Section:
    """A section; a rule is (level, text) or (level, text, the version it appeared in)."""
    return Section(
        number,
        title,
        intro,
        tuple(Rule(f"R{number}.{i}", *rule) for i, rule in enumerate(rules, 1)),
    )


SECTIONS: tuple[Section, ...] = (
    _section(
        1,
        "Transport and conventions",
        "The key words MUST, MUST NOT, SHOULD and MAY are used as in RFC 2119. "
        "A MUST rule broken is a conformance failure; a SHOULD rule broken is reported as non-strict.",
        ("MUST", "dfachat runs over one reliable, ordered byte stream per session (TCP, optionally TLS). "
                 "The default port is {default_port}."),
        ("MUST", "Every integer on the wire is unsigned and big-endian (network byte order)."),
        ("MUST", "A session is one connection, from accept to close. A client opens it; the server "
                 "never opens connections."),
        ("MAY", "A server at capacity MAY answer a new connection with a fatal ERROR SERVER_FULL as "
                "its first frame and close it."),
        ("MAY", "A server MAY bound the connections open at once from one peer address "
                "({max_per_address} by default); it answers a connection beyond that bound with a fatal "
                "ERROR SERVER_FULL citing R1.5 as its first frame and closes it. The connections "
                "already open from that address are not affected."),
    ),
    _section(
        2,
        "Framing",
        "Every message travels as one frame: a fixed header, the payload, and a checksum.",
        ("MUST", "Every frame starts with the two magic bytes 0x44 0x46 (ASCII \"DF\"). Other bytes "
                 "there are a framing error (BAD_MAGIC)."),
        ("MUST", "Header byte 2 is the protocol version of the frame: 1 for HELLO and for an ERROR "
                 "answering it, and the version HELLO_OK chose for HELLO_OK and every later frame of the "
                 "session, in both directions (R5.2). Any other value is a framing error "
                 "(UNSUPPORTED_VERSION)."),
        ("MUST", "Header byte 3 is the message type. A type this version does not define, in an "
                 "otherwise intact frame, is a payload error (UNKNOWN_TYPE)."),
        ("MUST", "Header bytes 4-7 are the payload length. A whole frame (header, payload and "
                 "checksum) MUST NOT exceed {max_frame} bytes; a receiver rejects a larger length as "
                 "soon as the header has arrived, without waiting for the payload (FRAME_TOO_LARGE)."),
        ("MUST", "The last 4 bytes are the CRC-32 (IEEE 802.3, the polynomial of zlib and Ethernet) of "
                 "the header and the payload. A mismatch is a framing error (CHECKSUM_MISMATCH)."),
        ("MUST", "A payload holds exactly the fields its layout declares. A field, length or count that "
                 "needs more bytes than the payload has left is a payload error (MALFORMED_PAYLOAD)."),
        ("MUST", "Bytes left over after a payload's last field are a payload error (MALFORMED_PAYLOAD)."),
        ("MUST", "After a framing error (R2.1, R2.2, R2.4, R2.5) the next frame boundary cannot be "
                 "trusted: the receiver MUST NOT resynchronise; it sends a fatal ERROR where it may "
                 "send and closes. After a payload error (R2.3, R2.6, R2.7, section 3, section 4) the "
                 "frame was delimited and checksummed, so the receiver discards that frame whole and "
                 "goes on with the next one, where the session survives the error (R6.7, R11.3)."),
        ("MUST", "A connection that ends in the middle of a frame loses that partial frame; it is "
                 "reported locally as TRUNCATED_FRAME (no reply is possible)."),
    ),
    _section(
        3,
        "Text encodings",
        "The seed protocol let each user pick a text encoding; dfachat keeps that promise and "
        "makes every conversion visible.",
        ("MUST", "A client names one encoding from the table of encodings in HELLO, spelled exactly "
                 "as listed. The server supports all of them."),
        ("MUST", "TEXT fields (chat text, passwords) travel in the session's negotiated encoding, in "
                 "both directions, as a 16-bit byte length followed by the encoded bytes. The server "
                 "decodes what a sender sends and re-encodes it for each recipient's session."),
        ("MUST", "utf-16 and utf-32 mean big-endian without a byte order mark. A sender MUST NOT "
                 "write a BOM and a receiver MUST NOT strip one: U+FEFF at the start of a text is "
                 "content (ZERO WIDTH NO-BREAK SPACE) and is delivered as such. No encoding uses a BOM."),
        ("MUST", "A TEXT field MUST be valid in its encoding: malformed or overlong UTF-8, surrogate "
                 "code points in any UTF, an odd byte count in utf-16 or one not a multiple of 4 in "
                 "utf-32, values above U+10FFFF, bytes 0x80 and above in ascii, and the five bytes "
                 "cp1252 leaves undefined (0x81 0x8D 0x8F 0x90 0x9D) are INVALID_TEXT."),
        ("MUST", "When a recipient's encoding cannot represent a character of a text, the server "
                 "replaces each such character with '?' (U+003F), sets the LOSSY flag of that "
                 "recipient's DELIVER and reports LOSSY for that recipient in the sender's MSG_ACK. "
                 "Text is never truncated, and nothing is dropped or changed without one of these marks."),
        ("MUST", "For a message stored for an offline recipient the recipient's encoding is not yet "
                 "known: MSG_ACK reports QUEUED, and the LOSSY flag, if any, reaches the recipient "
                 "on the DELIVER at login."),
        ("MUST", "NAME, IDENT and REASON fields are ASCII whatever the session's encoding, so they "
                 "can be read before the encoding is negotiated."),
    ),
    _section(
        4,
        "Fields and limits",
        "Every field has a type with bounds. HELLO_OK announces the negotiable limits (max_frame, "
        "max_text, max_recipients, idle_timeout_s, login_attempts); a server MAY announce lower "
        "values for those. The other bounds are fixed by this version.",
        ("MUST", "A user name is 1 to {max_name} ASCII characters: a letter first, then letters, "
                 "digits, '_', '.' or '-'. Names are matched case-insensitively; the server reports "
                 "each account's registered spelling."),
        ("MUST", "A chat text is 0 to {max_text} code points once decoded."),
        ("MUST", "A MSG names at most {max_recipients} recipients, no name twice (case-insensitively)."),
        ("MUST", "A password is 1 to {max_password} code points once decoded."),
        ("MUST", "HELLO lists 1 to {max_versions} distinct protocol versions."),
        ("MUST", "An enumerated field (outcome, reason, error code) holds one of the values its "
                 "table lists for the frame's protocol version: a value a later version added is "
                 "not one in a frame of an earlier version."),
        ("MUST", "Flag bits a layout marks reserved are zero; a flag a later version added is "
                 "reserved in a frame of an earlier version."),
        ("MUST", "A software name (client or server) is 1 to {max_software} printable ASCII "
                 "characters (0x20-0x7E); an encoding name is 1 to {max_encoding_name} characters of a-z, 0-9 "
                 "and '-'."),
        ("MUST", "An AUTH_OK or USERS frame lists at most {max_names_per_frame} names; longer lists "
                 "continue in further USERS frames (R8.3)."),
        ("MUST", "A field that breaks R4.1 to R4.9 makes its frame a payload error (FIELD_INVALID). "
                 "A sender MUST NOT send such a field."),
        ("MUST", "A client MUST respect the limits the server announces in HELLO_OK."),
        ("MUST", "An ERROR's reason text is 0 to {max_reason} printable ASCII characters."),
    ),
    _section(
        5,
        "Handshake",
        "The handshake fixes the protocol version and the session's text encoding.",
        ("MUST", "A client's first frame is HELLO: the versions it supports, its encoding and its "
                 "software name."),
        ("MUST", "The server chooses the highest version both sides support. When there is none it "
                 "answers a fatal ERROR UNSUPPORTED_VERSION. HELLO, and an ERROR answering it, travel "
                 "in frames of version 1, which every later version keeps decodable; HELLO_OK travels "
                 "in a frame of the version it chose, and a client decodes it by that version."),
        ("MUST", "When the server does not support the encoding it answers a fatal ERROR "
                 "UNSUPPORTED_ENCODING."),
        ("MUST", "Otherwise the server answers HELLO_OK with the chosen version, the encoding, its "
                 "software name and the limits of section 4 and section 9 (and, in version 2, the "
                 "windows of R7.12 and R7.16); from then on both sides use that encoding for TEXT "
                 "fields."),
        ("MUST", "A client sends nothing after HELLO until HELLO_OK arrives, and checks that HELLO_OK "
                 "names a version it offered and the encoding it asked for; if not, it closes (it MAY "
                 "first send a fatal ERROR UNEXPECTED_MESSAGE citing R5.5)."),
    ),
    _section(
        6,
        "Authentication",
        "As in the seed: a user name, then a password.",
        ("MUST", "After HELLO_OK the client sends USER, then PASS, without waiting between them."),
        ("MUST", "The server does not answer USER, and answers an unknown user exactly as a wrong "
                 "password (AUTH_FAILED), so that accounts cannot be enumerated."),
        ("MUST", "AUTH_FAILED carries the attempts left in this session; after {login_attempts} "
                 "failures it carries 0 and the server closes the connection after it. After a "
                 "failure with attempts left, the client starts again with USER."),
        ("MUST", "Failed logins cost time: the server delays each AUTH_FAILED by "
                 "{backoff_base_ms} ms doubled for every earlier failure within {backoff_window_s} s "
                 "for the same account or from the same peer address, up to {backoff_max_ms} ms. "
                 "The record of failures expires {backoff_window_s} s after the last one, so a guesser "
                 "is slowed to a few tries a minute but can never lock a real user out for good."),
        ("MUST", "On success the server answers AUTH_OK with the account's registered name and the "
                 "users online, the new user included; when the list does not fit (R4.9) AUTH_OK has "
                 "the MORE flag and USERS frames carry the rest, the last without MORE."),
        ("MUST", "When an account logs in while it already has a session, the new session wins: the "
                 "old one gets a fatal ERROR SESSION_REPLACED and is closed, the others see LEFT "
                 "(reason REPLACED) for it and then JOINED for the new one."),
        ("MUST", "Until AUTH_OK every protocol error is fatal: the server answers any malformed or "
                 "unexpected frame with a fatal ERROR and closes."),
        ("MUST", "A session that is not yet authenticated and has sent no frame for {idle_timeout_s} s "
                 "gets a fatal ERROR IDLE_TIMEOUT."),
    ),
    _section(
        7,
        "Messages",
        "Chat messages go from a client to the server and from the server to their recipients.",
        ("MUST", "MSG carries a message id the client chooses, the recipients (none means everyone "
                 "online but the sender) and the text."),
        ("MUST", "A client has at most one MSG or LIST outstanding: after MSG it sends no MSG or LIST "
                 "until MSG_ACK, or an ERROR regarding MSG, arrives (version 2 allows a window of "
                 "MSGs, R7.16)."),
        ("MUST", "The server answers every MSG it accepts with exactly one MSG_ACK carrying the "
                 "client's message id and a server message id that is strictly greater than every "
                 "one it issued before, restarts included."),
        ("MUST", "For a directed MSG, MSG_ACK has one result per named recipient, in the MSG's order: "
                 "DELIVERED, LOSSY (delivered with replacements, R3.5), QUEUED (registered but "
                 "offline: stored, R7.7), UNKNOWN_USER (no such account: dropped) or, in version 2, "
                 "OVER_QUOTA (the recipient's inbox is full: dropped, R7.14). For a broadcast "
                 "the results are empty. In both cases MSG_ACK counts the recipients that received it "
                 "now (delivered, including lossy ones) and how many of those copies were lossy."),
        ("MUST", "DELIVER carries the server message id, the server's time in milliseconds since "
                 "1970-01-01 UTC, the sender's registered name, the flags DIRECTED (named recipient, "
                 "not a broadcast), LOSSY (R3.5), STORED (held for an offline user, R7.7) and, in "
                 "version 2, REDELIVERED (meant for an earlier session that did not acknowledge it, "
                 "R7.13), and the text."),
        ("MUST", "A recipient receives each server message id at most once, and the messages of one "
                 "sender in the order the server acknowledged them."),
        ("MUST", "A directed MSG to a registered user who is offline is stored durably before its "
                 "MSG_ACK (QUEUED) is sent; the server delivers stored messages, oldest first and "
                 "flagged STORED, right after that user's next successful login. In version 1 it "
                 "forgets them once they are written to the connection; in version 2 only once they "
                 "are acknowledged (R7.10). Broadcasts are never stored for an offline user."),
        ("MUST", "A sender MAY name itself as a recipient and then receives the message; a broadcast "
                 "never reaches its sender."),
        ("MUST", "A MSG the server rejects (a payload error) is answered with a non-fatal ERROR "
                 "regarding MSG instead of MSG_ACK; the client may then send again."),
        ("MUST", "Every DELIVER, live or stored, stays in the recipient's durable inbox until the "
                 "recipient acknowledges it, across dropped connections and server restarts. A "
                 "recipient's DELIVERs carry strictly increasing server message ids, from one session "
                 "to the next too. DELIVER_ACK carries the server message id of a DELIVER received "
                 "in this session and not yet acknowledged, and acknowledges it and every earlier "
                 "DELIVER of the session; an id that names no such DELIVER is UNEXPECTED_MESSAGE. "
                 "A message reported DELIVERED, LOSSY or QUEUED is in every such recipient's inbox, "
                 "durably, before its MSG_ACK is sent.", 2),
        ("MUST", "A client acknowledges a DELIVER only once its application has taken that message "
                 "and every earlier one. It remembers the highest server message id its application "
                 "has taken, as durably as the application keeps what it was given, and drops a "
                 "DELIVER at or below that id, or one whose id it already holds waiting to be taken, "
                 "without handing it on (acknowledging it all the same). "
                 "It SHOULD acknowledge within a second of its application taking a message, and at "
                 "least every {deliver_window} messages, or the window (R7.12) stalls.", 2),
        ("MUST", "At most {deliver_window} DELIVERs (the deliver_window the server announces in "
                 "HELLO_OK) are unacknowledged in a session at any time; the server keeps the rest in "
                 "the inbox and sends them, oldest first, as acknowledgements arrive. A DELIVER "
                 "beyond the window breaks this rule at the client. A window's worth of DELIVERs "
                 "does not count against the bound of R9.3.", 2),
        ("MUST", "After each successful login the server sends the account's inbox from its oldest "
                 "message: flagged STORED where it was kept while the user was offline, and "
                 "REDELIVERED where it was meant for an earlier session of the user (which may have "
                 "received it) that did not acknowledge it. New messages for the user join the inbox "
                 "behind them, so they too arrive in server message id order.", 2),
        ("MUST", "The server bounds each recipient's inbox to {max_inbox_messages} messages and "
                 "{max_inbox_bytes} bytes of text (server options), whatever the sender's version. A "
                 "message that does not fit is neither stored nor delivered to that recipient and is "
                 "not counted as delivered: its MSG_ACK result is OVER_QUOTA, or UNKNOWN_USER "
                 "('dropped') to a version-1 sender, which has no OVER_QUOTA; a broadcast skips that "
                 "recipient."),
        ("MUST", "When the server cannot store a message (a full disk, a failing database) it "
                 "delivers that MSG to nobody and says so: a version-2 sender gets a non-fatal ERROR "
                 "STORE_FAILED regarding MSG instead of MSG_ACK, a version-1 sender a fatal ERROR "
                 "INTERNAL_ERROR. Either way no recipient received it, so sending it again "
                 "duplicates nothing."),
        ("MUST", "A client may have up to {msg_window} MSGs outstanding at once (the msg_window the "
                 "server announces in HELLO_OK) instead of one (R7.2). The server answers them in "
                 "the order it received them, each with exactly one MSG_ACK or non-fatal ERROR "
                 "regarding MSG (STORE_FAILED, R7.15), so a client matches answers to its MSGs by "
                 "order. While MSGs are outstanding the server owes replies, so a frame that breaks "
                 "a rule then, a MSG beyond the window included, gets a fatal ERROR (R11.3).", 2),
    ),
    _section(
        8,
        "Presence",
        "The seed announced every new arrival to everyone; dfachat also announces departures.",
        ("MUST", "When a session authenticates, every other authenticated session receives JOINED "
                 "with its name."),
        ("MUST", "When an authenticated session ends, however it ends, every other authenticated "
                 "session receives exactly one LEFT with its name and the reason: QUIT (it sent QUIT), "
                 "DROPPED (its transport closed without QUIT), TIMEOUT (IDLE_TIMEOUT), REPLACED (R6.6) "
                 "or ERROR (closed after any other fatal ERROR). A server shutting down sends BYE "
                 "instead (R10.3) and no LEFT."),
        ("MUST", "LIST is answered with USERS frames listing every user online, the asker included; "
                 "every frame but the last has the MORE flag. A non-fatal ERROR regarding LIST "
                 "answers a LIST the server rejects."),
        ("MUST", "JOINED, LEFT, DELIVER, PING and non-fatal ERROR frames may reach a client in any "
                 "state after AUTH_OK, including while it waits for MSG_ACK, USERS or BYE."),
    ),
    _section(
        9,
        "Keep-alive, time-outs and resources",
        "A server must survive peers that stall, vanish or flood.",
        ("MUST", "After AUTH_OK either side MAY send PING; the other answers PONG with the same nonce "
                 "(a client does not answer once it has sent QUIT). A client sends PING only when "
                 "it is not waiting for a reply."),
        ("MUST", "An authenticated session that has sent nothing for {idle_timeout_s} s gets a fatal "
                 "ERROR IDLE_TIMEOUT; the server SHOULD PING it after half that time. Every frame "
                 "counts as activity."),
        ("MUST", "The server bounds the bytes queued for each session ({max_output_buffer} by "
                 "default, not counting the stored messages it sends at login, R7.7, or a version-2 "
                 "session's window of DELIVERs, R7.12); when the "
                 "queue overflows, the server sends a fatal ERROR SLOW_CONSUMER (which a peer that "
                 "does not read may never see) and drops the connection and its queue."),
        ("MAY", "A server MAY bound the bytes a session sends per second; a session over the bound "
                "gets a fatal ERROR RATE_LIMITED and is closed. The bound is a token bucket per "
                "connection over the bytes received: it starts full with {max_burst_bytes} bytes, "
                "refills at {max_bytes_per_s} bytes per second up to that size, and every byte "
                "received takes one token; bytes that find the bucket empty break the bound. The "
                "bucket holds at least one largest frame ({max_frame} bytes)."),
        ("MAY", "A server MAY bound the login attempts (PASS frames) from one peer address to "
                "{max_logins_per_minute} in any 60 s, counted over all its connections, on top of "
                "the back-off of R6.4. A PASS beyond the bound is not checked: the server answers "
                "it with a fatal ERROR RATE_LIMITED citing R9.5 (not AUTH_FAILED) and closes."),
    ),
    _section(
        10,
        "Closing",
        "Either side can end a session; the protocol makes every ending explicit.",
        ("MUST", "A client MAY send QUIT when it is not waiting for a reply; after QUIT it sends "
                 "nothing more."),
        ("MUST", "The server answers QUIT with BYE (reason QUIT) and closes; frames that arrive after "
                 "QUIT are discarded."),
        ("MUST", "A server shutting down sends BYE (reason SHUTDOWN) to every session, in any state, "
                 "and closes. It processed nothing the session sent after that BYE; a MSG without "
                 "MSG_ACK was not delivered."),
        ("MUST", "A fatal ERROR is the last frame its sender sends; the sender then closes the "
                 "connection."),
        ("MAY", "Either side MAY close the connection without QUIT or BYE; the server treats it as a "
                "dropped session (LEFT reason DROPPED)."),
    ),
    _section(
        11,
        "Errors",
        "ERROR reports a broken rule to the peer.",
        ("MUST", "ERROR carries the error code, the FATAL flag, the type code of the frame it is about "
                 "(the header's type byte whenever the header was read, UNKNOWN_TYPE included; 0 when "
                 "no header was read or the error concerns no frame), the id of the rule that was "
                 "broken and a short reason text."),
        ("MUST", "A non-fatal ERROR changes no state, except that one regarding the MSG or LIST a "
                 "client waits on ends that wait (R7.9, R8.3)."),
        ("MUST", "After AUTH_OK, while it owes the client no reply (state ESTABLISHED), the server "
                 "survives payload errors and unexpected messages: it answers a non-fatal ERROR and "
                 "goes on. A frame that breaks a rule while the server owes a reply (the client broke "
                 "R7.2) gets a fatal ERROR. A client never survives one: on a malformed or unexpected "
                 "frame it MAY send a fatal ERROR and MUST close."),
        ("MUST", "A server that cannot go on for a reason of its own sends a fatal ERROR "
                 "INTERNAL_ERROR and closes."),
    ),
    _section(
        12,
        "State machines",
        "Each role follows its state table; the tables below are generated from the same "
        "declaration the reference engine runs.",
        ("MUST", "A message received in a state whose table has no row for it is UNEXPECTED_MESSAGE "
                 "(fatal before AUTH_OK, R6.7; non-fatal after, at the server, R11.3)."),
        ("MUST", "A role MUST NOT send a message in a state whose table has no row for it."),
        ("MUST", "A message type a role never receives (for example DELIVER at a server) is "
                 "UNEXPECTED_MESSAGE in every state."),
        ("MUST", "The server discards everything it receives in CLOSING and CLOSED; a client "
                 "discards everything it receives in CLOSED."),
    ),
)

RULES: dict[str, Rule] = {rule.id: rule for section in SECTIONS for rule in section.rules}


def rule_text(rule_id: str) -> str:
    """The rule's text with every limit filled in."""
    from dfachat.spec.limits import LIMITS

    return RULES[rule_id].text.format(**LIMITS.as_dict())
