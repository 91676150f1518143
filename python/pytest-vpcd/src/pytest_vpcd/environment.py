"""The private pcscd of a pytest process and its slots.

The environment is ``vpcd-run --no-namespaces`` (vpcd-rs): its own pcscd on a socket
in a private temporary directory (handed over by systemd socket activation), one
reader of N slots on free loopback ports, no root and no namespaces. vpcd-run runs
a command that reports the environment and then waits for its standard input to
close; we hold the other end of that pipe, so the environment ends with this
process however it ends (even SIGKILL), and vpcd-run removes everything it made.

libpcsclite reads ``PCSCLITE_CSOCK_NAME`` once per process, at the first PC/SC
context: the environment sets it before any context of ours, and checks that
pyscard really reaches its pcscd.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: How long a card may take to come or go, in seconds.
CARD_WAIT = 10.0

#: What the command inside vpcd-run prints once the environment is ready.
_READY = "VPCD_READY"
_REPORT = (
    'printf "%s\\t%s\\t%s\\t%s\\n" ' + _READY + ' "$PCSCLITE_CSOCK_NAME" "$VPCD_PORT" '
    '"$VPCD_READER"; exec cat >/dev/null'
)

_PR_SET_PDEATHSIG = 1


class VpcdError(Exception):
    """The environment or a card did not do what was asked; the message says why."""


def _die_with_parent() -> None:
    """In a child between fork and exec: SIGKILL when pytest's main thread ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def find_program(name: str, variable: str, beside: Optional[Path] = None) -> str:
    """``$variable``, else beside ``beside`` (vpcd-run's directory), else PATH."""
    if os.environ.get(variable):
        return os.environ[variable]
    if beside is not None and (beside / name).is_file():
        return str(beside / name)
    found = shutil.which(name)
    if found is None:
        raise VpcdError(
            f"{name} not found in PATH: build vpcd-rs (cargo build; its programs are in "
            f"target/debug) and put it in PATH, install its packages, or set {variable}"
        )
    return found


