"""loader.Models with fake backends: loads on first use (one load for concurrent requests), pins while a request
runs, unloads by keep_alive and least-recently-used within the count and memory budgets, and a failed load that
says nothing of the server's files to the client."""

from __future__ import annotations

import asyncio

import pytest

from reverb.errors import ModelLoadError, ModelNotFound, OverloadedError
from reverb.loader import Models
from reverb.models import registry as registry_mod
from reverb.settings import Settings

from .fakes import FakeBackend


class Closing(FakeBackend):
    def __init__(self, name):
        super().__init__(name)
        self.closed = False

    def close(self):
        self.closed = True


@pytest.fixture
def reg(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text("".join(f'[models.{n}]\nsource = "package"\npackage = "no_such_pkg"\nfile = "{n}.gguf"\n'
                            for n in ("a", "b", "c")))
    return registry_mod.load(toml)


def pool(reg, **settings):
    made = []

    def factory(spec, s):
        if spec.name == "c" and settings.pop("_fail_c", False):
            raise ModelLoadError(f"/secret/path/{spec.name}.gguf is broken")
        made.append(Closing(spec.name))
        return made[-1]

    s = Settings.build(environ={}, on_demand=True, **{k: v for k, v in settings.items() if not k.startswith("_")})
    return Models(s, reg, factory), made


async def until(condition):
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_one_load_for_concurrent_requests_and_lru_eviction(reg):
    async def main():
        models, made = pool(reg, max_loaded_models=2, keep_alive=-1)
        got = await asyncio.gather(*(models.acquire("a") for _ in range(3)))
        assert len(made) == 1 and all(b is made[0] for _, b in got)
        for _ in range(3):
            models.release("a")
        await models.acquire("b")
        models.release("b")
        await models.acquire("a")          # a is now the most recently used
        models.release("a")
        await models.acquire("c")          # room for two: b, the least recently used, goes
        assert set(models.loaded) == {"a", "c"} and made[1].closed and not made[0].closed
        models.close()
    asyncio.run(main())


def test_a_pinned_model_is_never_unloaded(reg):
    async def main():
        models, made = pool(reg, max_loaded_models=1, keep_alive=-1)
        await models.acquire("a")
        with pytest.raises(OverloadedError, match="every loaded model is serving"):
            await models.acquire("b")
        models.release("a")
        await models.acquire("b")
        assert list(models.loaded) == ["b"] and made[0].closed
        models.close()
    asyncio.run(main())


def test_keep_alive_from_the_settings_and_from_a_request(reg):
    async def main():
        models, made = pool(reg, keep_alive=0.05)
        await models.acquire("a")
        models.release("a")
        await until(lambda: "a" not in models.loaded)
        await models.acquire("b")
        models.release("b", keep_alive=-1)  # a request's negative keep_alive: kept
        await asyncio.sleep(0.2)
        assert "b" in models.loaded
        await models.acquire("b")
        models.release("b", keep_alive=0)   # 0: unloaded right after
        await until(lambda: "b" not in models.loaded)
        assert made[1].closed
        models.close()
    asyncio.run(main())


def test_memory_budget(reg):
    async def main():
        models, made = pool(reg, models_memory=1000.0, keep_alive=-1)
        models._estimate = lambda spec: 600 * 2**20
        await models.acquire("a")
        models.release("a")
        await models.acquire("b")            # 600 + 600 > 1000 MB: a goes
        assert list(models.loaded) == ["b"]
        models._estimate = lambda spec: 2000 * 2**20
        with pytest.raises(OverloadedError, match="more than --models-memory"):
            await models.acquire("c")
        models.close()
    asyncio.run(main())


def test_a_failed_load_tells_the_client_nothing_of_the_files_and_can_be_retried(reg):
    async def main():
        models, made = pool(reg, _fail_c=True)
        with pytest.raises(ModelLoadError) as e:
            await models.acquire("c")
        assert "/secret" not in e.value.message and "server log" in e.value.message
        await models.acquire("c")            # the next request tries again
        assert "c" in models.loaded
        with pytest.raises(ModelNotFound):
            await models.acquire("zzz")
        models.close()
    asyncio.run(main())


def test_without_on_demand_only_the_named_models_are_served(reg):
    s = Settings.build(environ={})
    models = Models(s, reg, lambda spec, s: Closing(spec.name), servable=["a"])
    models.load_now(["a"])

    async def main():
        with pytest.raises(ModelNotFound, match="--on-demand"):
            await models.acquire("b")
        await models.acquire("a")
        models.release("a")
        assert models.status()[0]["unloads_in_seconds"] is None
    asyncio.run(main())
    models.close()


def test_models_loaded_at_start_count_their_keep_alive_from_serving(reg):
    models, made = pool(reg, keep_alive=0.05)
    models.load_now(["a"])

    async def main():
        assert "a" in models.loaded
        models.serving()
        await until(lambda: "a" not in models.loaded)
    asyncio.run(main())
    assert made[0].closed
    models.close()


def test_a_model_outside_the_callers_allowlist_is_never_loaded_for_it(reg):
    async def main():
        models, made = pool(reg)
        with pytest.raises(ModelNotFound) as e:
            await models.acquire("b", allowed=lambda name: name == "a")
        assert e.value.message == "The model 'b' does not exist" and not made
        await models.acquire("a", allowed=lambda name: name == "a")
        assert [b.info.name for b in made] == ["a"]
        models.close()
    asyncio.run(main())
