// Wire protocol v1 request frames, built from OpenClaw hook payloads (openclaw 2026.9.6).
//
// Each frame is one JSON object on one line:
//   {"v":1, "id", "type", "ts", "source", "hook", "event", "ctx"}
// The payloads are trimmed before they are sent:
//   - after_tool_call: event.result.content is dropped, because event.result.details carries the
//     same outcome as structured data.
//   - agent_end: event.messages (the whole transcript) becomes event.lastAssistant, the
//     stopReason and errorMessage of the last assistant message, or null when there is none.
//   - every hook: ctx.config (the resolved gateway config, secrets included) is dropped, and so are
//     values JSON cannot represent (functions, AbortSignal and other class instances, undefined)
//     and any key that names a credential (token, password, apiKey, ...).

import { randomBytes } from "node:crypto";

export const PROTOCOL_VERSION = 1;

export type FrameType = "spawn" | "send" | "end" | "gateway";

export type Frame = {
  v: 1;
  id: string;
  type: FrameType;
  ts: number;
  source: string;
  hook: string;
  event: Record<string, unknown>;
  ctx?: Record<string, unknown>;
};

export const FORWARDED_HOOKS = [
  "after_tool_call",
  "subagent_spawned",
  "subagent_ended",
  "agent_end",
  "gateway_start",
  "gateway_stop",
] as const;

export type ForwardedHook = (typeof FORWARDED_HOOKS)[number];

const TOOL_TYPES: Record<string, FrameType> = {
  sessions_spawn: "spawn",
  sessions_send: "send",
};

const HOOK_TYPES: Record<Exclude<ForwardedHook, "after_tool_call">, FrameType> = {
  subagent_spawned: "spawn",
  subagent_ended: "end",
  agent_end: "end",
  gateway_start: "gateway",
  gateway_stop: "gateway",
};

// Keys dropped at any depth because their values are credentials. Compared in lower case.
const SECRET_KEYS = new Set([
  "apikey",
  "api_key",
  "accesstoken",
  "access_token",
  "refreshtoken",
  "refresh_token",
  "authorization",
  "cookie",
  "password",
  "passwd",
  "secret",
  "clientsecret",
  "client_secret",
  "token",
]);

// Deeper values are cut, which keeps a pathological payload from costing the gateway time.
const MAX_DEPTH = 32;

/**
 * Returns the wire type for a hook event, or null when the event is not forwarded
 * (an after_tool_call for a tool other than sessions_spawn and sessions_send).
 */
export function frameTypeFor(hook: string, event: unknown): FrameType | null {
  if (hook === "after_tool_call") {
    const toolName = isPlainObject(event) ? event.toolName : undefined;
    return typeof toolName === "string" ? (TOOL_TYPES[toolName] ?? null) : null;
  }
  return Object.hasOwn(HOOK_TYPES, hook) ? HOOK_TYPES[hook as keyof typeof HOOK_TYPES] : null;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return false;
  }
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * Returns a JSON-safe deep copy of value, or undefined when value itself is dropped.
 *
 * Plain objects, arrays, strings, booleans and finite numbers are kept, and a Date becomes its ISO
 * string. Everything else is dropped: functions, symbols, bigint, undefined, class instances such
 * as AbortSignal, cycles, and keys that name credentials.
 */
export function toJsonSafe(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (value === null || typeof value === "string" || typeof value === "boolean") {
    return value;
  }
  if (typeof value === "number") {
    return Number.isFinite(value) ? value : null;
  }
  if (typeof value !== "object" || depth >= MAX_DEPTH) {
    return undefined;
  }
  if (value instanceof Date) {
    return Number.isNaN(value.getTime()) ? null : value.toISOString();
  }
  if (seen.has(value)) {
    return undefined;
  }

  if (Array.isArray(value)) {
    seen.add(value);
    const copy = value.map((item) => {
      const safe = toJsonSafe(item, depth + 1, seen);
      return safe === undefined ? null : safe;
    });
    seen.delete(value);
    return copy;
  }
  if (!isPlainObject(value)) {
    return undefined;
  }

  seen.add(value);
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    if (SECRET_KEYS.has(key.toLowerCase())) {
      continue;
    }
    const safe = toJsonSafe(item, depth + 1, seen);
    if (safe !== undefined) {
      copy[key] = safe;
    }
  }
  seen.delete(value);
  return copy;
}

