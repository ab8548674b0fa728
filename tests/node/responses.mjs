// The Responses API through the official openai npm package (the one examples/node-ci installs): create, stream,
// a function-tool round trip over a stored response, retrieve and delete. Prints one JSON line of what it saw;
// tests/test_responses_node_e2e.py runs it against `reverb serve` and checks it.
import { createRequire } from "node:module";

const require = createRequire(new URL("../../examples/node-ci/package.json", import.meta.url));
const OpenAI = require("openai");
const client = new (OpenAI.default ?? OpenAI)({ baseURL: process.env.BASE_URL + "/v1", apiKey: process.env.KEY,
                                                 maxRetries: 0 });
const model = "smollm2-135m";
const yesNo = { format: { type: "json_schema", name: "yes_no", strict: true, schema: {
  type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"], additionalProperties: false } } };
const weather = { type: "function", name: "get_weather", description: "The weather in a city", strict: true,
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"],
                additionalProperties: false } };

const out = {};
const created = await client.responses.create({ model, input: "Is the sky blue?", text: yesNo,
                                                max_output_tokens: 30, temperature: 0 });
out.created = { id: created.id, status: created.status, text: created.output_text };

const stream = client.responses.stream({ model, input: "Is the sky blue?", text: yesNo, max_output_tokens: 30,
                                         temperature: 0 });
const kinds = [];
for await (const event of stream) kinds.push(event.type);
const final = await stream.finalResponse();
out.stream = { kinds, status: final.status, text: final.output_text };

const call = await client.responses.create({ model, input: "What is the weather in Paris?", tools: [weather],
                                             tool_choice: "required", max_output_tokens: 40, temperature: 0 });
const fc = call.output.find((o) => o.type === "function_call");
const answer = await client.responses.create({ model, previous_response_id: call.id, tools: [weather],
  input: [{ type: "function_call_output", call_id: fc.call_id, output: "sunny, 21 C" }], max_output_tokens: 10,
  temperature: 0 });
out.tools = { name: fc.name, args: JSON.parse(fc.arguments), answer: answer.output_text,
              grew: answer.usage.input_tokens > call.usage.input_tokens };

const got = await client.responses.retrieve(call.id);
await client.responses.delete(call.id);
let gone = false;
try { await client.responses.retrieve(call.id); } catch (e) { gone = e.status === 404; }
out.stored = { same: got.id === call.id && got.output[0].call_id === fc.call_id, gone };
console.log(JSON.stringify(out));
