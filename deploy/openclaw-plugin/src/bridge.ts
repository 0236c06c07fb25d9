// Hook wiring: subscribes to the gateway's hooks and hands each forwarded event to the one
// DaemonClient of this process.
//
// OpenClaw 2026.9.6 calls register() two or three times in one gateway process, and the loader may
// evaluate this module more than once. The client, its buffer and the event id counter therefore
// live on globalThis under a registered symbol, so every registration shares one connection.

import { DaemonClient, type ClientStats } from "./client.ts";
import { parseConfig, type BridgeConfig } from "./config.ts";
import { FORWARDED_HOOKS, EventIdGenerator, buildFrame, encodeFrame, type ForwardedHook } from "./frames.ts";
import type { Logger } from "./log.ts";

export const PLUGIN_ID = "openclaw-orchestrator";

/** The part of OpenClaw's plugin API (OpenClawPluginApi) that the bridge uses. */
export type PluginApiLike = {
  pluginConfig?: Record<string, unknown>;
  logger?: Logger;
  registrationMode?: string;
  on: (hookName: ForwardedHook, handler: (event: unknown, ctx: unknown) => void | Promise<void>) => void;
};

type BridgeState = {
  config: BridgeConfig;
  client: DaemonClient;
  ids: EventIdGenerator;
  // Logger of the latest registration; the client logs through a forwarder that reads it.
  logger: Logger;
  registrations: number;
  // Event objects already forwarded, per hook, so that handlers left over from an earlier
  // registration cannot send the same hook call twice.
  forwarded: WeakMap<object, Set<string>>;
};

const STATE_KEY = Symbol.for("openclaw-orchestrator.bridge.state");

type GlobalWithState = typeof globalThis & { [STATE_KEY]?: BridgeState };

const FALLBACK_LOGGER: Logger = {
  info: (message) => console.info(message),
  warn: (message) => console.warn(message),
  error: (message) => console.error(message),
};

function currentState(): BridgeState | undefined {
  return (globalThis as GlobalWithState)[STATE_KEY];
}

function setState(state: BridgeState | undefined): void {
  (globalThis as GlobalWithState)[STATE_KEY] = state;
}

function forwardingLogger(): Logger {
  const target = (): Logger => currentState()?.logger ?? FALLBACK_LOGGER;
  return {
    debug: (message) => target().debug?.(message),
    info: (message) => target().info(message),
    warn: (message) => target().warn(message),
    error: (message) => target().error(message),
  };
}

function clientOptions(config: BridgeConfig) {
  return {
    socketPath: config.socketPath,
    bufferSize: config.bufferSize,
    connectTimeoutMs: config.connectTimeoutMs,
    reconnectMinMs: config.reconnectMinMs,
    reconnectMaxMs: config.reconnectMaxMs,
    logger: forwardingLogger(),
  };
}

/**
 * Registers the hook handlers for one plugin registration. Safe to call many times: the first
 * call creates the shared client, later calls update its config and logger.
 */
export function registerBridge(api: PluginApiLike): void {
  const logger = api.logger ?? FALLBACK_LOGGER;
  try {
    // Hooks are registered in every registration mode. In openclaw 2026.9.6 the gateway process
    // registers the plugin once in "full" mode and twice more in "discovery" mode, and the
    // agent-run hooks (after_tool_call, subagent_*, agent_end) reach only handlers registered in
    // "discovery" mode. Registering opens no socket: the client connects when the first event
    // arrives.
    let state = currentState();
    // A registration without any plugin config keeps the shared client's config, so that a
    // metadata-only load cannot move the connection to the default socket path.
    const config =
      api.pluginConfig === undefined && state !== undefined ? state.config : parseConfig(api.pluginConfig, logger);
    if (!config.enabled) {
      logger.info(`${PLUGIN_ID}: disabled by config (enabled=false); no events are sent to the daemon`);
      if (state !== undefined) {
        state.client.close();
        setState(undefined);
      }
      return;
    }

    if (state === undefined) {
      state = {
        config,
        client: new DaemonClient(clientOptions(config)),
        ids: new EventIdGenerator(config.gatewayId),
        logger,
        registrations: 0,
        forwarded: new WeakMap(),
      };
      setState(state);
    } else {
      state.logger = logger;
      if (state.config.gatewayId !== config.gatewayId) {
        state.ids = new EventIdGenerator(config.gatewayId);
      }
      state.config = config;
      state.client.reconfigure(clientOptions(config));
    }
    state.registrations += 1;

    for (const hook of FORWARDED_HOOKS) {
      api.on(hook, (event: unknown, ctx: unknown) => handleHook(hook, event, ctx));
    }
    const summary =
      `${PLUGIN_ID}: forwarding ${FORWARDED_HOOKS.join(", ")} to ${config.socketPath} ` +
      `as gateway ${config.gatewayId} (registration ${state.registrations}, mode ${api.registrationMode ?? "unknown"})`;
    if (state.registrations === 1) {
      logger.info(summary);
    } else {
      logger.debug?.(summary);
    }
  } catch (error) {
    logger.error(`${PLUGIN_ID}: registration failed, no events will be sent: ${describe(error)}`);
  }
}

/**
 * Handles one hook call: builds and buffers its frame, and returns at once. Only gateway_stop
 * returns a promise, which waits up to stopFlushTimeoutMs for the buffer to be acknowledged so
 * that the last events are not lost when the process exits. Never throws.
 */
export function handleHook(hook: ForwardedHook, event: unknown, ctx: unknown): Promise<void> | undefined {
  const state = currentState();
  if (state === undefined) {
    return undefined;
  }
  try {
    if (event !== null && typeof event === "object") {
      const hooksSeen = state.forwarded.get(event) ?? new Set<string>();
      if (hooksSeen.has(hook)) {
        return undefined;
      }
      hooksSeen.add(hook);
      state.forwarded.set(event, hooksSeen);
    }

    const ts = Date.now();
    const frame = buildFrame(hook, event, ctx, { id: state.ids.next(), source: state.config.gatewayId, ts });
    if (frame !== null) {
      state.client.send(frame.id, encodeFrame(frame));
    }
    if (hook === "gateway_stop") {
      return state.client.flush(state.config.stopFlushTimeoutMs).then(
        () => undefined,
        () => undefined,
      );
    }
  } catch (error) {
    try {
      state.logger.error(`${PLUGIN_ID}: could not forward a ${hook} event: ${describe(error)}`);
    } catch {
      // The host logger failed too; there is nowhere left to report to.
    }
  }
  return undefined;
}

/** Returns the shared client's counters, or null before the first registration. */
export function bridgeStats(): ClientStats | null {
  return currentState()?.client.stats() ?? null;
}

/** Closes the shared client and forgets it; the next registration starts afresh. */
export function resetBridge(): void {
  currentState()?.client.close();
  setState(undefined);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