export type LastAssistant = { stopReason: unknown; errorMessage: unknown } | null;

/** Returns {stopReason, errorMessage} of the last message whose role is "assistant", or null. */
export function lastAssistantOf(messages: unknown): LastAssistant {
  if (!Array.isArray(messages)) {
    return null;
  }
  for (let index = messages.length - 1; index >= 0; index -= 1) {
    const message: unknown = messages[index];
    if (message !== null && typeof message === "object" && (message as { role?: unknown }).role === "assistant") {
      const { stopReason, errorMessage } = message as { stopReason?: unknown; errorMessage?: unknown };
      return {
        stopReason: toJsonSafe(stopReason) ?? null,
        errorMessage: toJsonSafe(errorMessage) ?? null,
      };
    }
  }
  return null;
}

/** Returns the trimmed, JSON-safe copy of a hook's event payload. */
export function trimEvent(hook: string, event: unknown): Record<string, unknown> {
  if (event === null || typeof event !== "object") {
    return {};
  }
  // A shallow copy first, so the large fields are removed before the deep copy walks them.
  const shallow: Record<string, unknown> = { ...(event as Record<string, unknown>) };

  if (hook === "after_tool_call" && shallow.result !== null && typeof shallow.result === "object") {
    const { content: _content, ...rest } = shallow.result as Record<string, unknown>;
    shallow.result = rest;
  }
  if (hook === "agent_end") {
    shallow.lastAssistant = lastAssistantOf(shallow.messages);
    delete shallow.messages;
  }

  const safe = toJsonSafe(shallow);
  return isPlainObject(safe) ? safe : {};
}

/** Returns the trimmed, JSON-safe copy of a hook's context, or undefined when there is none. */
export function trimContext(ctx: unknown): Record<string, unknown> | undefined {
  if (ctx === null || typeof ctx !== "object") {
    return undefined;
  }
  const { config: _config, ...rest } = ctx as Record<string, unknown>;
  const safe = toJsonSafe(rest);
  return isPlainObject(safe) ? safe : undefined;
}

/**
 * Generates event ids "<gatewayId>-<12 random hex digits>-<counter>". The random part is drawn
 * once per generator, so ids stay unique across gateway restarts, and the counter keeps them
 * unique and ordered within one process. With a gateway id of at most 64 characters an id stays
 * well under the protocol's limit of 128.
 */
export class EventIdGenerator {
  private readonly prefix: string;
  private counter = 0;

  constructor(gatewayId: string) {
    this.prefix = `${gatewayId}-${randomBytes(6).toString("hex")}`;
  }

  next(): string {
    this.counter += 1;
    return `${this.prefix}-${this.counter}`;
  }
}

/** Builds the v1 request frame for one hook call, or returns null when the hook is not forwarded. */
export function buildFrame(
  hook: string,
  event: unknown,
  ctx: unknown,
  options: { id: string; source: string; ts?: number },
): Frame | null {
  const type = frameTypeFor(hook, event);
  if (type === null) {
    return null;
  }
  const frame: Frame = {
    v: PROTOCOL_VERSION,
    id: options.id,
    type,
    ts: options.ts ?? Date.now(),
    source: options.source,
    hook,
    event: trimEvent(hook, event),
  };
  const trimmedContext = trimContext(ctx);
  if (trimmedContext !== undefined) {
    frame.ctx = trimmedContext;
  }
  return frame;
}

/** Serializes a frame as one protocol line, newline included. */
export function encodeFrame(frame: Frame): string {
  return `${JSON.stringify(frame)}\n`;
}
