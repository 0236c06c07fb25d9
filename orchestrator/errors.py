"""Exceptions raised by the orchestrator.

Library errors (redis-py, OS, socket) are wrapped at the boundary that caught them, chained with
``from``, and carry the address or path involved so the message alone shows the operator what to fix.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(OrchestratorError):
    """A setting or configuration file is invalid or missing."""


class RedisUnavailable(OrchestratorError):
    """Redis did not respond at the configured address."""


class JobNotFound(OrchestratorError):
    """No job matches the id (or OpenClaw identifier) that was given."""


class SocketInUse(OrchestratorError):
    """Another live process is listening on the daemon's socket path."""


class EmbeddedRedisError(OrchestratorError):
    """The managed redis-server child could not be found, started or stopped."""


class StateDirLocked(OrchestratorError):
    """Another live daemon holds the lock on the state directory."""


class JobStateError(OrchestratorError):
    """The job exists but its status does not allow the requested action."""
