// Loads one model in onnxruntime-node (backend "node") or onnxruntime-web's WASM build (backend "wasm")
// and serves runs over line-delimited JSON: one request line on stdin, one answer line on stdout (see
// protocol.mjs). The first line written says the model loaded ({ready, inputs, outputs}) or {error}.
// A request with `stream` runs a streaming loop instead (protocol.mjs `stream`). It exits at the end of its
// input, so closing stdin stops it. The npm packages are required from the node_modules folder
// LSTM_ONNX_NODE_MODULES names (lstm-onnx's per-user cache, toolkit/runtimes/js.py), not from beside this
// file, which may sit in a read-only site-packages. THREADS (node only) sets the intra-op threads,
// sequential execution.
//   LSTM_ONNX_NODE_MODULES=DIR/node_modules node harness.mjs node|wasm MODEL.onnx [THREADS]
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { answer, configureWeb, describe, errorLine, stream } from './protocol.mjs';

const [backend, modelPath, threads] = process.argv.slice(2);
const modules = process.env.LSTM_ONNX_NODE_MODULES || join(import.meta.dirname ?? '.', 'node_modules');
// Resolution starts at the folder holding node_modules: the packages' own "node" entry points.
const require = createRequire(join(dirname(modules), 'package.json'));
const options = threads ? { intraOpNumThreads: Number(threads), interOpNumThreads: 1, executionMode: 'sequential' } : {};

async function loadOrt(name) {
  if (name === 'node') {
    const ort = require('onnxruntime-node');
    ort.env.logLevel = 'error';
    return ort;
  }
  if (name === 'wasm') return configureWeb(require('onnxruntime-web'));
  throw new Error(`Expected backend node or wasm. Received: ${name}`);
}

function send(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

async function main() {
  let ort;
  let session;
  try {
    ort = await loadOrt(backend);
    session = await ort.InferenceSession.create(new Uint8Array(await readFile(modelPath)), options);
  } catch (error) {
    send({ error: errorLine(error) });
    return;
  }
  send(describe(session));
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (!line.trim()) continue;
    const request = JSON.parse(line);
    send(await (request.stream ? stream(ort, session, request) : answer(ort, session, request)));
  }
  await session.release();
}

await main();
