"""``dfachat gui`` on a real X server (Xvfb) against a real chat server.

The tests start ``Xvfb`` themselves (it picks a free display with
``-displayfd``; Debian package ``xvfb``), build :class:`ChatApp` on a ``Tk()``
without ``mainloop`` and drive it through Tk: setting the dialog's variables,
``invoke`` on buttons and menu entries, ``event_generate`` for keys, and
``root.update()`` in loops bounded by a deadline that wait for a condition.
Without Xvfb they skip, except under CI (``CI`` set), where they fail.

The screenshot of the chat window comes from Xvfb's own framebuffer file
(``-fbdir``, XWD format), converted to PNG here with zlib: no other package.
It is saved under the test's tmp dir and copied to ``$DFACHAT_ARTIFACTS`` when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import select
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import tkinter as tk
except ImportError:  # Python without Tk
    if os.environ.get("CI"):
        raise
    pytest.skip("this Python has no tkinter (Debian: python3-tk)", allow_module_level=True)

from dfachat.client import Delivery, Left
from dfachat.client.gui import ChatApp, describe_result, sentence
from dfachat.client.library import SendResult, taken_path_for
from dfachat.client.threaded import ChatThread
from dfachat.codec import encode
from dfachat.codec.messages import ERROR, HELLO
from dfachat.errors import ConnectionFailed
from dfachat.spec import SUPPORTED_VERSIONS, ErrorCode, ErrorFlags, LeftReason, Outcome

TIMEOUT = 5.0


# --- the X server ---------------------------------------------------------------------------


@dataclass
class Display:
    name: str  # ":N"
    framebuffer: Path  # Xvfb's screen 0 as an XWD file, kept current by Xvfb


@pytest.fixture(scope="session")
def xvfb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Display]:
    executable = shutil.which("Xvfb")
    if executable is None:
        reason = "Xvfb is not installed (Debian package: xvfb)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the GUI tests")
        pytest.skip(reason)
    fbdir = tmp_path_factory.mktemp("xvfb")
    read_end, write_end = os.pipe()
    with open(fbdir / "Xvfb.log", "wb") as log:
        process = subprocess.Popen(
            [executable, "-displayfd", str(write_end), "-screen", "0", "1024x768x24",
             "-fbdir", str(fbdir), "-nolisten", "tcp", "-noreset"],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 10
        while not number.endswith(b"\n"):  # Xvfb writes the display it chose, then a newline
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_end, 16) if ready else b""
            if not chunk:
                pytest.fail(f"Xvfb did not start: {(fbdir / 'Xvfb.log').read_text(errors='replace')}")
            number += chunk
        display = Display(f":{int(number)}", fbdir / "Xvfb_screen0")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DISPLAY", display.name)
            yield display
    finally:
        os.close(read_end)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def root(xvfb: Display) -> Iterator[tk.Tk]:
    window = tk.Tk(className="dfachat")
    try:
        yield window
    finally:
        with contextlib.suppress(tk.TclError):  # the app destroyed it already (Quit)
            window.destroy()
        del window
        gc.collect()  # Tk variables must die on this thread, not in whichever thread collects next


def pump(root: tk.Tk, condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Run the Tk event loop until ``condition()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        root.update()
        time.sleep(0.002)  # only to yield the CPU to the network threads; the condition decides


def press_return(root: tk.Tk, widget: tk.Misc) -> None:
    """Type Enter into ``widget`` (key events go to the focus, so give it the focus first)."""
    widget.focus_force()
    pump(root, lambda: root.focus_get() is widget, "the focus")
    widget.event_generate("<KeyPress-Return>")
    widget.event_generate("<KeyRelease-Return>")


def make_app(root: tk.Tk, server: Any, *, timeout: float = TIMEOUT, **prefill: Any) -> ChatApp:
    options = {"host": server.host, "port": server.port, **prefill}
    return ChatApp(root, chat_thread_factory=lambda on_event: ChatThread(on_event, timeout=timeout), **options)


def log_in(root: tk.Tk, app: ChatApp, user: str, password: str) -> None:
    assert app.dialog is not None
    app.dialog.user_var.set(user)
    app.dialog.password_var.set(password)
    app.dialog.login_button.invoke()
    pump(root, lambda: app.state == "chat", f"{user} to log in")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeServer:
    """Accepts connections on 127.0.0.1 and answers each with ``reply`` (nothing if None)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply is not None:
                conn.recv(4096)  # the HELLO
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


