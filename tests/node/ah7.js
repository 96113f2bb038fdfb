#!/usr/bin/env node
// ah7.js — a real actionHero 7.1.1 peer for the ah-worker Rust test-suite:
// the shared state kept in Redis by actionHero's cache, stats and chat rooms.
//
// How it drives actionHero
// ------------------------
// actionHero 7.1.1's boot (actionHero.js) always runs its fixed list of 22
// initializers (web/socket servers, faye, resque workers, file watchers, pid
// files, a winston file logger, ...), so it cannot boot with only a few of
// them. Instead this script loads actionHero's OWN initializer files from
// node_modules/actionhero/initializers/ — utils, id, stats, redis, cache,
// chatRoom — and runs them in actionHero's boot order on a minimal `api`
// object built here. Every Redis read and write is then done by actionHero's
// code (api.cache.*, api.stats.*, api.chatRoom.*) through its own node
// `redis` 0.9.2 client; this script only parses arguments, builds fakes for
// what those initializers need but is not part of the shared state, and
// prints the results.
//
// The minimal api: api.config = {general: {serverToken, startingChatRooms},
// stats: {writeFrequency: 1000, keys: ['actionHero:stats']}, redis: {host,
// port, password, options: null, database, fake: false}} (the 7.1.1 defaults
// from its config/config.js, which is not loaded because it creates ./log);
// api.log (silent; on stderr with AH7_DEBUG=1; an 'emerg' — e.g. Redis
// unreachable — is fatal); api.faye.client, a stub whose publish() records the
// chat broadcasts instead of sending them over faye (the broadcasts are peer
// messaging, not shared state). api.utils and api.id come from actionHero's
// utils and id initializers, so a member's "host" is what a real node would
// write: ACTIONHERO_TITLE if set, else this machine's last non-loopback IPv4
// address, else "actionHero".
//
// No initializer's _start() runs: no cache sweeper, no stats timer, no chat
// subscription. Stats are flushed by calling actionHero's own
// api.stats.writeIncrements() once at the end of EVERY command (a real node
// does it every 1000 ms), so a command's stats side effects (e.g. cache:*
// counters of cache-save) are in Redis when it exits. writeIncrements re-arms
// an untracked setTimeout (7.1.1 never stores it, so api.stats._teardown
// cannot clear it); the script therefore quits the Redis client and calls
// process.exit() once the result line is written.
//
// Environment:
//   REDIS_URL         redis://[:password@]host:port/db (default redis://127.0.0.1:6379/0)
//   ACTIONHERO_TITLE  the server id (api.id), used as chat member "host"
//   AH7_KEY_PREFIX    replace the "actionHero" prefix of the cache, stats and
//                     chatRoom keys (test isolation only; default "actionHero")
//   AH7_BROADCASTS=1  room-join/room-leave/room-del add "broadcasts": the faye
//                     messages actionHero would have published
//   AH7_DEBUG=1       actionHero's log lines on stderr
//   AH7_TIMEOUT_MS    give up after this long (default 10000)
//
// Commands (each prints exactly ONE line of JSON on stdout and exits 0; on a
// usage or Redis error it prints a message on stderr and exits non-zero).
// Errors that actionHero itself reports are printed as {"error":"<message>"}
// with exit 0:
//   cache-save KEY VALUE_JSON [EXPIRE_MS] -> {"ok":true}            api.cache.save
//   cache-load KEY [EXPIRE_MS]  -> {"value":…,"expireTimestamp":…,"createdAt":…,"readAt":…}
//                                  or {"error":"Object not found"|"Object expired"}
//                                  api.cache.load (EXPIRE_MS → options.expireTimeMS)
//   cache-destroy KEY           -> {"destroyed":true|false}        api.cache.destroy
//   cache-size                  -> {"size":N}                      api.cache.size
//   cache-sweep                 -> {"swept":[KEY…]}  one pass of api.cache.runSweeper
//   stats-increment KEY N       -> {"ok":true}       api.stats.increment + writeIncrements
//   stats-get [KEY]             -> api.stats.getAll():  {"actionHero:stats":{FIELD:"N",…}}
//                                  with KEY, api.stats.get(): {"value":"N"|null}
//   room-add ROOM               -> {"added":0|1}     api.chatRoom.add (SADD count)
//   room-del ROOM               -> {"deleted":true}  api.chatRoom.del
//   room-exists ROOM            -> {"exists":true|false}
//   room-join ROOM CONNECTION_ID [CURRENT_ROOM]
//                               -> {"joined":true} or {"error":"room does not exist"|
//                                  "connection already in this room"|"not authorized to join room"}
//                                  api.chatRoom.addMember with a fake connection
//                                  {id, room: CURRENT_ROOM or null, listeningRooms: [], canChat: true};
//                                  a CURRENT_ROOM is left first, as on a real node
//   room-leave ROOM CONNECTION_ID -> {"left":true}  api.chatRoom.removeMember with
//                                  a fake connection whose room is ROOM
//   room-status ROOM            -> api.chatRoom.roomStatus: {"room":…,"members":{ID:{"id","joinedAt"}},"membersCount":N}
//   rooms                       -> {"rooms":[…]}  SMEMBERS of the rooms set, sorted
//                                  (7.1.1 has no function listing rooms)
"use strict";

