"""Build a connector from a source's config: ``cfg["system"]`` picks the class."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.base import Connector

# Import paths, resolved lazily so a broken or slow connector module only affects its own sources.
CONNECTORS: dict[str, str] = {
    "shopify": "connectors.shopify:ShopifyConnector",
    "jiandaoyun": "connectors.jiandaoyun:JiandaoyunConnector",
    "kingdee": "connectors.kingdee:KingdeeConnector",
    "sap": "connectors.sap:SapConnector",
    "u8": "connectors.u8:U8Connector",
    "fxiaoke": "connectors.fxiaoke:FxiaokeConnector",
    "stripe": "connectors.stripe:StripeConnector",
    "woocommerce": "connectors.woocommerce:WooCommerceConnector",
    "files": "connectors.files:FileDropConnector",
    "tpch": "connectors.tpch:TpchConnector",  # TPC-H Parquet drop (bench; sandbox/tpch.py)
    "rest": "connectors.rest:DeclaredRestConnector",
    "webhook": "connectors.notify:WebhookSink",  # notification sinks (push only)
    "smtp": "connectors.notify:SmtpSink",
}


def connector_class(system: str) -> type[Connector]:
    try:
        target = CONNECTORS[system]
    except KeyError:
        known = ", ".join(sorted(CONNECTORS))
        raise ValueError(f"unknown system {system!r}; known systems: {known}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_connector(name: str, cfg: dict) -> Connector:
    """The connector for source ``name``; ValueError naming the source for an unknown system."""
    system = cfg.get("system")
    if not system:
        raise ValueError(f"source {name!r}: 'system' is required; known: {', '.join(CONNECTORS)}")
    try:
        cls = connector_class(system)
    except ValueError as err:
        raise ValueError(f"source {name!r}: {err}") from None
    return cls(name, cfg)
