// Replays a list of calls through an unchanged Node.js server SDK and reports what it sent.
//
//   node node_client.mjs SDK NODE_MODULES URL WRITE_KEY CALLS.json RESULT.json
//
// SDK is "segment-node" (@segment/analytics-node) or "rudder-node" (@rudderstack/rudder-sdk-node),
// each with its default settings. CALLS.json holds [{"type": "track", "userId": ..., ...}], with
// `timestamp` as an ISO-8601 string where a call sets one. RESULT.json gets {"sent": [[messageId,
// type], ...] in call order, "confirmed": callbacks without error, "errors": [...]}. Anything
// the SDK logs goes to stdout/stderr as usual.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [sdk, modules, url, writeKey, callsFile, resultFile] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), "noop.js"));
const calls = JSON.parse(readFileSync(callsFile, "utf8"));
const errors = [];
const sent = new Array(calls.length);
let confirmed = 0;

function describe(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  try {
    return JSON.stringify(error);
  } catch {
    return String(error);
  }
}

function params(call) {
  const { type, timestamp, ...rest } = call;
  return timestamp === undefined ? rest : { ...rest, timestamp: new Date(timestamp) };
}

async function segmentNode() {
  const { Analytics } = require("@segment/analytics-node");
  const client = new Analytics({ writeKey, host: url });
  client.on("error", (error) => errors.push(`error event: ${describe(error.reason ?? error)}`));
  client.on("http_response", (response) => {
    if (response.status !== 200) errors.push(`HTTP ${response.status} from ${response.url}`);
  });
  calls.forEach((call, index) => {
    client[call.type](params(call), (error, ctx) => {
      if (error) errors.push(`callback: ${describe(error)}`);
      else confirmed += 1;
      sent[index] = [ctx.event.messageId, ctx.event.type];
    });
  });
  await client.closeAndFlush({ timeout: 45_000 });
}

async function rudderNode() {
  const Analytics = require("@rudderstack/rudder-sdk-node");
  let index = 0;
  const client = new Analytics(writeKey, {
    dataPlaneUrl: url,
    errorHandler: (error) => errors.push(`errorHandler: ${describe(error)}`),
    // Only to learn each messageId the SDK made: the event goes on unchanged.
    beforeEnqueue: (event) => {
      sent[index] = [event.messageId, event.type];
      return event;
    },
  });
  for (const call of calls) {
    client[call.type](params(call), (error) => {
      if (error) errors.push(`callback: ${describe(error)}`);
      else confirmed += 1;
    });
    index += 1;
  }
  await client.flush();
}

const run = { "segment-node": segmentNode, "rudder-node": rudderNode }[sdk];
if (run === undefined) {
  console.error(`unknown SDK ${sdk}: use segment-node or rudder-node`);
  process.exit(2);
}
await run();
// Callbacks are called on the next turn after a batch settles.
await new Promise((resolve) => setImmediate(resolve));
writeFileSync(resultFile, JSON.stringify({ sent, confirmed, errors }));
process.exit(0);
