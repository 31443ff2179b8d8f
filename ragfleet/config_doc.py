"""Generate docs/config.md, the configuration reference, from `ragfleet.settings.Settings`.

Run `python -m ragfleet.config_doc > docs/config.md`. tests/unit/test_config_doc.py fails when the file
is out of date or a setting has no description, so the reference cannot drift from the code.

What must stay true:
- Every field of `Settings` appears, under its environment variable name (`RAGFLEET_<FIELD>`), with a
  description: the attribute docstring under the field in settings.py (`use_attribute_docstrings`).
- Groups are settings.py's own `# --- name ---` section comments, in file order, so a setting lands in
  the reference where a reader of the code finds it.
- The output depends on the code only, never on the environment of the process that renders it: the
  defaults shown are the field defaults, written as a value one would put in the variable.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from ragfleet.settings import Settings

COMMAND = "python -m ragfleet.config_doc > docs/config.md"
SECTION = re.compile(r"^\s*# -{3} (?P<name>.+?) -+\s*$")
FIELD_LINE = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")
UNSET = "unset"
EMPTY = "empty"

# Variables the process files read themselves (the Procfile, supervisord's config, the scripts, the Flower
# launcher): they place processes, not settings of the code. tests/unit/test_config_doc.py fails when
# one of those files reads a RAGFLEET_* variable that is neither a setting nor listed here.
LAUNCH_VARIABLES: dict[str, tuple[str, str]] = {
    "RAGFLEET_API_PORT": ("8000", "Port of the API (infra/supervisor/fleet.conf, the Procfile)."),
    "RAGFLEET_RETRIEVAL_NODES": (
        "2",
        "Solo retrieval nodes supervisord runs (infra/supervisor/fleet.conf, the Procfile; one per core).",
    ),
    "RAGFLEET_SUPERVISOR_PIDFILE": (
        "var/retrieval-supervisord.pid",
        "supervisord's pid file for the retrieval nodes (the Procfile's `retrieval` line).",
    ),
    "RAGFLEET_FLOWER_PORT": ("5555", "Port of Flower, always bound to 127.0.0.1 (workers/flower.py)."),
    "RAGFLEET_REDIS_PORT": (
        "6379",
        "Port of the local Redis that scripts/ensure_services.sh starts when none answers.",
    ),
}


def env_name(field: str, model: type[BaseSettings] = Settings) -> str:
    """The environment variable pydantic-settings reads for `field` (prefix + upper-case name)."""
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def sections(model: type[BaseSettings] = Settings) -> dict[str, list[str]]:
    """Field names grouped under the `# --- name ---` comment above them in the class source.

    A field above the first section comment goes to "General"; one the source scan cannot place (a
    field inherited or built dynamically) goes to "Other", so no field is ever left out.
    """
    groups: dict[str, list[str]] = {}
    current = "General"
    placed: set[str] = set()
    for line in textwrap.dedent(inspect.getsource(model)).splitlines():
        if m := SECTION.match(line):
            current = m.group("name").strip()
            continue
        m = FIELD_LINE.match(line)
        if m and m.group("name") in model.model_fields and m.group("name") not in placed:
            groups.setdefault(current, []).append(m.group("name"))
            placed.add(m.group("name"))
    rest = [name for name in model.model_fields if name not in placed]
    if rest:
        groups.setdefault("Other", []).extend(rest)
    return groups


def type_text(field: str, model: type[BaseSettings] = Settings) -> str:
    """A reader's name for the field's type: `str, optional`, `one of a, b`, `secret`, `JSON object`."""
    raw = _annotation(field, model)
    optional = raw.endswith("| None")
    base = raw.removesuffix("| None").strip()
    if literal := re.fullmatch(r"Literal\[(.*)\]", base):
        values = [v.strip().strip("\"'") for v in literal.group(1).split(",")]
        base = "one of " + ", ".join(f"`{v}`" for v in values)
    elif base == "SecretStr":
        base = "secret string"
    elif base.startswith("dict["):
        base = "JSON object"
    elif base == "Path":
        base = "path"
    return f"{base}, optional" if optional else base


def _annotation(field: str, model: type[BaseSettings]) -> str:
    # settings.py uses `from __future__ import annotations`: the class's annotations are the source
    # text. Fall back to the resolved type, so the reference survives that import going away.
    for klass in model.__mro__:
        ann = inspect.get_annotations(klass).get(field)
        if ann is not None:
            return ann if isinstance(ann, str) else _type_name(ann)
    return _type_name(model.model_fields[field].annotation)


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not getattr(tp, "__args__", None) else None
    return text or str(tp).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")


def default_text(info: FieldInfo) -> str:
    """The default as one would write it in the variable: `true`, `120/minute`, `{}`; or unset/empty."""
    value: Any = info.get_default(call_default_factory=True)
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, Path):
        return value.as_posix()
    text = str(value)
    return EMPTY if text == "" else text


def description(info: FieldInfo) -> str:
    """One line: the attribute docstring with its line breaks folded."""
    return " ".join((info.description or "").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(model: type[BaseSettings] = Settings) -> str:
    out = [
        f"# Configuration reference (generated by `{COMMAND}`; do not edit)",
        "",
        "Every setting is a field of `ragfleet.settings.Settings` "
        "([ragfleet/settings.py](../ragfleet/settings.py)) and is read "
        "from the environment variable named in the first column; nothing else in the code reads the "
        "environment, except the few launch variables at the end. Booleans take `true`/`false` (or "
        "`1`/`0`); a JSON object is written as JSON; a "
        "secret is never logged. Relative paths are relative to the working directory of the process. "
        "The settings most deployments set first are in the README's *Configuration* section.",
        "",
        "A test (tests/unit/test_config_doc.py) fails when this file is out of date or a setting has no "
        f"description: add a docstring under the new field in settings.py, then run `{COMMAND}`.",
    ]
    for group, names in sections(model).items():
        out += ["", f"## {group[:1].upper()}{group[1:]}", "", "| variable | type | default | meaning |"]
        out.append("| --- | --- | --- | --- |")
        for name in names:
            info = model.model_fields[name]
            default = default_text(info)
            shown = default if default in (UNSET, EMPTY) else f"`{_cell(default)}`"
            out.append(
                f"| `{env_name(name, model)}` | {_cell(type_text(name, model))} | {shown} | "
                f"{_cell(description(info))} |"
            )
    out += [
        "",
        "## Launch variables (read by the Procfile, supervisord's config and the scripts, not by Settings)",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    out += [
        f"| `{name}` | `{default}` | {_cell(text)} |" for name, (default, text) in LAUNCH_VARIABLES.items()
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
