"""ragfleet/callback_spec.py: what a submission may ask to be called back with, and the signature a
receiver checks (the end-to-end deliveries are tests/integration/test_callbacks.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import SecretStr

from ragfleet.callback_spec import (
    FLEET_QUEUES,
    CallbackRefusedError,
    CallbackTask,
    check_task,
    check_url,
    network_allowed,
    sign,
    tenant_secrets,
    verify_signature,
)
from ragfleet.names import Queue
from ragfleet.settings import Settings

S = Settings(
    callback_secrets=SecretStr("acme:new|old,beta:b1"),
    callback_allowed_hosts="hooks.acme.test,*.corp.test",
    callback_allowed_tasks="billing.*@billing,audit.done@audit",
    callback_allowed_networks="10.1.0.0/16",
)


def test_fleet_queues_are_every_queue_of_the_fleet() -> None:
    assert {q.value for q in Queue} == FLEET_QUEUES


def test_two_secrets_per_tenant_sign_one_mac_each() -> None:
    assert tenant_secrets(S, "acme") == ["new", "old"] and tenant_secrets(S, "nobody") == []
    header = sign(["new", "old"], 1_700_000_000, b'{"a":1}')
    macs = [hmac.new(k, b'1700000000.{"a":1}', hashlib.sha256).hexdigest() for k in (b"new", b"old")]
    assert header == f"t=1700000000,v1={macs[0]},v1={macs[1]}"
    for secret in ("new", "old"):
        assert verify_signature(secret, b'{"a":1}', header, now=1_700_000_100)
    assert not verify_signature("other", b'{"a":1}', header, now=1_700_000_100)
    assert not verify_signature("new", b'{"a":2}', header, now=1_700_000_100)
    assert not verify_signature("new", b'{"a":1}', header, now=1_700_000_301)  # outside the replay window
    assert not verify_signature("new", b'{"a":1}', "v1=" + macs[0], now=1_700_000_000)  # no timestamp


@pytest.mark.parametrize(
    ("url", "tenant", "reason"),
    [
        ("https://hooks.acme.test/x", "beta", None),
        ("http://a.corp.test:8080/x", "acme", None),
        ("https://hooks.acme.test/x", "gamma", "no signing secret"),
        ("https://corp.test/x", "acme", "allow-list"),
        ("https://evil.test/?u=hooks.acme.test", "acme", "allow-list"),
        ("file:///etc/passwd", "acme", "http or https"),
        ("javascript:alert(1)", "acme", "http or https"),
        ("https://hooks.acme.test:0x50/x", "acme", "not a valid URL"),
        ("https://me@hooks.acme.test/x", "acme", "credentials"),
    ],
)
def test_callback_urls(url: str, tenant: str, reason: str | None) -> None:
    if reason is None:
        assert check_url(S, tenant, url) == url
    else:
        with pytest.raises(CallbackRefusedError, match=reason):
            check_url(S, tenant, url)


@pytest.mark.parametrize(
    ("name", "queue", "reason"),
    [
        ("billing.invoice_done", "billing", None),
        ("audit.done", "audit", None),
        ("audit.other", "audit", "allow-list"),
        ("billing.x", "audit", "allow-list"),
        ("ragfleet.reindex", "billing", "ragfleet"),
        ("billing.x", "maintenance", "fleet's own"),
        ("billing.x y", "billing", "characters"),
    ],
)
def test_callback_tasks(name: str, queue: str, reason: str | None) -> None:
    task = CallbackTask(name=name, queue=queue)
    if reason is None:
        assert check_task(S, task) is task
    else:
        with pytest.raises(CallbackRefusedError, match=reason):
            check_task(S, task)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("10.1.2.3", True),  # RAGFLEET_CALLBACK_ALLOWED_NETWORKS
        ("169.254.169.254", False),  # cloud metadata
        ("::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_connect_time_addresses(address: str, allowed: bool) -> None:
    assert network_allowed(S, address) is allowed
