"""Load clients for the daemon's socket: closed-loop streams and an open-loop paced stream.

A client must cost far less CPU per event than the daemon, because both share two cores. So the
request lines are built before the clock starts, each connection is a bare ``asyncio.Protocol``,
and responses are counted by newline instead of parsed. The daemon writes one response per
request line, in request order (docs/protocol.md), so the n-th response line is the ack of the
n-th request. An ack latency is the time from the client's ``write`` of a line to the arrival of
its response line.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from benchmarks.measure import Latency

REJECTED_MARK = b'"ok":false'
# Shortest sleep of the open-loop sender. Shorter sleeps made it spin and take CPU from the daemon.
SENDER_TICK_S = 0.001
# A send this far behind its schedule shows that the client itself, or the machine, stalled.
LATE_SEND_S = 0.010


class BenchmarkError(Exception):
    """Failure of a benchmark phase to produce a valid result. The message names the cause."""


class AckStream(asyncio.Protocol):
    """One connection: writes request lines and times the response line of each.

    With ``window`` set, the stream is closed-loop: it keeps ``window`` lines unanswered and sends
    more as acks arrive, until its lines run out or the ``stop_sending_at`` given to ``start``
    passes. With ``window`` None, the caller sends through ``send_until`` and ends with
    ``finish_sending``.
    """

    def __init__(self, lines: list[bytes], *, window: int | None = None) -> None:
        self._lines = lines
        self._window = window
        self._stop_sending_at = math.inf
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._sending_finished = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent = 0
        self.acked = 0
        self.rejected = 0
        self.first_rejection: bytes | None = None
        self.sent_at: list[float] = []
        self.latencies_s: list[float] = []
        self.last_ack_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            detail = f": {exc}" if exc else ""
            self.done.set_exception(
                BenchmarkError(
                    f"the daemon closed a connection after {self.acked} of {self.sent} acks{detail}"
                )
            )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._buffer += data
        cut = self._buffer.rfind(b"\n") + 1
        if cut == 0:
            return
        complete, self._buffer = self._buffer[:cut], self._buffer[cut:]
        count = complete.count(b"\n")
        if REJECTED_MARK in complete:
            self._note_rejections(complete)
        first = self.acked
        self.latencies_s.extend([now - sent for sent in self.sent_at[first : first + count]])
        self.acked += count
        self.last_ack_at = now
        if self._window is not None and now < self._stop_sending_at:
            self.send_until(min(len(self._lines), self.acked + self._window), now)
        elif self._window is not None:
            self._sending_finished = True
        self._check_done()

    def _note_rejections(self, complete: bytes) -> None:
        self.rejected += complete.count(REJECTED_MARK)
        if self.first_rejection is None:
            self.first_rejection = next(item for item in complete.split(b"\n") if REJECTED_MARK in item)

    def send_until(self, count: int, now: float) -> None:
        """Write lines up to index ``count`` (exclusive), stamped with send time ``now``."""
        if count <= self.sent:
            return
        assert self._transport is not None
        self._transport.write(b"".join(self._lines[self.sent : count]))
        self.sent_at.extend([now] * (count - self.sent))
        self.sent = count
        if self.sent == len(self._lines):
            self._sending_finished = True

    def start(self, stop_sending_at: float) -> None:
        """Send the first window of a closed-loop stream, and send nothing after ``stop_sending_at``."""
        assert self._window is not None
        self._stop_sending_at = stop_sending_at
        self.send_until(min(len(self._lines), self._window), time.perf_counter())
        self._check_done()

    def finish_sending(self) -> None:
        self._sending_finished = True
        self._check_done()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _check_done(self) -> None:
        if self._sending_finished and self.acked == self.sent and not self.done.done():
            self.done.set_result(None)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Outcome of one load phase against the daemon."""

    clients: int
    events: int
    seconds: float
    latency: Latency
    # Lines each client sent, for checking the jobs in Redis against them.
    sent_per_client: tuple[int, ...]
    max_send_lag_ms: float | None = None
    # Open loop only: writes more than LATE_SEND_S behind schedule, with the phase time of each (s).
    late_sends_at_s: tuple[float, ...] = ()

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan


