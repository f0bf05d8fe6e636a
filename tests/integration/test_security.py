"""A worker against a Redis with requirepass, and secrets kept out of its logs."""

from __future__ import annotations

import asyncio

from producers.synthetic import SyntheticShop
from tests.integration.faults import (
    PrivateNamespace,
    PrivateStack,
    produce_through_faults,
)


def test_a_password_protected_redis_works_and_never_shows_the_password(
    private_stack: PrivateStack, private_namespace: PrivateNamespace
) -> None:
    ns, password = private_namespace, private_stack.redis_password
    events = list(SyntheticShop(n_users=50, n_items=300, seed=2).events(500))
    users = {e.user_id for e in events}
    # the password in the URL, the way services.sh env prints it
    url_worker_env = dict(ns.env)
    url_worker_env.pop("STREAMREC_REDIS_PASSWORD")
    url_worker_env["STREAMREC_REDIS_URL"] = (
        f"redis://:{password}@127.0.0.1:{private_stack.redis_port}/0"
    )
    ns.env = url_worker_env
    worker = ns.worker("with-url").start()
    asyncio.run(produce_through_faults(events, ns.settings))
    worker.wait_for(lambda: len(ns.list_keys()) == len(users), 60, "listed")
    assert "redis://:***@127.0.0.1" in worker.log()
    worker.stop()

    # a wrong password: the worker holds its batch, counts and logs the
    # failure, and names neither password
    wrong = "wrong-" + password[::-1]
    ns.env = {**url_worker_env, "STREAMREC_REDIS_PASSWORD": wrong}
    refused = ns.worker("wrong-password").start()
    more = list(SyntheticShop(n_users=50, n_items=300, seed=3).events(100))
    asyncio.run(produce_through_faults(more, ns.settings))
    refused.wait_for(
        lambda: refused.metrics()["streamrec_redis_errors_total"] >= 2, 30, "refused"
    )
    assert refused.alive()
    assert "AuthenticationError" in refused.log()
    refused.stop()

    for log in (worker.log(), refused.log()):
        assert password not in log
        assert wrong not in log
