"""Every listening socket of the relay, bound once before anything is built.

Bound here, synchronously, so the real ports (port 0 in tests) are known to everything constructed
after, and so ``atmos serve --workers N`` (relay.cluster.workers) can bind them once in the parent and
hand the same sockets to every node process: the kernel queues each new connection on the one
socket and whichever node accepts first serves it; a node that dies loses no connection that was
still waiting, and a restarted node serves the same ports again. (SO_REUSEPORT would give each node
its own queue, and a dying node would take the connections queued on it along.)

What trio.open_tcp_listeners does for a host: every address ``getaddrinfo`` gives (IPv4 and IPv6 for
a wildcard), SO_REUSEADDR, IPV6_V6ONLY on IPv6 sockets, the system's largest backlog.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import trio

from relay.app.services import Bound
from relay.config import Addr, Config

ENV = "ATMOS_NODE_SOCKETS"  # a worker's inherited descriptors, set by relay.cluster.workers


@dataclass(slots=True)
class Sockets:
    submission: list[socket.socket]
    submissions: list[socket.socket]  # implicit TLS (RFC 8314, port 465)
    inbound: list[socket.socket]
    capture: list[socket.socket]  # dev: the built-in capture sink
    http: socket.socket  # handed to hypercorn as fd://, which serves it

    @classmethod
    def bind(cls, cfg: Config, *, capture: bool) -> Sockets:
        out = cls([], [], [], [], socket.socket())
        out.http.close()
        try:
            out.submission = _bind(cfg.smtp.submission_addr)
            out.submissions = _bind(cfg.smtp.submissions_addr)
            out.inbound = _bind(cfg.smtp.inbound_addr)
            out.capture = _bind(Addr("127.0.0.1", 0)) if capture else []
            http = cfg.http.addr
            [out.http] = _bind(Addr(http.host, http.port), nodelay=True, first_only=True)
        except BaseException:
            out.close()
            raise
        return out

    def close(self) -> None:
        for sock in (*self.submission, *self.submissions, *self.inbound, *self.capture, self.http):
            sock.close()

    def bound(self, dev: bool, node: str) -> Bound:
        host, port = self.http.getsockname()[:2]
        return Bound(submission=_addresses(self.submission), submissions=_addresses(self.submissions),
                     inbound=_addresses(self.inbound), capture=_addresses(self.capture),
                     http=(f"http://{Addr(host, port)}",), dev=dev, node=node)

    def listeners(self) -> dict[str, list[trio.SocketListener]]:
        """Trio listeners over the SMTP sockets (the HTTP one goes to hypercorn as it is)."""
        return {name: [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in socks]
                for name, socks in (("submission", self.submission), ("submissions", self.submissions),
                                    ("inbound", self.inbound), ("capture", self.capture))}

    # -- handing them to a worker process ----------------------------------------------------------

    def fds(self) -> list[int]:
        return [s.fileno() for s in (*self.submission, *self.submissions, *self.inbound, *self.capture, self.http)]

    def to_env(self) -> str:
        return json.dumps({"submission": [s.fileno() for s in self.submission],
                           "submissions": [s.fileno() for s in self.submissions],
                           "inbound": [s.fileno() for s in self.inbound],
                           "capture": [s.fileno() for s in self.capture], "http": self.http.fileno()})

    @classmethod
    def from_env(cls, value: str) -> Sockets:
        fds = json.loads(value)

        def adopt(name: str) -> list[socket.socket]:
            return [socket.socket(fileno=fd) for fd in fds[name]]

        return cls(adopt("submission"), adopt("submissions"), adopt("inbound"), adopt("capture"),
                   socket.socket(fileno=fds["http"]))


def inherited() -> Sockets | None:
    """The sockets a worker process was given by its parent, or None for a relay that binds its own."""
    value = os.environ.get(ENV)
    return Sockets.from_env(value) if value else None


def _bind(addr: Addr, *, nodelay: bool = False, first_only: bool = False) -> list[socket.socket]:
    infos = socket.getaddrinfo(addr.host or None, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if first_only:
        infos = infos[:1]
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(sockaddr)
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


def _addresses(socks: list[socket.socket]) -> tuple[tuple[str, int], ...]:
    return tuple((str(name[0]), int(name[1])) for name in (s.getsockname() for s in socks))


__all__ = ["ENV", "Sockets", "inherited"]