async def _connect(path: Path, stream: AckStream) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_unix_connection(lambda: stream, str(path))


async def _wait_all(streams: list[AckStream], timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(stream.done for stream in streams))
    except TimeoutError:
        acked = sum(stream.acked for stream in streams)
        sent = sum(stream.sent for stream in streams)
        raise BenchmarkError(f"the daemon acked {acked} of {sent} lines within {timeout_s:.0f}s") from None
    finally:
        for stream in streams:
            stream.close()
    for stream in streams:
        if stream.rejected:
            reply = (stream.first_rejection or b"").decode(errors="replace")
            raise BenchmarkError(f"the daemon rejected {stream.rejected} lines; first response: {reply}")


def _result(
    streams: list[AckStream],
    started_at: float,
    max_send_lag_ms: float | None = None,
    late_sends_at_s: tuple[float, ...] = (),
) -> LoadResult:
    latencies = [value for stream in streams for value in stream.latencies_s]
    ended_at = max((stream.last_ack_at for stream in streams), default=started_at)
    return LoadResult(
        clients=len(streams),
        events=sum(stream.acked for stream in streams),
        seconds=ended_at - started_at,
        latency=Latency.from_seconds(latencies),
        sent_per_client=tuple(stream.sent for stream in streams),
        max_send_lag_ms=max_send_lag_ms,
        late_sends_at_s=late_sends_at_s,
    )


async def closed_loop(
    path: Path, lines_per_client: list[list[bytes]], *, window: int, duration_s: float, drain_timeout_s: float
) -> LoadResult:
    """Stream from every client at once, each keeping ``window`` lines unanswered.

    Each client stops sending when its lines run out or ``duration_s`` has passed, whichever is
    first, and the phase ends when every line sent has its ack. Raises ``BenchmarkError`` when a
    line is rejected or the acks take longer than ``drain_timeout_s`` after sending stopped.
    """
    streams = [AckStream(lines, window=window) for lines in lines_per_client]
    for stream in streams:
        await _connect(path, stream)
    started_at = time.perf_counter()
    for stream in streams:
        stream.start(stop_sending_at=started_at + duration_s)
    await _wait_all(streams, duration_s + drain_timeout_s)
    return _result(streams, started_at)


async def open_loop(
    path: Path, lines: list[bytes], *, rate_per_s: float, drain_timeout_s: float
) -> LoadResult:
    """Send ``lines`` on one connection at ``rate_per_s``, whatever the acks do (open loop).

    The sender wakes about once per ``SENDER_TICK_S`` and writes every line that is due by then, so
    at 2,000 events/s about two lines share one write. Latency runs from that write, and
    ``max_send_lag_ms`` and ``late_sends_at_s`` report how far and when the writes fell behind the
    schedule.
    """
    stream = AckStream(lines)
    await _connect(path, stream)
    started_at = time.perf_counter()
    max_lag_s = 0.0
    late_sends_at_s: list[float] = []
    while stream.sent < len(lines):
        now = time.perf_counter()
        due = min(len(lines), int((now - started_at) * rate_per_s) + 1)
        if due > stream.sent:
            lag_s = now - (started_at + stream.sent / rate_per_s)
            max_lag_s = max(max_lag_s, lag_s)
            if lag_s > LATE_SEND_S:
                late_sends_at_s.append(round(now - started_at, 3))
            stream.send_until(due, now)
        next_at = started_at + stream.sent / rate_per_s
        await asyncio.sleep(max(SENDER_TICK_S, next_at - time.perf_counter()))
    stream.finish_sending()
    await _wait_all([stream], drain_timeout_s)
    return _result(
        [stream],
        started_at,
        max_send_lag_ms=round(max_lag_s * 1000, 3),
        late_sends_at_s=tuple(late_sends_at_s),
    )
