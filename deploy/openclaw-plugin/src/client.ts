// Connection to the orchestrator daemon: a bounded in-memory buffer, one Unix socket connection,
// reconnection with exponential backoff, and resending of events whose acknowledgement was lost.
//
// Delivery is at least once while the gateway process lives: an event leaves memory only when the
// daemon acknowledges it, rejects it for good, or the buffer overflows. Resending is safe because
// the daemon deduplicates by event id. Events still buffered when the gateway process exits are
// lost.

import { createConnection, type Socket } from "node:net";

import type { Logger } from "./log.ts";
import { RateLimitedLog } from "./log.ts";

export type ClientOptions = {
  socketPath: string;
  bufferSize: number;
  connectTimeoutMs: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  logger: Logger;
  // Interval of the rate-limited warnings (drops, rejections, connection failures).
  logIntervalMs?: number;
  // Returns a number in [0, 1) for the backoff jitter; tests pass a constant.
  random?: () => number;
};

export type ClientStats = {
  enqueued: number;
  acknowledged: number;
  rejected: number;
  dropped: number;
  resent: number;
  connects: number;
  connected: boolean;
  buffered: number;
  inFlight: number;
};

type Entry = {
  id: string;
  line: string;
  // Set when the buffer overflowed while the line was on the wire: its response is still
  // consumed in order, but it is not resent if the connection drops first.
  dropped: boolean;
  sends: number;
};

type ErrorResponse = { code: string; message: string };

// Error codes after which the daemon did not record the event and expects a later resend.
const RETRYABLE_CODES = new Set(["overloaded", "internal"]);
// A daemon response longer than this without a newline means framing is lost.
const MAX_RESPONSE_LINE_BYTES = 64 * 1024;
const DEFAULT_LOG_INTERVAL_MS = 30_000;

type State = "idle" | "connecting" | "connected" | "waiting";

/**
 * Client of the daemon's wire protocol v1. send() never blocks and never throws: it appends the
 * line to the buffer and returns, and the client writes it when a connection is up.
 */
export class DaemonClient {
  private options: ClientOptions;
  private readonly log: RateLimitedLog;
  private readonly random: () => number;

  // Lines not yet written on the current connection, oldest first.
  private pending: Entry[] = [];
  // Lines written on the current connection whose response has not arrived, in write order.
  private inFlight: Entry[] = [];
  // Lines that got a retryable error response. They go back to the front of pending when the
  // retry timer fires.
  private deferred: Entry[] = [];

  private state: State = "idle";
  private socket: Socket | null = null;
  private readBuffer = "";
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  private closed = false;
  private drainWaiters: Array<() => void> = [];

  private readonly counters = {
    enqueued: 0,
    acknowledged: 0,
    rejected: 0,
    dropped: 0,
    resent: 0,
    connects: 0,
  };

  constructor(options: ClientOptions) {
    this.options = options;
    this.log = new RateLimitedLog(options.logger, options.logIntervalMs ?? DEFAULT_LOG_INTERVAL_MS);
    this.random = options.random ?? Math.random;
  }

  /** Appends one encoded frame to the buffer and starts a connection if none is up or pending. */
  send(id: string, line: string): void {
    if (this.closed) {
      return;
    }
    this.counters.enqueued += 1;
    this.pending.push({ id, line, dropped: false, sends: 0 });
    try {
      this.enforceBound();
      if (this.state === "connected") {
        this.writePending();
      } else if (this.state === "idle") {
        this.connect();
      }
      // "connecting" writes the buffer once connected; "waiting" does when its timer fires.
    } catch (error) {
      // The event stays buffered; dropping the connection makes the client reconnect and resend.
      this.log.report("send", "error", (count) =>
        `openclaw-orchestrator: sending to the daemon failed (${count} time(s)): ${describeError(error)}; reconnecting`,
      );
      this.socket?.destroy();
    }
  }

  /** Applies new options. A changed socket path closes the current connection and reconnects. */
  reconfigure(options: ClientOptions): void {
    const pathChanged = options.socketPath !== this.options.socketPath;
    this.options = options;
    this.enforceBound();
    if (pathChanged && this.socket !== null) {
      this.socket.destroy();
    }
  }

