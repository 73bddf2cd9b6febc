"""The reference pages that the code defines, generated at ``make docs`` time.

Where the code is the truth, the page is made from it, never written by hand:

- ``reference/settings.md``: the :class:`~indexer.settings.Settings` dataclass (names,
  variables, options, defaults, help) and the commands that read each setting;
- ``reference/cli.md``: the argument parser of :mod:`indexer.cli.parser`;
- ``reference/http.md``: the OpenAPI schema of the app :func:`indexer.http.create_app`
  builds;
- ``reference/sql.md`` and ``reference/events.md``: the catalog of a database migrated
  to head (functions, views, tables, column comments, the event kinds of the
  ``events.kind`` check), on an embedded server of the docs' own (``.tmp/docs-pgdata``);
- ``reference/metrics.md``: the Prometheus registry of :class:`~indexer.metrics.Metrics`.

What the code cannot say (why, examples, caveats) comes from ``docs/_notes/<page>.md``:
its text before the first ``## `` heading opens the page, each ``## KEY`` section is
added under the item of that key (a setting's variable, a command such as ``indexer
sources add``, an SQL object's name, ``POST /search``, a metric's name, an event kind),
and ``## (end)`` closes the page.  A note whose key names nothing in the code stops the
build: a note never outlives what it describes.  Nothing generated is committed: the
pages exist only in the built site (``python docs/generate.py DIR`` writes them to DIR to
read them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTES = Path(__file__).resolve().parent / "_notes"
#: The embedded server the SQL reference is read from (never the user's DATABASE_URL).
DATA_DIR = ROOT / ".tmp" / "docs-pgdata"
SCHEMA = "public"
END = "(end)"


class NoteError(Exception):
    """A note in docs/_notes/ that the generated page cannot place."""


@dataclass
class Notes:
    """One page's notes: ``intro``, ``sections`` by key, ``end``; keys used so far."""

    page: str
    intro: str = ""
    end: str = ""
    sections: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, page: str) -> Notes:
        path = NOTES / f"{page}.md"
        notes = cls(page)
        if not path.exists():
            return notes
        text = path.read_text(encoding="utf-8")
        # Everything after "## (end)" closes the page, headings of its own included.
        text, _, notes.end = text.partition(f"\n## {END}\n")
        notes.end = notes.end.strip()
        parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
        notes.intro = parts[0].strip()
        for key, body in zip(parts[1::2], parts[2::2], strict=True):
            notes.sections[key.strip()] = body.strip()
        return notes

    def get(self, key: str) -> str:
        self.used.add(key)
        return self.sections.get(key, "")

    def check(self) -> None:
        unknown = sorted(set(self.sections) - self.used)
        if unknown:
            raise NoteError(
                f"docs/_notes/{self.page}.md has notes for what the code does not have: "
                + ", ".join(unknown)
            )


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _sentence(text: str) -> str:
    text = " ".join(text.split()).replace("``", "`")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _page(title: str, notes: Notes, body: Sequence[str]) -> str:
    parts = [
        f"# {title}",
        "<!-- Generated from the code by docs/generate.py at `make docs` time; "
        f"notes from docs/_notes/{notes.page}.md. -->",
    ]
    if notes.intro:
        parts.append(notes.intro)
    parts.extend(body)
    if notes.end:
        parts.append(notes.end)
    notes.check()
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


# -- settings ---------------------------------------------------------------------------


def _type_name(f: dataclasses.Field[Any]) -> str:
    kind = str(f.type)
    for prefix, name in (("bool", "on/off"), ("int", "integer"), ("float", "number")):
        if kind.startswith(prefix):
            return name
    return "path" if kind.startswith("Path") else "text"


