"""Settlement, in one home: how a request's end becomes its ledger row and its money move.

A generation's last chunk (``settle``), an embeddings job's end and a refusal (``reject``) all close here: the
charge from the model's prices, the row, the hold released, the metrics told. A settlement that fails is kept and
retried on every heartbeat (``retry``, called by upkeep.py) and once more at stop; beyond ``MAX_UNSETTLED`` the
lease rule settles what is left. Every ledger call runs through ``db``, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .errors import LedgerError, ReverbError
from .generation import Generation, Hooks, Settlement
from .ledger import Ledger, RequestRecord, bounded_model
from .models.registry import ModelSpec, Registry
from .request import Account, RequestContext
from .types import Chunk, FinishReason, Usage

log = logging.getLogger("reverb.service")

STATUS = {FinishReason.STOP: "completed", FinishReason.LENGTH: "completed", FinishReason.TOOL_CALLS: "completed",
          FinishReason.CANCELLED: "cancelled"}
MAX_UNSETTLED = 10_000   # failed settlements kept for retry; beyond, the lease rule settles them at stop


class Settler:
    def __init__(self, ledger: Ledger, registry: Registry, hooks: Hooks, db: Callable[..., Awaitable]):
        self.ledger, self.registry, self.hooks, self.db = ledger, registry, hooks, db
        # request id -> (account, row, charge) whose settlement failed; retried on every heartbeat
        self._unsettled: dict[str, tuple[Account | None, RequestRecord, int]] = {}
        # request id -> (lease epoch of its hold, its Generation or Embedding): the running requests that hold
        # credit, ended should this server find its lease gone (upkeep.end_lost); each leaves as it settles
        self.live: dict[str, tuple[int, object]] = {}

    def record(self, ctx: RequestContext, model: str | None, status: str, code: str | None,
               usage: Usage) -> RequestRecord:
        model = bounded_model(model, self.registry.specs)   # a name from a client is cut and flagged
        return RequestRecord(request_id=ctx.request_id, endpoint=ctx.endpoint, model=model, status=status,
                             error_code=code, prompt_tokens=usage.prompt_tokens,
                             completion_tokens=usage.completion_tokens, latency_ms=ctx.elapsed_ms(), body=ctx.body)

    async def reject(self, ctx: RequestContext, error: ReverbError, model: str | None = None) -> None:
        """Log a request refused before it ran. Never raises: a full disk must not turn a 4xx into a 500."""
        if getattr(error, "settled", False):  # refused after its hold: the service settled it with its row
            return
        record = self.record(ctx, model or error.model, "rejected", error.code, Usage(0, 0))
        try:
            await self.db(self.ledger.log_rejected, ctx.account, record, ctx.client)
        except LedgerError as e:
            log.error("could not log rejected request %s: %s", ctx.request_id, e.message)
        self.hooks.settled(record, 0)

    async def close(self, ctx: RequestContext, spec: ModelSpec, status: str, code: str | None, charge: int,
                    usage: Usage = Usage(0, 0)) -> Settlement:
        """Settle a request's hold with its row. Raises LedgerError (the hold then stays open)."""
        record = self.record(ctx, spec.name, status, code, usage)
        price = await self.db(self.ledger.settle, ctx.account, record, charge)
        self.hooks.settled(record, price)
        return Settlement(record, price)

    async def refused_after_hold(self, ctx: RequestContext, spec: ModelSpec, error: ReverbError) -> None:
        """A request refused once its credit was held (its grammar over a bound, its prompt too long, no credit for
        the worst case, no slot): charged for the prompt it counted (``error.prompt_tokens``), and marked
        ``settled`` so the HTTP layer's ``reject`` writes no second row. Raises LedgerError."""
        counted = getattr(error, "prompt_tokens", 0) or 0
        await self.close(ctx, spec, "rejected", error.code, spec.cost(counted, 0), Usage(counted, 0))
        error.settled = True

    async def abandoned_after_hold(self, ctx: RequestContext, spec: ModelSpec, error: BaseException) -> None:
        """A request that held credit and then failed (the ledger) or was cut (the client left) before it ran:
        its hold settled for nothing, shielded from the cancellation. Never raises (a hold left open is settled
        by the lease rule)."""
        cancelled = isinstance(error, asyncio.CancelledError)
        code = None if cancelled else error.code if isinstance(error, ReverbError) else "internal_error"
        try:
            await asyncio.shield(asyncio.ensure_future(
                self.close(ctx, spec, "cancelled" if cancelled else "failed", code, 0)))
        except Exception:  # noqa: BLE001
            log.exception("could not settle the hold of %s", ctx.request_id)
        else:
            if isinstance(error, ReverbError):
                error.settled = True

    async def settle(self, ctx: RequestContext, final: Chunk, gen: Generation, stream: bool) -> None:
        """A generation's end: its row and charge, resolving ``gen.settled`` (a LedgerError when it failed)."""
        self.live.pop(ctx.request_id, None)
        spec = self.registry.resolve(gen.model)  # the model that ran: the one asked for, or a fallback
        usage = final.usage or Usage(0, 0)
        err = final.error
        code = err.code if isinstance(err, ReverbError) else ("engine_error" if err else None)
        status = STATUS.get(final.finish_reason, "failed")
        charge = spec.cost(usage.prompt_tokens, usage.completion_tokens)
        try:
            gen.settled.set_result(await self.close(ctx, spec, status, code, charge, usage))
        except LedgerError as e:
            log.error("settlement failed for %s: %s", ctx.request_id, e.message)
            gen.settled.set_exception(e)
            # Retried later as failed: a stream delivered its text (charged), a blocking answer never left.
            if len(self._unsettled) < MAX_UNSETTLED:
                self._unsettled[ctx.request_id] = (ctx.account, self.record(
                    ctx, spec.name, "failed", e.code, usage), charge if stream else 0)
        except Exception:  # whatever went wrong, the request must end: as a ledger failure, never a hang
            log.exception("settlement failed for %s", ctx.request_id)
            gen.settled.set_exception(LedgerError("the ledger could not record this request"))

    def retry(self) -> None:
        """Settle again what failed to settle. Blocking: call it on the ledger's thread."""
        for request_id, (account, record, charge) in list(self._unsettled.items()):
            try:
                self.ledger.settle(account, record, charge)
            except LedgerError:
                # settled meanwhile (by a sweeper, or the first attempt committed after all)? else: next time
                held = account is not None and not account.unlimited and self.ledger.hold_open(request_id)
                if held or self.ledger.request(request_id) is None:
                    continue
            del self._unsettled[request_id]
            log.info("settled %s after an earlier failure", request_id)
