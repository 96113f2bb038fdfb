#!/usr/bin/env node
// faye-peer.js — real Faye peers for the ah-worker Rust test-suite: a Faye
// server (faye 1.4.x NodeAdapter, faye-redis 0.2.0 engine on the redis@3
// client it needs) and faye.Client subscribers and publishers.
//
// The Rust tests run this script so that interoperability is checked against
// the actual faye packages (pinned in package.json, installed with `npm ci` by
// scripts/install-deps), not against our own reading of their sources.
//
// Environment:
//   REDIS_URL   redis://[:password@]host:port/db, for `server` (default redis://127.0.0.1:6379/0)
//   FAYE_TOKEN  if set: the server refuses every message whose ext.token is
//               not this value (error "403::token required"), and the
//               clients put it in the ext of every message they send
//   FAYE_NO_WILDCARDS  if set: the server refuses every /meta/subscribe to a
//               pattern (one containing `*`) with actionHero's error text
//               "actionhero does not allow wildcard subscriptions"
//   FAYE_LOG    if set: the server appends one JSON line per /meta/subscribe
//               and /meta/connect it receives to this file:
//               {"channel","clientId","subscription"|"connectionType","refused":bool}
//   FAYE_TLS_KEY, FAYE_TLS_CERT  if set (PEM files): the server speaks HTTPS
//
// Commands:
//   server PORT NAMESPACE TIMEOUT_S [memory] [GC_S]
//       A Faye server on 127.0.0.1:PORT, mount /faye, `timeout` TIMEOUT_S,
//       with the faye-redis engine on REDIS_URL under NAMESPACE (GC sweep
//       every GC_S seconds, default 60) — or Faye's memory engine when the
//       fourth argument is `memory` (NAMESPACE is then unused).
//       Prints {"listening":PORT} once it accepts connections; runs until
//       SIGTERM/SIGINT.
//   subscribe URL CHANNEL...
//       A faye.Client (retry 0.2 s) subscribed to every CHANNEL (wildcards
//       allowed). Prints {"ready":true} once the server acknowledged every
//       subscription, then one line {"channel":...,"data":...} per message
//       received, in order; runs until SIGTERM/SIGINT or stdin closes.
//   publish URL CHANNEL DATA_JSON
//       Publishes once and waits for the server's acknowledgement.
//       Prints {"ok":true}.
//   publish-many URL CHANNEL N
//       Publishes {"n":0} .. {"n":N-1} on CHANNEL in that order from one
//       client, each after the server acknowledged the previous one.
//       Prints {"ok":true,"count":N}. (Sent back to back without waiting,
//       the first few can arrive after later ones: the client starts on
//       long-polling and moves to a WebSocket meanwhile, and the two
//       connections race; seen with faye 1.4.3.)
// On error a message goes to stderr and the exit status is non-zero.
"use strict";

const fs = require("fs");
const http = require("http");
const faye = require("faye");

const USAGE = `usage: faye-peer.js <command> [args]
  server PORT NAMESPACE TIMEOUT_S [memory] [GC_S] | subscribe URL CHANNEL... |
  publish URL CHANNEL DATA_JSON | publish-many URL CHANNEL N`;

function fatal(message) {
  process.stderr.write(`faye-peer.js: ${message}\n`);
  process.exit(1);
}