def settings_page() -> str:
    from indexer.cli.parser import USES, _shown, build_parser
    from indexer.settings import _OTHER_VARIABLES, FIELDS, env_name

    notes = Notes.read("settings")
    paths = [c.path for c in _commands(build_parser(), "indexer")]

    def command_link(name: str) -> str:
        # A command with actions (cache stats, cache prune...) links to its first one.
        path = next(p for p in paths if p == f"indexer {name}" or p.startswith(f"indexer {name} "))
        return f"[`indexer {name}`](cli.md#{path.replace(' ', '-')})"

    rows = ["| variable | option | default | meaning |", "|---|---|---|---|"]
    sections = []
    for f in FIELDS:
        variable = env_name(f.name)
        option = "--" + f.name.replace("_", "-")
        note = notes.get(variable)
        shown_default = re.search(r"^Default: (.+)$", note, flags=re.MULTILINE)
        if shown_default is not None:
            default = shown_default.group(1).strip()
            note = (note[: shown_default.start()] + note[shown_default.end() :]).strip()
        elif f.default is not MISSING:
            default = f"`{_shown(f.default)}`"
        else:
            # A default computed where the code runs (a user's home, say): the build
            # machine's value would be wrong for the reader.
            raise NoteError(
                f"{variable}'s default is computed at run time: give it a 'Default: ...' "
                "line in docs/_notes/settings.md"
            )
        commands = [name for name, used in USES.items() if f.name in used]
        anchor = variable.lower()
        rows.append(
            f"| [`{variable}`](#{anchor}) | `{option}` | {default} | {_cell(f.metadata['help'])} |"
        )
        section = [
            f"### `{variable}`",
            f"Option `{option}` · {_type_name(f)} · default {default}",
            _sentence(f.metadata["help"]),
            "Read by " + ", ".join(command_link(c) for c in commands) + ".",
        ]
        if note:
            section.append(note)
        sections.append("\n\n".join(section))
    others = []
    for variable in _OTHER_VARIABLES:
        note = notes.get(variable)
        if not note:
            raise NoteError(f"{variable} needs a note in docs/_notes/settings.md")
        others.append(f"### `{variable}`\n\n{note}")
    body = [
        "\n".join(rows),
        "## Every setting",
        *sections,
        "## Other variables",
        *others,
    ]
    return _page("Settings", notes, body)


# -- the command line -------------------------------------------------------------------


@dataclass
class Command:
    path: str
    help: str
    parser: argparse.ArgumentParser


def _commands(parser: argparse.ArgumentParser, path: str) -> Iterator[Command]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            full = f"{path} {name}"
            nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
            if nested:
                yield from _commands(sub, full)
            else:
                yield Command(full, helps.get(name, sub.description or ""), sub)


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest).upper()
    name = " / ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return name
    if action.choices is not None:
        return f"{name} `{'|'.join(map(str, action.choices))}`"
    return f"{name} `{action.metavar or action.dest.upper()}`"


def _usage_part(action: argparse.Action) -> str:
    if not action.option_strings:
        if action.choices is not None:
            return "{" + ",".join(map(str, action.choices)) + "}"
        return str(action.metavar or action.dest).upper()
    option = action.option_strings[-1]  # the long form, when there are two
    text = option if action.nargs == 0 else f"{option} {action.metavar or action.dest.upper()}"
    return text if action.required else f"[{text}]"


