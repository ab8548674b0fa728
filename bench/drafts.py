"""Draft tokens verified in batches (runtime/backends/llama/draft.py): `python -m bench --only drafts [--quick]`.

Four workloads, each one stream, greedy, end tokens banned (every side makes the same number of tokens), run on
every server in turn, round after round, the order rotated each round; medians. The figure is decode tokens per
second of output (first to last token; a prediction's rejected tokens are not output), so prefill is left out.

- **edit**: a ~400-token answer returned with one change, ``prediction`` = the answer before the change (the tiny
  model cannot be trusted to copy a file, so the "file" is its own greedy answer to the prompt, and the prediction is
  that answer with one word changed in its middle: the output leaves the prediction there and must rejoin it); three
  such files (three system prompts), medians over all of them, the gain and whether the answer was the same per file.
  reverb without and with the prediction; llama-server (which has no predicted outputs) without.
- **json**: an answer under a JSON schema with many required keys (six records of five fields): reverb with
  grammar fast-forward (the default) and ``--no-fast-forward``; llama-server with its grammar sampler.
- **rag**: a question answered by quoting a ~300-token document: reverb plain and ``--speculate ngram``;
  llama-server plain and ``--spec-default`` (its n-gram speculation).
- **chat**: plain chat (a story): the same four servers, the cost of n-gram speculation where it rarely hits.

Servers (all up at once, one slot each beside ``--parallel`` - 1 idle ones, ``--threads`` threads): reverb,
reverb --no-fast-forward, reverb --speculate ngram, llama-server, llama-server --spec-default (the last two only
with a llama-server binary). ``--quick`` runs one round with fewer tokens, to check the section works; its figures
are not a measurement. Writes bench/results/drafts-latest.json.
"""

from __future__ import annotations

import json
import time

import httpx

from . import peers
from .load import p50

MODEL = "smollm2-135m"
# Three files to edit: one prompt, three system prompts (three different ~400-token answers). In the default mode a
# draft may flip a near tie past position 256 (docs/predicted-outputs.md), after which the prediction no longer
# matches: one file is luck, three show how often.
EDITS = ("You write manuals for lighthouse keepers.", "You are a careful technical writer.",
         "Answer in short numbered steps.")
FILE = ("Write a detailed guide to keeping a small lighthouse: the daily checks of the lamp, the lens, the "
        "clockwork, the fuel store and the log book, written as numbered steps.")
PEOPLE = {"type": "object", "additionalProperties": False, "required": ["people"], "properties": {"people": {
    "type": "array", "minItems": 6, "maxItems": 6, "items": {
        "type": "object", "additionalProperties": False,
        "required": ["first_name", "last_name", "age", "email_address", "home_city"],
        "properties": {"first_name": {"type": "string", "maxLength": 12},
                       "last_name": {"type": "string", "maxLength": 12},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "email_address": {"type": "string", "maxLength": 30},
                       "home_city": {"type": "string", "maxLength": 16}}}}}}
DOC = ("The lighthouse on Gull Point was built in 1871 from granite quarried on the island itself. Its tower is "
       "twenty-eight metres tall and its first-order Fresnel lens could be seen from thirty kilometres away on a "
       "clear night. The first keeper, Thomas Hale, kept the light for thirty-one years and wrote every storm into "
       "the station log in a small, careful hand.\n\n"
       "In 1923 the oil lamp was replaced by an electric lamp fed by a diesel generator, and the keeper's cottage "
       "was enlarged for a second family. The fog signal, a compressed-air horn, sounded two blasts every thirty "
       "seconds whenever the far buoy could no longer be seen from the gallery.\n\n"
       "The station was automated in 1987. The lens was moved to the harbour museum, where it still turns once a "
       "minute, and a modern beacon now stands on the gallery rail. The cottage is a hostel for walkers, and the log "
       "books, all forty-two volumes of them, are kept in the county archive.")
RAG_Q = "Quote, word for word, the paragraph of the document about the year 1923."
CHAT = "Write a long story about a lighthouse keeper and the sea."
SERVERS = (("reverb", "reverb", []), ("reverb --no-fast-forward", "reverb", ["--no-fast-forward"]),
           ("reverb --speculate ngram", "reverb", ["--speculate", "ngram"]),
           ("llama-server", "llama", []), ("llama-server --spec-default", "llama", ["--spec-default"]))
