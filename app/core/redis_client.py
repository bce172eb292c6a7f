"""Builds the Redis client the store uses (responses decoded to str), from a plain Redis
URL, a Sentinel one (``SentinelUrl``) or a Cluster one (``ClusterUrl``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from redis import Redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "health_check_interval": 30,
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
}


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB]``: the
    Sentinels to ask and the name of the master they monitor. The password (and user)
    are the master's, and the Sentinels' too when they ask for one. Every client built
    from it (the store, the broker, the rate limiter) asks the Sentinels where the
    master is whenever it connects, so after a failover each reconnects to the new
    master on its own."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl | None:
        """The URL's parts, None when it is not a Sentinel URL; ValueError saying what is
        wrong with a malformed one."""
        parts = _hosts_url(url, SENTINEL_SCHEME, "Sentinel")
        if parts is None:
            return None
        sentinels, path, username, password = parts
        service, _, db = path.partition("/")
        if not service:
            raise ValueError("name the monitored service: redis+sentinel://host:port/SERVICE")
        if db and not db.isdigit():
            raise ValueError(f"the database must be a number, not {db!r}")
        return cls(sentinels, unquote(service), int(db or 0), username, password)

    def master(self) -> Redis:
        """A client of the current master (found again on every new connection)."""
        auth = {"username": self.username, "password": self.password}
        sentinel = Sentinel(
            list(self.sentinels),
            sentinel_kwargs={**auth, "socket_connect_timeout": 5, "socket_timeout": 5},
            **auth,
        )
        return sentinel.master_for(self.service, db=self.db, **CLIENT_OPTIONS)

    def kombu(self) -> tuple[str, dict[str, Any]]:
        """The same master as kombu's Redis Sentinel transport names it: one
        ``sentinel://`` URL per Sentinel, the service in the transport options."""
        auth = _userinfo(self.username, self.password)
        url = ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)
        options: dict[str, Any] = {"master_name": self.service}
        if self.password is not None:
            options["sentinel_kwargs"] = {"password": self.password}
        return url, options

    def limits(self) -> tuple[str, dict[str, Any]]:
        """The same master as the ``limits`` library (Flask-Limiter's storage) names it:
        its URL has no database part, which goes in the options."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        auth = _userinfo(self.username, self.password)
        return f"{SENTINEL_SCHEME}://{auth}{hosts}/{quote(self.service, safe='')}", {"db": self.db}


@dataclass(frozen=True)
class ClusterUrl:
    """``redis+cluster://[[user]:password@]host:port[,host:port...]``: any reachable
    nodes of a Redis Cluster (the client discovers the rest, and follows the slots as
    they move and masters fail over)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterUrl | None:
        """The URL's parts, None when it is not a Cluster URL; ValueError saying what is
        wrong with a malformed one."""
        parts = _hosts_url(url, CLUSTER_SCHEME, "cluster node")
        if parts is None:
            return None
        nodes, path, username, password = parts
        if path.strip("/0"):
            raise ValueError("a Redis Cluster has no databases: leave the /DB part out")
        return cls(nodes, username, password)

    def client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
            username=self.username,
            password=self.password,
            **CLIENT_OPTIONS,
        )

    def limits(self) -> tuple[str, dict[str, Any]]:
        """The same nodes as the ``limits`` library (Flask-Limiter's storage) names them."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{CLUSTER_SCHEME}://{_userinfo(self.username, self.password)}{hosts}", {}


def _hosts_url(
    url: str, scheme: str, what: str
) -> tuple[tuple[tuple[str, int], ...], str, str | None, str | None] | None:
    """``scheme://[[user]:password@]host:port[,host:port...][/path]`` as (the hosts, the
    path, user, password), unquoted; None for another scheme, ValueError for a host that
    is not host:port."""
    if not url.startswith(f"{scheme}://"):
        return None
    auth, _, rest = url[len(scheme) + 3 :].rpartition("@")
    hosts, _, path = rest.partition("/")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    found = tuple(_host_port(host, what) for host in hosts.split(","))
    return found, path, unquote(username) or None, unquote(password) if auth else None


def _userinfo(username: str | None, password: str | None) -> str:
    """``user:password@`` for a URL, quoted; "" without a password."""
    if password is None:
        return ""
    return f"{quote(username or '', safe='')}:{quote(password, safe='')}@"


def _host_port(text: str, what: str) -> tuple[str, int]:
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"each {what} must be host:port, not {text!r}")
    return parts.hostname, port


def connect(url: str) -> Any:
    """A client of the store's Redis: ``Redis`` (a plain URL or a Sentinel one, whose
    master it finds) or ``RedisCluster``."""
    sentinel = SentinelUrl.parse(url)
    if sentinel is not None:
        return sentinel.master()
    cluster = ClusterUrl.parse(url)
    if cluster is not None:
        return cluster.client()
    return Redis.from_url(url, **CLIENT_OPTIONS)