def cli_page() -> str:
    from indexer.cli.parser import build_parser
    from indexer.settings import FIELDS, env_name

    notes = Notes.read("cli")
    setting_names = {f.name for f in FIELDS}
    parser = build_parser()
    commands = list(_commands(parser, "indexer"))
    rows = ["| command | what it does |", "|---|---|"]
    sections = []
    for command in commands:
        anchor = command.path.replace(" ", "-")
        rows.append(f"| [`{command.path}`](#{anchor}) | {_cell(command.help)} |")
        own = []
        settings = []
        for action in command.parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.dest in setting_names and action.option_strings:
                settings.append(action.dest)
            else:
                own.append(action)
        usage = " ".join([command.path, *(_usage_part(a) for a in own)])
        if settings:
            usage += " [settings]"
        section = [f"## `{command.path}`", _sentence(command.help), f"```text\n{usage}\n```"]
        if own:
            table = ["| argument | meaning |", "|---|---|"]
            table += [f"| {_argument(a)} | {_cell(a.help or '')} |" for a in own]
            section.append("\n".join(table))
        if settings:
            links = ", ".join(
                f"[`--{s.replace('_', '-')}`](settings.md#{env_name(s).lower()})" for s in settings
            )
            section.append(f"Settings (each also an environment variable): {links}.")
        note = notes.get(command.path)
        if note:
            section.append(note)
        sections.append("\n\n".join(section))
    version = "```text\nindexer --version\n```\n\nPrints the installed version."
    body = ["\n".join(rows), "## `indexer --version`", version, *sections]
    return _page("Commands", notes, body)


# -- the database -----------------------------------------------------------------------


@contextlib.contextmanager
def migrated_database() -> Iterator[str]:
    """A database migrated to head on the docs' own embedded server; dropped after."""
    import psycopg

    from indexer.db import migrate, server

    DATA_DIR.parent.mkdir(parents=True, exist_ok=True)
    # Its "created a new embedded database" warning is for users of that server: the
    # build's own is expected to be new.
    quiet = logging.getLogger("indexer.db.server")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        dsn = server.start(DATA_DIR)
    finally:
        quiet.setLevel(level)
    name = "docs_" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        database = psycopg.conninfo.make_conninfo(dsn, dbname=name)
        migrate.upgrade(database, SCHEMA)
        yield database
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.stop(DATA_DIR)


@dataclass
class Column:
    name: str
    type: str
    comment: str


@dataclass
class Relation:
    name: str
    kind: str
    comment: str
    columns: list[Column]


@dataclass
class Function:
    name: str
    arguments: str
    result: str
    security_definer: bool


@dataclass
class Catalog:
    relations: list[Relation]
    functions: list[Function]
    event_kinds: list[str]


def read_catalog(dsn: str) -> Catalog:
    import psycopg

    with psycopg.connect(dsn) as conn:
        relations = []
        for oid, name, kind, comment in conn.execute(
            "SELECT c.oid, c.relname, c.relkind, obj_description(c.oid, 'pg_class') "
            "FROM pg_class c WHERE c.relnamespace = %s::regnamespace "
            "AND c.relkind IN ('r', 'v') AND c.relname <> 'alembic_version' "
            "ORDER BY c.relkind DESC, c.relname",
            (SCHEMA,),
        ).fetchall():
            columns = [
                Column(n, t, c or "")
                for n, t, c in conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod), col_description(attrelid, "
                    "attnum) FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (oid,),
                )
            ]
            relations.append(
                Relation(name, "view" if kind == "v" else "table", comment or "", columns)
            )
        functions = [
            Function(*row)
            for row in conn.execute(
                "SELECT p.proname, pg_get_function_arguments(p.oid), "
                "pg_get_function_result(p.oid), p.prosecdef FROM pg_proc p "
                "WHERE p.pronamespace = %s::regnamespace AND NOT EXISTS (SELECT 1 FROM "
                "pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid "
                "AND d.deptype = 'e') ORDER BY p.proname, p.oid",
                (SCHEMA,),
            )
        ]
        check = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
            "%s::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%%kind%%'",
            (f"{SCHEMA}.events",),
        ).fetchone()
        kinds = re.findall(r"'([a-z_]+)'", check[0] if check else "")
    return Catalog(relations, functions, kinds)


def _columns_table(relation: Relation, notes: Notes) -> str:
    """The columns of ``relation``: each one's comment in the catalog, then its note
    (key ``relation.column``)."""
    table = ["| column | type | meaning |", "|---|---|---|"]
    for c in relation.columns:
        meaning = " ".join(p for p in (c.comment, notes.get(f"{relation.name}.{c.name}")) if p)
        table.append(f"| `{c.name}` | `{c.type}` | {_cell(meaning)} |")
    return "\n".join(table)


