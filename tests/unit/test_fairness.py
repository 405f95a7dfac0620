"""The dispatcher's choice without a database: turns between tenants, keys, tenant limits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from shared.fairness import Allowance, Candidate, choose

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def held(tenant: str, n: int, *, key: str | None = None, limit: int | None = None,
         waited: float = 0.0) -> list[Candidate]:  # fmt: skip
    return [
        Candidate(
            uuid.uuid4(), tenant, T0 - timedelta(seconds=waited) + timedelta(seconds=i), key, limit
        )
        for i in range(n)
    ]


def test_a_flood_and_a_trickle_take_turns_and_the_trickle_goes_out_whole() -> None:
    flood, trickle = held("flood", 1000, waited=60), held("victim", 3)
    chosen = choose([*flood, *trickle], 10, {}, {})
    assert [c.tenant for c in chosen] == ["flood", "victim"] * 3 + ["flood"] * 4
    assert {c.id for c in trickle} <= {c.id for c in chosen}
    assert [c.id for c in chosen if c.tenant == "flood"] == [c.id for c in flood[:7]]


def test_the_tenant_whose_next_job_waited_longest_goes_first() -> None:
    chosen = choose([*held("a", 2), *held("b", 2, waited=5)], 4, {}, {})
    assert [c.tenant for c in chosen] == ["b", "a", "b", "a"]


def test_a_key_at_its_limit_is_passed_over_for_the_tenants_other_jobs() -> None:
    keyed = held("acme", 5, key="customer-x", limit=2)
    other = held("acme", 2)
    chosen = choose([*keyed, *other], 10, {("acme", "customer-x"): 1}, {})
    assert [c.key for c in chosen] == ["customer-x", None, None]
    assert chosen[0].id == keyed[0].id


def test_keys_are_per_tenant_and_default_to_one_at_a_time() -> None:
    a, b = held("a", 3, key="k"), held("b", 3, key="k")
    chosen = choose([*a, *b], 10, {("b", "k"): 1}, {})
    assert [c.id for c in chosen] == [a[0].id]


def test_tenant_running_room_and_tokens_bound_what_it_gets() -> None:
    limited, free = held("limited", 10), held("free", 10)
    allowances = {"limited": Allowance(running=3, tokens=2.5)}
    chosen = choose([*limited, *free], 20, {}, allowances)
    assert sum(c.tenant == "limited" for c in chosen) == 2
    assert sum(c.tenant == "free" for c in chosen) == 10
    assert allowances["limited"].tokens == 0.5
    assert allowances["limited"].running == 1
    assert choose(limited, 5, {}, {"limited": Allowance(running=0)}) == []


def test_room_bounds_the_pass() -> None:
    assert choose(held("a", 5), 0, {}, {}) == []
    assert len(choose([*held("a", 5), *held("b", 5)], 7, {}, {})) == 7
