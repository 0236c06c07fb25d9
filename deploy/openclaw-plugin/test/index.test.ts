// Checks the entry point and the package metadata the gateway reads. The openclaw package is not
// installed here, so its definePluginEntry is replaced by a stub with the same contract (it returns
// the definition object, as openclaw 2026.9.6's dist/plugin-entry does).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { registerHooks } from "node:module";
import { after, describe, test } from "node:test";

import { bridgeStats, resetBridge } from "../src/bridge.ts";
import { parseConfig } from "../src/config.ts";
import { FORWARDED_HOOKS } from "../src/frames.ts";
import { RecordingLogger } from "./helpers.ts";

const STUB_SOURCE = "export function definePluginEntry(definition) { return definition; }";
const stubHooks = registerHooks({
  resolve(specifier, context, nextResolve) {
    if (specifier === "openclaw/plugin-sdk/plugin-entry") {
      return { url: `data:text/javascript,${encodeURIComponent(STUB_SOURCE)}`, shortCircuit: true };
    }
    return nextResolve(specifier, context);
  },
});

after(() => {
  stubHooks.deregister();
  resetBridge();
});

function readJson(name: string): Record<string, any> {
  return JSON.parse(readFileSync(new URL(`../${name}`, import.meta.url), "utf8"));
}

describe("plugin entry", () => {
  test("default export matches the manifest", async () => {
    const entry = (await import("../index.ts")).default;
    const manifest = readJson("openclaw.plugin.json");
    assert.equal(entry.id, "openclaw-orchestrator");
    assert.equal(entry.id, manifest.id);
    assert.equal(typeof entry.name, "string");
    assert.equal(typeof entry.description, "string");
    assert.equal(typeof entry.register, "function");
  });

  test("register wires every forwarded hook", async () => {
    const entry = (await import("../index.ts")).default;
    const hooks: string[] = [];
    const logger = new RecordingLogger();
    const api = {
      pluginConfig: { socketPath: "/nonexistent/orchestrator.sock" },
      logger,
      registrationMode: "full",
      on: (hookName: string) => void hooks.push(hookName),
    };
    // Only the members the bridge reads; OpenClawPluginApi has some 80 more.
    entry.register(api as unknown as Parameters<typeof entry.register>[0]);
    assert.deepEqual(hooks.sort(), [...FORWARDED_HOOKS].sort());
    assert.notEqual(bridgeStats(), null);
  });
});

describe("package metadata", () => {
  test("package.json points the gateway at index.ts", () => {
    const pkg = readJson("package.json");
    assert.deepEqual(pkg.openclaw.extensions, ["./index.ts"]);
    assert.equal(pkg.type, "module");
  });

  test("manifest activates on startup", () => {
    assert.deepEqual(readJson("openclaw.plugin.json").activation, { onStartup: true });
  });

  test("schema lists exactly the keys parseConfig reads", () => {
    const schema = readJson("openclaw.plugin.json").configSchema;
    assert.equal(schema.type, "object");
    assert.equal(schema.additionalProperties, false);
    const parsed = parseConfig({}, new RecordingLogger());
    assert.deepEqual(Object.keys(schema.properties).sort(), Object.keys(parsed).sort());
  });

  test("schema defaults equal the parseConfig defaults", () => {
    const schema = readJson("openclaw.plugin.json").configSchema;
    const parsed = parseConfig({}, new RecordingLogger()) as Record<string, unknown>;
    for (const [name, property] of Object.entries<Record<string, unknown>>(schema.properties)) {
      if ("default" in property) {
        assert.equal(parsed[name], property.default, `default of ${name}`);
      }
    }
  });

  test("schema bounds are accepted and values past them rejected", () => {
    const schema = readJson("openclaw.plugin.json").configSchema;
    for (const [name, property] of Object.entries<Record<string, any>>(schema.properties)) {
      if (property.type !== "integer") {
        continue;
      }
      const logger = new RecordingLogger();
      // The widest reconnect range, so that reconnectMaxMs stays >= reconnectMinMs at every bound.
      const base = { reconnectMinMs: 10, reconnectMaxMs: 3_600_000 };
      const atBounds = [property.minimum, property.maximum].map(
        (value) => (parseConfig({ ...base, [name]: value }, logger) as Record<string, unknown>)[name],
      );
      assert.deepEqual(atBounds, [property.minimum, property.maximum], `bounds of ${name}`);
      parseConfig({ [name]: property.maximum + 1 }, logger);
      assert.ok(logger.matching(new RegExp(`config ${name}=`)).length >= 1, `${name} above its maximum`);
    }
  });

  test("odd config values fall back without throwing", () => {
    const logger = new RecordingLogger();
    const parsed = parseConfig(
      { bufferSize: 10n, socketPath: () => "x", gatewayId: Symbol("g"), enabled: "yes" },
      logger,
    );
    assert.equal(parsed.bufferSize, 10_000);
    assert.equal(parsed.gatewayId, "default");
    assert.equal(parsed.enabled, true);
    assert.equal(logger.matching(/config bufferSize=10 is not an integer/).length, 1);
    assert.equal(logger.lines.length, 4);
  });
});
