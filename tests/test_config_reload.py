"""gateway.yaml reloads: routes change live; a broken file keeps the running config."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeGateway, Upstream, name_secret, registry_client

CLIENT_DN = "CN=client, OU=production, O=company"


async def anonymous_status(url: str, gw: Any) -> int:
    async with gw.session(None) as session, session.get(url) as r:
        return int(r.status)


async def config_reloads(gw: Any, outcome: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "mtls_gateway_reloads_total"
        and s.labels == {"component": "config", "outcome": outcome}
    )


async def test_routes_reload_live_and_a_broken_config_is_kept_out(
    make_gateway: MakeGateway, echo_upstream: Upstream
) -> None:
    gw = await make_gateway(clients=[registry_client("mtls.client", name_secret(CLIENT_DN))])
    assert await anonymous_status(gw.url + "/open/x", gw) == 401

    config: dict[str, Any] = yaml.safe_load(gw.config_path.read_text())
    config["routes"].append({"prefix": "/open", "upstream": echo_upstream.url, "auth": "none"})
    gw.config_path.write_text(yaml.safe_dump(config))
    for _ in range(60):
        if await anonymous_status(gw.url + "/open/x", gw) == 200:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the new route was not served within 6 s")
    assert await anonymous_status(gw.url + "/closed", gw) == 401  # the old route still applies

    ok_before = await config_reloads(gw, "ok")
    gw.config_path.write_text("routes: [this is: not valid\n")
    for _ in range(60):
        if await config_reloads(gw, "failed") >= 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the broken config was not counted")
    assert await config_reloads(gw, "ok") == ok_before
    assert await anonymous_status(gw.url + "/open/x", gw) == 200  # still the running config
