// Loads one model in onnxruntime-node (backend "node") or onnxruntime-web's WASM build (backend "wasm")
// and serves runs over line-delimited JSON: one request line on stdin, one answer line on stdout (see
// protocol.mjs). The first line written says the model loaded ({ready, inputs, outputs}) or {error}.
// A request with `stream` runs a streaming loop instead (protocol.mjs `stream`). It exits at the end of its
// input, so closing stdin stops it. THREADS (node only) sets the intra-op threads, sequential execution.
//   node harness.mjs node|wasm MODEL.onnx [THREADS]
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { answer, configureWeb, describe, errorLine, stream } from './protocol.mjs';

const [backend, modelPath, threads] = process.argv.slice(2);
const options = threads ? { intraOpNumThreads: Number(threads), interOpNumThreads: 1, executionMode: 'sequential' } : {};

async function loadOrt(name) {
  if (name === 'node') {
    const ort = await import('onnxruntime-node');
    ort.env.logLevel = 'error';
    return ort;
  }
  if (name === 'wasm') return configureWeb(await import('onnxruntime-web'));
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
