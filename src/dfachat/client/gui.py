"""``dfachat gui``: a desktop chat client in Tk (tkinter only).

A login dialog (host, port, encoding, user, password), then the chat window:
the message log, who is online (select names to send to them only; none
selected sends to everyone), an input line and a status line for delivery
outcomes and errors.

The network never runs on the Tk thread. A :class:`~dfachat.client.threaded.ChatThread`
runs the asyncio library on a worker thread; its events and the results of
its futures are put on a thread-safe queue that the Tk thread drains every
few milliseconds (``root.after``), so Tk is only ever called from its own
thread and the window stays live whatever the server does. Every failure
reaches the person as a sentence in the dialog or the status line.

A message is acknowledged (R7.11) only once the window has shown it,
messages that arrive while the login is finishing (the stored ones) included:
they wait for the chat window. The highest id shown is kept in a file under the
user's state directory (:func:`~dfachat.client.library.taken_path_for`), so a
message shown before a crash is not shown again after a restart.

Tests build :class:`ChatApp` on a ``Tk()`` of their own and pump ``root.update()``;
:func:`run` and :func:`main` add the ``mainloop``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import gc
import logging
import queue
import sys
import tkinter as tk
from collections.abc import Callable, Sequence
from datetime import datetime
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any

from dfachat.client.library import (
    ChatEvent,
    Closed,
    Delivery,
    Joined,
    Left,
    Notice,
    SendResult,
    taken_path_for,
)
from dfachat.client.threaded import ChatThread, LoggedIn
from dfachat.errors import DfachatError, MessageRejected
from dfachat.spec import DEFAULT_PORT, ENCODINGS, SUPPORTED_VERSIONS, LeftReason, Outcome

__all__ = ["ChatApp", "ChatWindow", "LoginDialog", "describe_result", "main", "run", "sentence"]

log = logging.getLogger(__name__)

POLL_MS = 25  # how often the Tk thread collects what the worker thread produced
QUIT_GRACE_MS = 3000  # how long Quit waits for the server's BYE before closing anyway

ChatThreadFactory = Callable[[Callable[[ChatEvent], None]], ChatThread]

_LEFT_REASONS = {
    LeftReason.QUIT: "",
    LeftReason.DROPPED: " (connection lost)",
    LeftReason.TIMEOUT: " (timed out)",
    LeftReason.REPLACED: " (logged in somewhere else)",
}


# --- words ------------------------------------------------------------------------------


def sentence(error: BaseException | str) -> str:
    """An exception (or a phrase) as one sentence: capital first letter, full stop, no rule tag."""
    if isinstance(error, str):
        text = error
    elif isinstance(error, DfachatError):
        text = error.detail
    else:
        text = f"something went wrong: {error or type(error).__name__}"
    text = " ".join(text.split())
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def describe_result(result: SendResult) -> str:
    """A MSG_ACK in words: who has it, who got '?', who gets it later, who does not exist."""
    if not result.outcomes:  # a broadcast
        if not result.delivered:
            return "Nobody else is online, so nobody got it."
        text = f"Delivered to {result.delivered} {'person' if result.delivered == 1 else 'people'}"
        if result.lossy:
            text += (
                f"; {result.lossy} of them got '?' for characters their encoding cannot show"
            )
        return text + "."
    by_outcome: dict[Outcome, list[str]] = {}
    for name, outcome in result.outcomes.items():
        by_outcome.setdefault(outcome, []).append(name)
    parts = []
    if Outcome.DELIVERED in by_outcome:
        parts.append(f"delivered to {_names(by_outcome[Outcome.DELIVERED])}")
    if Outcome.LOSSY in by_outcome:
        who = by_outcome[Outcome.LOSSY]
        parts.append(f"{_names(who)} got '?' for characters {'their encoding' if len(who) == 1 else 'their encodings'} cannot show")
    if Outcome.QUEUED in by_outcome:
        parts.append(f"queued for {_names(by_outcome[Outcome.QUEUED])} (offline)")
    if Outcome.UNKNOWN_USER in by_outcome:
        who = by_outcome[Outcome.UNKNOWN_USER]
        parts.append(f"there is no user named {_names(who)}")
    for name in by_outcome.get(Outcome.OVER_QUOTA, ()):
        parts.append(f"{name}'s inbox is full; not delivered")
    return sentence("; ".join(parts))


# --- the login dialog ---------------------------------------------------------------------


class LoginDialog(ttk.Frame):
    """Host, port, encoding, user and password; errors appear under the fields."""

    def __init__(self, master: tk.Misc, app: ChatApp, *, host: str, port: int, encoding: str, user: str) -> None:
        super().__init__(master, padding=(24, 18), style="Dialog.TFrame")
        self.app = app
        self.host_var = tk.StringVar(self, host)
        self.port_var = tk.StringVar(self, str(port))
        self.encoding_var = tk.StringVar(self, encoding if encoding in ENCODINGS else "utf-8")
        self.user_var = tk.StringVar(self, user)
        self.password_var = tk.StringVar(self, "")
        self.error_var = tk.StringVar(self, "")
        self.progress_var = tk.StringVar(self, "")

        ttk.Label(self, text="dfachat", style="Title.TLabel").grid(row=0, column=0, columnspan=2, sticky="w")
        ttk.Label(self, text="Log in to a chat server", style="Muted.TLabel").grid(
            row=1, column=0, columnspan=2, sticky="w", pady=(0, 12)
        )
        self.host_entry = self._field(2, "Host", ttk.Entry(self, textvariable=self.host_var, width=28))
        self.port_entry = self._field(3, "Port", ttk.Entry(self, textvariable=self.port_var, width=8), sticky="w")
        self.encoding_box = self._field(
            4,
            "Encoding",
            ttk.Combobox(self, textvariable=self.encoding_var, values=list(ENCODINGS), state="readonly", width=12),
            sticky="w",
        )
        self.encoding_note = ttk.Label(self, style="Muted.TLabel")
        self.encoding_note.grid(row=5, column=1, sticky="w", pady=(0, 6))
        self.user_entry = self._field(6, "User", ttk.Entry(self, textvariable=self.user_var, width=28))
        self.password_entry = self._field(
            7, "Password", ttk.Entry(self, textvariable=self.password_var, show="*", width=28)
        )
        self.error_label = ttk.Label(self, textvariable=self.error_var, style="Error.TLabel", wraplength=340, justify="left")
        self.error_label.grid(row=8, column=0, columnspan=2, sticky="we", pady=(10, 0))
        ttk.Label(self, textvariable=self.progress_var, style="Muted.TLabel").grid(
            row=9, column=0, columnspan=2, sticky="w"
        )
        buttons = ttk.Frame(self, style="Dialog.TFrame")
        buttons.grid(row=10, column=0, columnspan=2, sticky="e", pady=(14, 0))
        self.quit_button = ttk.Button(buttons, text="Quit", command=app.quit)
        self.quit_button.pack(side="right")
        self.login_button = ttk.Button(buttons, text="Log in", command=self.submit, default="active")
        self.login_button.pack(side="right", padx=(0, 8))
        self.columnconfigure(1, weight=1)

        self.encoding_var.trace_add("write", lambda *_: self._describe_encoding())
        self._describe_encoding()
        for widget in (self.host_entry, self.port_entry, self.encoding_box, self.user_entry, self.password_entry):
            widget.bind("<Return>", lambda _event: self.submit())
            widget.bind("<KP_Enter>", lambda _event: self.submit())
        (self.password_entry if user else self.user_entry).focus_set()

    def _field(self, row: int, label: str, widget: Any, sticky: str = "we") -> Any:
        ttk.Label(self, text=label, style="Dialog.TLabel").grid(row=row, column=0, sticky="w", padx=(0, 12), pady=3)
        widget.grid(row=row, column=1, sticky=sticky, pady=3)
        return widget

    def _describe_encoding(self) -> None:
        encoding = ENCODINGS.get(self.encoding_var.get())
        self.encoding_note.configure(text=encoding.description if encoding else "")

    def submit(self) -> None:
        """The Log in button: check the fields, then let the app connect."""
        host, user = self.host_var.get().strip(), self.user_var.get().strip()
        try:
            port = int(self.port_var.get().strip())
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            return self.show_error("The port must be a number from 1 to 65535.")
        if not host:
            return self.show_error("Enter the host name or address of the server.")
        if not user:
            return self.show_error("Enter your user name.")
        self.app.login(host, port, user, self.password_var.get(), self.encoding_var.get())

    def show_error(self, text: str) -> None:
        self.error_var.set(text)
        self.busy(False)

    def busy(self, connecting: bool, where: str = "") -> None:
        if connecting:
            self.error_var.set("")
            self.progress_var.set(f"Connecting to {where}…")
            self.login_button.state(["disabled"])
        else:
            self.progress_var.set("")
            self.login_button.state(["!disabled"])


# --- the chat window -----------------------------------------------------------------------


class ChatWindow(ttk.Frame):
    """The log, who is online, the input line and the status line."""

    def __init__(self, master: tk.Misc, app: ChatApp, me: LoggedIn) -> None:
        super().__init__(master, padding=8)
        self.app = app
        self.me = me
        self.online: list[str] = []  # the others, sorted; the Listbox shows them in this order
        self.text_var = tk.StringVar(self, "")
        self.to_var = tk.StringVar(self, "To: everyone")
        self.status_var = tk.StringVar(self, "")

        panes = ttk.PanedWindow(self, orient="horizontal")
        panes.grid(row=0, column=0, columnspan=3, sticky="nsew")

        log_frame = ttk.Frame(panes)
        self.log = tk.Text(
            log_frame, wrap="word", state="disabled", width=60, height=20, padx=8, pady=6,
            relief="flat", borderwidth=0, highlightthickness=1, highlightcolor="#b8c4d6",
            highlightbackground="#cdd3dc", font=app.fonts["log"], background="#ffffff",
            cursor="arrow", takefocus=False,
        )
        scroll = ttk.Scrollbar(log_frame, orient="vertical", command=self.log.yview)
        self.log.configure(yscrollcommand=scroll.set)
        self.log.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        log_frame.rowconfigure(0, weight=1)
        log_frame.columnconfigure(0, weight=1)
        for tag, options in {
            "time": {"foreground": "#8a93a3"},
            "sender": {"font": app.fonts["bold"], "foreground": "#1f3a68"},
            "me": {"font": app.fonts["bold"], "foreground": "#2f6d2f"},
            "marker": {"foreground": "#6b7686"},
            "directed": {"foreground": "#8a4b08"},
            "lossy": {"foreground": "#b3261e"},
            "stored": {"foreground": "#6b7686", "font": app.fonts["italic"]},
            "system": {"foreground": "#6b7686", "font": app.fonts["italic"]},
            "error": {"foreground": "#b3261e", "font": app.fonts["italic"]},
        }.items():
            self.log.tag_configure(tag, **options)
        self.log.tag_configure("message", lmargin2=24, spacing1=2)
        panes.add(log_frame, weight=4)

        side = ttk.Frame(panes, padding=(8, 0, 0, 0))
        self.online_label = ttk.Label(side, text="Online", style="Heading.TLabel")
        self.online_label.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 4))
        self.users = tk.Listbox(
            side, selectmode="multiple", exportselection=False, width=18, activestyle="none",
            relief="flat", borderwidth=0, highlightthickness=1, highlightbackground="#cdd3dc",
            selectbackground="#3b6fb6", selectforeground="#ffffff", font=app.fonts["log"],
        )
        user_scroll = ttk.Scrollbar(side, orient="vertical", command=self.users.yview)
        self.users.configure(yscrollcommand=user_scroll.set)
        self.users.grid(row=1, column=0, sticky="nsew")
        user_scroll.grid(row=1, column=1, sticky="ns")
        ttk.Label(side, text="Select names to send to them only.", style="Muted.TLabel", wraplength=150).grid(
            row=2, column=0, columnspan=2, sticky="w", pady=(4, 2)
        )
        self.everyone_button = ttk.Button(side, text="Send to everyone", command=self.clear_recipients)
        self.everyone_button.grid(row=3, column=0, columnspan=2, sticky="we")
        side.rowconfigure(1, weight=1)
        side.columnconfigure(0, weight=1)
        panes.add(side, weight=1)
        self.users.bind("<<ListboxSelect>>", lambda _event: self._recipients_changed())

        ttk.Label(self, textvariable=self.to_var, style="To.TLabel", width=16).grid(
            row=1, column=0, sticky="w", pady=(8, 0), padx=(0, 6)
        )
        self.entry = ttk.Entry(self, textvariable=self.text_var, font=app.fonts["log"])
        self.entry.grid(row=1, column=1, sticky="we", pady=(8, 0))
        self.send_button = ttk.Button(self, text="Send", command=self.send, default="active")
        self.send_button.grid(row=1, column=2, sticky="e", pady=(8, 0), padx=(6, 0))
        self.entry.bind("<Return>", lambda _event: self.send())
        self.entry.bind("<KP_Enter>", lambda _event: self.send())
        self.status = ttk.Label(self, textvariable=self.status_var, style="Status.TLabel", anchor="w")
        self.status.grid(row=2, column=0, columnspan=3, sticky="we", pady=(8, 0))
        self.rowconfigure(0, weight=1)
        self.columnconfigure(1, weight=1)

        self.set_online(me.online)
        self.add_system(f"You are logged in as {me.user} ({me.encoding}); {self._online_phrase()}.")
        self.set_status(f"Connected to {me.server_software or 'the server'}.")
        self.entry.focus_set()

    # --- who is online --------------------------------------------------------------------
    def _online_phrase(self) -> str:
        if not self.online:
            return "nobody else is online"
        return f"online: {', '.join(self.online)}"

    def set_online(self, names: Sequence[str]) -> None:
        """Show these users (not ourselves), keeping the selection of those still online."""
        keep = set(self.recipients())
        self.online = sorted({n for n in names if n != self.me.user}, key=str.casefold)
        self.users.delete(0, "end")
        for index, name in enumerate(self.online):
            self.users.insert("end", name)
            if name in keep:
                self.users.selection_set(index)
        count = len(self.online)
        self.online_label.configure(text=f"Online ({count} other{'' if count == 1 else 's'})")
        self._recipients_changed()

    def recipients(self) -> list[str]:
        """The selected names; none selected means everyone."""
        return [self.online[i] for i in self.users.curselection() if i < len(self.online)]

    def select_recipients(self, names: Sequence[str]) -> None:
        self.users.selection_clear(0, "end")
        for name in names:
            if name in self.online:
                self.users.selection_set(self.online.index(name))
        self._recipients_changed()

    def clear_recipients(self) -> None:
        self.select_recipients(())

    def _recipients_changed(self) -> None:
        chosen = self.recipients()
        self.to_var.set(f"To: {', '.join(chosen)}" if chosen else "To: everyone")

    # --- the log --------------------------------------------------------------------------
    def _append(self, *pieces: tuple[str, tuple[str, ...]]) -> None:
        at_end = self.log.yview()[1] >= 0.999
        self.log.configure(state="normal")
        for text, tags in pieces:
            self.log.insert("end", text, tags)
        self.log.insert("end", "\n")
        self.log.configure(state="disabled")
        if at_end:
            self.log.see("end")

    @staticmethod
    def _clock(when: datetime | None = None) -> str:
        return (when.astimezone() if when else datetime.now()).strftime("%H:%M:%S")

    def add_delivery(self, event: Delivery) -> None:
        pieces = [
            (self._clock(event.time) + "  ", ("time", "message")),
            (event.sender, ("sender", "message")),
            (" → you" if event.directed else " → everyone", ("directed" if event.directed else "marker", "message")),
            (":  " + event.text, ("message",)),
        ]
        if event.lossy:
            pieces.append((f"  [? = not in {self.me.encoding}]", ("lossy", "message")))
        if event.stored:
            pieces.append(("  (kept for you while you were offline)", ("stored", "message")))
        self._append(*pieces)

    def add_own(self, text: str, to: Sequence[str]) -> None:
        self._append(
            (self._clock() + "  ", ("time", "message")),
            ("You", ("me", "message")),
            (f" → {', '.join(to)}" if to else " → everyone", ("directed" if to else "marker", "message")),
            (":  " + text, ("message",)),
        )

    def add_system(self, text: str, tag: str = "system") -> None:
        self._append((self._clock() + "  ", ("time", "message")), (text, (tag, "message")))

    def log_text(self) -> str:
        return self.log.get("1.0", "end-1c")

    # --- the input line and the status line ----------------------------------------------
    def set_status(self, text: str, *, error: bool = False, warning: bool = False) -> None:
        """The status line: ``error`` in red, ``warning`` (delivered, but not as sent) in amber."""
        self.status_var.set(text)
        style = "StatusError" if error else "StatusWarning" if warning else "Status"
        self.status.configure(style=f"{style}.TLabel")

    def send(self) -> None:
        text = self.text_var.get()
        if not text.strip():
            return
        self.text_var.set("")
        self.app.send(text, self.recipients())

    def enable_input(self, enabled: bool) -> None:
        state = ["!disabled"] if enabled else ["disabled"]
        for widget in (self.entry, self.send_button, self.everyone_button):
            widget.state(state)
        self.users.configure(state="normal" if enabled else "disabled")


# --- the application -------------------------------------------------------------------------


class ChatApp:
    """The whole client on one Tk root: the login dialog, then the chat window.

    ``state`` is ``"login"``, ``"connecting"``, ``"chat"``, ``"ended"`` (the
    session is over; the window stays to read), ``"quitting"`` or ``"closed"``.
    ``chat_thread_factory(on_event)`` makes the :class:`ChatThread` (the app turns its
    ``auto_ack`` off and sets its ``versions``: it acknowledges what it has shown);
    ``on_close`` runs when the app is done (default: destroy the root, which ends mainloop).
    """

    def __init__(
        self,
        root: tk.Tk,
        *,
        chat_thread_factory: ChatThreadFactory = ChatThread,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        encoding: str = "utf-8",
        user: str = "",
        on_close: Callable[[], None] | None = None,
        versions: Sequence[int] = SUPPORTED_VERSIONS,
    ) -> None:
        self.root = root
        self.versions = tuple(versions)  # the protocol versions offered at login
        self.state = "login"
        self.me: LoggedIn | None = None
        self.chat: ChatThread | None = None
        self.dialog: LoginDialog | None = None
        self.window: ChatWindow | None = None
        self._factory = chat_thread_factory
        self._on_close = on_close or root.destroy
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._early: list[ChatEvent] = []  # arrived while the login finished: shown with the window
        self._login_fields = {"host": host, "port": port, "encoding": encoding, "user": user}

        root.title("dfachat")
        root.protocol("WM_DELETE_WINDOW", self.quit)
        root.report_callback_exception = self._callback_failed
        self.fonts = self._set_up_style()
        self._build_menu()
        self.show_login()
        self._grace_id: str | None = None
        self._poll_id: str | None = root.after(POLL_MS, self._poll)

    # --- look ----------------------------------------------------------------------------
    def _set_up_style(self) -> dict[str, tkfont.Font]:
        style = ttk.Style(self.root)
        if "clam" in style.theme_names():
            style.theme_use("clam")
        base = tkfont.nametofont("TkDefaultFont")
        base.configure(size=10)
        family = base.actual("family")
        fonts = {
            "log": tkfont.Font(self.root, family=family, size=11),
            "bold": tkfont.Font(self.root, family=family, size=11, weight="bold"),
            "italic": tkfont.Font(self.root, family=family, size=11, slant="italic"),
            "title": tkfont.Font(self.root, family=family, size=18, weight="bold"),
            "heading": tkfont.Font(self.root, family=family, size=10, weight="bold"),
        }
        background = style.lookup("TFrame", "background") or "#dcdad5"
        style.configure("Dialog.TFrame", background=background)
        style.configure("Dialog.TLabel", background=background)
        style.configure("Title.TLabel", font=fonts["title"], foreground="#1f3a68")
        style.configure("Heading.TLabel", font=fonts["heading"])
        style.configure("Muted.TLabel", foreground="#5f6877")
        style.configure("Error.TLabel", foreground="#b3261e")
        style.configure("To.TLabel", foreground="#8a4b08")
        style.configure("Status.TLabel", foreground="#333333", padding=(4, 3), relief="sunken")
        style.configure("StatusError.TLabel", foreground="#b3261e", padding=(4, 3), relief="sunken")
        style.configure("StatusWarning.TLabel", foreground="#8a4b08", padding=(4, 3), relief="sunken")
        return fonts

    def _build_menu(self) -> None:
        self.menubar = tk.Menu(self.root)
        self.chat_menu = tk.Menu(self.menubar, tearoff=False)
        self.chat_menu.add_command(label="Who is online", command=self.refresh_online, state="disabled")
        self.chat_menu.add_command(label="Log in again…", command=self.show_login, state="disabled")
        self.chat_menu.add_separator()
        self.chat_menu.add_command(label="Quit", command=self.quit, accelerator="Ctrl+Q")
        self.menubar.add_cascade(label="Chat", menu=self.chat_menu)
        self.root.configure(menu=self.menubar)
        self.root.bind_all("<Control-q>", lambda _event: self.quit())

    def _menu_state(self, label: str, enabled: bool) -> None:
        self.chat_menu.entryconfigure(label, state="normal" if enabled else "disabled")

    # --- screens ---------------------------------------------------------------------------
    def show_login(self) -> None:
        if self.state not in ("login", "ended"):
            return
        if self.window is not None:
            self.window.destroy()
            self.window = None
            gc.collect()  # its Tk variables must be freed on this thread, not by a worker's collection
        self.state = "login"
        self._menu_state("Who is online", False)
        self._menu_state("Log in again…", False)
        self.root.title("dfachat – log in")
        self.root.minsize(1, 1)
        self.root.geometry("")  # fit the dialog
        self.dialog = LoginDialog(self.root, self, **self._login_fields)
        self.dialog.pack(fill="both", expand=True)

    def _show_chat(self, me: LoggedIn) -> None:
        if self.dialog is not None:
            self.dialog.destroy()
            self.dialog = None
            gc.collect()
        self.state = "chat"
        self.me = me
        host, port = self._login_fields["host"], self._login_fields["port"]
        self.root.title(f"dfachat – {me.user} at {host}:{port}")
        self.window = ChatWindow(self.root, self, me)
        self.window.pack(fill="both", expand=True)
        self.root.minsize(520, 320)
        self.root.geometry("780x500")
        self._menu_state("Who is online", True)
        early, self._early = self._early, []
        for event in early:  # the stored messages that came with the login (issue 14: never lost)
            self._on_event(event)

    # --- the worker thread's results reach Tk here ---------------------------------------
    def _post(self, action: Callable[[], None]) -> None:
        """Any thread: run ``action`` on the Tk thread soon."""
        self._inbox.put(action)

    def _on_worker_event(self, event: ChatEvent) -> None:
        self._post(functools.partial(self._on_event, event))

    def _when_done(self, future: concurrent.futures.Future[Any], handler: Callable[[Any], None]) -> None:
        future.add_done_callback(lambda done: self._post(functools.partial(handler, done)))

    def _poll(self) -> None:
        self._poll_id = None
        for _ in range(500):  # a burst never starves the window
            try:
                action = self._inbox.get_nowait()
            except queue.Empty:
                break
            try:
                action()
            except Exception as exc:
                self._callback_failed(type(exc), exc, exc.__traceback__)
        if self.state != "closed":
            self._poll_id = self.root.after(POLL_MS, self._poll)

    def _callback_failed(self, kind: type[BaseException], error: BaseException, trace: Any) -> None:
        """A bug in a Tk callback: say so in a sentence, keep the traceback for the log."""
        log.debug("callback failed", exc_info=(kind, error, trace))
        self.notify(sentence(error), error=True)

    def notify(self, text: str, *, error: bool = False) -> None:
        """Put a sentence where the person is looking: the dialog or the status line."""
        if self.state == "closed":
            return
        if self.window is not None:
            self.window.set_status(text, error=error)
        elif self.dialog is not None:
            if error:
                self.dialog.show_error(text)
            else:
                self.dialog.progress_var.set(text)

    @staticmethod
    def _outcome(future: concurrent.futures.Future[Any]) -> tuple[Any, BaseException | None]:
        try:
            return future.result(), None
        except concurrent.futures.CancelledError as exc:
            return None, exc
        except Exception as exc:
            return None, exc

    # --- actions -----------------------------------------------------------------------------
    def _chat_thread(self) -> ChatThread:
        if self.chat is None:
            self.chat = self._factory(self._on_worker_event)
            self.chat.auto_ack = False  # acknowledged once shown, in _on_event
            self.chat.versions = self.versions
        return self.chat

    def login(self, host: str, port: int, user: str, password: str, encoding: str) -> None:
        if self.state != "login":
            return
        self.state = "connecting"
        self._login_fields = {"host": host, "port": port, "encoding": encoding, "user": user}
        if self.dialog is not None:
            self.dialog.busy(True, f"{host}:{port}")
        self._early = []
        try:
            taken: Any = taken_path_for(host, port, user)
        except OSError as exc:
            log.warning("cannot keep track of the messages shown (%s); after a crash some may be shown again", exc)
            taken = None
        self._when_done(self._chat_thread().login(host, port, user, password, encoding, taken=taken), self._logged_in)

    def _logged_in(self, future: concurrent.futures.Future[LoggedIn]) -> None:
        if self.state != "connecting":
            return
        me, error = self._outcome(future)
        if error is not None:
            self.state = "login"
            self._early = []
            if self.dialog is not None:
                self.dialog.show_error(sentence(error))
                self.dialog.password_var.set("")
                self.dialog.password_entry.focus_set()
            return
        self._show_chat(me)

    def send(self, text: str, to: Sequence[str]) -> None:
        if self.state != "chat" or self.chat is None:
            self.notify("You are not connected; nothing was sent.", error=True)
            return
        recipients = list(to)
        if self.window is not None:
            self.window.set_status("Sending…")
        self._when_done(self.chat.send(text, recipients), functools.partial(self._sent, text, recipients))

    def _sent(self, text: str, to: list[str], future: concurrent.futures.Future[SendResult]) -> None:
        if self.window is None or self.state not in ("chat", "ended"):
            return
        result, error = self._outcome(future)
        if error is not None:
            if isinstance(error, MessageRejected) and not self.window.text_var.get():
                self.window.text_var.set(text)  # give it back to fix and resend
            self.window.set_status(f"Not sent: {sentence(error)}", error=True)
            return
        self.window.add_own(text, to)
        self.window.set_status(describe_result(result), warning=bool(result.problems or result.lossy))

    def refresh_online(self) -> None:
        if self.state == "chat" and self.chat is not None:
            self._when_done(self.chat.who(), self._refreshed)

    def _refreshed(self, future: concurrent.futures.Future[list[str]]) -> None:
        if self.window is None or self.state != "chat":
            return
        names, error = self._outcome(future)
        if error is not None:
            self.window.set_status(sentence(error), error=True)
        else:
            self.window.set_online(names)
            self.window.set_status(f"{len(self.window.online)} others online.")

    def _on_event(self, event: ChatEvent) -> None:
        if self.state == "connecting":  # the login's result is on its way behind these events
            self._early.append(event)
            return
        window = self.window
        if window is None or self.state not in ("chat", "quitting"):
            return  # not shown, so not acknowledged: the server delivers it again at the next login
        if isinstance(event, Delivery):
            window.add_delivery(event)
            if self.chat is not None:
                self.chat.acknowledge(event)  # shown: now it may be forgotten (R7.11)
        elif isinstance(event, Joined):
            window.set_online([*window.online, event.name])
            window.add_system(f"{event.name} joined.")
        elif isinstance(event, Left):
            window.set_online([n for n in window.online if n != event.name])
            window.add_system(f"{event.name} left{_LEFT_REASONS.get(event.reason, '')}.")
        elif isinstance(event, Notice):
            text = f"The server refused something: {sentence(event.reason)} ({event.code.name}, rule {event.rule})"
            window.add_system(text, "error")
            window.set_status(text, error=True)
        elif isinstance(event, Closed):
            if self.state == "quitting":
                return
            self.state = "ended"
            text = f"Disconnected: {sentence(event.error)}"
            window.add_system(text, "error")
            window.set_status(text + " Use Chat ▸ Log in again to reconnect.", error=True)
            window.enable_input(False)
            self._menu_state("Who is online", False)
            self._menu_state("Log in again…", True)

    def quit(self) -> None:
        """Menu Quit, Ctrl+Q and the window's close button: QUIT (and wait for BYE), then close."""
        if self.state == "closed":
            return
        if self.state == "quitting":  # asked twice: do not wait any longer
            self._finish()
            return
        if self.state == "chat" and self.chat is not None:
            self.state = "quitting"
            if self.window is not None:
                self.window.enable_input(False)
                self.window.set_status("Leaving…")
            self._when_done(self.chat.quit(), lambda _future: self._finish())
            self._grace_id = self.root.after(QUIT_GRACE_MS, self._finish)
            return
        self._finish()

    def _finish(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        for timer in (self._poll_id, self._grace_id):
            if timer is not None:
                self.root.after_cancel(timer)
        self._poll_id = self._grace_id = None
        if self.chat is not None:
            self.chat.close()
        self._on_close()


# --- running it -------------------------------------------------------------------------------


def run(*, host: str = "127.0.0.1", port: int = DEFAULT_PORT, encoding: str = "utf-8", user: str = "",
        ssl: Any = None, versions: Sequence[int] = SUPPORTED_VERSIONS) -> int:
    """Open the window and run until the person quits; returns the exit status.

    ``ssl`` is an ``ssl.SSLContext`` (:func:`dfachat.client.tls_context`) for a TLS server;
    ``versions`` the protocol versions offered (R5.1).
    """
    try:
        root = tk.Tk(className="dfachat")
    except tk.TclError as exc:
        print(f"dfachat: error: cannot open a window: {exc} (is DISPLAY set?)", file=sys.stderr)
        return 2
    factory = ChatThread if ssl is None else functools.partial(ChatThread, ssl=ssl)
    app = ChatApp(root, chat_thread_factory=factory, host=host, port=port, encoding=encoding, user=user,
                  versions=versions)
    try:
        root.mainloop()
    except KeyboardInterrupt:
        app._finish()
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dfachat.client.gui [--host] [--port] [--encoding] [--user]``."""
    parser = argparse.ArgumentParser(prog="dfachat gui", description="The dfachat desktop client.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(host=args.host, port=args.port, encoding=args.encoding, user=args.user)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that prefill the login dialog (shared with ``dfachat gui``)."""
    parser.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--encoding", default="utf-8", choices=list(ENCODINGS), help="text encoding (default utf-8)"
    )
    parser.add_argument("--user", default="", help="user name to log in as")


if __name__ == "__main__":
    sys.exit(main())
