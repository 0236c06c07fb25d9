import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  EventIdGenerator,
  FORWARDED_HOOKS,
  buildFrame,
  encodeFrame,
  frameTypeFor,
  lastAssistantOf,
  toJsonSafe,
  trimContext,
} from "../src/frames.ts";
import { loadRecordedHooks, recorded } from "./helpers.ts";

const OPTIONS = { id: "gw-test-1", source: "gw-test", ts: 1_796_412_840_673 };

const EXPECTED_TYPES: Record<string, string> = {
  subagent_spawned: "spawn",
  subagent_ended: "end",
  agent_end: "end",
  gateway_start: "gateway",
  gateway_stop: "gateway",
};

describe("buildFrame on recorded payloads", () => {
  const forwarded = loadRecordedHooks().filter((entry) =>
    (FORWARDED_HOOKS as readonly string[]).includes(entry.hook),
  );

  test("fixture covers every forwarded hook", () => {
    const hooks = new Set(forwarded.map((entry) => entry.hook));
    for (const hook of FORWARDED_HOOKS) {
      assert.ok(hooks.has(hook), `no recorded payload for ${hook}`);
    }
  });

  for (const entry of forwarded) {
    test(`frame is well formed: ${entry.scenario}`, () => {
      const frame = buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
      assert.ok(frame !== null);
      const line = encodeFrame(frame);
      assert.ok(line.endsWith("\n"));
      assert.equal(line.indexOf("\n"), line.length - 1, "a frame must be exactly one line");

      const parsed = JSON.parse(line);
      assert.equal(parsed.v, 1);
      assert.equal(parsed.id, "gw-test-1");
      assert.equal(parsed.ts, OPTIONS.ts);
      assert.equal(parsed.source, "gw-test");
      assert.equal(parsed.hook, entry.hook);
      assert.equal(typeof parsed.event, "object");
      assert.ok(!Array.isArray(parsed.event));
      if (entry.ctx !== null) {
        assert.equal(typeof parsed.ctx, "object");
        assert.equal(parsed.ctx.config, undefined, "ctx.config must never be sent");
      }
      const expectedType =
        entry.hook === "after_tool_call"
          ? { sessions_spawn: "spawn", sessions_send: "send" }[entry.event.toolName as string]
          : EXPECTED_TYPES[entry.hook];
      assert.equal(parsed.type, expectedType);
    });
  }
});

describe("hooks and tools that are not forwarded", () => {
  for (const hook of ["session_start", "model_call_started", "model_call_ended", "subagent_progress", "_register"]) {
    test(`${hook} has no frame type`, () => {
      const entry = loadRecordedHooks().find((candidate) => candidate.hook === hook);
      assert.ok(entry !== undefined);
      assert.equal(buildFrame(hook, entry.event, entry.ctx, OPTIONS), null);
    });
  }

  test("after_tool_call for another tool is skipped", () => {
    const entry = recorded("spawn success: after_tool_call");
    entry.event.toolName = "exec";
    assert.equal(frameTypeFor("after_tool_call", entry.event), null);
    assert.equal(buildFrame("after_tool_call", entry.event, entry.ctx, OPTIONS), null);
  });

  test("after_tool_call without an event object is skipped", () => {
    assert.equal(frameTypeFor("after_tool_call", null), null);
    assert.equal(frameTypeFor("after_tool_call", { toolName: 42 }), null);
  });

  test("unknown hook name is skipped", () => {
    assert.equal(frameTypeFor("toString", {}), null);
    assert.equal(frameTypeFor("subagent_spawning", {}), null);
  });
});

