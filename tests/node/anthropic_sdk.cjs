// Anthropic's Node SDK against `reverb serve` (run by tests/test_anthropic_node_e2e.py): create, stream,
// countTokens, a tool round trip, models.list and the auth error. Prints "ok <step>" per step; fails loudly.
const assert = require("node:assert/strict");
const Anthropic = require(process.env.ANTHROPIC_SDK).default;

const model = "smollm2-135m";
const client = new Anthropic({ baseURL: process.env.REVERB_URL, apiKey: process.env.REVERB_KEY, maxRetries: 0 });
const ask = [{ role: "user", content: "Write one sentence about the sea." }];
const weather = { name: "get_weather", description: "The weather in a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } };

async function main() {
  const whole = await client.messages.create({ model, max_tokens: 10, temperature: 0, messages: ask });
  assert.equal(whole.type, "message");
  assert.ok(whole.content[0].text.length > 0);
  console.log("ok create");

  const stream = client.messages.stream({ model, max_tokens: 10, temperature: 0, messages: ask });
  let text = "";
  stream.on("text", (t) => { text += t; });
  const final = await stream.finalMessage();
  assert.equal(text, whole.content[0].text);
  assert.equal(final.usage.output_tokens, whole.usage.output_tokens);
  console.log("ok stream");

  const counted = await client.messages.countTokens({ model, messages: ask });
  assert.equal(counted.input_tokens, whole.usage.input_tokens);
  console.log("ok countTokens");

  const call = await client.messages.create({ model, max_tokens: 60, temperature: 0, tools: [weather],
    tool_choice: { type: "any" }, messages: [{ role: "user", content: "Weather in Paris?" }] });
  assert.equal(call.stop_reason, "tool_use");
  const use = call.content.find((b) => b.type === "tool_use");
  assert.deepEqual(Object.keys(use.input), ["city"]);
  const answer = await client.messages.create({ model, max_tokens: 12, temperature: 0, tools: [weather],
    messages: [{ role: "user", content: "Weather in Paris?" }, { role: "assistant", content: call.content },
      { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "Sunny" }] }] });
  assert.equal(answer.content[0].type, "text");
  console.log("ok tools");

  const models = await client.models.list();
  assert.equal(models.data[0].id, model);
  console.log("ok models");

  const stranger = new Anthropic({ baseURL: process.env.REVERB_URL, apiKey: "sk-wrong", maxRetries: 0 });
  await assert.rejects(stranger.messages.create({ model, max_tokens: 2, messages: ask }),
    (e) => e instanceof Anthropic.AuthenticationError && e.error.error.type === "authentication_error");
  console.log("ok auth");
}

main().catch((e) => { console.error(e); process.exit(1); });
