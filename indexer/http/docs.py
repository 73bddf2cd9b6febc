"""``/docs``: the API's documentation as one self-contained HTML page.

FastAPI's default docs page loads Swagger UI from a CDN, so it is blank on a machine
without internet access, which is where this daemon often runs.  This page is rendered
on the server from the same OpenAPI schema as ``/openapi.json``: no script, no style
sheet, no request anywhere else.  Each operation shows its method, path, summary, its
request body's schema and its answers.
"""

from __future__ import annotations

import html
import json
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")


def _schema_of(schema: dict[str, Any], node: Any) -> Any:
    """``node`` with its ``$ref`` resolved (one level: a schema's own properties keep
    theirs, which the page lists under "Schemas")."""
    if isinstance(node, dict) and "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        return {"$ref": name, **schema.get("components", {}).get("schemas", {}).get(name, {})}
    return node


def _json(value: Any) -> str:
    return html.escape(json.dumps(value, indent=2, sort_keys=True))


def render(schema: dict[str, Any]) -> str:
    """The HTML page for ``schema`` (an OpenAPI document)."""
    info = schema.get("info", {})
    title = html.escape(str(info.get("title", "API")))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title} API</title></head><body>",
        f"<h1>{title} {html.escape(str(info.get('version', '')))}</h1>",
        f"<p>{html.escape(str(info.get('summary', '')))}</p>",
        '<p>The machine-readable schema: <a href="openapi.json">openapi.json</a>.</p>',
    ]
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method in METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            text = operation.get("description") or operation.get("summary") or ""
            parts.append(f"<p>{html.escape(str(text))}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                parts.append("<h3>Request body (application/json)</h3>")
                parts.append(f"<pre>{_json(_schema_of(schema, body.get('schema')))}</pre>")
            parts.append("<h3>Answers</h3><ul>")
            for status, answer in sorted(operation.get("responses", {}).items()):
                described = html.escape(str(answer.get("description", "")))
                parts.append(f"<li><code>{html.escape(str(status))}</code> {described}</li>")
            parts.append("</ul>")
    components = schema.get("components", {}).get("schemas", {})
    if components:
        parts.append("<h2>Schemas</h2>")
        for name, definition in sorted(components.items()):
            parts.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3>")
            parts.append(f"<pre>{_json(definition)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
