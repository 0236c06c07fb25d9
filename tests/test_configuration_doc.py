"""docs/configuration.md is generated from ``Settings``; this test fails when it is out of date.

Regenerate it with::

    .venv/bin/python -m tests.test_configuration_doc > docs/configuration.md

The generator reads each field's type, default, constraints and ``description`` from the model,
and the section headings from the ``# Heading`` comments between the fields in settings.py.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from orchestrator.settings import DAY_S, MIB, AgentPolicy, Settings

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = ".venv/bin/python -m tests.test_configuration_doc > docs/configuration.md"

# Descriptions of fields that settings.py gives no ``description``. A description added there
# replaces the entry here.
FALLBACK_DESCRIPTIONS = {
    "key_prefix": "prefix of every Redis key the daemon writes, except arq's own `arq:` keys",
    "redis_connect_timeout_s": "timeout of connecting to Redis and of each Redis command",
    "state_dir": "lock file, embedded Redis data, and the default socket and spool paths",
    "max_line_bytes": "longest request line accepted from the plugin",
    "max_connections": "plugin connections open at once; further ones are rejected",
    "commit_batch_max": "maximum events stored in one Redis pipeline",
    "max_attempts": "attempts before a failing job is dead-lettered (status failed)",
    "retry_base_s": "backoff base: after failed attempt n the next one waits a random time up to "
    "min(retry_cap_s, retry_base_s * 2^(n-1))",
    "retry_cap_s": "longest wait before a retry",
    "gateway_id": "id of the gateway this daemon serves: received events are recorded as this "
    "gateway's, and the daemon re-dispatches its jobs",
    "gateway_url": "WebSocket URL of the gateway, for re-dispatching retried jobs",
    "gateway_token": "gateway auth token",
    "gateway_token_file": "file whose first line is the gateway auth token",
    "alert_webhook_timeout_s": "timeout of one webhook delivery",
    "shutdown_grace_s": "time limit of each of the first two shutdown phases (responding to lines already "
    "read, storing pending events); 0 waits without a limit",
    "log_format": "text lines, or one JSON object per line",
    "log_level": "lowest level logged",
}

SUFFIX_UNITS = {
    "_s": "seconds",
    "_ms": "milliseconds",
    "_bytes": "bytes",
    "_chars": "characters",
    "_mode": "octal",
}


def render() -> str:
    """Return the whole docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from orchestrator/settings.py by tests/test_configuration_doc.py; do not edit.",
        f"     Regenerate: {REGENERATE} -->",
        "",
        "Every setting is an environment variable `ORCH_<NAME>`, a key `<name>` in the TOML file given",
        "with `--config` (or `ORCH_CONFIG`), or for some a command-line flag. Precedence, highest first:",
        "command-line flags, environment, TOML file, defaults. Durations are in seconds and sizes in",
        "bytes, as the unit column says. A dictionary setting is written as JSON in its environment",
        "variable, or as a table in the TOML file.",
        "",
    ]
    for heading, names in sections():
        lines += [
            f"## {heading}",
            "",
            "| setting | environment variable | type | default | unit | description |",
        ]
        lines.append("|---|---|---|---|---|---|")
        lines += [field_row(name, Settings.model_fields[name], env=True) for name in names]
        lines.append("")
    lines += agent_policy_section()
    return "\n".join(lines)


def sections() -> list[tuple[str, list[str]]]:
    """Group the fields under the ``# Heading`` comments of the Settings class, in source order."""
    source = inspect.getsource(Settings)
    result: list[tuple[str, list[str]]] = [("General", [])]
    previous_blank = False
    for line in source.splitlines():
        heading = re.fullmatch(r"    # ([A-Z][\w ,()/-]*)", line)
        field = re.match(r"    (\w+): ", line)
        if heading and previous_blank:
            result.append((heading.group(1), []))
        elif field and field.group(1) in Settings.model_fields:
            result[-1][1].append(field.group(1))
        previous_blank = not line.strip()
    return [(heading, names) for heading, names in result if names]