describe("after_tool_call trimming", () => {
  test("spawn drops result.content and keeps the rest", () => {
    const entry = recorded("spawn success: after_tool_call");
    const frame = buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
    assert.ok(frame !== null);
    const result = frame.event.result as Record<string, unknown>;
    assert.equal(result.content, undefined);
    assert.deepEqual(result.details, entry.event.result && (entry.event.result as { details: unknown }).details);
    assert.deepEqual(frame.event.params, { task: "write a haiku #0", label: "w0" });
    assert.equal(frame.event.toolCallId, "call_882005e018");
    assert.equal(frame.event.runId, "e770d916-5215-4183-b702-7574befe7f85");
    assert.equal(frame.event.durationMs, 258);
    assert.equal(frame.type, "spawn");
  });

  test("rejected spawn keeps error and details", () => {
    const entry = recorded("failing spawn");
    const frame = buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
    assert.ok(frame !== null);
    assert.equal(frame.event.error, "agentId is not allowed for sessions_spawn (allowed: main)");
    const details = (frame.event.result as { details: Record<string, unknown> }).details;
    assert.equal(details.status, "forbidden");
    assert.equal((frame.event.result as Record<string, unknown>).content, undefined);
  });

  test("sessions_send becomes type send", () => {
    const entry = recorded("sessions_send from main agent");
    const frame = buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
    assert.ok(frame !== null);
    assert.equal(frame.type, "send");
    const details = (frame.event.result as { details: Record<string, unknown> }).details;
    assert.equal(details.runId, "90c6d6f1-24c5-4c7c-a75f-84633ee6c506");
    assert.equal(details.status, "accepted");
  });

  test("the original payload is not modified", () => {
    const entry = recorded("spawn success: after_tool_call");
    const before = structuredClone(entry.event);
    buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
    assert.deepEqual(entry.event, before);
  });
});

describe("agent_end trimming", () => {
  test("child run: messages replaced by lastAssistant", () => {
    const entry = recorded("spawn success: agent_end of child run");
    const frame = buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
    assert.ok(frame !== null);
    assert.equal(frame.event.messages, undefined);
    assert.deepEqual(frame.event.lastAssistant, { stopReason: "stop", errorMessage: null });
    assert.equal(frame.event.success, true);
    assert.equal(frame.event.runId, "cea07673-cf3c-4a40-9d75-03609649ac2d");
    assert.equal(frame.ctx?.sessionKey, "agent:main:subagent:e89f9fd3-7125-470d-a029-420cc5133c9c");
  });

  test("provider failure: lastAssistant carries the error", () => {
    const entry = recorded("provider failure (HTTP 500): agent_end");
    const frame = buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS);
    assert.ok(frame !== null);
    assert.deepEqual(frame.event.lastAssistant, { stopReason: "error", errorMessage: "500 mock failure" });
    assert.equal(frame.event.success, true);
  });

  test("transcript text never reaches the line", () => {
    const entry = recorded("spawn success: agent_end of announce run");
    const line = encodeFrame(buildFrame(entry.hook, entry.event, entry.ctx, OPTIONS)!);
    assert.ok(!line.includes("write a haiku"), "message content leaked into the frame");
    assert.ok(line.length < 1000, `trimmed agent_end is ${line.length} bytes`);
  });

  test("no assistant message gives null", () => {
    assert.equal(lastAssistantOf([{ role: "user", content: "hi" }]), null);
    assert.equal(lastAssistantOf([]), null);
    assert.equal(lastAssistantOf(undefined), null);
    const frame = buildFrame("agent_end", { success: false, runId: "r1" }, {}, OPTIONS);
    assert.equal(frame?.event.lastAssistant, null);
  });

  test("last assistant wins over earlier ones", () => {
    const messages = [
      { role: "assistant", stopReason: "error", errorMessage: "first" },
      { role: "toolResult", content: [] },
      { role: "assistant", stopReason: "toolUse" },
      { role: "user", content: "later user line" },
    ];
    assert.deepEqual(lastAssistantOf(messages), { stopReason: "toolUse", errorMessage: null });
  });
});