  /** Resolves when every buffered event is acknowledged or rejected, or after timeoutMs. */
  flush(timeoutMs: number): Promise<boolean> {
    if (this.outstanding() === 0) {
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.drainWaiters = this.drainWaiters.filter((waiter) => waiter !== onDrain);
        resolve(false);
      }, timeoutMs);
      timer.unref?.();
      const onDrain = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.drainWaiters.push(onDrain);
    });
  }

  /** Closes the connection, stops all timers and discards the buffer. */
  close(): void {
    this.closed = true;
    this.clearTimers();
    this.socket?.destroy();
    this.socket = null;
    this.pending = [];
    this.inFlight = [];
    this.deferred = [];
    this.log.flush();
    this.notifyDrained();
  }

  stats(): ClientStats {
    return {
      ...this.counters,
      connected: this.state === "connected",
      buffered: this.pending.length + this.deferred.length,
      inFlight: this.inFlight.length,
    };
  }

  // Number of events held in memory and not yet acknowledged, rejected or dropped.
  private outstanding(): number {
    let count = this.pending.length + this.deferred.length;
    for (const entry of this.inFlight) {
      if (!entry.dropped) {
        count += 1;
      }
    }
    return count;
  }

  // Drops the oldest events until at most bufferSize are held. Events not yet on the wire are
  // older than the deferred and in-flight ones only when they were requeued, so the order of
  // preference is: requeued and unsent events (front of pending), deferred, then in flight.
  private enforceBound(): void {
    let excess = this.outstanding() - this.options.bufferSize;
    if (excess <= 0) {
      return;
    }
    let dropped = 0;
    while (excess > 0 && this.inFlight.some((entry) => !entry.dropped)) {
      const oldest = this.inFlight.find((entry) => !entry.dropped);
      if (oldest === undefined) {
        break;
      }
      oldest.dropped = true;
      excess -= 1;
      dropped += 1;
    }
    while (excess > 0 && this.deferred.length > 0) {
      this.deferred.shift();
      excess -= 1;
      dropped += 1;
    }
    while (excess > 0 && this.pending.length > 0) {
      this.pending.shift();
      excess -= 1;
      dropped += 1;
    }
    this.counters.dropped += dropped;
    this.log.report(
      "drop",
      "warn",
      (count) =>
        `openclaw-orchestrator: dropped ${count} oldest event(s) because the buffer is full ` +
          `(bufferSize=${this.options.bufferSize}, daemon socket ${this.options.socketPath}); ` +
          `the daemon may have missed sub-agent work`,
      dropped,
    );
  }

  private connect(): void {
    if (this.closed || this.state === "connecting" || this.state === "connected") {
      return;
    }
    this.state = "connecting";
    const path = this.options.socketPath;

    let socket: Socket;
    try {
      socket = createConnection({ path });
    } catch (error) {
      this.onConnectionLost(null, error);
      return;
    }
    this.socket = socket;
    socket.setEncoding("utf8");
    // The gateway must be able to exit while a connection or a retry is open.
    socket.unref();

    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      socket.destroy(new Error(`connection timed out after ${this.options.connectTimeoutMs} ms`));
    }, this.options.connectTimeoutMs);
    this.connectTimer.unref?.();

    socket.once("connect", () => this.onConnected(socket));
    socket.on("data", (chunk: string) => this.onData(socket, chunk));
    socket.on("error", (error) => this.onConnectionLost(socket, error));
    socket.on("close", () => this.onConnectionLost(socket, null));
  }

  private onConnected(socket: Socket): void {
    if (socket !== this.socket) {
      return;
    }
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
    this.state = "connected";
    this.counters.connects += 1;
    const buffered = this.pending.length;
    if (this.failures > 0) {
      this.options.logger.info(
        `openclaw-orchestrator: connected to the daemon at ${this.options.socketPath}; ` +
          `sending ${buffered} buffered event(s)`,
      );
    } else {
      this.options.logger.debug?.(`openclaw-orchestrator: connected to the daemon at ${this.options.socketPath}`);
    }
    this.writePending();
  }

  private writePending(): void {
    const socket = this.socket;
    if (socket === null || this.state !== "connected" || this.retryTimer !== null) {
      return;
    }
    while (this.pending.length > 0) {
      const entry = this.pending.shift() as Entry;
      if (entry.sends > 0) {
        this.counters.resent += 1;
      }
      entry.sends += 1;
      this.inFlight.push(entry);
      // write() queues in memory when the socket is busy; the buffer bound caps that memory.
      socket.write(entry.line);
    }
  }

  private onData(socket: Socket, chunk: string): void {
    if (socket !== this.socket) {
      return;
    }
    this.readBuffer += chunk;
    let newline = this.readBuffer.indexOf("\n");
    while (newline !== -1) {
      const line = this.readBuffer.slice(0, newline).trim();
      this.readBuffer = this.readBuffer.slice(newline + 1);
      if (line.length > 0 && !this.onResponse(socket, line)) {
        return;
      }
      newline = this.readBuffer.indexOf("\n");
    }
    if (this.readBuffer.length > MAX_RESPONSE_LINE_BYTES) {
      this.protocolError(socket, `a response line is longer than ${MAX_RESPONSE_LINE_BYTES} bytes`);
    }
  }

  // Applies one response line. Returns false when the connection was closed because of it.
  private onResponse(socket: Socket, line: string): boolean {
    let response: unknown;
    try {
      response = JSON.parse(line);
    } catch {
      this.protocolError(socket, `the daemon sent a line that is not JSON: ${line.slice(0, 200)}`);
      return false;
    }
    if (response === null || typeof response !== "object") {
      this.protocolError(socket, `the daemon sent a response that is not an object: ${line.slice(0, 200)}`);
      return false;
    }
    const { id, ok, error } = response as { id?: unknown; ok?: unknown; error?: unknown };
    const failure = ok === true ? null : errorOf(error);

    // A connection over the daemon's limit gets one overloaded frame with no id and is closed.
    if (id === null && failure?.code === "overloaded") {
      this.log.report("overloaded-connection", "warn", (count) =>
        `openclaw-orchestrator: the daemon at ${this.options.socketPath} rejected the connection as ` +
          `overloaded (${count} time(s)); retrying with backoff`,
      );
      socket.destroy();
      return false;
    }

    const entry = this.inFlight[0];
    if (entry === undefined) {
      this.protocolError(socket, `the daemon sent a response with no request waiting: ${line.slice(0, 200)}`);
      return false;
    }
    // A null id is the response to a line the daemon could not parse far enough to read its id.
    // That line is still the oldest in flight, because responses come in request order.
    if (id !== null && id !== entry.id) {
      this.protocolError(socket, `response id ${JSON.stringify(id)} does not match request id ${entry.id}`);
      return false;
    }
    this.inFlight.shift();

    if (failure === null) {
      this.failures = 0;
      if (!entry.dropped) {
        this.counters.acknowledged += 1;
      }
    } else if (RETRYABLE_CODES.has(failure.code)) {
      if (!entry.dropped) {
        this.deferRetry(entry, failure);
      }
    } else if (!entry.dropped) {
      this.counters.rejected += 1;
      this.log.report(`rejected:${failure.code}`, "error", (count) =>
        `openclaw-orchestrator: the daemon rejected ${count} event(s) with ${failure.code}: ` +
          `${failure.message} (event ${entry.id}); they will not be resent`,
      );
    }

    if (this.outstanding() === 0) {
      this.notifyDrained();
    }
    return true;
  }

  // Holds an event the daemon could not store right now and pauses writing for one backoff delay.
  private deferRetry(entry: Entry, failure: ErrorResponse): void {
    this.deferred.push(entry);
    this.log.report(`retry:${failure.code}`, "warn", (count) =>
      `openclaw-orchestrator: the daemon returned ${failure.code} for ${count} event(s): ${failure.message}; ` +
        `resending them later`,
    );
    if (this.retryTimer !== null) {
      return;
    }
    this.failures += 1;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pending = this.deferred.concat(this.pending);
      this.deferred = [];
      if (this.state === "connected") {
        this.writePending();
      } else if (this.state === "idle") {
        this.connect();
      }
    }, this.backoffDelay());
    this.retryTimer.unref?.();
  }

  private protocolError(socket: Socket, message: string): void {
    this.log.report("protocol", "error", (count) =>
      `openclaw-orchestrator: ${message} (${count} time(s)); reconnecting and resending unacknowledged events`,
    );
    socket.destroy();
  }

  private onConnectionLost(socket: Socket | null, error: unknown): void {
    if (socket !== null && socket !== this.socket) {
      return;
    }
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
    const wasConnected = this.state === "connected";
    this.socket?.destroy();
    this.socket = null;
    this.readBuffer = "";
    if (this.closed) {
      return;
    }

    // Events written but not acknowledged go back to the front of the buffer, in their order.
    const unacknowledged = this.inFlight.filter((entry) => !entry.dropped);
    this.inFlight = [];
    this.pending = unacknowledged.concat(this.pending);
    this.enforceBound();

    if (wasConnected && error === null && this.outstanding() === 0) {
      // The daemon closed an idle connection, such as at its shutdown; reconnect on the next event.
      this.state = "idle";
      return;
    }

    this.failures += 1;
    const delay = this.backoffDelay();
    const reason = describeError(error);
    this.log.report("connect", "warn", (count) =>
      `openclaw-orchestrator: cannot reach the daemon at ${this.options.socketPath} (${reason}; ` +
        `${count} failure(s)); buffering ${this.outstanding()} event(s) and retrying in ${delay} ms`,
    );
    this.state = "waiting";
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.pending = this.deferred.concat(this.pending);
      this.deferred = [];
    }
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.state = "idle";
      if (this.outstanding() > 0) {
        this.connect();
      }
    }, delay);
    this.retryTimer.unref?.();
  }

  // Exponential backoff with equal jitter: half the delay is fixed, half random.
  private backoffDelay(): number {
    const { reconnectMinMs, reconnectMaxMs } = this.options;
    const exponent = Math.min(Math.max(this.failures - 1, 0), 30);
    const ceiling = Math.min(reconnectMaxMs, reconnectMinMs * 2 ** exponent);
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  private clearTimers(): void {
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
  }

  private notifyDrained(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const waiter of waiters) {
      waiter();
    }
  }
}

function errorOf(error: unknown): ErrorResponse {
  if (error !== null && typeof error === "object") {
    const { code, message } = error as { code?: unknown; message?: unknown };
    return {
      code: typeof code === "string" ? code : "unknown",
      message: typeof message === "string" ? message : "no message",
    };
  }
  return { code: "unknown", message: "the response has ok other than true and no error object" };
}

function describeError(error: unknown): string {
  if (error === null || error === undefined) {
    return "connection closed";
  }
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
