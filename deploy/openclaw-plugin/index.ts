// Entry point loaded by the OpenClaw gateway (package.json "openclaw.extensions").
// All logic lives in src/, which does not import openclaw, so the unit tests run without it.

import { definePluginEntry } from "openclaw/plugin-sdk/plugin-entry";

import { PLUGIN_ID, registerBridge } from "./src/bridge.ts";

export default definePluginEntry({
  id: PLUGIN_ID,
  name: "OpenClaw Orchestrator bridge",
  description:
    "Streams sessions_spawn, sessions_send, sub-agent and gateway lifecycle events to the " +
    "openclaw-orchestrator daemon over a Unix socket.",
  register(api) {
    registerBridge(api);
  },
});
