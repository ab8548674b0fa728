// Start `reverb serve` for a test run and drive its test control routes (faults, journal) over plain fetch.
// Any test runner can do this: the server writes its URL to --ready-file once it accepts requests, and
// --exit-with-parent makes it go when this process goes, even on kill -9.
import { spawn } from "node:child_process";
import { mkdtempSync, existsSync, readFileSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";

export async function startReverb({ timeoutMs = 300_000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "reverb-node-"));
  const ready = join(dir, "ready");
  const apiKey = "sk-node-" + randomBytes(12).toString("hex");
  const secret = randomBytes(16).toString("hex");
  const [cmd, ...pre] = (process.env.REVERB_SERVE || "reverb serve").split(" ");
  const proc = spawn(cmd, [...pre, "--port", "0", "--ready-file", ready, "--api-key", apiKey,
    "--db", join(dir, "ledger.sqlite3"), "--deterministic", "--exit-with-parent"],
    { env: { ...process.env, REVERB_TEST_CONTROL: secret }, stdio: ["ignore", "ignore", "inherit"] });
  const started = Date.now();
  // Poll for the ready file (a file appearing is the event; the server removes it again on exit).
  while (!existsSync(ready)) {
    if (proc.exitCode !== null) throw new Error(`reverb serve exited with ${proc.exitCode}`);
    if (Date.now() - started > timeoutMs) { proc.kill("SIGKILL"); throw new Error("reverb serve did not start"); }
    await new Promise((r) => setTimeout(r, 50));
  }
  const baseURL = readFileSync(ready, "utf8").trim();
  const control = async (action, body) => {
    const r = await fetch(`${baseURL}/_reverb/${action}`, {
      method: "POST", headers: { "X-Reverb-Control": secret, "Content-Type": "application/json" },
      body: JSON.stringify({ key: apiKey, ...body }) });
    if (!r.ok) throw new Error(`control ${action}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  await control("watch", {});   // journal this key's requests (and let tests fault them)
  return {
    baseURL, apiKey,
    fault: (kind, opts = {}) => control("faults", { fault: { kind: String(kind), ...opts } }),
    requests: async () => (await control("journal", {})).requests,
    reset: () => control("reset", {}),
    stop: () => new Promise((resolve) => {
      proc.once("exit", () => { rmSync(dir, { recursive: true, force: true }); resolve(); });
      proc.kill("SIGTERM");
    }),
  };
}
