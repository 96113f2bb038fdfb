#!/usr/bin/env node
// An example ah-worker `coprocess` plugin in Node.js (built-in modules only).
//
// ah-worker starts this script once and keeps it running. It sends us one
// JSON object per line on stdin and reads one JSON object per line from our
// stdout:
//
//   worker -> us:  {"type":"job", ...}     run a job
//                  {"type":"reply", ...}   the answer to one of our `call`s
//   us -> worker:  {"type":"result", ...}  a job is done (ok or failed)
//                  {"type":"call", ...}    ask the worker to do something
//                  {"type":"log", ...}     a log line for the worker's log
//
// Several jobs can be in flight at once. Node runs them concurrently for
// free: each job is an async function, and results go back in whatever order
// the jobs finish. See docs/plugin-protocol.md for the whole protocol.
//
// Classes handled here (declared as "Node::*" in plugin.toml):
//
//   Node::Echo     succeeds, and logs its args
//   Node::Noop     succeeds at once and logs nothing (scripts/bench uses it)
//   Node::Fail     fails with ArgumentError; the error is args[0]
//   Node::Sleep    sleeps args[0] seconds (without holding up other jobs)
//   Node::Enqueue  enqueues job args[0] on queue args[1] with args args[2]
//                  (and a delay of args[3] seconds, if given)
//   Node::Crash    the whole process exits with status 3, answering nothing
//
// Try it by hand:
//
//   printf '%s\n' '{"type":"job","id":"1","class":"Node::Echo","queue":"q","args":[1]}' \
//       | node examples/plugins/node/coprocess.js

'use strict';

const readline = require('node:readline');

// ---------------------------------------------------------------------------
// Talking to the worker
// ---------------------------------------------------------------------------

// Write one message to the worker as a single line of JSON. Node is single
// threaded and each write() call is one whole line, so lines never interleave.
function send(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

// Ask the worker to log a line (levels: error, warn, info, debug).
function log(message, jobId, level = 'info') {
  send({ type: 'log', level, message, job: jobId }); // `job: undefined` is left out
}

// Outstanding `call`s to the worker: call id -> function resolving the promise
// with the `reply` object.
const waiting = new Map();
let nextCallId = 1;
let stdinClosed = false;

// Send a call and return a promise of its reply ({ok, result} or {ok, error}).
function call(method, params, jobId) {
  if (stdinClosed) {
    return Promise.resolve({ ok: false, error: 'stdin closed: no reply possible' });
  }
  const id = `node-${nextCallId++}`;
  return new Promise((resolve) => {
    waiting.set(id, resolve);
    // `job` is optional; it tells the worker's logs which job asked.
    send({ type: 'call', id, job: jobId, method, params });
  });
}

// ---------------------------------------------------------------------------
// The handlers
// ---------------------------------------------------------------------------
//
// A handler is an async function given the job object: it returns to
// succeed, or throws to fail. The error's `name` becomes the job's
// `exception` in the Resque failure, so name errors the way a Ruby reader
// would expect (ArgumentError, RuntimeError, NameError).

class JobError extends Error {
  constructor(name, message) {
    super(message);
    this.name = name;
  }
}

const handlers = {
  'Node::Echo': async (job) => {
    log(`args: ${JSON.stringify(job.args)}`, job.id);
  },

  'Node::Noop': async () => {},

  'Node::Fail': async (job) => {
    const args = job.args || [];
    throw new JobError('ArgumentError', String(args.length ? args[0] : 'Node::Fail was asked to fail'));
  },

  'Node::Sleep': async (job) => {
    const seconds = (job.args || [])[0];
    if (typeof seconds !== 'number' || seconds < 0) {
      throw new JobError('ArgumentError', 'args[0] must be a number of seconds');
    }
    // A timer, not a busy wait: other jobs keep running meanwhile.
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  },

  'Node::Enqueue': async (job) => {
    const args = job.args || [];
    if (args.length < 3) {
      throw new JobError('ArgumentError', 'expected [class, queue, args] or [class, queue, args, in]');
    }
    const params = { class: args[0], queue: args[1], args: args[2] };
    if (args.length > 3) params.in = args[3]; // seconds, or a duration such as "90s"
    const reply = await call('enqueue', params, job.id);
    if (!reply.ok) throw new JobError('RuntimeError', reply.error || 'enqueue failed');
  },

  'Node::Crash': async () => {
    // Ends the process at once: no result. The worker fails this process's
    // jobs in flight and starts a new process.
    process.exit(3);
  },
};

// Run one job and send its result.
async function runJob(job) {
  try {
    const handler = handlers[job.class];
    if (!handler) throw new JobError('NameError', `unknown class ${job.class}`);
    await handler(job);
    send({ type: 'result', id: job.id, ok: true });
  } catch (err) {
    const isError = err instanceof Error;
    send({
      type: 'result',
      id: job.id,
      ok: false,
      exception: isError ? err.name : 'RuntimeError',
      error: isError ? err.message : String(err),
      // The top two stack frames, e.g. "at Node::Fail (.../coprocess.js:88:11)".
      backtrace: isError && err.stack
        ? err.stack.split('\n').slice(1, 3).map((frame) => frame.trim())
        : [],
    });
  }
}

// ---------------------------------------------------------------------------
// The main loop: read stdin line by line
// ---------------------------------------------------------------------------

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });

input.on('line', (line) => {
  if (!line.trim()) return;
  let message;
  try {
    message = JSON.parse(line);
  } catch {
    // stderr is logged by the worker line by line.
    console.error(`not JSON, ignored: ${line.slice(0, 200)}`);
    return;
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) return;

  if (message.type === 'job' && message.id !== undefined) {
    runJob(message); // not awaited: the next line is read while it runs
  } else if (message.type === 'reply') {
    const resolve = waiting.get(message.id);
    if (resolve) {
      waiting.delete(message.id);
      resolve(message);
    }
  }
  // Any other type is ignored, so newer workers can add messages.
});

// EOF: the worker is shutting down. Calls still waiting can get no reply any
// more, so they fail. Node then exits with status 0 by itself once the jobs
// in flight have finished and their timers are gone.
input.on('close', () => {
  stdinClosed = true;
  for (const resolve of waiting.values()) {
    resolve({ ok: false, error: 'stdin closed before the reply' });
  }
  waiting.clear();
});

// The worker has gone away (our stdout is closed): nobody is left to talk to.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