def sql_page(catalog: Catalog) -> str:
    notes = Notes.read("sql")
    documented = [f for f in catalog.functions if f.name in notes.sections]
    internal = [f for f in catalog.functions if f.name not in notes.sections]
    body = ["## Functions"]
    seen: set[str] = set()
    for function in documented:
        if function.name not in seen:
            body.append(f"### `{function.name}`")
        signature = f"{function.name}({function.arguments})\nRETURNS {function.result}"
        body.append(f"```text\n{signature}\n```")
        if function.security_definer:
            body.append("Runs with the rights of its owner (`SECURITY DEFINER`).")
        if function.name not in seen:
            body.append(notes.get(function.name))
        seen.add(function.name)
    body.append("## Internal functions")
    body.append(
        "The indexer's own helpers: its triggers, the row-level security policy of `chunks` "
        "and the daemon call them; applications do not. No role but the owner may run "
        "them unless a `grant_*` function granted it."
    )
    table = ["| function | returns |", "|---|---|"]
    table += [f"| `{f.name}({_cell(f.arguments)})` | `{_cell(f.result)}` |" for f in internal]
    body.append("\n".join(table))
    for kind, title in (("view", "Views"), ("table", "Tables")):
        body.append(f"## {title}")
        for relation in catalog.relations:
            if relation.kind != kind:
                continue
            body.append(f"### `{relation.name}`")
            if relation.comment:
                body.append(_sentence(relation.comment))
            note = notes.get(relation.name)
            if note:
                body.append(note)
            if relation.name == "events":
                continue  # its columns, with their notes, are on the Events page
            body.append(_columns_table(relation, notes))
    return _page("SQL functions, views and tables", notes, body)


def events_page(catalog: Catalog) -> str:
    notes = Notes.read("events")
    (events,) = [r for r in catalog.relations if r.name == "events"]
    body = ["## Kinds"]
    table = ["| kind | written |", "|---|---|"]
    for kind in catalog.event_kinds:
        table.append(f"| `{kind}` | {_cell(notes.get(kind))} |")
    body.append("\n".join(table))
    body.append("## Columns")
    if events.comment:
        body.append(_sentence(events.comment))
    table = ["| column | type | meaning |", "|---|---|---|"]
    for column in events.columns:
        meaning = " ".join(p for p in (column.comment, notes.get(column.name)) if p)
        table.append(f"| `{column.name}` | `{column.type}` | {_cell(meaning)} |")
    body.append("\n".join(table))
    return _page("Events", notes, body)


# -- HTTP -------------------------------------------------------------------------------


def openapi_schema(dsn: str) -> dict[str, Any]:
    """The schema ``/openapi.json`` serves, from the app the daemon runs."""
    from indexer.http import create_app
    from indexer.settings import Settings
    from indexer.testing import FakeEmbedder

    app = create_app(Settings(database_url=dsn), dsn=dsn, embedder=FakeEmbedder())
    try:
        return app.openapi()
    finally:
        app.state.indexer.close()


def _ref_name(node: Mapping[str, Any]) -> str | None:
    ref = node.get("$ref")
    return str(ref).rsplit("/", 1)[-1] if ref else None


def _json_type(node: Mapping[str, Any]) -> str:
    name = _ref_name(node)
    if name is not None:
        return f"[{name}](#{name.lower()})"
    if "anyOf" in node:
        return " or ".join(_json_type(n) for n in node["anyOf"])
    if "oneOf" in node:
        return " or ".join(_json_type(n) for n in node["oneOf"])
    kind = node.get("type")
    if kind == "array":
        return f"array of {_json_type(node.get('items', {}))}"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " or ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    return str(kind or "any")