# --- the screenshot ---------------------------------------------------------------------------


def read_xwd(path: Path) -> tuple[int, int, int, bytes]:
    """Xvfb's framebuffer file: (width, height, bytes per line, BGRX/XRGB pixel bytes)."""
    data = path.read_bytes()
    header = struct.unpack(">25I", data[:100])
    header_size, version, _format, _depth, width, height = header[:6]
    byte_order, bits_per_pixel, bytes_per_line, ncolors = header[7], header[11], header[12], header[19]
    red, green, blue = header[14:17]
    assert version == 7 and bits_per_pixel == 32, header
    assert (red, green, blue) == (0xFF0000, 0xFF00, 0xFF), header
    pixels = data[header_size + 12 * ncolors :]
    return width, height, bytes_per_line, pixels if byte_order == 0 else _swap(pixels)


def _swap(pixels: bytes) -> bytes:  # MSB-first XRGB to LSB-first BGRX
    out = bytearray(len(pixels))
    for i in range(4):
        out[i::4] = pixels[3 - i :: 4]
    return bytes(out)


def write_png(path: Path, width: int, height: int, rgb_rows: list[bytes]) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + row for row in rgb_rows)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def screenshot(root: tk.Tk, display: Display, path: Path) -> list[bytes]:
    """Save the window (menu bar included) as a PNG; returns its RGB rows."""
    # The pointer out of the picture (Xvfb draws it into the framebuffer).
    root.event_generate("<Motion>", warp=True, x=root.winfo_screenwidth() - root.winfo_rootx() - 1,
                        y=root.winfo_screenheight() - root.winfo_rooty() - 1)
    root.update_idletasks()
    root.update()
    root.winfo_pointerxy()  # a round trip: the X server has drawn everything asked before it
    width, height, stride, pixels = read_xwd(display.framebuffer)
    # The outer window (the menu bar sits above the root's interior): geometry's +X+Y.
    outer = re.fullmatch(r"\d+x\d+([+-]-?\d+)([+-]-?\d+)", root.geometry())
    assert outer is not None, root.geometry()
    left, top = max(0, int(outer[1])), max(0, int(outer[2]))
    right = min(width, root.winfo_rootx() + root.winfo_width())
    bottom = min(height, root.winfo_rooty() + root.winfo_height())
    rows = []
    for y in range(top, bottom):
        bgrx = pixels[y * stride + 4 * left : y * stride + 4 * right]
        rgb = bytearray(len(bgrx) // 4 * 3)
        rgb[0::3], rgb[1::3], rgb[2::3] = bgrx[2::4], bgrx[1::4], bgrx[0::4]
        rows.append(bytes(rgb))
    write_png(path, right - left, bottom - top, rows)
    return rows


def assert_not_blank(rows: list[bytes]) -> None:
    colours = Counter(row[x : x + 3] for row in rows[::3] for x in range(0, len(row), 9))
    assert len(colours) > 20, f"the screenshot looks blank: {len(colours)} colours"
    assert colours.most_common(1)[0][1] < 0.9 * sum(colours.values()), "the screenshot is nearly uniform"


def save_artifact(path: Path) -> None:
    """Copy ``path`` to ``$DFACHAT_ARTIFACTS`` when that is set (CI uploads it)."""
    if os.environ.get("DFACHAT_ARTIFACTS"):
        target = Path(os.environ["DFACHAT_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


# --- words (no X needed, but they live with the GUI) -------------------------------------------


def test_results_and_errors_read_as_sentences() -> None:
    result = SendResult(1, 1, 1, 1, {"Steve": Outcome.LOSSY, "Bailey": Outcome.QUEUED, "Zed": Outcome.UNKNOWN_USER})
    assert describe_result(result) == (
        "Steve got '?' for characters their encoding cannot show; queued for Bailey (offline); "
        "there is no user named Zed."
    )
    assert describe_result(SendResult(1, 1, 3, 1)) == (
        "Delivered to 3 people; 1 of them got '?' for characters their encoding cannot show."
    )
    assert describe_result(SendResult(1, 1, 0, 0)) == "Nobody else is online, so nobody got it."
    over = SendResult(1, 1, 1, 0, {"Steve": Outcome.DELIVERED, "Bailey": Outcome.OVER_QUOTA})
    assert describe_result(over) == "Delivered to Steve; Bailey's inbox is full; not delivered."
    assert sentence(ConnectionFailed("cannot reach it: Connection refused")) == "Cannot reach it: Connection refused."
    assert sentence(RuntimeError("boom")) == "Something went wrong: boom."


# --- the login dialog ---------------------------------------------------------------------------


def test_login_errors_appear_in_the_dialog(
    root: tk.Tk, xvfb: Display, chat_server: Any, tmp_path: Path
) -> None:
    app = make_app(root, chat_server, user="Liz", encoding="latin-1")
    dialog = app.dialog
    assert dialog is not None
    assert (dialog.host_var.get(), dialog.port_var.get()) == ("127.0.0.1", str(chat_server.port))
    assert dialog.encoding_var.get() == "latin-1" and "utf-8" in dialog.encoding_box.cget("values")
    assert dialog.password_entry.cget("show") == "*"

    def attempt(what: str) -> str:
        dialog.error_var.set("")
        dialog.login_button.invoke()
        return pump(root, lambda: app.state == "login" and dialog.error_var.get(), what)

    dialog.password_var.set("wrong")
    error = attempt("the wrong password to be refused")
    assert error.startswith("Wrong user name or password (") and "attempts left" in error, error
    assert dialog.password_var.get() == ""  # cleared for the next try
    assert_not_blank(screenshot(root, xvfb, tmp_path / "dfachat-gui-login.png"))
    save_artifact(tmp_path / "dfachat-gui-login.png")
    assert "!disabled" in dialog.login_button.state() or not dialog.login_button.instate(["disabled"])

    dialog.port_var.set(str(closed_port()))
    dialog.password_var.set("pw1")
    error = attempt("the unreachable port to be reported")
    assert error.startswith("Cannot reach a dfachat server at 127.0.0.1:") and error.endswith("Connection refused."), error

    dialog.port_var.set("seventy")
    assert attempt("the port to be checked") == "The port must be a number from 1 to 65535."

    refusal = encode(
        ERROR(code=ErrorCode.UNSUPPORTED_ENCODING, flags=ErrorFlags.FATAL, regarding=HELLO.TYPE,
              rule="R3.1", reason="'latin-1' is not supported")
    )
    refusing = FakeServer(refusal)
    try:
        dialog.port_var.set(str(refusing.port))
        error = attempt("the refused encoding to be reported")
    finally:
        refusing.close()
    assert error == "The server does not support this text encoding (UNSUPPORTED_ENCODING, rule R3.1).", error

    dialog.port_var.set(str(chat_server.port))
    dialog.password_var.set("pw1")
    press_return(root, dialog.password_entry)  # Enter logs in too
    pump(root, lambda: app.state == "chat", f"Liz to log in after the errors {app.state} {dialog.error_var.get()}")
    app.quit()
    pump(root, lambda: app.state == "closed", "the app to close")


def test_a_silent_server_never_freezes_the_window(root: tk.Tk, xvfb: Display) -> None:
    silent = FakeServer(None)  # accepts, never answers
    try:
        app = make_app(root, silent, timeout=0.5, user="Liz")
        assert app.dialog is not None
        app.dialog.password_var.set("pw1")
        app.dialog.login_button.invoke()
        started = time.monotonic()
        pump(root, lambda: app.state == "connecting" and "Connecting" in app.dialog.progress_var.get(), "progress")
        assert time.monotonic() - started < 0.4  # the Tk thread did not wait for the server
        error = pump(root, lambda: app.state == "login" and app.dialog.error_var.get(), "the login timeout")
        assert error == f"The server at 127.0.0.1:{silent.port} did not answer within 0.5 s.", error
        # Quit while a login hangs: the window goes at once.
        app.dialog.login_button.invoke()
        pump(root, lambda: app.state == "connecting", "a second attempt")
        started = time.monotonic()
        app.dialog.quit_button.invoke()
        assert app.state == "closed" and time.monotonic() - started < 2.5
    finally:
        silent.close()


# --- the chat window ------------------------------------------------------------------------------


def test_chat_through_the_window(
    root: tk.Tk, xvfb: Display, chat_server: Any, chat_user: Any, tmp_path: Path
) -> None:
    steve = chat_user("Steve")
    app = make_app(root, chat_server)
    log_in(root, app, "Liz", "pw1")
    window = app.window
    assert window is not None
    assert window.online == ["Steve"] and window.users.get(0, "end") == ("Steve",)
    assert root.title() == f"dfachat – Liz at 127.0.0.1:{chat_server.port}"

    # Liz types a line and presses Enter: a broadcast Steve receives.
    window.text_var.set("Hello from the window ☃")
    press_return(root, window.entry)
    got = steve.wait_for(lambda e: isinstance(e, Delivery) and e.sender == "Liz")
    assert (got.text, got.directed) == ("Hello from the window ☃", False)
    pump(root, lambda: window.status_var.get() == "Delivered to 1 person.", "the delivery outcome")
    assert "You → everyone:  Hello from the window ☃" in window.log_text()
    assert window.text_var.get() == ""

    # Steve answers: it shows in the log.
    steve.send("Hi Liz, Steve here")
    pump(root, lambda: "Steve → everyone:  Hi Liz, Steve here" in window.log_text(), "Steve's message")

    # Bailey (latin-1) logs in: JOINED adds her to the list.
    bailey = chat_user("Bailey", encoding="latin-1")
    pump(root, lambda: window.online == ["Bailey", "Steve"], "Bailey in the list")
    assert window.users.get(0, "end") == ("Bailey", "Steve") and "Bailey joined." in window.log_text()
    assert window.online_label.cget("text") == "Online (2 others)"

    # Select Steve in the list: the next message goes to him only.
    window.users.selection_set(1)
    window.users.event_generate("<<ListboxSelect>>")
    root.update()
    assert window.recipients() == ["Steve"] and window.to_var.get() == "To: Steve"
    window.text_var.set("just for you, Steve")
    window.send_button.invoke()
    got = steve.wait_for(lambda e: isinstance(e, Delivery) and e.text == "just for you, Steve")
    assert got.directed
    pump(root, lambda: window.status_var.get() == "Delivered to Steve.", "the directed outcome")
    assert "You → Steve:  just for you, Steve" in window.log_text()

    # To Bailey, who reads latin-1: the status line says she got '?'.
    window.select_recipients(["Bailey"])
    window.text_var.set("snow ☃ for Bailey")
    window.send_button.invoke()
    pump(root, lambda: "Bailey got '?'" in window.status_var.get(), "the lossy outcome")
    assert window.status_var.get() == "Bailey got '?' for characters their encoding cannot show."
    assert bailey.wait_for(lambda e: isinstance(e, Delivery) and e.sender == "Liz").text == "snow ? for Bailey"

    # Steve writes to Liz only: the log marks it as directed.
    steve.send("a secret", to=["Liz"])
    pump(root, lambda: "Steve → you:  a secret" in window.log_text(), "the directed delivery")

    path = tmp_path / "dfachat-gui-chat.png"
    rows = screenshot(root, xvfb, path)
    assert_not_blank(rows)
    save_artifact(path)

    # Bailey leaves: LEFT takes her off the list (and out of the selection).
    bailey.close()
    pump(root, lambda: window.online == ["Steve"], "Bailey off the list")
    assert "Bailey left." in window.log_text() and window.recipients() == []
    assert window.to_var.get() == "To: everyone"

    # A message to someone offline is queued.
    window.text_var.set("Bailey, read this later")
    app.send(window.text_var.get(), ["Bailey"])
    pump(root, lambda: window.status_var.get() == "Queued for Bailey (offline).", "the queued outcome")

    # Quit from the menu: the server tells Steve that Liz left with QUIT.
    app.chat_menu.invoke("Quit")
    pump(root, lambda: app.state == "closed", "the app to quit")
    left = steve.wait_for(lambda e: isinstance(e, Left) and e.name == "Liz")
    assert left.reason == LeftReason.QUIT
    with pytest.raises(tk.TclError):
        root.winfo_exists()  # the root is gone: mainloop would have ended


class SlowLogin(ChatThread):
    """A ChatThread whose login result waits for ``release``: whatever the server sends with the
    login (the stored messages) reaches the Tk thread first, as it may on any machine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    async def _login(self, *args: Any) -> Any:
        me = await super()._login(*args)
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, TIMEOUT)
        return me


def test_messages_that_arrive_during_login_are_shown_then_acknowledged(
    root: tk.Tk, chat_server: Any, chat_user: Any, state_home: Path
) -> None:
    """Issue 14: 5 of 5 stored messages were lost when they came while the login finished."""
    steve = chat_user("Steve")
    texts = [f"while you were away {i}" for i in range(5)]
    last = [steve.send(text, to=["Liz"]) for text in texts][-1].server_msg_id
    threads: list[SlowLogin] = []

    def factory(on_event: Any) -> ChatThread:
        threads.append(SlowLogin(on_event, timeout=TIMEOUT))
        return threads[-1]

    app = ChatApp(root, chat_thread_factory=factory, host=chat_server.host, port=chat_server.port,
                  on_close=lambda: None)
    assert app.dialog is not None
    app.dialog.user_var.set("Liz")
    app.dialog.password_var.set("pw1")
    app.dialog.login_button.invoke()
    def arrived() -> bool:
        chat = threads[0]._chat if threads else None
        return chat is not None and len(chat.session.unacknowledged) == 5

    pump(root, arrived, "the stored messages to arrive with the login")
    until = time.monotonic() + 0.25
    while time.monotonic() < until:  # the Tk thread takes what the worker posted, login unfinished
        root.update()
        time.sleep(0.005)
    taken = taken_path_for(chat_server.host, chat_server.port, "Liz")
    assert app.state == "connecting" and app.window is None
    assert not taken.exists()  # not shown, so not acknowledged
    threads[0].release.set()
    pump(root, lambda: app.state == "chat", "the login to finish")
    window = app.window
    assert window is not None
    pump(root, lambda: texts[-1] in window.log_text(), "the stored messages in the log")
    log = window.log_text()
    assert [log.count(text) for text in texts] == [1] * 5
    assert [log.index(text) for text in texts] == sorted(log.index(text) for text in texts)
    assert "(kept for you while you were offline)" in log
    # Shown, so taken: the highest id is on disk, private to the user (R7.11).
    pump(root, lambda: taken.exists() and taken.read_text() == f"{last}\n", "the taken file")
    assert stat.S_IMODE(taken.stat().st_mode) == 0o600
    assert stat.S_IMODE(taken.parent.stat().st_mode) == 0o700
    assert taken.is_relative_to(state_home)

    # The window goes without QUIT; the next one, on the same account, shows none of them again.
    app.chat.close()
    app._finish()
    window.destroy()
    app.menubar.destroy()
    second = make_app(root, chat_server)
    log_in(root, second, "Liz", "pw1")
    steve.send("and now", to=["Liz"])
    pump(root, lambda: "and now" in second.window.log_text(), "a new message")
    assert not any(text in second.window.log_text() for text in texts)
    second.quit()
    pump(root, lambda: second.state == "closed", "the app to close")


def test_disconnects_are_sentences_and_the_close_button_quits(
    root: tk.Tk, chat_server: Any, chat_user: Any
) -> None:
    steve = chat_user("Steve")
    app = make_app(root, chat_server)
    log_in(root, app, "Liz", "pw1")
    window = app.window
    assert window is not None

    # Liz logs in somewhere else: this window is told, in a sentence, why its session ended.
    other = ChatThread()
    try:
        other.login(chat_server.host, chat_server.port, "Liz", "pw1").result(TIMEOUT)
        text = pump(root, lambda: app.state == "ended" and window.status_var.get(), "the replaced session")
        assert text.startswith("Disconnected: You logged in from somewhere else, so this session was closed"), text
        assert window.entry.instate(["disabled"]) and window.send_button.instate(["disabled"])
        app.send("anyone?", [])
        assert window.status_var.get() == "You are not connected; nothing was sent."
    finally:
        other.quit().result(TIMEOUT)
        other.close()

    # Log in again from the menu, then close the window with its close button: QUIT.
    app.chat_menu.invoke("Log in again…")
    assert app.state == "login" and app.dialog is not None and app.dialog.user_var.get() == "Liz"
    log_in(root, app, "Liz", "pw1")
    app.window.text_var.set("back again")
    app.window.send_button.invoke()
    steve.wait_for(lambda e: isinstance(e, Delivery) and e.text == "back again")
    steve.seen.clear()  # what Steve sees from here on follows the close button
    root.tk.call(root.protocol("WM_DELETE_WINDOW"))
    pump(root, lambda: app.state == "closed", "the close button to quit")
    assert steve.wait_for(lambda e: isinstance(e, Left) and e.name == "Liz").reason == LeftReason.QUIT


def test_server_shutdown_reaches_the_status_line(root: tk.Tk, chat_server: Any) -> None:
    app = make_app(root, chat_server)
    log_in(root, app, "Liz", "pw1")
    window = app.window
    assert window is not None
    chat_server.shutdown()
    text = pump(root, lambda: app.state == "ended" and window.status_var.get(), "the shutdown")
    assert text.startswith("Disconnected: The server is shutting down."), text
    assert "The server is shutting down." in window.log_text()
    app.quit()  # nothing to QUIT from: closes at once
    assert app.state == "closed"


# --- dfachat gui ---------------------------------------------------------------------------------


def test_the_command_prefills_the_dialog(monkeypatch: pytest.MonkeyPatch) -> None:
    from dfachat import cli
    from dfachat.client import gui

    seen: dict[str, Any] = {}
    monkeypatch.setattr(gui, "run", lambda **options: seen.update(options) or 0)
    argv = ["gui", "--host", "chat.example", "--port", "4000", "--encoding", "cp1252", "--user", "Bailey"]
    assert cli.main(argv) == 0
    assert seen == {
        "host": "chat.example", "port": 4000, "encoding": "cp1252", "user": "Bailey", "ssl": None,
        "versions": SUPPORTED_VERSIONS,
    }
    assert cli.main([*argv, "--protocol-version", "1"]) == 0  # offer version 1 only
    assert seen["versions"] == (1,)
    assert cli.main(["gui", "--protocol-version", "3"]) == 2  # not a version this client speaks
    assert cli.main(["gui", "--encoding", "ebcdic"]) == 2  # not one of the spec's encodings
    # --tls: a context that checks the server's certificate and host name.
    assert cli.main(["gui", "--tls"]) == 0
    assert seen["ssl"].verify_mode == ssl.CERT_REQUIRED and seen["ssl"].check_hostname
    assert cli.main(["gui", "--ca", "/nonexistent/ca.pem"]) == 2


def test_the_command_without_a_display_says_so(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from dfachat import cli

    monkeypatch.setenv("DISPLAY", ":999999")
    assert cli.main(["gui"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfachat: error: cannot open a window:") and "Traceback" not in err
