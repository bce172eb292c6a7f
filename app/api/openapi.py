"""``GET /openapi.json``: the OpenAPI 3 document of both dialects, assembled with apispec
from the endpoint declarations (``app.api.declare``): each operation's request and reply
schemas, and its error answers rendered by its dialect from the declared examples.

The document depends on the app's settings (batch limit, body size), so it is built once
per app, on its first request, and kept in ``app.extensions``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app

from app.api import schemas as s
from app.api.declare import ENDPOINTS, META, Endpoint, Example, serve
from app.core.settings import Settings

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"
EXTENSION = "sendbeat.openapi"
JSON = "application/json"
INTRODUCTION = "Two dialects over the same scheduled events (see docs/api.md)."
CLOSING = (
    "Another project's event is indistinguishable from a missing one (404). Every request "
    "field has a bound; docs/api.md lists them."
)
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "The project's API key. The messaging dialect also takes it as "
    "`api_key` in the JSON body.",
}


@dataclass(frozen=True)
class Document:
    spec: dict[str, Any]
    body: bytes


@serve(
    bp,
    Endpoint(
        META,
        "/openapi.json",
        "get",
        "openapi",
        summary="This OpenAPI document",
        description="Generated from the endpoints' declarations.",
        reply=None,
    ),
)
def openapi_json() -> Response:
    return Response(document(current_app).body, mimetype=JSON)


def document(app: Flask) -> Document:
    """The app's document, built on first use and then reused."""
    cached = app.extensions.get(EXTENSION)
    if cached is None:
        spec = build_spec(app.extensions["sendbeat"].settings)
        cached = Document(spec, json.dumps(spec, ensure_ascii=False).encode())
        app.extensions[EXTENSION] = cached
    return cached


def _version() -> str:
    try:
        return package_version("sendbeat")
    except PackageNotFoundError:
        return "0.0.0"


def build_spec(settings: Settings) -> dict[str, Any]:
    spec = APISpec(
        title="sendbeat",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": _description()},
        tags=_tags(),
    )
    spec.components.security_scheme("bearerAuth", BEARER)
    paths: dict[str, list[Endpoint]] = defaultdict(list)
    for endpoint in ENDPOINTS:
        paths[endpoint.path].append(endpoint)
    for path, endpoints in paths.items():
        parameters = [dict(p) for p in endpoints[0].parameters]
        operations = {e.method: _operation(spec, e, settings) for e in endpoints}
        spec.path(path=path, parameters=parameters, operations=operations)
    return spec.to_dict()


def _tags() -> list[dict[str, str]]:
    dialects = {e.dialect.tag: e.dialect.title for e in ENDPOINTS}
    return [{"name": tag, "description": title} for tag, title in dialects.items()]


def _description() -> str:
    dialects = {e.dialect.tag: e.dialect.about for e in ENDPOINTS if e.dialect.about}
    bullets = "\n".join(f"* {about}" for about in dialects.values())
    return f"{INTRODUCTION}\n\n{bullets}\n\n{CLOSING}"


def _operation(spec: APISpec, endpoint: Endpoint, settings: Settings) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [endpoint.dialect.tag],
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "description": endpoint.description,
        "security": [dict(item) for item in endpoint.dialect.security],
        "responses": {
            "200": _content(
                _reply_schema(endpoint), "Done.", endpoint.reply_examples, endpoint.media_type
            ),
            **_error_answers(endpoint, settings),
            **endpoint.other_answers,
        },
    }
    schema = endpoint.body_schema(settings)
    if schema is not None:
        _register(spec, schema)
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: _media(schema, endpoint.body_examples)},
        }
    if endpoint.query is not None:
        operation["parameters"] = [{"in": "query", "schema": endpoint.query}]
    return operation


def _register(spec: APISpec, schema: Any) -> None:
    """A schema instance built from the settings (the batch body) is registered under
    its class name, so the document names it rather than inlining it."""
    name = type(schema).__name__
    if name not in spec.components.schemas and isinstance(schema, s.EventsBody):
        spec.components.schema(name, schema=schema)


def _reply_schema(endpoint: Endpoint) -> Any:
    if endpoint.reply is None:
        return {"type": "object"} if endpoint.media_type == JSON else {"type": "string"}
    return endpoint.reply


def _error_answers(endpoint: Endpoint, settings: Settings) -> dict[str, Any]:
    """One response per status: the dialect's error schema, every declared example
    rendered as the dialect renders that error, and a description from the classes'
    docstrings."""
    by_status: dict[int, dict[str, Example]] = defaultdict(dict)
    for name, example in endpoint.all_errors(settings).items():
        by_status[example.error.status][name] = example
    dialect = endpoint.dialect
    answers = {}
    for status, examples in sorted(by_status.items()):
        bodies = {name: dialect.render(e.error, e.uid) for name, e in examples.items()}
        answers[str(status)] = _content(dialect.error_schema, _describe(examples), bodies)
    return answers


def _describe(examples: dict[str, Example]) -> str:
    lines = []
    for example in examples.values():
        error = type(example.error)
        doc = " ".join((error.__doc__ or error.__name__).split())
        line = f"`{example.error.code}`: {doc}"
        if line not in lines:
            lines.append(line)
    return "\n\n".join(lines)


def _content(
    schema: Any, description: str, examples: Any, media_type: str = JSON
) -> dict[str, Any]:
    return {"description": description, "content": {media_type: _media(schema, examples)}}


def _media(schema: Any, examples: Any) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": body} for name, body in examples.items()}
    return media