class Environment:
    """A private pcscd with one reader of ``slots`` slots, for this process."""

    def __init__(self, vpcd_run: Optional[str] = None, slots: int = 16, debug: bool = False):
        if not 1 <= slots <= 16:
            raise VpcdError(f"{slots} slots: expected 1 to 16")
        self.vpcd_run = vpcd_run or find_program("vpcd-run", "VPCD_RUN")
        self.slots = slots
        self._free = [True] * slots
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        args = [self.vpcd_run, "--no-namespaces", "--no-card", "--slots", str(slots)]
        args += ["--debug"] if debug else ["--quiet"]
        try:
            self._process = subprocess.Popen(
                args + ["--", "/bin/sh", "-c", _REPORT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None if debug else subprocess.PIPE,
                text=True,
            )
        except OSError as e:
            raise VpcdError(f"cannot run {self.vpcd_run}: {e}") from None
        line = self._process.stdout.readline()
        if not line.startswith(_READY + "\t"):
            self._process.stdin.close()
            err = self._process.stderr.read() if self._process.stderr else ""
            self._process.wait()
            raise VpcdError(f"vpcd-run did not start the environment: {line}{err}".strip())
        _, sock, port, reader = line.rstrip("\n").split("\t")
        self.socket = Path(sock)
        #: The environment's private directory: our logs and control sockets go
        #: there, and vpcd-run removes it at the end.
        self.dir = self.socket.parent
        self.base_port = int(port)
        self.friendly_name = reader.rsplit(" ", 2)[0]
        self.vpcd_vicc = find_program(
            "vpcd-vicc", "VPCD_VICC", Path(self.vpcd_run).resolve().parent
        )
        # Drain vpcd-run's stderr, so that it never blocks on a full pipe.
        if self._process.stderr is not None:
            threading.Thread(target=self._process.stderr.read, daemon=True).start()
        os.environ["PCSCLITE_CSOCK_NAME"] = str(self.socket)
        self._check_client()

    def _check_client(self) -> None:
        from smartcard import scard

        hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise VpcdError(
                f"no PC/SC context with the private pcscd at {self.socket}: "
                f"{scard.SCardGetErrorMessage(hresult)}"
            )
        try:
            hresult, readers = scard.SCardListReaders(ctx, [])
            if self.reader_name(0) not in (readers or []):
                raise VpcdError(
                    f'the private pcscd\'s reader "{self.reader_name(0)}" is not among the '
                    f"readers pyscard sees ({readers}): libpcsclite reads "
                    "PCSCLITE_CSOCK_NAME once per process, so no PC/SC context may be "
                    "made before the first vpcd fixture"
                )
        finally:
            scard.SCardReleaseContext(ctx)

    def reader_name(self, index: int) -> str:
        return f"{self.friendly_name} 00 {index:02X}"

    def port(self, index: int) -> int:
        return self.base_port + index

    def lease(self, timeout: float = 120.0) -> "Slot":
        """A free slot; waits while all are leased."""
        deadline = time.monotonic() + timeout
        with self._freed:
            while True:
                for i, free in enumerate(self._free):
                    if free:
                        self._free[i] = False
                        return Slot(self, i)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VpcdError(f"no slot freed within {timeout} s: all {self.slots} leased")
                self._freed.wait(left)

    def _release(self, index: int) -> None:
        with self._freed:
            self._free[index] = True
            self._freed.notify()

    def close(self) -> None:
        """Ends the environment (vpcd-run ends pcscd and removes its directory)."""
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class Slot:
    """A slot of the environment, leased to one test.

    ``host`` and ``port``: where the slot's vicc connects (loopback only).
    ``reader``: the name PC/SC clients open. ``env``: the variables a child
    process needs to use it (``PCSCLITE_CSOCK_NAME``, ``VPCD_READER``, ``VPCD_PORT``).
    """

    host = "127.0.0.1"

    def __init__(self, environment: Environment, index: int):
        self.environment = environment
        self.index = index
        self.port = environment.port(index)
        self.reader = environment.reader_name(index)
        self._process: Optional[subprocess.Popen] = None
        self._control: Optional[Path] = None
        self._log: Optional[Path] = None
        self._connections: List = []
        self._released = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def env(self) -> Dict[str, str]:
        return {
            "PCSCLITE_CSOCK_NAME": str(self.environment.socket),
            "VPCD_READER": self.reader,
            "VPCD_PORT": str(self.port),
        }

    # Cards

    def insert_builtin(self, *args: str) -> None:
        """Puts the built-in card (vpcd-vicc; ``args`` are more of its options, e.g.
        ``"--atr", "3B 80 80 01 01"``) in the slot and waits until it is reported."""
        control = self.environment.dir / f"slot-{self.index:02}.ctl"
        if control.exists():
            control.unlink()
        self._start(
            [self.environment.vpcd_vicc, "-H", self.host, "-P", str(self.port), "--control",
             str(control), *args],
            None,
        )
        self._control = control
        self._wait_inserted()

    def spawn_vicc(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        """Starts a vicc of your own, which must connect to ``host:port``, and waits
        until its card is reported. It ends with the test (and with pytest)."""
        self._start(list(argv), env)
        self._wait_inserted()

    def python_vicc(self, card_type: str = "iso7816", *args: str) -> None:
        """vsmartcard's Python vicc (Debian: vsmartcard-vpicc) in the slot."""
        shim = self.environment.dir / "pyshim"
        shim.mkdir(exist_ok=True)
        crypto = shim / "Crypto"
        dome = Path("/usr/lib/python3/dist-packages/Cryptodome")
        if not crypto.exists() and dome.is_dir():
            # Debian 12 ships PyCryptodome as Cryptodome; the vicc imports Crypto.
            crypto.symlink_to(dome)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(shim), "/usr/lib/python3/site-packages/virtualsmartcard",
             env.get("PYTHONPATH", "")]
        )
        self.spawn_vicc(
            ["/usr/bin/python3", shutil.which("vicc") or "/usr/bin/vicc", "-t", card_type,
             "-H", self.host, "-P", str(self.port), *args],
            env,
        )

    def remove_card(self) -> None:
        """Takes the built-in card out and waits until the reader reports it gone."""
        self._send("remove")
        self.wait_absent()

    def insert_card(self) -> None:
        """Puts it back and waits until the reader reports it."""
        self._send("insert")
        self.wait_present()

    def eject(self) -> None:
        """Ends the card (its process) and waits until the slot is reported empty."""
        for c in self._connections:
            try:
                c.disconnect()
            except Exception:
                pass
        self._connections.clear()
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        self._control = None
        self.wait_absent()

    def _start(self, argv: List[str], env: Optional[Dict[str, str]]) -> None:
        if self._process is not None:
            raise VpcdError(f"{self.reader} has a card already: eject() it first")
        self._log = self.environment.dir / f"slot-{self.index:02}-vicc.log"
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                preexec_fn=_die_with_parent,
            )

    def output(self) -> str:
        """The card process's output so far."""
        try:
            return self._log.read_text(errors="replace") if self._log else ""
        except OSError:
            return ""

    def _send(self, command: str) -> str:
        if self._control is None:
            raise VpcdError("remove and insert need the built-in card (insert_builtin)")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(15)
            s.connect(str(self._control))
            s.sendall(command.encode() + b"\n")
            answer = s.makefile().readline().strip()
        if not answer or answer.startswith("error: "):
            raise VpcdError(f"vpcd-vicc {command}: {answer or 'no answer'}\n{self.output()}")
        return answer

    def _wait_inserted(self) -> None:
        """Waits for the card, watching its process: one that exits fails at once,
        with its output."""
        deadline = time.monotonic() + CARD_WAIT
        while True:
            if self._state(0.25) & _PRESENT:
                return
            ended = self._process.poll() if self._process else None
            if ended is not None or time.monotonic() >= deadline:
                why = f"the vicc ended ({ended})" if ended is not None else "no card in time"
                out = self.output()
                if self._process is not None:
                    self._process.kill()
                    self._process.wait()
                    self._process = None
                raise VpcdError(f"{self.reader}: {why}; its output:\n{out}")

    # PC/SC

    def wait_present(self, timeout: float = CARD_WAIT) -> None:
        """Waits until the reader reports a card (SCardGetStatusChange)."""
        self._wait(True, timeout)

    def wait_absent(self, timeout: float = CARD_WAIT) -> None:
        """Waits until the reader reports no card."""
        self._wait(False, timeout)

    def _wait(self, present: bool, timeout: float) -> None:
        state = self._state(timeout, want=present)
        if bool(state & _PRESENT) != present:
            raise VpcdError(
                f"{self.reader}: card {'insertion' if present else 'removal'} not "
                f"reported within {timeout} s"
            )

    def _state(self, timeout: float, want: Optional[bool] = True) -> int:
        """The reader's event state once it has (or, with want=False, has not) a
        card, or when ``timeout`` runs out."""
        from smartcard import scard

        hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise VpcdError(f"SCardEstablishContext: {scard.SCardGetErrorMessage(hresult)}")
        try:
            deadline = time.monotonic() + timeout
            current = scard.SCARD_STATE_UNAWARE
            while True:
                left = max(0, int((deadline - time.monotonic()) * 1000))
                hresult, states = scard.SCardGetStatusChange(ctx, left, [(self.reader, current)])
                if hresult not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT):
                    raise VpcdError(
                        f"SCardGetStatusChange({self.reader}): "
                        f"{scard.SCardGetErrorMessage(hresult)}"
                    )
                event = states[0][1]
                known = not event & scard.SCARD_STATE_UNKNOWN
                if known and bool(event & _PRESENT) == want:
                    return event
                if hresult == scard.SCARD_E_TIMEOUT or left == 0:
                    return event
                current = event & ~scard.SCARD_STATE_CHANGED
        finally:
            scard.SCardReleaseContext(ctx)

    def connect(self):
        """A pyscard connection to the slot's card, connected (closed with the lease)."""
        from smartcard.System import readers

        reader = next((r for r in readers() if str(r) == self.reader), None)
        if reader is None:
            raise VpcdError(f"{self.reader} not among pyscard's readers")
        conn = reader.createConnection()
        conn.connect()
        self._connections.append(conn)
        return conn

    def transmit(self, apdu: Sequence[int]):
        """One APDU on a connection of the lease's own: ``(data, sw1, sw2)``."""
        if not self._connections:
            self.connect()
        return self._connections[0].transmit(list(apdu))

    def release(self) -> None:
        """Ejects the card and gives the slot back (the fixtures do this)."""
        if self._released:
            return
        self._released = True
        try:
            self.eject()
        except VpcdError:
            # The card did not go: keep the slot from the next test.
            raise
        self.environment._release(self.index)


_PRESENT = 0x20  # SCARD_STATE_PRESENT, the same in every pcsc-lite
