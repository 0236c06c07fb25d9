import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { bridgeStats, handleHook, registerBridge, resetBridge, type PluginApiLike } from "../src/bridge.ts";
import { FORWARDED_HOOKS, type ForwardedHook } from "../src/frames.ts";
import { FakeDaemon, RecordingLogger, makeTempDir, recorded, sleep, waitFor, type TempDir } from "./helpers.ts";

type Handler = (event: unknown, ctx: unknown) => void | Promise<void>;

/** A stand-in for OpenClawPluginApi that keeps every handler registered through on(). */
class FakeApi implements PluginApiLike {
  pluginConfig: Record<string, unknown>;
  logger = new RecordingLogger();
  registrationMode?: string;
  readonly handlers = new Map<string, Handler[]>();

  constructor(pluginConfig: Record<string, unknown>, registrationMode?: string) {
    this.pluginConfig = pluginConfig;
    this.registrationMode = registrationMode;
  }

  on = (hookName: ForwardedHook, handler: Handler): void => {
    const list = this.handlers.get(hookName) ?? [];
    list.push(handler);
    this.handlers.set(hookName, list);
  };

  /** Calls every handler of the hook, as the gateway does, and returns their results. */
  fire(hook: string, event: unknown, ctx: unknown): unknown[] {
    return (this.handlers.get(hook) ?? []).map((handler) => handler(event, ctx));
  }
}

let dir: TempDir;
let daemon: FakeDaemon;

beforeEach(() => {
  resetBridge();
  dir = makeTempDir();
  daemon = new FakeDaemon(dir.socketPath);
});

afterEach(async () => {
  resetBridge();
  await daemon.close();
  dir.remove();
});

function config(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    socketPath: dir.socketPath,
    gatewayId: "gw-test",
    reconnectMinMs: 20,
    reconnectMaxMs: 50,
    connectTimeoutMs: 500,
    ...overrides,
  };
}

// The recorded hook calls of one successful spawn, in the order the gateway made them.
const SPAWN_SEQUENCE = [
  "spawn success: subagent_spawned",
  "spawn success: after_tool_call sessions_spawn in parent",
  "spawn success: agent_end of parent turn",
  "spawn success: agent_end of child run",
  "spawn success: agent_end of announce run in parent session",
  "spawn success: subagent_ended after announce",
];

