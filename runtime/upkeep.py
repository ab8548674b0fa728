"""What a serving process does beside its requests to keep the ledger right across servers and crashes.

``keep_lease`` runs for the server's life (started by the app's lifespan): it renews this server's lease, settles
the holds of servers whose lease expired (the crash rule, ``ledger/leases.py``) and retries settlements that
failed (``settlement.py``). ``progress_hook`` gives a stream the hook that records its delivered-token
high-water mark on its hold. Every ledger call goes through ``Service.db``, off the event loop.

A server that finds its lease gone (frozen past it while another server settled its holds) stops spending: every
running request whose hold was settled is ended (``end_lost``), and a stream that holds credit passes each piece
of output through ``track``'s gate, which sends nothing while the lease is not known to hold: it renews first.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .errors import LedgerError

log = logging.getLogger("reverb.service")

PROGRESS_SECONDS = 1.0   # a stream's delivered-token mark is written at most this often (and at its first token)


async def keep_lease(service) -> None:
    """Every third of the lease: heartbeat, sweep, retries. Runs until cancelled; a ledger that cannot be reached
    is tried again next time. A process without a lease (``build(serve=False)``) returns at once."""
    period = service.settings.lease_seconds / 3
    ledger = service.ledger
    while ledger.lease.instance_id is not None:
        await asyncio.sleep(period)
        try:
            if await service.db(ledger.lease.heartbeat):
                end_lost(service)
            await service.db(ledger.lease.sweep)
            await service.db(service.settlement.retry)
        except LedgerError as e:
            log.warning("lease upkeep failed (retrying in %.1f s): %s", period, e.message)
        except Exception:   # never let a bug stop the heartbeat: other servers would settle our holds
            log.exception("lease upkeep failed (retrying in %.1f s)", period)


def progress_hook(service, ctx):
    """The stream's progress hook: records its delivered-token high-water mark on its hold, off the event loop,
    at its first token and then at most every PROGRESS_SECONDS, one write in flight at a time."""
    state = {"at": None, "busy": False}

    def on_progress(delivered: int) -> None:
        t = time.monotonic()
        if state["busy"] or (state["at"] is not None and t - state["at"] < PROGRESS_SECONDS):
            return
        state.update(at=t, busy=True)

        async def write():
            try:
                await service.db(service.ledger.progress, ctx.request_id, delivered)
            except LedgerError:
                pass  # a mark is advice for a sweeper; the settlement is what counts
            finally:
                state["busy"] = False
        service._spawn(write())
    return on_progress


LOST = "this server lost its lease on the ledger while it was stalled; the request was ended"


def track(service, request_id: str, epoch: int, live, gate: bool = False) -> None:
    """Record a running request whose hold was made under lease ``epoch``; with ``gate`` (a stream), each piece of
    its output waits until the lease is known to hold, and the request ends if its hold was settled meanwhile."""
    service.settlement.live[request_id] = (epoch, live)
    lease = service.ledger.lease
    if gate:
        async def check() -> None:
            if not lease.live():
                await confirm_lease(service)
            if lease.epoch > epoch or not lease.live():
                live.lose(LedgerError(LOST))
        live.gate = check
    if lease.epoch > epoch:
        live.lose(LedgerError(LOST))


async def confirm_lease(service) -> None:
    """Renew the lease now (one renewal in flight, shared by every stream waiting on it); ends what it lost."""
    if service.renewal is None or service.renewal.done():
        async def renew() -> None:
            try:
                if await service.db(service.ledger.lease.heartbeat):
                    end_lost(service)
            except LedgerError as e:
                log.warning("could not renew the lease: %s", e.message)
        service.renewal = asyncio.ensure_future(renew())
    await asyncio.shield(service.renewal)


def end_lost(service) -> None:
    """This server's lease was found gone: end every running request whose hold was settled by another server
    (made under an older epoch). Each settles as failed; the sweeper's row is its bill."""
    epoch = service.ledger.lease.epoch
    ended = [live for held, live in list(service.settlement.live.values()) if held < epoch]
    for live in ended:
        live.lose(LedgerError(LOST))
    if ended:
        log.error("this server's lease was lost: %d running request(s) ended unbilled beyond the sweep", len(ended))
