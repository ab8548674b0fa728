"""A reserved embeddings request, from its hold to its ledger row (``Service.start_embedding`` makes one)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

from .errors import RETRY_GOING_AWAY, LedgerError, OverloadedError, ReverbError
from .generation import Settlement
from .models.registry import ModelSpec
from .request import RequestContext
from .settlement import Settler
from .types import Usage


class Embedding:
    """A reserved embeddings request; ``run`` computes the vectors and settles the ledger whatever happens, billed
    for the tokens computed (all of them, or those read before the client left or the server stopped).
    Like a Generation, it exposes ``model``, ``settled``, ``cancel`` and ``lose``."""

    def __init__(self, settlement: Settler, ctx: RequestContext, spec: ModelSpec, job, release: Callable[[], None]):
        self._settlement, self._ctx, self._spec, self._job = settlement, ctx, spec, job
        self._release_model = release   # unpins the model: its keep-alive clock starts
        self.model = spec.name
        self.limits: dict = {}   # the rate-limit header values its reservation returned
        self.lost: Exception | None = None
        self.settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()

    def cancel(self) -> None:
        """The client went away: stop within one chunk."""
        self._job.cancel()

    def lose(self, error: Exception) -> None:
        """This server lost the hold it runs under: stop, and fail with ``error``."""
        self.lost = error
        self._job.cancel()

    async def run(self) -> tuple[list[list[float]], Usage, int]:
        """(vectors, usage, price). Raises what the backend raises (nothing is charged then), OverloadedError
        when stopped before the end (the server is stopping; what was computed is charged), or LedgerError."""
        ctx, job = self._ctx, self._job
        work = job.run()
        try:
            vectors = await asyncio.shield(work)
        except BaseException as e:
            cancelled = isinstance(e, asyncio.CancelledError)
            code = e.code if isinstance(e, ReverbError) else "engine_error"
            job.cancel()

            async def close() -> Settlement:
                if cancelled:   # the request was cut (the drain's end): the thread stops within one chunk
                    with contextlib.suppress(Exception):
                        await work
                    return await self._close("cancelled", None)
                return await self._close("failed", code, charge=False)
            # shielded: a request cut mid-way must still leave its row and its refund behind
            await asyncio.shield(asyncio.ensure_future(close()))
            raise
        finally:
            self._settlement.live.pop(ctx.request_id, None)
            self._release()
        if vectors is None:   # stopped early: the client left, the server is stopping, or it lost its lease
            await self._close("failed" if self.lost else "cancelled", self.lost.code if self.lost else None)
            raise self.lost or OverloadedError("the embeddings request was stopped before its end (the client left "
                                               "or the server is stopping)", retry_after=RETRY_GOING_AWAY)
        settlement = await self._close("completed", None)
        return vectors, Usage(job.computed, 0), settlement.price

    async def _close(self, status: str, code: str | None, charge: bool = True) -> Settlement:
        """Settle for the tokens computed (nothing with ``charge`` False) and resolve ``settled``. Raises
        LedgerError (``settled`` then holds it)."""
        computed = self._job.computed
        try:
            settlement = await self._settlement.close(self._ctx, self._spec, status, code,
                                                      self._spec.cost(computed, 0) if charge else 0, Usage(computed, 0))
        except LedgerError as e:
            if not self.settled.done():
                self.settled.set_exception(e)
                self.settled.exception()  # retrieved: the caller raises it
            raise
        self._resolve(settlement)
        return settlement

    def settle_at_stop(self) -> None:
        """Blocking (the server is stopping; the job has stopped): settle for what was computed, unless the
        request settles itself first (the ledger settles a hold once)."""
        ctx, spec, computed = self._ctx, self._spec, self._job.computed
        record = self._settlement.record(ctx, spec.name, "cancelled", None, Usage(computed, 0))
        try:
            self._settlement.ledger.settle(ctx.account, record, spec.cost(computed, 0))
        except LedgerError:
            pass   # settled already by the request itself, or left to this server's retire (refunded)

    def _release(self) -> None:
        """Unpin the model (once): its keep-alive clock starts."""
        release, self._release_model = self._release_model, None
        if release is not None:
            release()

    def _resolve(self, settlement: Settlement) -> None:
        if not self.settled.done():
            self.settled.set_result(settlement)
