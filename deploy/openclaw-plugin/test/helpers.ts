// Shared test helpers: recorded hook payloads, a recording logger, and a fake daemon that speaks
// wire protocol v1 on a Unix socket.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import type { Logger } from "../src/log.ts";

export type RecordedHook = {
  scenario: string;
  hook: string;
  event: Record<string, unknown>;
  ctx: Record<string, unknown> | null;
};

const FIXTURE_PATH = new URL("./fixtures/hook-events-2026.9.6.jsonl", import.meta.url);

export function loadRecordedHooks(): RecordedHook[] {
  return readFileSync(FIXTURE_PATH, "utf8")
    .split("\n")
    .filter((line) => line.trim().length > 0)
    .map((line) => JSON.parse(line) as RecordedHook);
}

/** Returns a deep copy of the first recorded payload whose scenario starts with the prefix. */
export function recorded(scenarioPrefix: string): RecordedHook {
  const match = loadRecordedHooks().find((entry) => entry.scenario.startsWith(scenarioPrefix));
  if (match === undefined) {
    throw new Error(`no recorded hook payload has a scenario starting with ${JSON.stringify(scenarioPrefix)}`);
  }
  return structuredClone(match);
}

export type LogLine = { level: "debug" | "info" | "warn" | "error"; message: string };

export class RecordingLogger implements Logger {
  readonly lines: LogLine[] = [];
  debug = (message: string): void => void this.lines.push({ level: "debug", message });
  info = (message: string): void => void this.lines.push({ level: "info", message });
  warn = (message: string): void => void this.lines.push({ level: "warn", message });
  error = (message: string): void => void this.lines.push({ level: "error", message });

  matching(pattern: RegExp): LogLine[] {
    return this.lines.filter((line) => pattern.test(line.message));
  }
}

export type Frame = Record<string, unknown> & { id: string };

// Returns the response object for a frame, or null to send no response (a lost acknowledgement).
export type Responder = (frame: Frame, index: number) => Record<string, unknown> | null;

export const ACK: Responder = (frame) => ({ id: frame.id, ok: true, job_id: null, tracked: true });

/** A daemon stand-in that records every request line and writes the responder's object as the response. */
export class FakeDaemon {
  readonly socketPath: string;
  readonly frames: Frame[] = [];
  readonly rawLines: string[] = [];
  connections = 0;
  responder: Responder = ACK;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  listen(): Promise<void> {
    const server = createServer((socket) => this.onConnection(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.socketPath, () => resolve());
    });
  }

  /** Closes the listener and every open connection, like a daemon that stops. */
  async close(): Promise<void> {
    for (const socket of this.sockets) {
      socket.destroy();
    }
    const server = this.server;
    this.server = null;
    if (server !== null) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  /** Destroys the open connections and keeps listening. */
  dropConnections(): void {
    for (const socket of this.sockets) {
      socket.destroy();
    }
  }

  private onConnection(socket: Socket): void {
    this.connections += 1;
    this.sockets.add(socket);
    socket.setEncoding("utf8");
    let buffer = "";
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      let newline = buffer.indexOf("\n");
      while (newline !== -1) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        this.onLine(socket, line);
        newline = buffer.indexOf("\n");
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => this.sockets.delete(socket));
  }

  private onLine(socket: Socket, line: string): void {
    this.rawLines.push(line);
    const frame = JSON.parse(line) as Frame;
    const index = this.frames.length;
    this.frames.push(frame);
    const response = this.responder(frame, index);
    if (response !== null && !socket.destroyed) {
      socket.write(`${JSON.stringify(response)}\n`);
    }
  }
}

export type TempDir = { path: string; socketPath: string; remove: () => void };

/** Creates a temporary directory with a socket path inside it that fits the sun_path limit. */
export function makeTempDir(): TempDir {
  const path = mkdtempSync(join(tmpdir(), "orch-plugin-"));
  return {
    path,
    socketPath: join(path, "daemon.sock"),
    remove: () => rmSync(path, { recursive: true, force: true }),
  };
}

/** Polls condition every 5 ms until it holds; rejects with the message after timeoutMs. */
export async function waitFor(condition: () => boolean, message: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting until ${message}`);
    }
    await sleep(5);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
