"""Request lines for the load: the captured spawn lifecycle, made unique per job.

Each lifecycle is the four frames of the captured successful spawn (``subagent_spawned``,
``after_tool_call`` accepted, the child's ``agent_end``, ``subagent_ended`` ok), as the bridge
plugin sends them. Every lifecycle gets its own event ids, child session key, child run id and tool
call id, so the daemon records it as a separate job that ends ``completed``. The replacement
OpenClaw ids have the same length as the captured ones, so a line differs in size from the captured
frame only by its longer event id (13 bytes).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from tests.events import SPAWN_CHILD_RUN, SPAWN_CHILD_SESSION, SPAWN_TOOL_CALL, line, spawn_lifecycle

EVENTS_PER_LIFECYCLE = 4
_CHILD_UUID = SPAWN_CHILD_SESSION.rsplit(":", 1)[1]
_EVENT_ID_MARK = "@event-id@"


def _template(frame: dict[str, Any]) -> bytes:
    """Return one frame as a bytes %-format template with named placeholders for its ids."""
    text = line({**frame, "id": _EVENT_ID_MARK}).decode().replace("%", "%%")
    text = text.replace(_EVENT_ID_MARK, "%(event_id)s")
    text = text.replace(_CHILD_UUID, "%(child)s")
    text = text.replace(SPAWN_CHILD_RUN, "%(run)s")
    text = text.replace(SPAWN_TOOL_CALL, "%(tool_call)s")
    return text.encode()


@dataclass(frozen=True, slots=True)
class LifecycleIds:
    """The OpenClaw ids of one generated lifecycle."""

    child: str
    run: str
    tool_call: str


class Workload:
    """Generator of unique lifecycles. Within one process no id repeats."""

    def __init__(self) -> None:
        self._templates = [_template(frame) for frame in spawn_lifecycle()]
        # A random 32-bit salt keeps ids unique across benchmark runs, too.
        self._salt = secrets.randbits(32)
        self._next = 0

    @property
    def next_index(self) -> int:
        """Index of the next lifecycle ``lifecycles`` will return."""
        return self._next

    def ids(self, index: int) -> LifecycleIds:
        """Return the OpenClaw ids of lifecycle ``index``, as long as the captured ones."""
        child = uuid.UUID(int=(self._salt << 96) | (1 << 64) | index)
        run = uuid.UUID(int=(self._salt << 96) | (2 << 64) | index)
        return LifecycleIds(child=str(child), run=str(run), tool_call=f"call_{index:010x}")

    def event_id(self, index: int, position: int) -> str:
        """Return the event id of line ``position`` (0 to 3) of lifecycle ``index``."""
        return f"bench-{self._salt:08x}-{index}-{position}"

    def lifecycles(self, count: int) -> list[list[bytes]]:
        """Return ``count`` new lifecycles, each a list of its four request lines in gateway order."""
        result = []
        for _ in range(count):
            index = self._next
            self._next += 1
            ids = self.ids(index)
            values = {
                b"child": ids.child.encode(),
                b"run": ids.run.encode(),
                b"tool_call": ids.tool_call.encode(),
            }
            lines = []
            for position, template in enumerate(self._templates):
                values[b"event_id"] = self.event_id(index, position).encode()
                lines.append(template % values)
            result.append(lines)
        return result

    def frames(self, count: int) -> list[dict[str, Any]]:
        """Return the parsed frames of ``count`` new lifecycles, in order, for the baselines."""
        return [orjson.loads(item) for lifecycle in self.lifecycles(count) for item in lifecycle]


def split_lines(lifecycles: list[list[bytes]], clients: int) -> list[list[bytes]]:
    """Deal whole lifecycles round-robin to ``clients`` connections, each lifecycle's lines in order."""
    per_client: list[list[bytes]] = [[] for _ in range(clients)]
    for index, lifecycle in enumerate(lifecycles):
        per_client[index % clients].extend(lifecycle)
    return per_client
