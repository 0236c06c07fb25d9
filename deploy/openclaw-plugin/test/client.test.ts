import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { DaemonClient, type ClientOptions } from "../src/client.ts";
import { FakeDaemon, RecordingLogger, makeTempDir, sleep, waitFor, type TempDir } from "./helpers.ts";

let dir: TempDir;
let daemon: FakeDaemon;
let logger: RecordingLogger;
let clients: DaemonClient[];

beforeEach(() => {
  dir = makeTempDir();
  daemon = new FakeDaemon(dir.socketPath);
  logger = new RecordingLogger();
  clients = [];
});

afterEach(async () => {
  for (const client of clients) {
    client.close();
  }
  await daemon.close();
  dir.remove();
});

function makeClient(overrides: Partial<ClientOptions> = {}): DaemonClient {
  const client = new DaemonClient({
    socketPath: dir.socketPath,
    bufferSize: 100,
    connectTimeoutMs: 500,
    reconnectMinMs: 20,
    reconnectMaxMs: 40,
    logger,
    logIntervalMs: 200,
    random: () => 0.5,
    ...overrides,
  });
  clients.push(client);
  return client;
}

function line(id: string): string {
  return `${JSON.stringify({ v: 1, id, type: "gateway", ts: 1, source: "t", hook: "gateway_stop", event: {} })}\n`;
}

function sendMany(client: DaemonClient, prefix: string, count: number): string[] {
  const ids = Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
  for (const id of ids) {
    client.send(id, line(id));
  }
  return ids;
}

describe("DaemonClient with a running daemon", () => {
  test("pipelined events arrive in order and are acknowledged", async () => {
    await daemon.listen();
    const client = makeClient();
    const ids = sendMany(client, "e", 50);
    await waitFor(() => client.stats().acknowledged === 50, "50 acknowledgements");
    assert.deepEqual(
      daemon.frames.map((frame) => frame.id),
      ids,
    );
    assert.equal(daemon.connections, 1);
    assert.equal(client.stats().inFlight, 0);
    assert.equal(client.stats().buffered, 0);
  });

  test("flush resolves true once everything is acknowledged", async () => {
    await daemon.listen();
    const client = makeClient();
    sendMany(client, "f", 10);
    assert.equal(await client.flush(2000), true);
    assert.equal(client.stats().acknowledged, 10);
  });

  test("idle client opens no connection", async () => {
    await daemon.listen();
    makeClient();
    await sleep(50);
    assert.equal(daemon.connections, 0);
  });

  test("non-retryable error is logged and not resent", async () => {
    await daemon.listen();
    daemon.responder = (frame) =>
      frame.id === "bad"
        ? { id: frame.id, ok: false, error: { code: "invalid_event", message: "event lacks childSessionKey" } }
        : { id: frame.id, ok: true, job_id: null, tracked: true };
    const client = makeClient();
    client.send("bad", line("bad"));
    client.send("good", line("good"));
    await waitFor(() => client.stats().acknowledged === 1, "the good event is acknowledged");
    await sleep(100);
    assert.equal(client.stats().rejected, 1);
    assert.deepEqual(
      daemon.frames.map((frame) => frame.id),
      ["bad", "good"],
    );
    const errors = logger.matching(/invalid_event/);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].level, "error");
    assert.match(errors[0].message, /event lacks childSessionKey/);
  });

  for (const code of ["overloaded", "internal"]) {
    test(`${code} error is resent later`, async () => {
      await daemon.listen();
      let failuresLeft = 2;
      daemon.responder = (frame) => {
        if (frame.id === "busy" && failuresLeft > 0) {
          failuresLeft -= 1;
          return { id: frame.id, ok: false, error: { code, message: "try later" } };
        }
        return { id: frame.id, ok: true, job_id: "j1", tracked: true };
      };
      const client = makeClient();
      client.send("busy", line("busy"));
      await waitFor(() => client.stats().acknowledged === 1, "the event is acknowledged after retries");
      assert.deepEqual(
        daemon.frames.map((frame) => frame.id),
        ["busy", "busy", "busy"],
      );
      assert.equal(client.stats().rejected, 0);
      assert.ok(logger.matching(new RegExp(`returned ${code}`)).length >= 1);
    });
  }

  test("connection dropped before the ack is retried", async () => {
    await daemon.listen();
    let rejectConnection = true;
    daemon.responder = (frame) => {
      if (rejectConnection) {
        rejectConnection = false;
        daemon.dropConnections();
        return null;
      }
      return { id: frame.id, ok: true, job_id: null, tracked: true };
    };
    const client = makeClient();
    client.send("x", line("x"));
    await waitFor(() => client.stats().acknowledged === 1, "the event is acknowledged on the second connection");
    assert.equal(daemon.connections, 2);
  });

  test("overloaded frame without id closes and reconnects", async () => {
    await daemon.listen();
    let first = true;
    daemon.responder = (frame) => {
      if (first) {
        first = false;
        return { id: null, ok: false, error: { code: "overloaded", message: "too many connections" } };
      }
      return { id: frame.id, ok: true, job_id: null, tracked: true };
    };
    const client = makeClient();
    client.send("y", line("y"));
    await waitFor(() => client.stats().acknowledged === 1, "the event is acknowledged after reconnecting");
    assert.equal(daemon.connections, 2);
    assert.equal(logger.matching(/rejected the connection as overloaded/).length, 1);
  });

  test("mismatched response id resets the connection and resends", async () => {
    await daemon.listen();
    let lie = true;
    daemon.responder = (frame) => {
      if (lie) {
        lie = false;
        return { id: "someone-else", ok: true, job_id: null, tracked: true };
      }
      return { id: frame.id, ok: true, job_id: null, tracked: true };
    };
    const client = makeClient();
    client.send("z", line("z"));
    await waitFor(() => client.stats().acknowledged === 1, "the event is acknowledged after the reset");
    assert.deepEqual(
      daemon.frames.map((frame) => frame.id),
      ["z", "z"],
    );
    assert.equal(logger.matching(/does not match request id z/).length, 1);
  });
});

