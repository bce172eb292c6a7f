"""Endpoint declarations: what each HTTP endpoint takes, answers and can fail with, said
once, next to its view. The dialects register their views from these declarations, the
OpenAPI document (``app.api.openapi``) is generated from them, and the fuzzing tests
generate requests from that document.

An error answer is declared by example: an instance of the error class the view raises.
Its status comes from the class, its body from the dialect's own error renderer, so the
documented example is exactly what a client receives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint
from marshmallow import Schema

from app.core.errors import SendbeatError
from app.core.settings import Settings

# A request body schema: a class, or a function of the settings when a limit in the
# schema is configurable (the batch limit).
BodySchema = type[Schema] | Callable[[Settings], Schema]


@dataclass(frozen=True)
class Example:
    """A documented error answer: the error a view raises, and the request uid the
    messaging dialect echoes back with it (when the example request had one)."""

    error: SendbeatError
    uid: str | None = None


@dataclass(frozen=True)
class Dialect:
    """What every endpoint of one API dialect shares."""

    tag: str
    # The JSON body a client receives for an error, as the dialect's handler renders it.
    render: Callable[[SendbeatError, str | None], dict[str, Any]]
    error_schema: type[Schema]
    # Errors any endpoint of the dialect can answer (bad auth, bad JSON, a fault of ours).
    common: Callable[[Settings], Mapping[str, Example]]
    alias_note: str
    security: tuple[Mapping[str, list[str]], ...]
    title: str = ""  # the tag's description
    about: str = ""  # a line of the document's introduction


def _no_errors(settings: Settings) -> Mapping[str, Example]:
    return {}


def _no_render(exc: SendbeatError, uid: str | None) -> dict[str, Any]:
    return {"detail": exc.message}


# The operators' endpoints and this document: no key, no error envelope of their own.
META = Dialect(
    tag="meta",
    render=_no_render,
    error_schema=Schema,
    common=_no_errors,
    alias_note="",
    security=({},),
    title="Health, readiness, metrics and this document.",
)


@dataclass(frozen=True)
class Endpoint:
    """One operation: a path as OpenAPI writes it, one HTTP method, and its contract."""

    dialect: Dialect
    path: str
    method: str
    operation_id: str
    summary: str
    description: str
    reply: type[Schema] | None  # None: a text answer (media_type)
    body: BodySchema | None = None
    query: type[Schema] | None = None
    parameters: tuple[Mapping[str, Any], ...] = ()
    errors: Mapping[str, Example] = field(default_factory=dict)
    body_examples: Mapping[str, Any] = field(default_factory=dict)
    reply_examples: Mapping[str, Any] = field(default_factory=dict)
    media_type: str = "application/json"
    # Answers that are neither the reply nor an error (readiness' 503), as OpenAPI
    # response objects keyed by status.
    other_answers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def body_schema(self, settings: Settings) -> Schema | None:
        if self.body is None:
            return None
        if isinstance(self.body, type):
            return self.body()
        return self.body(settings)

    def all_errors(self, settings: Settings) -> dict[str, Example]:
        return {**self.dialect.common(settings), **self.errors}


ENDPOINTS: list[Endpoint] = []


def declare(endpoint: Endpoint) -> Endpoint:
    """Add an endpoint to the document; each path and method is declared only once."""
    if any((e.path, e.method) == (endpoint.path, endpoint.method) for e in ENDPOINTS):
        raise ValueError(f"{endpoint.method.upper()} {endpoint.path} is declared twice")
    ENDPOINTS.append(endpoint)
    return endpoint


def serve(blueprint: Blueprint, endpoint: Endpoint) -> Callable[[Callable[[], Any]], Any]:
    """Declare a parameterless endpoint and serve it at its path as it is."""
    declare(endpoint)

    def register(view: Callable[[], Any]) -> Callable[[], Any]:
        methods = [endpoint.method.upper()]
        blueprint.add_url_rule(endpoint.path, endpoint.operation_id, view, methods=methods)
        return view

    return register


def example(error: SendbeatError, uid: str | None = None) -> Example:
    return Example(error, uid)
