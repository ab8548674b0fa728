// The tests a Node app would write: the official openai client against the tiny model, with faults.
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startReverb } from "./reverb.js";

let reverb;
const MODEL = "smollm2-135m";
const ask = { model: MODEL, temperature: 0, max_tokens: 12, messages: [{ role: "user", content: "Say hello" }] };

before(async () => { reverb = await startReverb(); });
after(async () => { await reverb?.stop(); });
beforeEach(async () => { await reverb.reset(); });
const client = (opts = {}) => new OpenAI({ baseURL: reverb.baseURL + "/v1", apiKey: reverb.apiKey, maxRetries: 0, ...opts });

test("answers, the same twice", async () => {
  const a = await client().chat.completions.create(ask);
  const b = await client().chat.completions.create(ask);
  assert.ok(a.choices[0].message.content.length > 0);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
});

test("a 429 with Retry-After is retried after the wait", async () => {
  await reverb.fault(429, { retry_after: 1 });
  const r = await client({ maxRetries: 2 }).chat.completions.create(ask);
  assert.ok(r.choices[0].message.content.length > 0);
  const [first, second] = await reverb.requests();
  assert.deepEqual([first.status, second.status], [429, 200]);
  assert.ok(second.t - first.t_response >= 1, "the client waited Retry-After");
});

test("each status fault surfaces as the SDK's error", async () => {
  for (const [kind, cls] of [[500, OpenAI.InternalServerError], [503, OpenAI.InternalServerError],
    ["insufficient_quota", OpenAI.RateLimitError], ["context_length_exceeded", OpenAI.BadRequestError]]) {
    await reverb.fault(kind);
    await assert.rejects(client().chat.completions.create(ask), cls, String(kind));
  }
});

test("a truncated stream is an error, not a short answer", async () => {
  await reverb.fault("truncate", { after: 3 });
  await assert.rejects(async () => {
    for await (const _ of await client().chat.completions.create({ ...ask, stream: true })) { /* read on */ }
  });
  assert.equal((await reverb.requests())[0].fault, "truncate");
});

test("a connection reset is an APIConnectionError", async () => {
  await reverb.fault("reset");
  await assert.rejects(client().chat.completions.create(ask), OpenAI.APIConnectionError);
});
