#!/usr/bin/env node
// capture-ah7-fixtures.js — record what actionHero 7.1.1's own cache, stats and
// chat-room code stores in Redis, by running a fixed scenario of ah7.js
// commands and snapshotting every `actionHero:*` key after each one, so the
// Rust tests can compare ah-worker's bytes against the real peer's without
// needing Node at test time.
//
// Usage: REDIS_URL=redis://127.0.0.1:6452/0 node capture-ah7-fixtures.js
//   The database must hold no `actionHero:*` keys yet; the script refuses to
//   run otherwise, and at the end deletes only the keys it created (never
//   FLUSHALL/FLUSHDB). Use a private, throw-away redis-server.
//   ACTIONHERO_TITLE, if set, is passed on (it becomes the members' "host");
//   otherwise actionHero uses this machine's IPv4 address, recorded as
//   "server_id" in the fixture.
//
// Writes tests/fixtures/actionhero7-state.json:
//   { captured_with, redis, node, server_id, notes,
//     operations: [ { name, command: [argv with <repo>], output: <parsed JSON line>,
//                     state: { "<key>": {type, value} } } ] }
//   `state` is every actionHero:* key after the operation: HASH → HGETALL
//   (raw strings), SET → sorted SMEMBERS, STRING → GET. Keys that do not
//   exist are absent.
"use strict";

const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const Redis = require(require.resolve("ioredis", { paths: [path.dirname(require.resolve("node-resque"))] }));

const REPO = path.resolve(__dirname, "..", "..");
const AH7 = path.join(__dirname, "ah7.js");
const FIXTURE = path.join(REPO, "tests", "fixtures", "actionhero7-state.json");
const AH_VERSION = require("actionhero/package.json").version;

// Fixed UUID v4 connection ids (actionHero 7 gives connections uuid.v4() ids).
const ALICE = "2f1b6a9e-4c3d-4e8f-9a7b-1c2d3e4f5a6b";
const BOB = "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function snapshot(redis) {
  const keys = (await redis.keys("actionHero:*")).sort();
  const state = {};
  for (const key of keys) {
    const type = await redis.type(key);
    let value;
    if (type === "hash") value = await redis.hgetall(key);
    else if (type === "set") value = (await redis.smembers(key)).sort();
    else if (type === "string") value = await redis.get(key);
    else value = `<unexpected type ${type}>`;
    state[key] = { type, value };
  }
  return state;
}

function ah7(args) {
  // AH7_BROADCASTS=1: room-join/leave/del also report the faye messages
  // actionHero would have published; they are moved to the operation's own
  // "broadcasts" field so "output" stays what ah7.js prints by default.
  const env = { ...process.env, AH7_BROADCASTS: "1" };
  const out = execFileSync(process.execPath, [AH7, ...args], { encoding: "utf8", env });
  const lines = out.trim().split("\n");
  if (lines.length !== 1) throw new Error(`ah7.js ${args.join(" ")} printed ${lines.length} lines`);
  return JSON.parse(lines[0]);
}

