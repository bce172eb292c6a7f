"""Operator commands: ``flask --app app project create|list|rotate-key|revoke-key`` and
``flask --app app store migrate``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from app.core.clock import from_timestamp, isoformat, now
from app.core.errors import NotFound, UidTaken
from app.core.keys import LAYOUT
from app.core.layout import LayoutError, migrate
from app.core.store import Store

project_cli = AppGroup("project", help="Manage projects and their API keys.")


store_cli = AppGroup("store", help="Upgrade the store's key layout.")


def _store() -> Store:
    services = current_app.extensions["sendbeat"]
    if services.refusal is not None:
        raise click.ClickException(services.refusal)
    return services.store


@store_cli.command("migrate")
def migrate_store() -> None:
    """Move a store written by an earlier sendbeat to this version's key layout. Stop
    beat first. Idempotent: run it again after an interruption to finish."""
    services = current_app.extensions["sendbeat"]
    prefix = services.settings.key_prefix
    try:
        done = migrate(services.store.redis, prefix)
    except LayoutError as exc:
        raise click.ClickException(str(exc)) from None
    if done.already:
        click.echo(f"The store {prefix!r} already has key layout {LAYOUT}; nothing to do.")
        return
    click.echo(f"Moved {done.moved} keys of {prefix!r} to key layout {LAYOUT} (1 shard).")
    for key in done.skipped or []:
        click.echo(f"Left alone (not a sendbeat key): {key}")
    if services.settings.store_shards != 1:
        click.echo("Set SENDBEAT_STORE_SHARDS=1 in every process: a migrated store has one shard.")


def _stamp() -> int:
    return int(now().timestamp())


@project_cli.command("create")
@click.argument("name")
def create(name: str) -> None:
    """Create a project; its API key is printed alone on the last line, once."""
    try:
        project, key = _store().create_project(name, _stamp())
    except UidTaken as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Created project {project.name} (id {project.id}).")
    click.echo("Its API key follows; it is shown only this once:")
    click.echo(key)


@project_cli.command("list")
def list_projects() -> None:
    """List projects with the prefixes of their live keys."""
    projects = _store().list_projects()
    if not projects:
        click.echo("No projects yet: flask --app app project create NAME")
    for project in projects:
        created = isoformat(from_timestamp(project.created_at))
        keys = ", ".join(project.key_prefixes) or "no live keys"
        click.echo(f"{project.name}\t{project.id}\tcreated {created}\tkeys: {keys}")


@project_cli.command("rotate-key")
@click.argument("name")
def rotate_key(name: str) -> None:
    """Issue a new key for NAME and revoke its old ones; the key is on the last line."""
    try:
        key = _store().rotate_key(name, _stamp())
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Rotated the key of {name}; earlier keys no longer work. New key:")
    click.echo(key)


@project_cli.command("webhook-secret")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Make a new secret; the old one stops verifying.")
def webhook_secret(name: str, rotate: bool) -> None:
    """Print the secret NAME's webhook deliveries are signed with (made on first use),
    alone on the last line; --rotate makes a new one."""
    store = _store()
    project = store.project_by_name(name)
    if project is None:
        raise click.ClickException(f"No project named {name!r}.")
    if rotate:
        secret = store.rotate_webhook_secret(project.id)
        click.echo(f"Rotated the webhook secret of {name}; deliveries from now on are signed with:")
    else:
        secret = store.webhook_secret(project.id)
        click.echo(f"Webhook deliveries of {name} are signed with (Standard Webhooks):")
    click.echo(secret)


@project_cli.command("alert-url")
@click.argument("name")
@click.argument("url", required=False)
@click.option("--clear", is_flag=True, help="Remove the default alert URL.")
def alert_url(name: str, url: str | None, clear: bool) -> None:
    """Show, set (URL) or --clear the URL that NAME's events without alerts of their own
    alert on failed and missed executions."""
    store = _store()
    project = store.project_by_name(name)
    if project is None:
        raise click.ClickException(f"No project named {name!r}.")
    if url is not None and not url.startswith(("http://", "https://")):
        raise click.ClickException(f"{url!r}: give an http or https URL.")
    if clear or url is not None:
        store.set_alert_url(project.id, None if clear else url)
    current = store.alert_url(project.id)
    click.echo(f"Default alert URL of {name} (failed, missed): {current or 'none'}")


@project_cli.command("revoke-key")
@click.argument("key_prefix")
def revoke_key(key_prefix: str) -> None:
    """Revoke the one live key that starts with KEY_PREFIX."""
    try:
        project = _store().revoke_key(key_prefix)
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Revoked the key {key_prefix}… of project {project.name}.")
