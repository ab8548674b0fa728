"""The backend seam after issue 21: ``prepare`` returns the backend's own value, which the service hands back
unchanged and reads only through its ``Counts``; the per-key caps are a ``submit`` argument (lifted for the
operator's own keys) and a local model's cap is ``Info.key_slots``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest

from reverb import service as service_mod
from reverb.backends import Counts
from reverb.errors import InvalidRequest
from reverb.request import Ask, RequestContext
from reverb.settings import Settings
from reverb.types import Message, SamplingParams

from .fakes import FakeBackend


@dataclass(frozen=True)
class Opaque:
    """A prepared value with nothing but its counts and a private payload the service must not touch."""

    counts: Counts
    payload: object


class Recording(FakeBackend):
    def __init__(self, name, ctx=64, key_slots=None):
        super().__init__(name, ctx=ctx)
        self.info = replace(self.info, key_slots=key_slots)
        self.payload = object()
        self.compiled, self.submitted = [], []

    async def prepare(self, ask):
        return Opaque((await super().prepare(ask)).counts, self.payload)

    async def compile(self, prepared, ask):
        self.compiled.append(prepared)
        return prepared

    def submit(self, prepared, params, on_chunk, tenant="", capped=True):
        self.submitted.append((prepared, capped))
        return super().submit(prepared, params, on_chunk, tenant, capped)


@pytest.fixture
def svc(tmp_path):
    made = {}

    def factory(spec, settings):
        made[spec.name] = Recording(spec.name, key_slots=2)
        return made[spec.name]

    s = service_mod.build(Settings.build(environ={}, db=tmp_path / "l.db", api_keys=("sk-operator",)),
                          backend_factory=factory)
    s.fake = made["smollm2-135m"]
    yield s
    assert s.ledger.invariant()["ok"]
    s.close()


def ask(n: int = 1) -> Ask:
    return Ask(model="smollm2-135m", messages=(Message("user", "one two three"),),
               sampling=SamplingParams(max_tokens=3, n=n))


def run(svc, account, a: Ask):
    async def go():
        gen = await svc.start(RequestContext(endpoint="chat.completions", account=account), a)
        _, final = await gen.collect()
        await gen.settled
        return final
    return asyncio.run(go())


def test_the_prepared_value_comes_back_unchanged_and_is_billed_by_its_counts(svc):
    tenant = svc.ledger.authenticate(svc.ledger.create_key("tenant", 1_000_000))
    final = run(svc, tenant, ask())
    (prepared, capped), = svc.fake.submitted
    assert prepared.payload is svc.fake.payload and svc.fake.compiled == [prepared]
    assert final.usage.prompt_tokens == prepared.counts.n_tokens == 3
    assert capped   # a ledger key is capped


def test_the_operator_key_is_not_capped_and_may_ask_for_more_choices_than_a_key_holds(svc):
    operator = svc.ledger.authenticate("sk-operator")
    tenant = svc.ledger.authenticate(svc.ledger.create_key("tenant", 1_000_000))
    with pytest.raises(InvalidRequest) as e:
        run(svc, tenant, ask(n=3))   # over Info.key_slots (2)
    assert e.value.param == "n" and svc.fake.submitted == []
    run(svc, operator, ask(n=3))
    assert [capped for _, capped in svc.fake.submitted] == [False]
