// Plugin configuration: the values of plugins.entries["openclaw-orchestrator"].config, with
// defaults. The gateway validates the config against the JSON Schema in openclaw.plugin.json
// before the plugin loads. parseConfig checks again, so a value that slips through (an older
// gateway, a test) falls back to its default with a warning and never throws.

import { homedir } from "node:os";
import { join } from "node:path";

import type { Logger } from "./log.ts";

export type BridgeConfig = {
  enabled: boolean;
  socketPath: string;
  gatewayId: string;
  bufferSize: number;
  connectTimeoutMs: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  stopFlushTimeoutMs: number;
};

// Linux limits sun_path to 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES = 107;
// Event ids are at most 128 characters, and the id adds about 30 characters after the gateway id.
const MAX_GATEWAY_ID_CHARS = 64;
const GATEWAY_ID_PATTERN = /^[A-Za-z0-9_.:-]+$/;

type IntegerRange = { min: number; max: number; fallback: number };

const INTEGER_FIELDS: Record<
  "bufferSize" | "connectTimeoutMs" | "reconnectMinMs" | "reconnectMaxMs" | "stopFlushTimeoutMs",
  IntegerRange
> = {
  bufferSize: { min: 1, max: 1_000_000, fallback: 10_000 },
  connectTimeoutMs: { min: 10, max: 60_000, fallback: 2_000 },
  reconnectMinMs: { min: 10, max: 600_000, fallback: 500 },
  reconnectMaxMs: { min: 10, max: 3_600_000, fallback: 30_000 },
  stopFlushTimeoutMs: { min: 0, max: 4_000, fallback: 1_000 },
};

/**
 * Returns the daemon's default socket path: STATE_DIR/orchestrator.sock, where STATE_DIR is
 * $XDG_STATE_HOME/openclaw-orchestrator or ~/.local/state/openclaw-orchestrator.
 */
export function defaultSocketPath(env: Record<string, string | undefined> = process.env): string {
  const stateHome = env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(stateHome, "openclaw-orchestrator", "orchestrator.sock");
}

// Formats a config value for a warning. JSON.stringify throws on a BigInt and returns undefined
// for a function, so those fall back to String().
function formatValue(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Builds a BridgeConfig from the raw plugin config, replacing each invalid value by its default. */
export function parseConfig(raw: unknown, logger?: Logger): BridgeConfig {
  const source: Record<string, unknown> =
    raw !== null && typeof raw === "object" && !Array.isArray(raw) ? (raw as Record<string, unknown>) : {};
  const warn = (message: string): void => {
    logger?.warn(`openclaw-orchestrator: ${message}`);
  };

  let enabled = true;
  if (source.enabled !== undefined) {
    if (typeof source.enabled === "boolean") {
      enabled = source.enabled;
    } else {
      warn(`config enabled=${formatValue(source.enabled)} is not a boolean; using true`);
    }
  }

  let socketPath = defaultSocketPath();
  if (source.socketPath !== undefined) {
    const value = source.socketPath;
    if (typeof value === "string" && value.length > 0 && Buffer.byteLength(value) <= MAX_SOCKET_PATH_BYTES) {
      socketPath = value;
    } else {
      warn(
        `config socketPath=${formatValue(value)} is not a path of 1 to ${MAX_SOCKET_PATH_BYTES} bytes; ` +
          `using ${socketPath}`,
      );
    }
  }

  let gatewayId = "default";
  if (source.gatewayId !== undefined) {
    const value = source.gatewayId;
    if (typeof value === "string" && value.length <= MAX_GATEWAY_ID_CHARS && GATEWAY_ID_PATTERN.test(value)) {
      gatewayId = value;
    } else {
      warn(
        `config gatewayId=${formatValue(value)} is invalid: use 1 to ${MAX_GATEWAY_ID_CHARS} characters ` +
          `from A-Z a-z 0-9 _ . : -; using "default"`,
      );
    }
  }

  const integers = {} as Record<keyof typeof INTEGER_FIELDS, number>;
  for (const [name, range] of Object.entries(INTEGER_FIELDS) as Array<[keyof typeof INTEGER_FIELDS, IntegerRange]>) {
    const value = source[name];
    if (value === undefined) {
      integers[name] = range.fallback;
    } else if (typeof value === "number" && Number.isInteger(value) && value >= range.min && value <= range.max) {
      integers[name] = value;
    } else {
      warn(
        `config ${name}=${formatValue(value)} is not an integer from ${range.min} to ${range.max}; ` +
          `using ${range.fallback}`,
      );
      integers[name] = range.fallback;
    }
  }

  if (integers.reconnectMaxMs < integers.reconnectMinMs) {
    warn(
      `config reconnectMaxMs=${integers.reconnectMaxMs} is below reconnectMinMs=${integers.reconnectMinMs}; ` +
        `using ${integers.reconnectMinMs} for both`,
    );
    integers.reconnectMaxMs = integers.reconnectMinMs;
  }

  return { enabled, socketPath, gatewayId, ...integers };
}