function emit(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function needArgs(args, n, what) {
  if (args.length < n) fatal(`missing arguments: ${what}\n${USAGE}`);
}

function redisOptions() {
  const url = new URL(process.env.REDIS_URL || "redis://127.0.0.1:6379/0");
  const db = url.pathname.replace(/^\//, "");
  const options = {
    host: url.hostname || "127.0.0.1",
    port: url.port ? Number(url.port) : 6379,
    database: db === "" ? 0 : Number(db),
  };
  if (url.password) options.password = decodeURIComponent(url.password);
  return options;
}

function stopOn(signalsThen) {
  for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, signalsThen);
}

function server(args) {
  needArgs(args, 3, "PORT NAMESPACE TIMEOUT_S");
  const port = Number(args[0]);
  const timeout = Number(args[2]);
  const options = { mount: "/faye", timeout };
  if (args[3] !== "memory") {
    const engine = Object.assign(redisOptions(), { type: require("faye-redis"), namespace: args[1] });
    if (args[4]) engine.gc = Number(args[4]);
    options.engine = engine;
  }
  const bayeux = new faye.NodeAdapter(options);
  const noWildcards = Boolean(process.env.FAYE_NO_WILDCARDS);
  const log = process.env.FAYE_LOG;
  if (noWildcards || log) {
    bayeux.addExtension({
      incoming(message, callback) {
        const subscribe = message.channel === "/meta/subscribe";
        const refused = subscribe && noWildcards && String(message.subscription).includes("*");
        if (refused) message.error = "actionhero does not allow wildcard subscriptions";
        if (log && (subscribe || message.channel === "/meta/connect")) {
          const { channel, clientId, subscription, connectionType } = message;
          fs.appendFileSync(log, JSON.stringify({ channel, clientId, subscription, connectionType, refused }) + "\n");
        }
        callback(message);
      },
    });
  }
  const token = process.env.FAYE_TOKEN;
  if (token) {
    bayeux.addExtension({
      incoming(message, callback) {
        if (!message.ext || message.ext.token !== token) message.error = "403::token required";
        callback(message);
      },
    });
  }
  const notFound = (req, res) => {
    res.writeHead(404);
    res.end();
  };
  // FAYE_TLS_KEY and FAYE_TLS_CERT (PEM files): serve HTTPS instead.
  const tls = process.env.FAYE_TLS_KEY
    ? { key: fs.readFileSync(process.env.FAYE_TLS_KEY), cert: fs.readFileSync(process.env.FAYE_TLS_CERT) }
    : null;
  const web = tls ? require("https").createServer(tls, notFound) : http.createServer(notFound);
  bayeux.attach(web);
  web.listen(port, "127.0.0.1", () => emit({ listening: port }));
  // Exit at once: held long-polls and sockets would keep close() waiting.
  stopOn(() => process.exit(0));
}

function client(url) {
  const c = new faye.Client(url, { retry: 0.2 });
  const token = process.env.FAYE_TOKEN;
  if (token) {
    c.addExtension({
      outgoing(message, callback) {
        message.ext = Object.assign({}, message.ext, { token });
        callback(message);
      },
    });
  }
  return c;
}

function subscribe(args) {
  needArgs(args, 2, "URL CHANNEL...");
  const c = client(args[0]);
  const subscriptions = args.slice(1).map((channel) =>
    c.subscribe(channel).withChannel((ch, data) => emit({ channel: ch, data })),
  );
  Promise.all(subscriptions).then(
    () => emit({ ready: true }),
    (err) => fatal(`subscribe failed: ${err && err.message ? err.message : JSON.stringify(err)}`),
  );
  const end = () => {
    c.disconnect();
    setTimeout(() => process.exit(0), 50);
  };
  stopOn(end);
  process.stdin.on("end", end);
  process.stdin.resume();
}

async function publish(args) {
  needArgs(args, 3, "URL CHANNEL DATA_JSON");
  let data;
  try {
    data = JSON.parse(args[2]);
  } catch (e) {
    fatal(`DATA_JSON is not valid JSON: ${e.message}`);
  }
  const c = client(args[0]);
  await c.publish(args[1], data);
  emit({ ok: true });
  c.disconnect();
}

async function publishMany(args) {
  needArgs(args, 3, "URL CHANNEL N");
  const count = Number(args[2]);
  const c = client(args[0]);
  for (let n = 0; n < count; n++) await c.publish(args[1], { n });
  emit({ ok: true, count });
  c.disconnect();
}

const commands = { server, subscribe, publish, "publish-many": publishMany };
const [command, ...rest] = process.argv.slice(2);
if (!commands[command]) fatal(`unknown command ${JSON.stringify(command)}\n${USAGE}`);
Promise.resolve(commands[command](rest)).then(
  () => {
    if (command === "publish" || command === "publish-many") setTimeout(() => process.exit(0), 20);
  },
  (err) => fatal(err && err.stack ? err.stack : String(err)),
);
