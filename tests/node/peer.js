#!/usr/bin/env node
// peer.js — a real node-resque peer for the ah-worker Rust test-suite.
//
// The Rust tests call this script so that interoperability is checked against
// the actual node-resque package (pinned in package.json, installed with
// `npm ci` by scripts/install-deps), not against our own reading of its
// source. Every command talks to Redis through node-resque's public API.
//
// Environment:
//   REDIS_URL         redis://[user:password@]host:port/db (default redis://127.0.0.1:6379/0)
//   RESQUE_NAMESPACE  key namespace (default "resque")
//   PEER_IDLE_MS      `worker` only: stop after the queues were empty this long (default 1000)
//
// Commands (each prints exactly ONE line of JSON on stdout and exits 0;
// on error it prints a message on stderr and exits non-zero):
//   enqueue QUEUE CLASS ARGS_JSON   -> {"ok":true}
//   enqueue-many QUEUE CLASS N      -> {"ok":true,"count":N}      (args [0] .. [N-1], in order)
//   workers                         -> queue.workers()
//   all-working-on                  -> queue.allWorkingOn()
//   stats                           -> queue.stats()
//   failed                          -> queue.failed(0, -1)
//   failed-count                    -> {"count":N}
//   remove-failed INDEX             -> {"removed":N}  (removeFailed of the entry at INDEX)
//   enqueue-at TS_MS QUEUE CLASS ARGS_JSON -> {"ok":true}  (queue.enqueueAt)
//   scheduler NAME LOCK_SECONDS [STUCK_MS] -> {"ok":true,"leader_rounds":N}
//     Runs a node-resque Scheduler (poll 100 ms, leader lock TTL LOCK_SECONDS)
//     until SIGTERM/SIGINT, then scheduler.end().
//   worker QUEUES_CSV NAME          -> {"ok":true,"performed":N}
//     Runs a node-resque Worker (poll timeout 5 ms) with the jobs CountJob and
//     AhWorker::Noop until its queues were empty for PEER_IDLE_MS, or until
//     SIGTERM/SIGINT; then worker.end().
"use strict";

const { Plugins, Queue, Scheduler, Worker } = require("node-resque");

const USAGE = `usage: peer.js <command> [args]
  enqueue QUEUE CLASS ARGS_JSON | enqueue-many QUEUE CLASS N | workers |
  all-working-on | stats | failed | failed-count | remove-failed INDEX |
  worker QUEUES_CSV NAME`;

// ---------------------------------------------------------------- helpers

function connectionOptions() {
  const url = new URL(process.env.REDIS_URL || "redis://127.0.0.1:6379/0");
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    throw new Error(`REDIS_URL must be redis:// or rediss://, got ${url.protocol}`);
  }
  const dbPath = url.pathname.replace(/^\//, "");
  const database = dbPath === "" ? 0 : Number(dbPath);
  if (!Number.isInteger(database) || database < 0) {
    throw new Error(`bad database number in REDIS_URL: ${JSON.stringify(dbPath)}`);
  }
  const ioredisOptions = {
    // Give up quickly instead of retrying forever: this is a CLI.
    retryStrategy: (times) => (times > 10 ? null : 100),
    maxRetriesPerRequest: 3,
  };
  if (url.username) ioredisOptions.username = decodeURIComponent(url.username);
  if (url.password) ioredisOptions.password = decodeURIComponent(url.password);
  if (url.protocol === "rediss:") ioredisOptions.tls = {};
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1",
    port: url.port ? Number(url.port) : 6379,
    database,
    namespace: process.env.RESQUE_NAMESPACE || "resque",
    options: ioredisOptions,
  };
}

// Print the single JSON result line and wait until it is flushed.
function emit(value) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(value) + "\n", resolve));
}

function fatal(message) {
  process.stderr.write(`peer.js: ${message}\n`);
  process.exit(1);
}

function needArgs(args, n, what) {
  if (args.length < n) fatal(`missing arguments: ${what}\n${USAGE}`);
}

function toCount(text, what) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) fatal(`${what} must be a non-negative integer, got ${JSON.stringify(text)}`);
  return n;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function openQueue() {
  const queue = new Queue({ connection: connectionOptions() });
  queue.on("error", (error) => fatal(`queue error: ${error && error.message ? error.message : error}`));
  await queue.connect();
  if (!queue.connection.connected) fatal("could not connect to Redis");
  return queue;
}

// ---------------------------------------------------------------- commands

// Commands that only need a Queue object: each returns the value to print.
const queueCommands = {
  async enqueue(queue, args) {
    needArgs(args, 3, "QUEUE CLASS ARGS_JSON");
    const [q, cls, argsJson] = args;
    let jobArgs;
    try {
      jobArgs = JSON.parse(argsJson);
    } catch (e) {
      fatal(`ARGS_JSON is not valid JSON: ${e.message}`);
    }
    await queue.enqueue(q, cls, jobArgs);
    return { ok: true };
  },

  async "enqueue-many"(queue, args) {
    needArgs(args, 3, "QUEUE CLASS N");
    const [q, cls] = args;
    const count = toCount(args[2], "N");
    // Each enqueue is a real queue.enqueue() (MULTI SADD + RPUSH). Starting a
    // batch of them without awaiting one by one lets ioredis pipeline them on
    // its single connection; they are written in call order.
    const batch = 1000;
    for (let start = 0; start < count; start += batch) {
      const pending = [];
      for (let i = start; i < Math.min(count, start + batch); i++) pending.push(queue.enqueue(q, cls, [i]));
      await Promise.all(pending);
    }
    return { ok: true, count };
  },

  async "enqueue-at"(queue, args) {
    needArgs(args, 4, "TS_MS QUEUE CLASS ARGS_JSON");
    const [ts, q, cls, argsJson] = args;
    await queue.enqueueAt(Number(ts), q, cls, JSON.parse(argsJson));
    return { ok: true };
  },

  workers: (queue) => queue.workers(),
  "all-working-on": (queue) => queue.allWorkingOn(),
  stats: (queue) => queue.stats(),
  failed: (queue) => queue.failed(0, -1),
  "failed-count": async (queue) => ({ count: await queue.failedCount() }),

  async "remove-failed"(queue, args) {
    needArgs(args, 1, "INDEX");
    const index = toCount(args[0], "INDEX");
    const [entry] = await queue.failed(index, index);
    if (entry === undefined) fatal(`no failed entry at index ${index}`);
    return { removed: await queue.removeFailed(entry) };
  },
};