describe("registerBridge", () => {
  test("registers a handler for each forwarded hook", () => {
    const api = new FakeApi(config());
    registerBridge(api);
    assert.deepEqual([...api.handlers.keys()].sort(), [...FORWARDED_HOOKS].sort());
    assert.equal(api.logger.matching(/forwarding .* as gateway gw-test \(registration 1, mode unknown\)/).length, 1);
  });

  test("register twice opens one connection and sends each event once", async () => {
    await daemon.listen();
    const first = new FakeApi(config());
    const second = new FakeApi(config());
    registerBridge(first);
    registerBridge(second);

    // The gateway may keep handlers of both registrations; each hook call must still be one frame.
    for (const scenario of SPAWN_SEQUENCE) {
      const entry = recorded(scenario);
      first.fire(entry.hook, entry.event, entry.ctx);
      second.fire(entry.hook, entry.event, entry.ctx);
    }
    await waitFor(() => bridgeStats()?.acknowledged === SPAWN_SEQUENCE.length, "6 acknowledgements");
    await sleep(50);
    assert.equal(daemon.connections, 1);
    assert.equal(daemon.frames.length, SPAWN_SEQUENCE.length);
    assert.equal(new Set(daemon.frames.map((frame) => frame.id)).size, SPAWN_SEQUENCE.length);
  });

  test("spawn lifecycle reaches the daemon as v1 frames", async () => {
    await daemon.listen();
    const api = new FakeApi(config());
    registerBridge(api);
    for (const scenario of SPAWN_SEQUENCE) {
      const entry = recorded(scenario);
      const results = api.fire(entry.hook, entry.event, entry.ctx);
      assert.deepEqual(results, [undefined], `${entry.hook} handler must return at once`);
    }
    await waitFor(() => daemon.frames.length === SPAWN_SEQUENCE.length, "6 frames");

    assert.deepEqual(
      daemon.frames.map((frame) => [frame.type, frame.hook]),
      [
        ["spawn", "subagent_spawned"],
        ["spawn", "after_tool_call"],
        ["end", "agent_end"],
        ["end", "agent_end"],
        ["end", "agent_end"],
        ["end", "subagent_ended"],
      ],
    );
    for (const frame of daemon.frames) {
      assert.equal(frame.v, 1);
      assert.equal(frame.source, "gw-test");
      assert.match(frame.id, /^gw-test-[0-9a-f]{12}-\d+$/);
      assert.equal(typeof frame.ts, "number");
    }
    const childEnd = daemon.frames[3] as unknown as { event: Record<string, unknown> };
    assert.deepEqual(childEnd.event.lastAssistant, { stopReason: "stop", errorMessage: null });
    assert.equal(childEnd.event.messages, undefined);
  });

  test("other tools and hooks send nothing", async () => {
    await daemon.listen();
    const api = new FakeApi(config());
    registerBridge(api);
    const entry = recorded("spawn success: after_tool_call");
    api.fire("after_tool_call", { ...entry.event, toolName: "exec" }, entry.ctx);
    await sleep(50);
    assert.equal(daemon.connections, 0);
    assert.equal(bridgeStats()?.enqueued, 0);
  });

  test("handlers never throw on odd payloads", () => {
    const api = new FakeApi(config());
    registerBridge(api);
    const hostile = {
      get toolName(): string {
        throw new Error("getter exploded");
      },
    };
    for (const hook of FORWARDED_HOOKS) {
      assert.doesNotThrow(() => api.fire(hook, null, null));
      assert.doesNotThrow(() => api.fire(hook, undefined, undefined));
      assert.doesNotThrow(() => api.fire(hook, "text", 42));
      assert.doesNotThrow(() => api.fire(hook, hostile, hostile));
    }
    assert.ok(api.logger.matching(/could not forward a .* event: getter exploded/).length >= 1);
  });

  test("no throw and a bounded wait when the socket is missing", async () => {
    const api = new FakeApi(config({ stopFlushTimeoutMs: 100 }));
    registerBridge(api);
    const spawned = recorded("spawn success: subagent_spawned");
    assert.doesNotThrow(() => api.fire(spawned.hook, spawned.event, spawned.ctx));

    const stop = recorded("SIGTERM: gateway_stop");
    const started = Date.now();
    const [result] = api.fire(stop.hook, stop.event, stop.ctx);
    assert.ok(result instanceof Promise);
    await result;
    const waited = Date.now() - started;
    assert.ok(waited >= 90, `gateway_stop returned after ${waited} ms, before its 100 ms flush timeout`);
    assert.ok(waited < 1000, `gateway_stop waited ${waited} ms`);
    assert.equal(bridgeStats()?.buffered, 2);
  });

  test("gateway_stop waits until the buffer is acknowledged", async () => {
    await daemon.listen();
    const api = new FakeApi(config({ stopFlushTimeoutMs: 2000 }));
    registerBridge(api);
    const stop = recorded("SIGTERM: gateway_stop");
    const [result] = api.fire(stop.hook, stop.event, stop.ctx);
    await result;
    assert.equal(bridgeStats()?.acknowledged, 1);
    assert.equal(daemon.frames[0].type, "gateway");
  });

  test("events buffered during an outage are replayed", async () => {
    const api = new FakeApi(config());
    registerBridge(api);
    for (const scenario of SPAWN_SEQUENCE) {
      const entry = recorded(scenario);
      api.fire(entry.hook, entry.event, entry.ctx);
    }
    await sleep(100);
    assert.equal(bridgeStats()?.buffered, SPAWN_SEQUENCE.length);

    await daemon.listen();
    await waitFor(() => bridgeStats()?.acknowledged === SPAWN_SEQUENCE.length, "the buffer is replayed");
    assert.deepEqual(
      daemon.frames.map((frame) => frame.hook),
      SPAWN_SEQUENCE.map((scenario) => recorded(scenario).hook),
    );
  });

  test("bounded buffer drops with a logged count", async () => {
    const api = new FakeApi(config({ bufferSize: 3 }));
    registerBridge(api);
    const entry = recorded("spawn success: subagent_spawned");
    for (let index = 0; index < 8; index += 1) {
      api.fire(entry.hook, structuredClone(entry.event), entry.ctx);
    }
    assert.equal(bridgeStats()?.dropped, 5);
    assert.equal(bridgeStats()?.buffered, 3);
    const drops = api.logger.matching(/dropped 1 oldest event\(s\) because the buffer is full \(bufferSize=3/);
    assert.equal(drops.length, 1);
  });

  test("enabled=false registers nothing", () => {
    const api = new FakeApi(config({ enabled: false }));
    registerBridge(api);
    assert.equal(api.handlers.size, 0);
    assert.equal(bridgeStats(), null);
    assert.equal(api.logger.matching(/disabled by config/).length, 1);
  });

  test("every registration mode registers the hooks", async () => {
    await daemon.listen();
    for (const mode of ["full", "discovery", "cli-metadata", "setup-only", "tool-discovery"]) {
      const api = new FakeApi(config(), mode);
      registerBridge(api);
      assert.equal(api.handlers.size, FORWARDED_HOOKS.length, `mode ${mode}`);
    }
    // Registering alone opens no connection.
    await sleep(50);
    assert.equal(daemon.connections, 0);
    assert.equal(bridgeStats()?.enqueued, 0);
  });

  test("invalid config values fall back with a warning", () => {
    const api = new FakeApi(config({ bufferSize: -1, gatewayId: "bad id!" }));
    registerBridge(api);
    assert.equal(api.handlers.size, FORWARDED_HOOKS.length);
    assert.equal(api.logger.matching(/bufferSize=-1 is not an integer/).length, 1);
    assert.equal(api.logger.matching(/gatewayId="bad id!" is invalid/).length, 1);
  });

  test("re-registration with a new socket path moves the connection", async () => {
    await daemon.listen();
    const api = new FakeApi(config());
    registerBridge(api);
    const entry = recorded("spawn success: subagent_spawned");
    api.fire(entry.hook, structuredClone(entry.event), entry.ctx);
    await waitFor(() => daemon.frames.length === 1, "the first daemon gets one frame");

    const otherPath = `${dir.path}/other.sock`;
    const other = new FakeDaemon(otherPath);
    try {
      await other.listen();
      const again = new FakeApi(config({ socketPath: otherPath }));
      registerBridge(again);
      again.fire(entry.hook, structuredClone(entry.event), entry.ctx);
      await waitFor(() => other.frames.length === 1, "the second daemon gets the next frame");
      assert.equal(daemon.frames.length, 1);
    } finally {
      await other.close();
    }
  });

  test("registration without config keeps the socket", async () => {
    await daemon.listen();
    registerBridge(new FakeApi(config()));
    const bare = new FakeApi({});
    delete (bare as { pluginConfig?: unknown }).pluginConfig;
    registerBridge(bare);
    const entry = recorded("spawn success: subagent_spawned");
    bare.fire(entry.hook, entry.event, entry.ctx);
    await waitFor(() => daemon.frames.length === 1, "the frame reaches the configured socket");
    assert.equal(daemon.frames[0].source, "gw-test");
  });

  test("handleHook without a registration does nothing", () => {
    assert.equal(handleHook("gateway_start", { port: 1 }, {}), undefined);
  });
});
