"""How `tudui serve` runs uvicorn: its HTTP/1.1 protocol with a deadline on request headers, and `--workers N`
server processes sharing one listening socket.

Slow-loris: a client that opens a connection and sends its request headers a byte at a time (or never finishes
them) holds the connection for as long as it likes under uvicorn alone: its keep-alive timeout runs only between
requests, and `--read-timeout` starts once the headers are in. HeaderDeadlineH11 closes a connection whose request
head is not complete `--header-timeout` seconds after the connection opened (or after the previous response on a
kept-alive connection); the event loop never waits on such a client, so everyone else is answered meanwhile.

Workers: the parent binds the socket and starts N processes (uvicorn's own supervisor: spawned, restarted if one
dies, all stopped on Ctrl-C or SIGTERM); each loads the model itself and accepts connections from the shared socket.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ATTR = "tudui_header_timeout_s"  # set on uvicorn's Config; travels with it into spawned workers


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head has not arrived within the deadline."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float = getattr(config, HEADER_TIMEOUT_ATTR, 10.0)
        self.header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE  # no complete request line and headers yet

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head() and not self.transport.is_closing():
            self._arm()  # a new request's head has begun (or not yet): the deadline runs
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request on this connection gets a deadline of its own once it starts (data_received); until
        # then uvicorn's keep-alive timeout closes an idle connection

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.logger.info("closed a connection whose request headers took over %gs", self.header_timeout_s)
            self.transport.close()


def run_workers(config, sock, announce) -> None:
    """Serve `config` (its app an import string, `workers` > 1) from N spawned processes sharing `sock`, until
    Ctrl-C or SIGTERM; uvicorn's supervisor restarts a worker that dies. `announce()` runs once every worker has
    started serving (each loads the model first), so the address it prints answers at once."""
    from uvicorn.supervisors import Multiprocess

    class Workers(Multiprocess):
        def init_processes(self) -> None:
            super().init_processes()
            for p in self.processes:
                while not p.is_ready(timeout=1):
                    if self.signal_queue or not p.process.is_alive():
                        return  # stopping, or a worker failed to start: the supervisor's loop deals with it
            announce()

    # listening from now on: connections made while the workers start wait in the backlog (each worker's own
    # listen() call later keeps it), instead of being refused
    sock.listen(config.backlog)
    Workers(config, sockets=[sock]).run()


def uvicorn_config(app, options, **kwargs):
    """uvicorn's Config for `tudui serve`: the h11 protocol with the header deadline of options.header_timeout_s.
    `app`: the ASGI app, or an import string with factory=True (workers)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=options.log_level, http=HeaderDeadlineH11, **kwargs)
    setattr(config, HEADER_TIMEOUT_ATTR, options.header_timeout_s)
    return config