# workload -> (the server without the feature, the server with it, how the feature is asked for)
ROWS = {"edit": ("reverb", "reverb", "prediction"), "json": ("reverb --no-fast-forward", "reverb", "fast-forward"),
        "rag": ("reverb", "reverb --speculate ngram", "--speculate ngram"),
        "chat": ("reverb", "reverb --speculate ngram", "--speculate ngram")}
LLAMA = {"edit": ("llama-server", None), "json": ("llama-server", None),
         "rag": ("llama-server", "llama-server --spec-default"),
         "chat": ("llama-server", "llama-server --spec-default")}


def body(eog: list[int], tokens: int, user: str, system: str = "", **extra) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"model": MODEL, "messages": msgs, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in eog}, **extra}


def one(peer, b: dict) -> dict:
    """One streamed request: output tokens, decode tok/s (first to last content event), the text, the usage."""
    t0 = time.perf_counter()
    first = last = None
    text, usage = [], {}
    with httpx.Client(base_url=peer.base, headers={"Authorization": f"Bearer {peer.key}"}, timeout=900) as http:
        with http.stream("POST", "/v1/chat/completions", json=b) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{peer.label}: HTTP {r.status_code}: {r.read()[:300]!r}")
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                ev = json.loads(line[6:])
                usage = ev.get("usage") or usage
                ch = ev.get("choices") or []
                if ch and (ch[0].get("delta") or {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    text.append(ch[0]["delta"]["content"])
    details = usage.get("completion_tokens_details") or {}
    out = usage.get("completion_tokens", 0) - (details.get("rejected_prediction_tokens") or 0)
    span = (last - first) if first and last and last > first else 0
    return {"tokens": out, "tps": (out - 1) / span if span else 0.0, "text": "".join(text),
            "elapsed": time.perf_counter() - t0, "details": details}


def edited(text: str) -> str:
    """One change in the middle of the text (a word replaced), as an edited file differs from its original."""
    words = text.split(" ")
    mid = len(words) // 2
    return " ".join(words[:mid] + ["[changed]"] + words[mid + 1:])


def bodies(eog: list[int], quick: bool, reference) -> dict:
    """workload -> [(body without the feature, body with it), ...]; the edits' predictions come from ``reference``.
    The edit has one pair per system prompt of EDITS (three different files), the others one pair."""
    n = 160 if quick else 400
    edits = []
    for system in EDITS[:1] if quick else EDITS:
        edit = body(eog, n, FILE, system=system)
        answer = one(reference, edit)["text"]
        edits.append((edit, {**edit, "prediction": {"type": "content", "content": edited(answer)}}))
    json_body = body(eog, 120 if quick else 300, "List six people as JSON.", response_format={
        "type": "json_schema", "json_schema": {"name": "people", "schema": PEOPLE}})
    rag = body(eog, 80 if quick else 160, f"Document:\n{DOC}\n\n{RAG_Q}", system="Answer by quoting the document.")
    chat = body(eog, 64 if quick else 128, CHAT)
    return {"edit": edits, "json": [(json_body, json_body)], "rag": [(rag, rag)], "chat": [(chat, chat)]}


def measure(tmp, args, eog: list[int], quick: bool = False) -> dict:
    """Start the servers, run the workloads interleaved; {workload: {server label: [tok/s per round]}, ...}."""
    started = []
    try:
        for label, kind, extra in SERVERS:
            if kind == "llama":
                if not args.llama_server:
                    continue
                p = peers.llama_server(tmp, args.llama_server, peers_model(), args.threads, args.parallel, args.ctx,
                                       extra=extra, label=label)
            else:
                p = peers.reverb(tmp, label, args.threads, args.parallel, args.ctx, extra)
            started.append(p)
        by = {p.label: p for p in started}
        work = bodies(eog, quick, by["reverb"])
        plan = []   # (workload, server label, body, which pair of the workload)
        for w, pairs in work.items():
            off, on, _ = ROWS[w]
            for i, (without, with_) in enumerate(pairs):
                plan += [(w, off, without, i), (w, on + " +" if off == on else on, with_, i)]
                for label in LLAMA[w]:
                    if label is not None and label in by:
                        plan.append((w, label, without, i))
        for p in started:   # warm-up
            one(p, body(eog, 4, "Hello"))
        out: dict = {"runs": {}, "by_pair": {}, "texts_equal": {}, "same": {}, "details": {}}
        rounds = 1 if quick else args.rounds
        for rnd in range(rounds):
            order = plan[rnd % len(plan):] + plan[:rnd % len(plan)]
            texts: dict = {}
            for w, label, b, i in order:
                got = one(by[label.removesuffix(" +")], b)
                out["runs"].setdefault(w, {}).setdefault(label, []).append(got["tps"])
                out["by_pair"].setdefault(w, {}).setdefault(str(i), {}).setdefault(label, []).append(got["tps"])
                texts[(w, label, i)] = got["text"]
                if got["details"]:
                    out["details"].setdefault(w, []).append(got["details"])
                print(f"  round {rnd + 1} {w:<5} {label:<30} {got['tps']:.1f} tok/s ({got['tokens']} tokens)",
                      flush=True)
            for w, pairs in work.items():   # the feature must not change the answer (llama-server's may differ)
                off, on, _ = ROWS[w]
                for i in range(len(pairs)):
                    same = texts[(w, off, i)] == texts[(w, on + " +" if off == on else on, i)]
                    out["texts_equal"][w] = out["texts_equal"].get(w, True) and same
                    if rnd == 0:   # [identical, of how many] (the same bodies every round)
                        counted = out["same"].setdefault(w, [0, 0])
                        counted[0] += same
                        counted[1] += 1
        return out
    finally:
        for p in started:
            p.stop()


def peers_model():
    from .__main__ import model_path
    return model_path()


def rows(result: dict) -> list[tuple[str, ...]]:
    """(workload, llama-server plain, llama-server with its speculation, reverb without, reverb with, gain, same
    answer)."""
    names = {"edit": "edit: ~400-token answer, prediction = it with one change",
             "json": "JSON schema, 6 records x 5 required keys: fast-forward",
             "rag": "RAG quote of a ~300-token document: --speculate ngram",
             "chat": "plain chat (story): --speculate ngram"}
    out = []
    for w, runs in result.get("runs", {}).items():
        off, on, _ = ROWS[w]
        a, b = p50(runs.get(off, [])), p50(runs.get(on + " +" if off == on else on, []))
        ls, lspec = LLAMA[w]
        c = p50(runs.get(ls, []))
        d = p50(runs.get(lspec, [])) if lspec else 0.0
        out.append((names[w], f"{c:.1f}" if c else "-", f"{d:.1f}" if d else "-", f"{a:.1f}", f"{b:.1f}",
                    f"{b / a:.2f}x" if a else "-", _same(result, w)))
    return out


def _same(result: dict, w: str) -> str:
    k, n = result.get("same", {}).get(w, (0, 0))
    if n > 1:
        return f"{k} of {n}"
    return "yes" if result["texts_equal"].get(w) else "NO"


def report(result: dict, header: str) -> None:
    lines = [("workload (decode tok/s, medians)", "llama-server", "llama-server spec", "reverb without",
              "reverb with", "gain", "same answer")] + rows(result)
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    print("\n" + header + "\n")
    for r in lines:
        print("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    for w, ds in result.get("details", {}).items():
        acc = p50([d.get("accepted_prediction_tokens", 0) for d in ds])
        rej = p50([d.get("rejected_prediction_tokens", 0) for d in ds])
        print(f"  {w}: prediction tokens accepted {acc:.0f}, rejected {rej:.0f} (medians)")
    for w, pairs in result.get("by_pair", {}).items():
        if len(pairs) < 2:
            continue
        off, on, _ = ROWS[w]
        gains = []
        for runs in pairs.values():
            a, b = p50(runs.get(off, [])), p50(runs.get(on + " +" if off == on else on, []))
            gains.append(f"{b / a:.2f}x" if a else "-")
        print(f"  {w}: gain per file {', '.join(gains)}")