async function main() {
  const url = new URL(process.env.REDIS_URL || "redis://127.0.0.1:6379/0");
  const redis = new Redis({
    host: url.hostname,
    port: url.port ? Number(url.port) : 6379,
    db: Number(url.pathname.replace(/^\//, "") || 0),
    password: url.password ? decodeURIComponent(url.password) : undefined,
  });
  if ((await redis.keys("actionHero:*")).length > 0) {
    throw new Error("this database already holds actionHero:* keys; use an empty, private redis-server");
  }
  const redisVersion = (await redis.info("server")).match(/redis_version:(\S+)/)[1];

  const operations = [];
  // Run one ah7.js command (or a direct Redis write, for `raw`) and record
  // its output and the state afterwards.
  async function op(name, args, { raw } = {}) {
    let output;
    let command;
    if (raw) {
      await redis.call(...raw);
      command = ["redis-cli", ...raw];
      output = null;
    } else {
      output = ah7(args);
      command = ["node", "<repo>/tests/node/ah7.js", ...args];
    }
    const entry = { name, command, output };
    if (output && output.broadcasts) {
      entry.broadcasts = output.broadcasts;
      delete output.broadcasts;
    }
    entry.state = await snapshot(redis);
    operations.push(entry);
    return output;
  }

  // ---- cache
  await op("cache-save without expiry", ["cache-save", "sayHello:alice", '{"name":"alice","message":"hi there"}']);
  await sleep(5);
  await op("cache-load sets readAt", ["cache-load", "sayHello:alice"]);
  await sleep(5);
  await op("cache-load with EXPIRE_MS on an entry without expiry (stays null)", ["cache-load", "sayHello:alice", "5000"]);
  await sleep(5);
  await op("cache-save over an existing key (new createdAt, readAt null, counters +1 again)", [
    "cache-save", "sayHello:alice", '{"name":"alice","message":"hello again"}',
  ]);
  await op("cache-save with EXPIRE_MS 60000", ["cache-save", "ttl:key", '[1,"two",{"three":3}]', "60000"]);
  await sleep(5);
  await op("cache-load with EXPIRE_MS 120000 (expireTimestamp = readAt + 120000)", ["cache-load", "ttl:key", "120000"]);
  await sleep(5);
  await op("cache-load without EXPIRE_MS (expireTimestamp kept)", ["cache-load", "ttl:key"]);
  await op("cache-save with EXPIRE_MS 1", ["cache-save", "short:lived", '"bye"', "1"]);
  await sleep(20);
  await op("cache-load of an expired entry (entry kept)", ["cache-load", "short:lived"]);
  await op("cache-load of a missing key", ["cache-load", "no:such:key"]);
  await op("cache-size", ["cache-size"]);
  await op("cache-sweep (one sweeper pass)", ["cache-sweep"]);
  await op("cache-destroy existing key", ["cache-destroy", "sayHello:alice"]);
  await op("cache-destroy missing key (cachedObjects still -1)", ["cache-destroy", "sayHello:alice"]);
  await op("foreign write: field that is not JSON", null, { raw: ["HSET", "actionHero:cache", "not:json", "plain text"] });
  await op("cache-load of a non-JSON field (succeeds, rewrites it as a JSON string)", ["cache-load", "not:json"]);
  await op("cache-destroy", ["cache-destroy", "not:json"]);
  await op("cache-destroy", ["cache-destroy", "ttl:key"]);
  await op("cache-destroy", ["cache-destroy", "short:lived"]);

  // ---- stats
  await op("stats-increment", ["stats-increment", "tasks:sayHello", "5"]);
  await op("stats-increment negative", ["stats-increment", "tasks:sayHello", "-2"]);
  await op("stats-increment fractional (HINCRBY fails, silently dropped)", ["stats-increment", "fractional", "1.5"]);
  await op("stats-get", ["stats-get"]);
  await op("stats-get KEY", ["stats-get", "tasks:sayHello"]);
  await op("stats-get missing KEY", ["stats-get", "no:such:stat"]);

  // ---- chat rooms
  await op("room-join before the room exists", ["room-join", "lobby", ALICE]);
  await op("room-add", ["room-add", "lobby"]);
  await op("room-add again", ["room-add", "lobby"]);
  await op("room-add second room", ["room-add", "kitchen"]);
  await op("rooms", ["rooms"]);
  await op("room-join alice", ["room-join", "lobby", ALICE]);
  await sleep(5);
  await op("room-join bob", ["room-join", "lobby", BOB]);
  await op("room-join alice again", ["room-join", "lobby", ALICE]);
  await op("room-status", ["room-status", "lobby"]);
  await op("room-join alice into kitchen from lobby (moves)", ["room-join", "kitchen", ALICE, "lobby"]);
  await op("room-leave bob (last member of lobby)", ["room-leave", "lobby", BOB]);
  await op("room-status of an empty room", ["room-status", "lobby"]);
  await op("room-leave of a non-member (still counted)", ["room-leave", "lobby", BOB]);
  await op("room-del kitchen (with a member)", ["room-del", "kitchen"]);
  await op("rooms after room-del", ["rooms"]);
  await op("room-exists", ["room-exists", "lobby"]);
  await op("room-exists deleted", ["room-exists", "kitchen"]);

  const joined = operations.find((o) => o.name === "room-join alice").state[`actionHero:chatRoom:members:lobby`];
  const serverId = JSON.parse(joined.value[ALICE]).host;

  const fixture = {
    captured_with: `actionhero ${AH_VERSION} initializers driven by tests/node/ah7.js`,
    redis: redisVersion,
    node: process.version,
    server_id: serverId,
    notes: [
      "Each operation is a separate ah7.js process; it flushes actionHero's pending stats (api.stats.writeIncrements) before exiting.",
      "state = every actionHero:* key after the operation (HASH: HGETALL raw strings; SET: sorted SMEMBERS).",
      "Times are epoch ms of the capture run; server_id is api.id (ACTIONHERO_TITLE or the machine's IPv4).",
      "broadcasts = what chatRoom passed to api.faye.client.publish (a stub in ah7.js: nothing was sent over faye).",
    ],
    operations,
  };
  fs.mkdirSync(path.dirname(FIXTURE), { recursive: true });
  fs.writeFileSync(FIXTURE, JSON.stringify(fixture, null, 2).split(REPO).join("<repo>") + "\n");
  console.log(`wrote ${path.relative(REPO, FIXTURE)} (${operations.length} operations)`);

  // Delete only what the scenario created.
  const leftover = await redis.keys("actionHero:*");
  if (leftover.length > 0) await redis.del(...leftover);
  await redis.quit();
}

main().catch((e) => {
  process.stderr.write(`capture-ah7-fixtures.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
