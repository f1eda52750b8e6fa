"""How `tudui serve` runs uvicorn: its HTTP/1.1 protocol with a deadline on request headers, and `--workers N`
server processes sharing one listening socket.

Protocol: uvicorn's httptools protocol (the C parser of Node.js's llhttp) where the `httptools` package is installed
(the serve extra installs it, with uvloop, which uvicorn then runs as its event loop), else its pure-Python h11 one.
Parsing a request with h11 took about as long as the rest of a 28-px prediction (benchmarks/serve_load.py).

Slow-loris: a client that opens a connection and sends its request headers a byte at a time (or never finishes
them) holds the connection for as long as it likes under uvicorn alone: its keep-alive timeout runs only between
requests, and `--read-timeout` starts once the headers are in. HeaderDeadline closes a connection whose request
head is not complete `--header-timeout` seconds after the connection opened (or after the first byte of the next
request on a kept-alive connection); the event loop never waits on such a client, so everyone else is answered
meanwhile.

Workers: the parent binds the sockets and starts N processes (uvicorn's own supervisor: spawned, restarted if one
dies, all stopped on Ctrl-C or SIGTERM); each loads the model itself. On Linux each worker has its own listening
socket on the one port (SO_REUSEPORT), and the kernel spreads new connections over them by their addresses' hash.
Why: from one shared socket, whichever worker's event loop woke first accepted every connection waiting (uvloop
accepts until none is left), so a client burst of kept-alive connections often landed on one worker: measured, 8 of
8 on one of two workers (1,310 requests/s against 2,500-3,200 when split) and 23 of 32. Elsewhere, and with one
worker, the one shared socket.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ATTR = "tudui_header_timeout_s"  # set on uvicorn's Config; travels with it into spawned workers


class HeaderDeadline:
    """The deadline on request heads, mixed into one of uvicorn's HTTP protocols: armed when a connection opens
    and when a request's first bytes arrive, disarmed when its headers are complete."""

    header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self.header_deadline is None:
            timeout = getattr(self.config, HEADER_TIMEOUT_ATTR, 10.0)  # s
            self.header_deadline = self.loop.call_later(timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _waiting_for_head(self) -> bool:
        raise NotImplementedError

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.logger.info("closed a connection whose request headers took over %gs",
                             getattr(self.config, HEADER_TIMEOUT_ATTR, 10.0))
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


class HeaderDeadlineH11(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head has not arrived within the deadline."""

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE  # no complete request line and headers yet

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head() and not self.transport.is_closing():
            self._arm()  # a new request's head has begun (or not yet): the deadline runs
        else:
            self._disarm()
        # after a response, the next request on this connection gets a deadline of its own once it starts (here);
        # until then uvicorn's keep-alive timeout closes an idle connection


try:  # the httptools package (the serve extra installs it); uvicorn's module imports it
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:
    HttpToolsProtocol = None

if HttpToolsProtocol is not None:
    # At module level, so spawned --workers processes can unpickle the Config that names it.
    class HeaderDeadlineHttpTools(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol, closing a connection whose request head has not arrived in time."""

        in_head = True  # from the connection's opening until its first request's headers are parsed

        def _waiting_for_head(self) -> bool:
            return self.in_head

        def on_message_begin(self) -> None:  # a request's first byte (a kept-alive connection's next request)
            super().on_message_begin()
            self.in_head = True
            self._arm()

        def on_headers_complete(self) -> None:
            self.in_head = False
            self._disarm()
            super().on_headers_complete()


def protocol(name: str = "auto"):
    """The HTTP protocol class `tudui serve` runs, both with the header deadline: "httptools" (where installed),
    "h11", or "auto" (httptools where installed, else h11)."""
    if name == "h11" or HttpToolsProtocol is None:
        return HeaderDeadlineH11
    return HeaderDeadlineHttpTools


def run_workers(config, socks: list, announce) -> None:
    """Serve `config` (its app an import string, `workers` > 1) from N spawned processes, until Ctrl-C or SIGTERM;
    uvicorn's supervisor restarts a worker that dies. `socks`: one listening socket all workers share, or one per
    worker (SO_REUSEPORT: `listen_sockets`). `announce()` runs once every worker has started serving (each loads the
    model first), so the address it prints answers at once."""
    from uvicorn.supervisors import Multiprocess
    from uvicorn.supervisors.multiprocess import logger

    class Workers(Multiprocess):  # every worker on the one shared socket
        def init_processes(self) -> None:
            super().init_processes()
            for p in self.processes:
                while not p.is_ready(timeout=1):
                    if self.signal_queue or not p.process.is_alive():
                        return  # stopping, or a worker failed to start: the supervisor's loop deals with it
            announce()

    class OwnSockets(Workers):  # each worker on its own socket (socks[i] for the i-th)
        @property
        def sockets(self) -> list:
            """The socket of the worker uvicorn's supervisor is about to create (it passes `self.sockets` to each new
            one): the next one's while it starts them in order, then that of the first worker that has ended, which
            it replaces (it replaces them in index order)."""
            if len(self.processes) < len(socks):
                return [socks[len(self.processes)]]
            return [socks[next(i for i, p in enumerate(self.processes) if p.exitcode is not None)]]

        @sockets.setter
        def sockets(self, value) -> None:  # Multiprocess.__init__ assigns it: the property decides instead
            pass

        def handle_hup(self) -> None:  # restart_all would start each new worker beside the old: whose socket?
            logger.info("Received SIGHUP: the workers keep running (stop tudui serve and start it again to reload)")

        def handle_ttin(self) -> None:  # one socket per worker: their number is fixed
            logger.info(f"Received SIGTTIN: the number of workers stays {len(socks)} (one listening socket each)")

        def handle_ttou(self) -> None:
            logger.info(f"Received SIGTTOU: the number of workers stays {len(socks)} (one listening socket each)")

    # listening from now on: connections made while the workers start wait in the backlog (each worker's own
    # listen() call later keeps it), instead of being refused
    for sock in socks:
        sock.listen(config.backlog)
    (Workers if len(socks) == 1 else OwnSockets)(config, sockets=socks).run()


def uvicorn_config(app, options, http: str = "auto", **kwargs):
    """uvicorn's Config for `tudui serve`: protocol()'s HTTP protocol with the header deadline of
    options.header_timeout_s, and uvloop as the event loop where installed (uvicorn's loop "auto"); a line per
    request only with options.access_log.
    `app`: the ASGI app, or an import string with factory=True (workers); `http`: protocol()'s name."""
    import uvicorn

    config = uvicorn.Config(app, log_level=options.log_level, access_log=options.access_log, http=protocol(http),
                            **kwargs)
    setattr(config, HEADER_TIMEOUT_ATTR, options.header_timeout_s)
    return config
