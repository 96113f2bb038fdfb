#!/usr/bin/env node
// bench-node.js — the node-resque side of scripts/bench.
//
// Runs one node-resque MultiWorker (the real package pinned in tests/node,
// installed there by scripts/install-deps) with node-resque's defaults
// (1 to 10 workers, grown and shrunk every 500 ms by event-loop delay) except
// the poll timeout: each idle worker polls its queues every 5 ms instead of
// every 5 s, so that its latency is comparable with ah-worker's.
//
// Usage:
//   node scripts/bench-node.js --port PORT --namespace NS --queues a,b [--timeout MS]
//
// Jobs:
//   AhWorker::Noop     does nothing
//   AhWorker::Latency  args [enqueued_at_us, key]: RPUSHes how many
//                      microseconds passed between enqueued_at_us (Unix time)
//                      and the start of the job onto the list <NS>:<key>
//
// Exits 0 on SIGTERM/SIGINT once multiWorker.end() has returned. Errors of
// the workers are written to stderr.
'use strict';

const path = require('node:path');
const { performance } = require('node:perf_hooks');

const nodeDir = path.join(__dirname, '..', 'tests', 'node');
const { MultiWorker } = require(require.resolve('node-resque', { paths: [nodeDir] }));

function usage(message) {
  process.stderr.write(
    `bench-node.js: ${message}\n` +
      'usage: node scripts/bench-node.js --port PORT --namespace NS --queues a,b [--timeout MS]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: null, namespace: 'resque', queues: null, timeout: 5 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag === '--port') opts.port = Number(value);
    else if (flag === '--namespace') opts.namespace = value;
    else if (flag === '--queues') opts.queues = value.split(',').filter(Boolean);
    else if (flag === '--timeout') opts.timeout = Number(value);
    else usage(`unknown argument ${flag}`);
  }
  if (!Number.isInteger(opts.port) || opts.port <= 0) usage('--port is required');
  if (!opts.queues || opts.queues.length === 0) usage('--queues is required');
  if (!(opts.timeout > 0)) usage('--timeout must be a positive number of ms');
  return opts;
}

// Wall-clock time in whole microseconds. Date.now() only has millisecond
// resolution, which would bias the latency figure by up to 1 ms.
function nowMicros() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

const jobs = {
  'AhWorker::Noop': {
    perform: async () => null,
  },
  'AhWorker::Latency': {
    // node-resque calls perform with `this` bound to the Worker, whose
    // connection knows the namespace.
    perform: async function latency(enqueuedAtUs, key) {
      const startedUs = nowMicros();
      await this.connection.redis.rpush(
        this.connection.key(key),
        String(startedUs - Number(enqueuedAtUs)),
      );
      return null;
    },
  },
};

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const multiWorker = new MultiWorker(
    {
      connection: {
        pkg: 'ioredis',
        host: '127.0.0.1',
        port: opts.port,
        database: 0,
        namespace: opts.namespace,
      },
      queues: opts.queues,
      timeout: opts.timeout,
    },
    jobs,
  );
  // Without an 'error' listener an EventEmitter throws.
  multiWorker.on('error', (error, workerId, queue) => {
    process.stderr.write(`bench-node.js: worker ${workerId} (${queue}): ${error && error.stack ? error.stack : error}\n`);
  });
  multiWorker.on('failure', (workerId, queue, job, failure) => {
    process.stderr.write(`bench-node.js: job ${job && job.class} failed: ${failure}\n`);
  });

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await multiWorker.end();
      process.exit(0);
    } catch (error) {
      process.stderr.write(`bench-node.js: end() failed: ${error && error.stack ? error.stack : error}\n`);
      process.exit(1);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  multiWorker.start();
}

main().catch((error) => {
  process.stderr.write(`bench-node.js: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