const path = require("path");

const USAGE = `usage: ah7.js <command> [args]
  cache-save KEY VALUE_JSON [EXPIRE_MS] | cache-load KEY [EXPIRE_MS] |
  cache-destroy KEY | cache-size | cache-sweep |
  stats-increment KEY N | stats-get [KEY] |
  room-add ROOM | room-del ROOM | room-exists ROOM |
  room-join ROOM CONNECTION_ID [CURRENT_ROOM] | room-leave ROOM CONNECTION_ID |
  room-status ROOM | rooms`;

const AH_DIR = path.dirname(require.resolve("actionhero/package.json"));
const AH_VERSION = require("actionhero/package.json").version;

// ---------------------------------------------------------------- helpers

function fatal(message) {
  process.stderr.write(`ah7.js: ${message}\n`);
  process.exit(1);
}

function usage(message) {
  process.stderr.write(`ah7.js: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function needArgs(args, n, what) {
  if (args.length < n) usage(`missing arguments: ${what}`);
}

function toInteger(text, what) {
  const n = Number(text);
  if (text === "" || !Number.isInteger(n)) usage(`${what} must be an integer, got ${JSON.stringify(text)}`);
  return n;
}

function redisConfig() {
  const url = new URL(process.env.REDIS_URL || "redis://127.0.0.1:6379/0");
  if (url.protocol !== "redis:") fatal(`REDIS_URL must be redis://, got ${url.protocol}`);
  const dbPath = url.pathname.replace(/^\//, "");
  const database = dbPath === "" ? 0 : Number(dbPath);
  if (!Number.isInteger(database) || database < 0) fatal(`bad database number in REDIS_URL: ${JSON.stringify(dbPath)}`);
  return {
    fake: false,
    host: url.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1",
    port: url.port ? Number(url.port) : 6379,
    password: url.password ? decodeURIComponent(url.password) : null,
    options: null,
    database,
  };
}

// Node-style callback → Promise that resolves with all callback arguments
// after the error one (actionHero passes several, e.g. cache.load).
function call(fn, ...args) {
  return new Promise((resolve) => fn(...args, (err, ...rest) => resolve({ err, rest })));
}

function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}

// Run one of actionHero's initializer files on `api` (they all have the
// signature `function(api, next)` and are exported under their own name).
function runInitializer(api, name) {
  const file = path.join(AH_DIR, "initializers", `${name}.js`);
  return new Promise((resolve) => require(file)[name](api, resolve));
}

// ---------------------------------------------------------------- actionHero

async function bootActionHero() {
  const broadcasts = [];
  const debug = process.env.AH7_DEBUG === "1";
  const api = {
    running: false,
    initialized: false,
    shuttingDown: false,
    config: {
      general: { serverToken: "change-me", startingChatRooms: { defaultRoom: {} } },
      stats: { writeFrequency: 1000, keys: ["actionHero:stats"] },
      redis: redisConfig(),
    },
    log(message, severity, data) {
      if (debug) {
        process.stderr.write(`ah7.js [${severity || "info"}] ${message}${data === undefined ? "" : " " + JSON.stringify(data)}\n`);
      }
      if (severity === "emerg") fatal(String(message));
    },
    // Stand-in for the faye initializer: chatRoom publishes its announcements
    // ("I have entered the room", ...) here.
    faye: {
      client: {
        publish(channel, message) {
          broadcasts.push({ channel, message });
        },
        subscribe() {
          return { cancel() {} };
        },
      },
    },
  };

  // actionHero's boot order: utils, (configLoader), id, ..., stats, redis, (faye), cache, ..., chatRoom
  await runInitializer(api, "utils");
  await runInitializer(api, "id");
  await runInitializer(api, "stats");
  await runInitializer(api, "redis");
  await runInitializer(api, "cache");
  await runInitializer(api, "chatRoom");

  const prefix = process.env.AH7_KEY_PREFIX;
  if (prefix && prefix !== "actionHero") {
    const swap = (key) => key.replace(/^actionHero:/, `${prefix}:`);
    api.cache.redisCacheKey = swap(api.cache.redisCacheKey);
    api.config.stats.keys = api.config.stats.keys.map(swap);
    for (const k of Object.keys(api.chatRoom.keys)) api.chatRoom.keys[k] = swap(api.chatRoom.keys[k]);
  }
  return { api, broadcasts };
}

function fakeConnection(id, room) {
  return { id, type: "ah7", room, listeningRooms: [], canChat: true };
}

// ---------------------------------------------------------------- commands

// Each returns the value to print.
const commands = {
  async "cache-save"(api, args) {
    needArgs(args, 2, "KEY VALUE_JSON [EXPIRE_MS]");
    let value;
    try {
      value = JSON.parse(args[1]);
    } catch (e) {
      usage(`VALUE_JSON is not valid JSON: ${e.message}`);
    }
    const r =
      args.length >= 3
        ? await call(api.cache.save, args[0], value, toInteger(args[2], "EXPIRE_MS"))
        : await call(api.cache.save, args[0], value);
    if (r.err) return { error: errorText(r.err) };
    return { ok: r.rest[0] === true };
  },

  async "cache-load"(api, args) {
    needArgs(args, 1, "KEY [EXPIRE_MS]");
    const r =
      args.length >= 2
        ? await call(api.cache.load, args[0], { expireTimeMS: toInteger(args[1], "EXPIRE_MS") })
        : await call(api.cache.load, args[0]);
    if (r.err) return { error: errorText(r.err) };
    // undefined (a stored field that is valid JSON but not an object, see
    // below) is printed as null.
    const [value, expireTimestamp, createdAt, readAt] = r.rest.map((v) => (v === undefined ? null : v));
    return { value, expireTimestamp, createdAt, readAt };
  },

  async "cache-destroy"(api, args) {
    needArgs(args, 1, "KEY");
    const r = await call(api.cache.destroy, args[0]);
    if (r.err) return { error: errorText(r.err) };
    return { destroyed: r.rest[0] };
  },

  async "cache-size"(api) {
    const r = await call(api.cache.size);
    if (r.err) return { error: errorText(r.err) };
    return { size: r.rest[0] };
  },

  // One pass of actionHero's sweeper (api.running is false, so runSweeper
  // does not re-arm its timer); it decrements cache:cachedObjects.
  async "cache-sweep"(api) {
    let swept = [];
    const original = api.cache.sweeper;
    await new Promise((resolve) => {
      api.cache.sweeper = (next) =>
        original((err, keys) => {
          swept = keys;
          next(err, keys);
          resolve();
        });
      api.cache.runSweeper();
    });
    return { swept: swept.slice().sort() };
  },

  async "stats-increment"(api, args) {
    needArgs(args, 2, "KEY N");
    const n = Number(args[1]);
    if (args[1] === "" || !Number.isFinite(n)) usage(`N must be a number, got ${JSON.stringify(args[1])}`);
    // actionHero parseFloat()s it; a fractional N makes its HINCRBY fail,
    // and 7.1.1 ignores that error (so do we: still {"ok":true}).
    api.stats.increment(args[0], args[1]);
    return { ok: true }; // written by the flush every command ends with
  },

  async "stats-get"(api, args) {
    if (args.length >= 1) {
      const r = await call(api.stats.get, args[0]);
      if (r.err) return { error: errorText(r.err) };
      return { value: r.rest[0] };
    }
    const r = await call(api.stats.getAll);
    if (r.err) return { error: errorText(r.err) };
    return r.rest[0];
  },

  async "room-add"(api, args) {
    needArgs(args, 1, "ROOM");
    const r = await call(api.chatRoom.add, args[0]);
    if (r.err) return { error: errorText(r.err) };
    return { added: r.rest[0] };
  },

  async "room-del"(api, args) {
    needArgs(args, 1, "ROOM");
    const r = await call(api.chatRoom.del, args[0]);
    if (r.err) return { error: errorText(r.err) };
    return { deleted: true };
  },

  async "room-exists"(api, args) {
    needArgs(args, 1, "ROOM");
    const r = await call(api.chatRoom.exists, args[0]);
    if (r.err) return { error: errorText(r.err) };
    return { exists: r.rest[0] };
  },

  async "room-join"(api, args) {
    needArgs(args, 2, "ROOM CONNECTION_ID [CURRENT_ROOM]");
    const connection = fakeConnection(args[1], args.length >= 3 ? args[2] : null);
    const r = await call(api.chatRoom.addMember, connection, args[0]);
    if (r.err) return { error: errorText(r.err) };
    return { joined: r.rest[0] };
  },

  async "room-leave"(api, args) {
    needArgs(args, 2, "ROOM CONNECTION_ID");
    const r = await call(api.chatRoom.removeMember, fakeConnection(args[1], args[0]));
    if (r.err) return { error: errorText(r.err) };
    return { left: r.rest[0] };
  },

  async "room-status"(api, args) {
    needArgs(args, 1, "ROOM");
    const r = await call(api.chatRoom.roomStatus, args[0]);
    if (r.err) return { error: errorText(r.err) };
    return r.rest[0];
  },

  async rooms(api) {
    const r = await call((cb) => api.redis.client.smembers(api.chatRoom.keys.rooms, cb));
    if (r.err) fatal(`SMEMBERS failed: ${errorText(r.err)}`);
    return { rooms: (r.rest[0] || []).slice().sort() };
  },
};

// ---------------------------------------------------------------- main

async function main() {
  const [command, ...args] = process.argv.slice(2);
  if (command === undefined || command === "-h" || command === "--help") {
    process.stdout.write(`${USAGE}\n(actionhero ${AH_VERSION})\n`);
    return;
  }
  const run = commands[command];
  if (run === undefined) usage(`unknown command: ${command}`);

  const timeoutMs = process.env.AH7_TIMEOUT_MS ? Number(process.env.AH7_TIMEOUT_MS) : 10000;
  setTimeout(() => fatal(`timed out after ${timeoutMs} ms`), timeoutMs);

  const { api, broadcasts } = await bootActionHero();
  api.redis.client.on("error", (err) => fatal(`redis error: ${err && err.message ? err.message : err}`));

  const result = await run(api, args);
  // Flush the pending stats the way actionHero's 1000 ms timer would.
  await new Promise((resolve) => api.stats.writeIncrements(resolve));
  if (process.env.AH7_BROADCASTS === "1" && /^room-(join|leave|del)$/.test(command)) {
    result.broadcasts = broadcasts;
  }

  await new Promise((resolve) => process.stdout.write(JSON.stringify(result) + "\n", resolve));
  await new Promise((resolve) => api.redis.client.quit(() => resolve()));
  process.exit(0);
}

main().catch((e) => fatal(e && e.stack ? e.stack : String(e)));
