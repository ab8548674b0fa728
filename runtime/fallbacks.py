"""Running one request on the first of its candidate models that answers: the model asked for, then its
``fallbacks`` (models.toml), each tried only while nothing has reached the client.

A candidate is given up on only when it fails before its first chunk (unreachable, timed out, a 5xx, a refused
upstream key, 429, or overloaded): after the first byte the client has part of an answer, which another model
cannot continue, so the failure ends the stream as usual. The credit hold covers every candidate (the service
holds the largest worst case), and the ledger row names the model that ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .backends import Backend, Prepared
from .errors import OverloadedError, UpstreamError, UpstreamRejected
from .generation import Generation
from .models.registry import ModelSpec
from .types import Chunk, FinishReason, SamplingParams, Usage

log = logging.getLogger("reverb.service")


@dataclass(frozen=True)
class Candidate:
    spec: ModelSpec
    backend: Backend
    prepared: Prepared              # the backend's own value; the service reads only its counts
    params: SamplingParams          # max_tokens resolved for this model
    hold: int                       # its worst case in micro-units


def retryable(error: BaseException | None) -> bool:
    """Whether another model may be tried after this failure before the first byte."""
    if isinstance(error, UpstreamRejected):
        return error.status == 429
    return isinstance(error, (UpstreamError, OverloadedError))


class Attempts:
    """Submits to the candidates in turn and feeds the one Generation. ``start`` raises OverloadedError when
    no candidate takes the job."""

    def __init__(self, candidates: list[Candidate], gen: Generation, tenant: str, request_id: str,
                 capped: bool = True):
        self.candidates = candidates
        self.gen = gen
        self.tenant = tenant
        self.capped = capped          # a local model's per-key caps apply (not to the operator's own keys)
        self.request_id = request_id
        self.index = -1
        self.delivered = False

    def start(self) -> None:
        self._submit_from(0)

    def _submit_from(self, i: int) -> None:
        for j in range(i, len(self.candidates)):
            c = self.candidates[j]
            self.index = j
            self.gen.model = c.spec.name
            self.gen.streams = c.prepared.counts.streams  # how many choice ends this backend delivers
            try:
                self.gen.handle = c.backend.submit(c.prepared, c.params, self._on_chunk, tenant=self.tenant,
                                                   capped=self.capped)
                return
            except OverloadedError as e:
                if j + 1 == len(self.candidates):
                    raise
                log.warning("request %s: model %s is overloaded (%s); trying %s", self.request_id, c.spec.name,
                            e.code, self.candidates[j + 1].spec.name)

    def _on_chunk(self, chunk: Chunk) -> None:
        if (not self.delivered and chunk.finish_reason is FinishReason.ERROR and not chunk.text
                and chunk.passthrough is None and self.index + 1 < len(self.candidates) and retryable(chunk.error)):
            failed = self.candidates[self.index].spec.name
            log.warning("request %s: model %s failed before its first byte (%s); trying %s", self.request_id,
                        failed, getattr(chunk.error, "code", "error"), self.candidates[self.index + 1].spec.name)
            try:
                self._submit_from(self.index + 1)
                return
            except OverloadedError as e:
                chunk = Chunk(finish_reason=FinishReason.ERROR, usage=Usage(0, 0), error=e)
        self.delivered = True
        self.gen.deliver(chunk)
