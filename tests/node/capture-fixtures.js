#!/usr/bin/env node
// capture-fixtures.js — record what the real node-resque (pinned in
// package.json) stores in Redis, so the Rust tests can compare ah-worker's
// bytes against the real peer's without needing Node at test time.
//
// Usage: REDIS_URL=redis://127.0.0.1:6451/0 node capture-fixtures.js
//   RESQUE_NAMESPACE (default "resque") must hold no keys yet; the script
//   refuses to run otherwise, and deletes only its own namespace's keys at the
//   end (never FLUSHALL/FLUSHDB). Use a private, throw-away redis-server.
//
// Writes tests/fixtures/:
//   node-resque-worker-keys.json  keys (with types and values) right after Worker.start()
//   node-resque-status.json       worker:{name}:{queues} while a job runs (Lua cjson output)
//   node-resque-failure.json      the `failed` entry for a job that threw new Error("boom")
"use strict";

const fs = require("fs");
const path = require("path");
const { Queue, Worker } = require("node-resque");
// ioredis comes with node-resque; resolve it from there.
const Redis = require(require.resolve("ioredis", { paths: [path.dirname(require.resolve("node-resque"))] }));

const NODE_RESQUE_VERSION = require("node-resque/package.json").version;
const FIXTURES = path.join(__dirname, "..", "fixtures");
const WORKER_NAME = "fixturehost:4242+1"; // hostname:pid+id, as MultiWorker/actionHero name workers
const QUEUES = ["critical", "default"];

function connectionOptions() {
  const url = new URL(process.env.REDIS_URL || "redis://127.0.0.1:6379/0");
  const options = {};
  if (url.username) options.username = decodeURIComponent(url.username);
  if (url.password) options.password = decodeURIComponent(url.password);
  return {
    host: url.hostname || "127.0.0.1",
    port: url.port ? Number(url.port) : 6379,
    database: Number(url.pathname.replace(/^\//, "") || 0),
    namespace: process.env.RESQUE_NAMESPACE || "resque",
    options,
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const once = (emitter, event) => new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));

async function dumpKeys(redis, pattern) {
  const keys = (await redis.keys(pattern)).sort();
  const out = [];
  for (const key of keys) {
    const type = await redis.type(key);
    let value;
    if (type === "string") value = await redis.get(key);
    else if (type === "set") value = (await redis.smembers(key)).sort();
    else if (type === "list") value = await redis.lrange(key, 0, -1);
    else if (type === "hash") value = await redis.hgetall(key);
    else if (type === "zset") value = await redis.zrange(key, 0, -1, "WITHSCORES");
    out.push({ key, type, value });
  }
  return out;
}

function write(file, data) {
  fs.mkdirSync(FIXTURES, { recursive: true });
  fs.writeFileSync(path.join(FIXTURES, file), JSON.stringify(data, null, 2) + "\n");
  console.log(`wrote tests/fixtures/${file}`);
}

async function main() {
  const conn = connectionOptions();
  const ns = conn.namespace;
  const redis = new Redis({ host: conn.host, port: conn.port, db: conn.database, ...conn.options });
  const redisVersion = (await redis.info("server")).match(/redis_version:(\S+)/)[1];
  if ((await redis.keys(`${ns}:*`)).length > 0) {
    throw new Error(`namespace "${ns}" is not empty; set RESQUE_NAMESPACE to an unused one`);
  }
  const common = { captured_with: `node-resque ${NODE_RESQUE_VERSION}`, redis: redisVersion, node: process.version };

  const jobs = {
    Slow: { perform: () => sleep(300) },
    Boom: {
      perform: async () => {
        throw new Error("boom");
      },
    },
  };
  const worker = new Worker({ connection: conn, name: WORKER_NAME, queues: QUEUES, timeout: 50 }, jobs);
  worker.on("error", (e) => console.error("worker error:", e));
  const queue = new Queue({ connection: conn });
  queue.on("error", (e) => console.error("queue error:", e));

  // (c) keys right after start, before any job.
  await worker.connect();
  await worker.start();
  await sleep(100);
  const keysAfterStart = await dumpKeys(redis, `${ns}:*`);

  // (a) status while a job runs: once with object/number/unicode args, once with [] args.
  await queue.connect();
  const statusKey = `${ns}:worker:${WORKER_NAME}:${QUEUES.join(",")}`;
  const captureStatus = async (args) => {
    const started = once(worker, "job");
    await queue.enqueue("default", "Slow", args);
    const enqueued = (await redis.lrange(`${ns}:queue:default`, 0, -1))[0];
    await started;
    const done = once(worker, "success");
    await sleep(150); // the job sleeps 300 ms; read the key in the middle of it
    const raw = await redis.get(statusKey);
    await done;
    return { job_enqueued: enqueued, raw };
  };
  const withArgs = await captureStatus([{ to: "a@example.com", n: 1.5, big: 12345678901234567, list: [] }, 42, "héllo"]);
  const empty = await captureStatus([]);
  write("node-resque-status.json", {
    ...common,
    note: "GET of the worker status key while a 300 ms job runs (written by node-resque's popAndStoreJob Lua script via cjson)",
    key: statusKey,
    job_enqueued: withArgs.job_enqueued,
    raw: withArgs.raw,
    empty_args: empty,
  });

  // (b) the failed entry of a job that throws new Error("boom").
  const failed = once(worker, "failure");
  await queue.enqueue("default", "Boom", [1, "two"]);
  const enqueued = (await redis.lrange(`${ns}:queue:default`, 0, -1))[0];
  await failed;
  const entries = await redis.lrange(`${ns}:failed`, 0, -1);
  if (entries.length !== 1) throw new Error(`expected one failed entry, found ${entries.length}`);
  write("node-resque-failure.json", {
    ...common,
    note: 'RPUSHed to <ns>:failed by Worker.fail() after perform threw new Error("boom"); TZ of the capturing process',
    tz: Intl.DateTimeFormat().resolvedOptions().timeZone,
    key: `${ns}:failed`,
    job_enqueued: enqueued,
    raw: entries[0],
  });

  const keysAfterJobs = await dumpKeys(redis, `${ns}:*`);
  await worker.end();
  await queue.end();
  write("node-resque-worker-keys.json", {
    ...common,
    note:
      "KEYS <ns>:* with TYPE and value; the namespace was empty before Worker.connect()+start(). " +
      "after_jobs: after the three jobs above (2 successes, 1 failure) plus the Queue's connection; after_end: after Worker.end()",
    worker_name: WORKER_NAME,
    queues: QUEUES.join(","),
    key_pattern: `${ns}:*`,
    keys: keysAfterStart,
    after_jobs: keysAfterJobs,
    after_end: await dumpKeys(redis, `${ns}:*`),
  });
  // Clean up our namespace only.
  const leftover = await redis.keys(`${ns}:*`);
  if (leftover.length > 0) await redis.del(...leftover);
  redis.disconnect();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
