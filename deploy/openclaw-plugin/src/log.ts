// Logging helpers. The gateway hands plugins a logger (api.logger) with info, warn, error and an
// optional debug method. This file uses the same shape, so tests can pass a recording logger.

export type Logger = {
  debug?: (message: string) => void;
  info: (message: string) => void;
  warn: (message: string) => void;
  error: (message: string) => void;
};

export type LogLevel = "info" | "warn" | "error";

type Window = {
  suppressed: number;
  timer: ReturnType<typeof setTimeout>;
  lastMessage: (count: number) => string;
  level: LogLevel;
};

/**
 * Logger that writes each kind of repeated message at most once per interval.
 *
 * The first report of a key is logged at once with count 1. Later reports of the same key within
 * the interval are counted, and when the interval ends one line reports their count, so a burst
 * of thousands of drops produces two lines and no count is lost.
 */
export class RateLimitedLog {
  private readonly logger: Logger;
  private readonly intervalMs: number;
  private readonly windows = new Map<string, Window>();

  constructor(logger: Logger, intervalMs: number) {
    this.logger = logger;
    this.intervalMs = intervalMs;
  }

  /** Logs message(count) now, or counts it for the summary line at the end of the key's interval. */
  report(key: string, level: LogLevel, message: (count: number) => string, count = 1): void {
    const window = this.windows.get(key);
    if (window !== undefined) {
      window.suppressed += count;
      window.lastMessage = message;
      window.level = level;
      return;
    }

    this.write(level, message(count));
    const timer = setTimeout(() => this.closeWindow(key), this.intervalMs);
    timer.unref?.();
    this.windows.set(key, { suppressed: 0, timer, lastMessage: message, level });
  }

  /** Writes the pending summary lines now and stops all timers. */
  flush(): void {
    for (const key of [...this.windows.keys()]) {
      const window = this.windows.get(key);
      if (window !== undefined) {
        clearTimeout(window.timer);
      }
      this.closeWindow(key);
    }
  }

  private closeWindow(key: string): void {
    const window = this.windows.get(key);
    if (window === undefined) {
      return;
    }
    this.windows.delete(key);
    if (window.suppressed > 0) {
      this.write(window.level, window.lastMessage(window.suppressed));
    }
  }

  private write(level: LogLevel, line: string): void {
    try {
      this.logger[level](line);
    } catch {
      // A failing host logger must not turn a log line into an exception in a hook handler.
    }
  }
}
