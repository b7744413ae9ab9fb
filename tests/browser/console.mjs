// The console in a real browser: Debian's headless Chromium, driven by playwright-core, against
// real `flexrun serve` processes on 127.0.0.1 (started and stopped here). Run by
// tests/http/console.rs, which passes:
//   FLEXRUN_BIN        the flexrun binary
//   FLEXRUN_ROOT       the repository (for examples/)
//   FLEXRUN_BROWSER_DIR where scripts/setup-browser.sh installed playwright-core
//   FLEXRUN_CHROMIUM   the Chromium binary (default /usr/bin/chromium)
//   FLEXRUN_ARTIFACTS  where the screenshots go
// Exits 0 when every check held; otherwise prints what failed and exits 1.

import { spawn } from "node:child_process";
import http from "node:http";
import { createRequire } from "node:module";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const env = (name, fallback) => {
  const v = process.env[name] || fallback;
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BIN = env("FLEXRUN_BIN");
const ROOT = env("FLEXRUN_ROOT");
const ARTIFACTS = env("FLEXRUN_ARTIFACTS");
const CHROMIUM = env("FLEXRUN_CHROMIUM", "/usr/bin/chromium");
const require = createRequire(path.join(env("FLEXRUN_BROWSER_DIR"), "package.json"));
const { chromium } = require("playwright-core");

const TIMEOUT = 20_000;
fs.mkdirSync(ARTIFACTS, { recursive: true });
const example = (name) => JSON.parse(fs.readFileSync(path.join(ROOT, "examples", name), "utf8"));

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// A `flexrun serve` process; `start()` waits for its "serving" line.
class FlexrunServer {
  constructor(port, data, extraArgs = [], extraEnv = {}) {
    this.port = port;
    this.data = data;
    this.extraArgs = extraArgs;
    this.extraEnv = extraEnv;
    this.base = `http://127.0.0.1:${port}`;
  }

  start() {
    const args = ["serve", "--addr", `127.0.0.1:${this.port}`, "--data", this.data,
      "--heartbeat-secs", "1", ...this.extraArgs];
    this.child = spawn(BIN, args, { env: { ...process.env, ...this.extraEnv }, stdio: ["ignore", "ignore", "pipe"] });
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
    return new Promise((resolve, reject) => {
      let seen = "";
      const timer = setTimeout(() => reject(new Error(`server did not start: ${seen}`)), TIMEOUT);
      this.child.stderr.on("data", (chunk) => {
        seen += chunk;
        if (seen.includes("flexrun serving")) {
          clearTimeout(timer);
          resolve();
        }
      });
      this.child.on("exit", (code) => reject(new Error(`server exited (${code}): ${seen}`)));
    });
  }

  async kill() {
    this.child.kill("SIGKILL");
    await this.exited;
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      await this.exited;
    }
  }

  async api(method, p, body, headers = {}) {
    const res = await fetch(this.base + p, {
      method,
      headers: body ? { "content-type": "application/json", ...headers } : headers,
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  async submit(envelope, headers) {
    return (await this.api("POST", "/v1/runs", envelope, headers)).runId;
  }
}

// A draft of the demo catalog's three nodes; `writer` names the writing capability.
const draft = (writer) => JSON.stringify({
  nodes: [
    { id: "brief", stage: "structuring", capabilityId: "brief.structurer", kind: "structuring",
      inputFacets: ["objectiveBrief"], outputFacets: ["writerBrief"], instructions: [], rationale: "structure the brief" },
    { id: "write", stage: "generation", capabilityId: writer, kind: "execution",
      inputFacets: ["writerBrief"], outputFacets: ["copyVariants"], instructions: [], rationale: "write" },
    { id: "sum", stage: "summary", capabilityId: "copy.summarizer", kind: "transformation",
      inputFacets: ["copyVariants"], outputFacets: ["summary"], instructions: [], rationale: "summarise" },
  ],
  edges: [{ from: "brief", to: "write" }, { from: "write", to: "sum" }],
  systemInstructions: "be concise",
  rationale: "structure, write, summarise",
});

// An OpenAI-compatible model on 127.0.0.1 that answers the chat completions it gets with
// `replies`, in order: the planner's side of a rejected draft and its revision.
function fakeModel(replies) {
  const queue = [...replies];
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const content = queue.length > 1 ? queue.shift() : queue[0];
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({
        id: "chatcmpl-console", object: "chat.completion", model: "console-model",
        choices: [{ index: 0, finish_reason: "stop", message: { role: "assistant", content } }],
        usage: { prompt_tokens: 100, completion_tokens: 40, total_tokens: 140 },
      }));
    });
  });
  return new Promise((resolve) => srv.listen(0, "127.0.0.1", () => resolve(srv)));
}