describe("DaemonClient while the daemon is unreachable", () => {
  test("send never throws when the socket is missing", async () => {
    const client = makeClient();
    assert.doesNotThrow(() => sendMany(client, "m", 5));
    await sleep(100);
    assert.equal(client.stats().buffered, 5);
    assert.equal(client.stats().connected, false);
    const warnings = logger.matching(/cannot reach the daemon/);
    assert.ok(warnings.length >= 1);
    assert.match(warnings[0].message, /ENOENT/);
  });

  test("a path that is not a socket does not throw", async () => {
    const client = makeClient({ socketPath: dir.path });
    assert.doesNotThrow(() => client.send("p", line("p")));
    await sleep(50);
    assert.equal(client.stats().buffered, 1);
  });

  test("buffer is replayed in order when the daemon starts", async () => {
    const client = makeClient();
    const ids = sendMany(client, "r", 20);
    await sleep(60);
    await daemon.listen();
    await waitFor(() => client.stats().acknowledged === 20, "20 replayed events are acknowledged");
    assert.deepEqual(
      daemon.frames.map((frame) => frame.id),
      ids,
    );
    assert.ok(logger.matching(/connected to the daemon .* sending 20 buffered event/).length === 1);
  });

  test("unacknowledged events are resent after the daemon restarts", async () => {
    await daemon.listen();
    // The first daemon records every frame but acknowledges only the first two, then dies.
    daemon.responder = (frame, index) => (index < 2 ? { id: frame.id, ok: true, job_id: null, tracked: true } : null);
    const client = makeClient();
    const ids = sendMany(client, "u", 5);
    await waitFor(() => daemon.frames.length === 5, "the first daemon reads 5 frames");
    await waitFor(() => client.stats().acknowledged === 2, "2 acknowledgements");
    await daemon.close();

    const second = new FakeDaemon(dir.socketPath);
    try {
      await second.listen();
      await waitFor(() => client.stats().acknowledged === 5, "the 3 unacknowledged events are acknowledged");
      assert.deepEqual(
        second.frames.map((frame) => frame.id),
        ids.slice(2),
      );
      assert.equal(client.stats().resent, 3);
    } finally {
      await second.close();
    }
  });

  test("events sent during the outage follow the resent ones", async () => {
    await daemon.listen();
    daemon.responder = () => null;
    const client = makeClient();
    client.send("a", line("a"));
    await waitFor(() => daemon.frames.length === 1, "the first daemon reads a");
    await daemon.close();
    client.send("b", line("b"));
    await sleep(30);
    client.send("c", line("c"));

    const second = new FakeDaemon(dir.socketPath);
    try {
      await second.listen();
      await waitFor(() => client.stats().acknowledged === 3, "3 acknowledgements");
      assert.deepEqual(
        second.frames.map((frame) => frame.id),
        ["a", "b", "c"],
      );
    } finally {
      await second.close();
    }
  });

  test("full buffer drops the oldest events and logs the count", async () => {
    const client = makeClient({ bufferSize: 10, logIntervalMs: 100 });
    sendMany(client, "d", 25);
    assert.equal(client.stats().dropped, 15);
    assert.equal(client.stats().buffered, 10);

    // One line at once, one summary when the interval ends: the counts add up to 15.
    await waitFor(() => logger.matching(/dropped \d+ oldest/).length === 2, "the drop summary line", 2000);
    const counts = logger.matching(/dropped \d+ oldest/).map((entry) => Number(/dropped (\d+)/.exec(entry.message)?.[1]));
    assert.deepEqual(counts, [1, 14]);
    assert.ok(logger.matching(/dropped/).every((entry) => entry.level === "warn"));

    await daemon.listen();
    await waitFor(() => client.stats().acknowledged === 10, "the 10 newest events are delivered");
    assert.deepEqual(
      daemon.frames.map((frame) => frame.id),
      Array.from({ length: 10 }, (_, index) => `d-${index + 15}`),
    );
  });

  test("connection failures are logged at a limited rate", async () => {
    const client = makeClient({ reconnectMinMs: 10, reconnectMaxMs: 10, logIntervalMs: 10_000 });
    client.send("q", line("q"));
    await sleep(200);
    // About 20 attempts were made; one line was logged.
    assert.equal(logger.matching(/cannot reach the daemon/).length, 1);
  });

  test("backoff grows up to reconnectMaxMs", async () => {
    const client = makeClient({ reconnectMinMs: 20, reconnectMaxMs: 80, random: () => 0.999 });
    const started = Date.now();
    client.send("b", line("b"));
    // Delays with equal jitter at 0.999: about 20, 40, 80, 80 ms.
    await sleep(150);
    await daemon.listen();
    await waitFor(() => client.stats().acknowledged === 1, "the event is delivered");
    assert.ok(Date.now() - started >= 140);
  });

  test("flush gives up after its timeout", async () => {
    const client = makeClient();
    client.send("t", line("t"));
    const started = Date.now();
    assert.equal(await client.flush(100), false);
    assert.ok(Date.now() - started < 1000);
  });

  test("close discards the buffer and stops reconnecting", async () => {
    const client = makeClient();
    sendMany(client, "c", 3);
    client.close();
    await daemon.listen();
    await sleep(100);
    assert.equal(daemon.connections, 0);
    client.send("after-close", line("after-close"));
    assert.equal(client.stats().buffered, 0);
  });
});
