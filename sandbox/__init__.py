"""Local fakes of the external systems, served over real HTTP on 127.0.0.1.

    from sandbox import start_sandbox
    from sandbox.generator import generate

    with start_sandbox(generate(seed=7, orders=500)) as sb:
        cfg_sources = sb.sources()        # {system: {"base_url", "auth", "options"}}
        sb.apps["kingdee"].faults.add(429, retry_after=1)

Importing this package is cheap (stdlib only): the fakes and the server are imported when a
sandbox starts, so ``orderhub`` commands that never start one do not pay for them.

A fake whose class says ``serves_http = False`` (the file drop) is not served: ``start()``
prepares its folder and returns its ``base_url`` (``file:///...``), ``stop()`` removes it.
"""

from __future__ import annotations

import importlib
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # for annotations only; never imported at runtime here
    from sandbox.generator import Dataset
    from sandbox.server import FakeApp, FakeServer

__all__ = ["FAKES", "LocalFake", "Sandbox", "start_sandbox"]


class LocalFake(Protocol):
    """A fake that serves no HTTP (``serves_http = False``), e.g. a folder of dropped files."""

    serves_http: bool

    def start(self) -> str: ...  # prepare (idempotent); returns the connector's base_url

    def stop(self) -> None: ...  # clean up; safe to call twice


# system -> (module, class): each class is built as ``Fake(dataset, fast=fast)``.
FAKES: dict[str, tuple[str, str]] = {
    "shopify": ("sandbox.shopify", "ShopifyFake"),
    "jiandaoyun": ("sandbox.jiandaoyun", "JiandaoyunFake"),
    "kingdee": ("sandbox.kingdee", "KingdeeFake"),
    "sap": ("sandbox.sap", "SapFake"),
    "u8": ("sandbox.u8", "U8Fake"),
    "fxiaoke": ("sandbox.fxiaoke", "FxiaokeFake"),
    "stripe": ("sandbox.stripe", "StripeFake"),
    "woocommerce": ("sandbox.woocommerce", "WooCommerceFake"),
    "files": ("sandbox.files", "FileDropFake"),
    "rest": ("sandbox.rest", "RestFake"),
    "webhook": ("sandbox.webhook", "WebhookFake"),
    "smtp": ("sandbox.webhook", "SmtpFake"),
}


class Sandbox:
    """Running fakes: ``apps`` for counters and faults, ``urls`` and ``sources()`` for config."""

    def __init__(self) -> None:
        self.apps: dict[str, FakeApp | LocalFake] = {}
        self.servers: dict[str, FakeServer] = {}
        self.local: dict[str, LocalFake] = {}  # system -> a started fake that serves no HTTP
        self.urls: dict[str, str] = {}  # system -> http://127.0.0.1:<port> (or file:///...)

    def sources(self) -> dict[str, dict[str, Any]]:
        """Per system, what a connector config needs: ``base_url``, ``auth``, ``options``.

        ``base_url`` is the server's URL plus the app's ``base_path`` when it has one (e.g.
        Kingdee's ``/k3cloud``), just as a real deployment's URL would include it.
        """
        out: dict[str, dict[str, Any]] = {}
        for system, app in self.apps.items():
            out[system] = {
                "base_url": self.urls[system] + (getattr(app, "base_path", "") or ""),
                "auth": dict(_call(app, "credentials")),
                "options": dict(_call(app, "options")),
            }
        return out

    def stop(self) -> None:
        """Stop every server and clean up every local fake; safe to call twice."""
        while self.servers:
            _, server = self.servers.popitem()
            server.stop()
        while self.local:
            _, fake = self.local.popitem()
            fake.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_sandbox(
    dataset: Dataset,
    systems: tuple[str, ...] | list[str] = ("shopify", "jiandaoyun", "kingdee"),
    fast: bool = True,
) -> Sandbox:
    """Start one fake per system on a free 127.0.0.1 port (daemon threads) and return them.

    ``fast=True`` relaxes the fakes' rate limits (demo, end-to-end tests); ``fast=False`` keeps
    the documented limits, for connector tests of 429 handling.
    """
    unknown = [s for s in systems if s not in FAKES]
    if unknown:
        raise ValueError(f"unknown sandbox system(s) {unknown}; known: {sorted(FAKES)}")
    from sandbox.server import FakeServer  # lazy: keeps `import sandbox` light

    sandbox = Sandbox()
    try:
        for system in dict.fromkeys(systems):  # de-duplicated, order kept
            module, name = FAKES[system]
            app = getattr(importlib.import_module(module), name)(dataset, fast=fast)
            if not getattr(app, "serves_http", True):
                sandbox.apps[system] = app
                sandbox.local[system] = app  # registered first: stop() cleans up on failure
                sandbox.urls[system] = app.start()
                continue
            server = FakeServer(app)
            server.start()
            sandbox.apps[system] = app
            sandbox.servers[system] = server
            sandbox.urls[system] = server.url
    except BaseException:
        sandbox.stop()  # no half-started sandbox left listening
        raise
    return sandbox


def _call(app: Any, method: str) -> dict[str, Any]:
    """``app.<method>()``, or a TypeError that names the fake breaking the contract."""
    fn = getattr(app, method, None)
    if not callable(fn):
        raise TypeError(f"{type(app).__name__} has no {method}() method returning a dict: "
                        "every sandbox fake needs credentials() and options()")
    return fn()