async function shot(page, name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

// The seqs of the timeline, in page order.
const timelineSeqs = (page) => page.$$eval("#timeline li", (lis) => lis.map((li) => Number(li.dataset.seq)));

async function checkTimeline(page, server, runId, what, headers) {
  const seqs = await timelineSeqs(page);
  const run = await server.api("GET", `/v1/runs/${runId}`, undefined, headers);
  const expected = Array.from({ length: run.lastSeq }, (_, i) => i + 1);
  check(JSON.stringify(seqs) === JSON.stringify(expected),
    `${what}: the timeline holds seqs 1..${run.lastSeq} once each, in order (got ${seqs.length})`);
}

const waitStatus = (page, status) =>
  page.waitForSelector(`#run-status[data-status="${status}"]`, { timeout: TIMEOUT });

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flexrun-console-"));
  const port = await freePort();
  const model = await fakeModel([draft("writer.de"), draft("writer.en")]);
  const server = new FlexrunServer(port, tmp,
    ["--planner-base-url", `http://127.0.0.1:${model.address().port}/v1`, "--planner-model", "console-model"],
    { OPENAI_API_KEY: "sk-console-test" });
  await server.start();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  const servers = [server];
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 950 } });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !/Failed to load resource|ERR_CONNECTION_REFUSED|net::ERR/.test(m.text())) {
        problems.push(`console error: ${m.text()}`);
      }
    });
    page.setDefaultTimeout(TIMEOUT);

    // -- 1. The runs list shows a new run; its DAG gains the replan's node live. --------
    await page.goto(`${server.base}/`);
    await page.waitForSelector("#list-view:not([hidden])");
    const loadId = await page.evaluate(() => document.body.dataset.loadId);
    const approvalRun = await server.submit(example("approval.json"));
    const row = await page.waitForSelector(`tr[data-run-id="${approvalRun}"]`);
    check(true, "a run submitted by another client appears in the open runs list");
    await shot(page, "01-runs-list");
    await row.click();
    await page.waitForSelector("#dag svg[data-version='1']");
    const card = await page.waitForSelector(`.hitl-card[data-request-id]`);
    const v1Nodes = await page.$$eval("#dag g.node", (gs) => gs.map((g) => g.dataset.nodeId));
    check(v1Nodes.length === 3 && !v1Nodes.some((n) => n.startsWith("qa-")), `version 1 is drawn with 3 nodes (${v1Nodes})`);
    await page.waitForSelector("#dag g.node[data-node-id='writer-en'][data-state='done']");
    check(true, "writer-en is marked done from the stream");
    await shot(page, "02-waiting-for-approval");
    await (await card.$("button[data-decision='reject']")).click();
    const added = await page.waitForSelector("#dag svg[data-version='2'] g.node.diff-added");
    const addedId = await added.getAttribute("data-node-id");
    check(addedId.startsWith("qa-"), `the replan's node ${addedId} appears in the drawing, marked as added`);
    await waitStatus(page, "completed");
    await page.waitForSelector(`#dag g.node[data-node-id='${addedId}'][data-state='done']`);
    const states = await page.$$eval("#dag g.node", (gs) => gs.map((g) => g.dataset.state));
    check(states.length === 4 && states.every((s) => s === "done"), `all 4 nodes of version 2 are done (${states})`);
    check(await page.evaluate(() => document.body.dataset.loadId) === loadId, "the page was never reloaded");
    await checkTimeline(page, server, approvalRun, "replan by rejection");
    await shot(page, "03-replanned-live");
    await page.click("#versions button[data-version='1']");
    await page.waitForSelector("#dag svg[data-version='1']");
    check((await page.$$("#dag g.node")).length === 3, "version 1 can be looked at again");
    await shot(page, "04-earlier-version");

    // -- 2. examples/replan.json, as in the README. --------------------------------------
    const replanRun = await server.submit(example("replan.json"));
    await page.goto(`${server.base}/#/runs/${replanRun}`);
    await waitStatus(page, "completed");
    await page.waitForSelector("#dag svg[data-version='2']");
    const replanAdded = await page.$$eval("#dag g.node.diff-added", (gs) => gs.map((g) => g.dataset.nodeId));
    check(replanAdded.length === 1 && replanAdded[0].startsWith("qa-"), `replan.json: version 2 marks ${replanAdded} as added`);
    const versions = await page.$$eval("#versions button", (bs) => bs.map((b) => b.dataset.version));
    check(JSON.stringify(versions) === '["1","2"]', `replan.json: versions 1 and 2 are offered (${versions})`);
    await page.waitForSelector("#timeline li[data-type='plan_updated']");
    await checkTimeline(page, server, replanRun, "replan.json");
    await shot(page, "05-replan-example");

    // -- 3. A HITL approval answered by a click completes the run. ----------------------
    const approveRun = await server.submit(example("approval.json"));
    await page.goto(`${server.base}/#/runs/${approveRun}`);
    const approveCard = await page.waitForSelector(".hitl-card[data-request-id]");
    await (await approveCard.$("button[data-decision='approve']")).click();
    await waitStatus(page, "completed");
    await page.waitForSelector("#hitl-panel[hidden]", { state: "attached" });
    const outcome = JSON.parse(await page.textContent("#outcome"));
    check(Array.isArray(outcome.copyVariants) && typeof outcome.summary === "string", "the approved run's output is shown");
    const approved = await server.api("GET", `/v1/runs/${approveRun}`);
    check(approved.status === "completed" && approved.planVersion === 1, "the server has the run completed, on version 1");
    await shot(page, "06-approved");

    // -- 4. The page survives a server restart and continues without gaps. ---------------
    const restartRun = await server.submit(example("approval.json"));
    await page.goto(`${server.base}/#/runs/${restartRun}`);
    const restartLoad = await page.evaluate(() => document.body.dataset.loadId);
    await page.waitForSelector(".hitl-card[data-request-id]");
    await page.waitForSelector("#stream-status[data-state='live']");
    const before = await timelineSeqs(page);
    await server.kill();
    await page.waitForSelector("#stream-status[data-state='reconnecting']");
    check(true, "the page shows the stream reconnecting while the server is down");
    await shot(page, "07-server-down");
    await server.start();
    await page.waitForSelector("#stream-status[data-state='live']", { timeout: 30_000 });
    check(true, "the page reconnects by itself to the restarted server");
    await (await page.waitForSelector(".hitl-card button[data-decision='approve']")).click();
    await waitStatus(page, "completed");
    const after = await timelineSeqs(page);
    check(JSON.stringify(after.slice(0, before.length)) === JSON.stringify(before), "the events seen before the restart stay as they were");
    await checkTimeline(page, server, restartRun, "across the restart");
    check(await page.evaluate(() => document.body.dataset.loadId) === restartLoad, "the page was not reloaded across the restart");
    await shot(page, "08-after-restart");

    // -- 5. A rejected draft's diagnostics, then the accepted revision. ----------------
    const modelRun = await server.submit({
      objective: "Write taglines for a bakery",
      planner: "openai",
      inputs: { objectiveBrief: "Fresh sourdough baked daily, for busy parents. Playful tone" },
      outputContract: { mode: "facets", facets: ["copyVariants", "summary"] },
    });
    await page.goto(`${server.base}/#/runs/${modelRun}`);
    await waitStatus(page, "completed");
    const diag = await page.waitForSelector("#diagnostics-panel:not([hidden]) .diag[data-code='CAPABILITY_NOT_REGISTERED']");
    const diagText = await diag.textContent();
    check(diagText.includes("writer.de"), `the rejected draft's diagnostic is shown: ${diagText}`);
    await page.waitForSelector("#dag svg[data-version='1'] g.node[data-capability='writer.en']");
    check(true, "the revised draft is drawn as version 1");
    await shot(page, "09-rejected-draft");

    // -- 6. Pause, resume and cancel from the page. ---------------------------------------
    const operatorRun = await server.submit(example("operator.json"));
    await page.goto(`${server.base}/#/runs/${operatorRun}`);
    await page.waitForSelector("#timeline li[data-type='run_paused'], #timeline li[data-type='policy_triggered']");
    await page.waitForSelector("#resume:not([disabled])");
    await page.click("#resume");
    await page.waitForSelector("#timeline li[data-type='run_resumed']");
    check(true, "Resume resumes a run paused by a policy");
    await page.waitForSelector("#cancel:not([disabled])");
    await page.click("#cancel");
    await waitStatus(page, "cancelled");
    check(true, "Cancel cancels the run");
    await checkTimeline(page, server, operatorRun, "operator");
    await shot(page, "10-cancelled");

    // -- 7. With a bearer token: the page asks for it and follows with a stream token. --
    const authPort = await freePort();
    const authDir = fs.mkdtempSync(path.join(os.tmpdir(), "flexrun-console-auth-"));
    const secret = "console-test-token";
    const authServer = new FlexrunServer(authPort, authDir, ["--auth-token-env", "FLEXRUN_CONSOLE_TOKEN"],
      { FLEXRUN_CONSOLE_TOKEN: secret });
    servers.push(authServer);
    await authServer.start();
    const bearer = { authorization: `Bearer ${secret}` };
    const authRun = await authServer.submit(example("approval.json"), bearer);
    const authPage = await browser.newPage({ viewport: { width: 1400, height: 950 } });
    authPage.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    authPage.setDefaultTimeout(TIMEOUT);
    await authPage.goto(`${authServer.base}/#/runs/${authRun}`);
    await authPage.waitForSelector("#token-form:not([hidden])");
    check(true, "without a token the page asks for one");
    await authPage.fill("#token-input", secret);
    await authPage.click("#token-form button[type='submit']");
    await (await authPage.waitForSelector(".hitl-card button[data-decision='approve']")).click();
    await waitStatus(authPage, "completed");
    await checkTimeline(authPage, authServer, authRun, "with auth", bearer);
    const streamUrls = [];
    authPage.on("request", (r) => { if (r.url().includes("/events")) streamUrls.push(r.url()); });
    await authPage.reload();
    await waitStatus(authPage, "completed");
    check(streamUrls.some((u) => u.includes("token=")), "the event stream is opened with a stream token");
    await shot(authPage, "11-with-auth");

    check(problems.length === 0, `no page errors (${problems.join(" | ")})`);
  } finally {
    await browser.close();
    model.close();
    for (const s of servers) await s.stop().catch(() => {});
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(
  () => { console.log("console browser test: all checks passed"); process.exit(0); },
  (err) => { console.error(err.stack || String(err)); process.exit(1); },
);
