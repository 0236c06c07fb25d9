"""openclaw-orchestrator: durable, retried sub-agent work for the OpenClaw gateway."""

__version__ = "0.1.0"