async function runWorker(args) {
  needArgs(args, 2, "QUEUES_CSV NAME");
  const queues = args[0].split(",").filter((q) => q !== "");
  const name = args[1];
  const idleMs = process.env.PEER_IDLE_MS ? toCount(process.env.PEER_IDLE_MS, "PEER_IDLE_MS") : 1000;
  if (queues.length === 0) fatal("QUEUES_CSV names no queue");

  let worker;
  const jobs = {
    CountJob: {
      perform: async (id) => {
        const { redis } = worker.connection;
        await redis
          .multi()
          .hincrby(worker.connection.key("test", "executions"), String(id), 1)
          .hset(worker.connection.key("test", "executed_by"), String(id), "node")
          .exec();
      },
    },
    "AhWorker::Noop": { perform: async () => null },
    // Always fails; node-resque's Retry plugin retries it (3 attempts in all,
    // 1 s apart) through the delayed queue.
    FlakyJob: {
      plugins: [Plugins.Retry],
      pluginOptions: { Retry: { retryLimit: 3, backoffStrategy: [1000, 1000] } },
      perform: async (id) => {
        await worker.connection.redis.hincrby(worker.connection.key("test", "attempts"), String(id), 1);
        throw new Error("flaky from node");
      },
    },
  };

  worker = new Worker({ connection: connectionOptions(), name, queues, timeout: 5 }, jobs);
  let performed = 0;
  worker.on("success", () => performed++);
  worker.on("failure", () => performed++);
  // Errors are reported on stderr only: stdout carries exactly one JSON line.
  worker.on("error", (error) => process.stderr.write(`peer.js worker error: ${error && error.stack ? error.stack : error}\n`));

  let stopping = false;
  process.on("SIGTERM", () => (stopping = true));
  process.on("SIGINT", () => (stopping = true));

  await worker.connect();
  if (!worker.connection || !worker.connection.connected) fatal("could not connect to Redis");
  await worker.start();

  // Watch the queues from a separate connection; stop after idleMs of empty
  // queues and no job in flight.
  const watcher = await openQueue();
  const { redis } = watcher.connection;
  let idleSince = Date.now();
  while (!stopping) {
    await sleep(50);
    let names = queues;
    if (queues.length === 1 && queues[0] === "*") names = await redis.smembers(watcher.connection.key("queues"));
    const pipeline = redis.pipeline();
    for (const q of names) pipeline.llen(watcher.connection.key("queue", q));
    const lengths = (await pipeline.exec()).map(([err, len]) => (err ? 1 : len));
    const busy = worker.working || lengths.some((len) => len > 0);
    if (busy) idleSince = Date.now();
    else if (Date.now() - idleSince >= idleMs) break;
  }

  await worker.end();
  await watcher.end();
  return { ok: true, performed };
}

async function runScheduler(args) {
  needArgs(args, 2, "NAME LOCK_SECONDS [STUCK_WORKER_TIMEOUT_MS]");
  const [name, lockSeconds, stuckMs] = args;
  const scheduler = new Scheduler({
    connection: connectionOptions(),
    name,
    timeout: 100,
    leaderLockTimeout: toCount(lockSeconds, "LOCK_SECONDS"),
    stuckWorkerTimeout: stuckMs ? toCount(stuckMs, "STUCK_WORKER_TIMEOUT_MS") : 3600000,
  });
  scheduler.on("error", (error) => process.stderr.write(`peer.js scheduler error: ${error && error.stack ? error.stack : error}\n`));
  let leaderRounds = 0;
  scheduler.on("poll", () => {
    if (scheduler.leader) leaderRounds++;
  });
  let stopping = false;
  process.on("SIGTERM", () => (stopping = true));
  process.on("SIGINT", () => (stopping = true));
  await scheduler.connect();
  await scheduler.start();
  while (!stopping) await sleep(50);
  await scheduler.end();
  return { ok: true, leader_rounds: leaderRounds };
}

// ---------------------------------------------------------------- main

async function main() {
  const [command, ...args] = process.argv.slice(2);
  if (command === "worker") {
    await emit(await runWorker(args));
  } else if (command === "scheduler") {
    await emit(await runScheduler(args));
  } else if (Object.prototype.hasOwnProperty.call(queueCommands, command)) {
    const queue = await openQueue();
    const result = await queueCommands[command](queue, args);
    await queue.end();
    await emit(result);
  } else {
    fatal(command ? `unknown command ${JSON.stringify(command)}\n${USAGE}` : USAGE);
  }
  process.exit(0);
}

main().catch((error) => fatal(error && error.stack ? error.stack : String(error)));