def field_row(name: str, info: FieldInfo, *, env: bool) -> str:
    cells = [
        f"`{name}`",
        f"`ORCH_{name.upper()}`" if env else "",
        type_text(info.annotation),
        default_text(name, info),
        unit_text(name),
        description_text(name, info),
    ]
    if not env:
        del cells[1]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in arguments)
    if origin in {typing.Union, types.UnionType}:
        present = [argument for argument in arguments if argument is not type(None)]
        return " or ".join(type_text(argument) for argument in present)
    if origin is dict:
        return f"table of {type_text(arguments[1])}"
    if annotation is SecretStr:
        return "secret string"
    if annotation is Path:
        return "path"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"{annotation.__name__} (below)"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def default_text(name: str, info: FieldInfo) -> str:
    if info.default_factory is not None:
        return factory_text(info.default_factory)
    value = info.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if name.endswith("_mode") and isinstance(value, int):
        return f"`0{value:o}`"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"`{value}`" + size_hint(name, value)
    return f"`{value}`"


def factory_text(factory: Any) -> str:
    """Describe a default factory by its docstring (``Return X.``) or by what it returns."""
    doc = inspect.getdoc(factory)
    if doc and doc.startswith("Return "):
        return doc.removeprefix("Return ").rstrip(".").replace("``", "`")
    value = factory()
    return "empty" if value in ({}, [], "") else f"`{value}`"


def size_hint(name: str, value: int) -> str:
    if name.endswith("_bytes") and value >= MIB and value % MIB == 0:
        return f" ({value // MIB} MiB)"
    if name.endswith("_s") and value >= DAY_S and value % DAY_S == 0:
        return f" ({value // DAY_S} days)"
    if name.endswith("_s") and value >= 3600 and value % 3600 == 0:
        return f" ({value // 3600} h)"
    return ""


def unit_text(name: str) -> str:
    for suffix, unit in SUFFIX_UNITS.items():
        if name.endswith(suffix):
            return unit
    return ""


def description_text(name: str, info: FieldInfo) -> str:
    text = info.description or FALLBACK_DESCRIPTIONS.get(name, "")
    limits = constraint_text(info)
    return f"{text} ({limits})" if text and limits else text or limits


# Each annotated_types constraint: its attribute holding the bound, and how the doc writes it.
CONSTRAINTS: dict[type, tuple[str, str]] = {
    Ge: ("ge", ">="),
    Gt: ("gt", ">"),
    Le: ("le", "<="),
    Lt: ("lt", "<"),
    MinLen: ("min_length", "length >="),
    MaxLen: ("max_length", "length <="),
}


def constraint_text(info: FieldInfo) -> str:
    parts: list[str] = []
    for item in info.metadata:
        if type(item) in CONSTRAINTS:
            attribute, symbol = CONSTRAINTS[type(item)]
            parts.append(f"{symbol} {getattr(item, attribute)}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def agent_policy_section() -> list[str]:
    return [
        "## Per-agent retry policy",
        "",
        "Each entry of `agent_policies` is keyed by agent id and may set these fields; an unset field",
        "takes the global setting of the same name. In TOML:",
        "",
        "```toml",
        "[agent_policies.main]",
        "max_attempts = 5",
        "retry_cap_s = 600",
        "```",
        "",
        'or in the environment: `ORCH_AGENT_POLICIES=\'{"main": {"max_attempts": 5}}\'`.',
        "",
        "| field | type | default | unit | description |",
        "|---|---|---|---|---|",
        *(field_row(name, info, env=False) for name, info in AgentPolicy.model_fields.items()),
        "",
    ]


# --- tests ---------------------------------------------------------------------------------------


def test_configuration_doc_up_to_date() -> None:
    current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
    assert current == render(), f"docs/configuration.md is out of date; regenerate it with: {REGENERATE}"


def test_every_setting_described() -> None:
    undescribed = [
        name
        for name, info in Settings.model_fields.items()
        if not info.description and name not in FALLBACK_DESCRIPTIONS
    ]
    assert not undescribed, f"give these settings a description= in orchestrator/settings.py: {undescribed}"


def test_fallback_descriptions_name_settings() -> None:
    unknown = sorted(set(FALLBACK_DESCRIPTIONS) - set(Settings.model_fields))
    assert not unknown, f"FALLBACK_DESCRIPTIONS names settings that no longer exist: {unknown}"


def test_every_setting_in_a_section() -> None:
    placed = [name for _, names in sections() for name in names]
    assert sorted(placed) == sorted(Settings.model_fields)


if __name__ == "__main__":
    sys.stdout.write(render())