_BOUNDS = (
    ("minimum", ">= {}"),
    ("maximum", "<= {}"),
    ("exclusiveMinimum", "> {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
)


def _bounds(node: Mapping[str, Any]) -> str:
    found = [text.format(node[key]) for key, text in _BOUNDS if key in node]
    for option in node.get("anyOf", []):
        found += [text.format(option[key]) for key, text in _BOUNDS if key in option]
    return ", ".join(found)


def _schema_table(schema: Mapping[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
    for name, node in schema.get("properties", {}).items():
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
        meaning = "; ".join(p for p in (node.get("description", ""), _bounds(node)) if p)
        mark = "yes" if name in required else ""
        rows.append(f"| `{name}` | {_json_type(node)} | {mark} | {default} | {_cell(meaning)} |")
    return "\n".join(rows)


def http_page(schema: Mapping[str, Any]) -> str:
    notes = Notes.read("http")
    body = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            key = f"{method.upper()} {path}"
            body.append(f"## `{key}`")
            text = operation.get("description") or operation.get("summary") or ""
            body.append(_sentence(text))
            request = operation.get("requestBody", {}).get("content", {})
            for kind, content in request.items():
                name = _ref_name(content.get("schema", {}))
                what = f"[{name}](#{name.lower()})" if name else "a JSON value"
                body.append(f"Request body (`{kind}`): {what}.")
            table = ["| status | meaning | body |", "|---|---|---|"]
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                shapes = []
                for kind, media in content.items():
                    ref = media.get("schema", {})
                    shapes.append(f"`{kind}`" + (f": {_json_type(ref)}" if ref else ""))
                table.append(
                    f"| {status} | {_cell(answer.get('description', ''))} | {'; '.join(shapes)} |"
                )
            body.append("\n".join(table))
            note = notes.get(key)
            if note:
                body.append(note)
    body.append("## Schemas")
    for name, definition in schema.get("components", {}).get("schemas", {}).items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue  # FastAPI's default, which the app answers as ErrorBody instead
        body.append(f"### {name}")
        if definition.get("description"):
            body.append(_sentence(definition["description"]))
        if definition.get("properties"):
            body.append(_schema_table(definition))
    return _page("HTTP API", notes, body)


# -- metrics ----------------------------------------------------------------------------


def metrics_page() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from indexer.metrics import Metrics

    notes = Notes.read("metrics")
    metrics = Metrics()
    labels = {
        str(getattr(c, "_name", "")): tuple(getattr(c, "_labelnames", ()))
        for c in vars(metrics).values()
        if isinstance(c, MetricWrapperBase)
    }
    table = ["| metric | type | meaning |", "|---|---|---|"]
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        label = labels.get(family.name, ())
        shown = name + ("{" + ",".join(label) + "}" if label else "")
        meaning = " ".join(p for p in (_sentence(family.documentation), notes.get(name)) if p)
        table.append(f"| `{shown}` | {family.type} | {_cell(meaning)} |")
    return _page("Metrics", notes, ["\n".join(table)])


# -- all of it --------------------------------------------------------------------------


def generate() -> dict[str, str]:
    """Every generated page: its path under docs/ and its Markdown."""
    with migrated_database() as dsn:
        catalog = read_catalog(dsn)
        schema = openapi_schema(dsn)
    return {
        "reference/settings.md": settings_page(),
        "reference/cli.md": cli_page(),
        "reference/sql.md": sql_page(catalog),
        "reference/events.md": events_page(catalog),
        "reference/http.md": http_page(schema),
        "reference/metrics.md": metrics_page(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the generated reference pages")
    parser.add_argument("directory", type=Path, help="where to write them")
    args = parser.parse_args(argv)
    try:
        pages = generate()
    except NoteError as exc:
        print(f"generate: error: {exc}", file=sys.stderr)
        return 1
    for path, text in pages.items():
        target = args.directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