describe("secrets and non-JSON values", () => {
  function liveGatewayStartContext(): Record<string, unknown> {
    const controller = new AbortController();
    return {
      port: 18790,
      config: {
        gateway: { auth: { mode: "token", token: "gateway-secret-token" } },
        models: { providers: { mock: { apiKey: "provider-secret-key" } } },
      },
      workspaceDir: "/srv/openclaw/state/workspace",
      abortSignal: controller.signal,
      getCron: () => ({ list: () => [] }),
    };
  }

  test("gateway_start drops config, abortSignal and functions", () => {
    const entry = recorded("gateway_start");
    const frame = buildFrame("gateway_start", entry.event, liveGatewayStartContext(), OPTIONS);
    assert.ok(frame !== null);
    assert.deepEqual(frame.ctx, { port: 18790, workspaceDir: "/srv/openclaw/state/workspace" });
    assert.deepEqual(frame.event, { port: 18790 });
    const line = encodeFrame(frame);
    assert.ok(!line.includes("gateway-secret-token"));
    assert.ok(!line.includes("provider-secret-key"));
  });

  test("ctx.config is dropped on every hook", () => {
    const entry = recorded("spawn success: subagent_spawned");
    const ctx = { ...entry.ctx, config: { gateway: { auth: { token: "t0ps3cret" } } } };
    const line = encodeFrame(buildFrame(entry.hook, entry.event, ctx, OPTIONS)!);
    assert.ok(!line.includes("t0ps3cret"));
    assert.ok(!line.includes('"config"'));
  });

  test("credential keys are dropped at any depth", () => {
    const safe = toJsonSafe({
      params: { task: "t", nested: { token: "a", apiKey: "b", Authorization: "c", password: "d" } },
    });
    assert.deepEqual(safe, { params: { task: "t", nested: {} } });
  });

  test("toJsonSafe keeps JSON values and drops the rest", () => {
    const cyclic: Record<string, unknown> = { name: "loop" };
    cyclic.self = cyclic;
    const safe = toJsonSafe({
      text: "x",
      flag: false,
      count: 3,
      nan: Number.NaN,
      infinite: Number.POSITIVE_INFINITY,
      missing: undefined,
      fn: () => 1,
      symbol: Symbol("s"),
      big: 10n,
      date: new Date(0),
      map: new Map([["a", 1]]),
      list: [1, undefined, () => 2, "y"],
      cyclic,
      nullProto: Object.assign(Object.create(null), { kept: true }),
    });
    assert.deepEqual(safe, {
      text: "x",
      flag: false,
      count: 3,
      nan: null,
      infinite: null,
      date: "1970-01-01T00:00:00.000Z",
      list: [1, null, null, "y"],
      cyclic: { name: "loop" },
      nullProto: { kept: true },
    });
  });

  test("a shared object that is not a cycle is kept twice", () => {
    const shared = { a: 1 };
    assert.deepEqual(toJsonSafe({ first: shared, second: shared }), { first: { a: 1 }, second: { a: 1 } });
  });

  test("very deep nesting is cut, not followed", () => {
    let deep: Record<string, unknown> = { leaf: true };
    for (let level = 0; level < 100; level += 1) {
      deep = { child: deep };
    }
    const line = JSON.stringify(toJsonSafe(deep));
    assert.ok(!line.includes("leaf"));
  });

  test("context that is not an object is omitted", () => {
    assert.equal(trimContext(null), undefined);
    assert.equal(trimContext("ctx"), undefined);
    const frame = buildFrame("gateway_stop", { reason: "stop" }, undefined, OPTIONS);
    assert.ok(frame !== null);
    assert.equal("ctx" in frame, false);
  });
});

describe("EventIdGenerator", () => {
  test("ids are unique and carry the gateway id", () => {
    const generator = new EventIdGenerator("gw-1");
    const ids = new Set(Array.from({ length: 1000 }, () => generator.next()));
    assert.equal(ids.size, 1000);
    for (const id of ids) {
      assert.match(id, /^gw-1-[0-9a-f]{12}-\d+$/);
    }
  });

  test("two generators do not collide", () => {
    const first = new EventIdGenerator("gw");
    const second = new EventIdGenerator("gw");
    assert.notEqual(first.next(), second.next());
  });

  test("longest gateway id stays within 128 characters", () => {
    const generator = new EventIdGenerator("g".repeat(64));
    for (let index = 0; index < 10; index += 1) {
      generator.next();
    }
    assert.ok(generator.next().length <= 128);
  });
});
