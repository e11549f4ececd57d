// Loads one model in onnxruntime-node (backend "node") or onnxruntime-web's WASM build (backend "wasm")
// and serves runs over line-delimited JSON: one request line on stdin, one answer line on stdout (see
// protocol.mjs). The first line written says the model loaded ({ready, inputs, outputs}) or {error}.
// It exits at the end of its input, so closing stdin stops it.
//   node harness.mjs node|wasm MODEL.onnx
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { answer, configureWeb, describe, errorLine } from './protocol.mjs';

const [backend, modelPath] = process.argv.slice(2);

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
    session = await ort.InferenceSession.create(new Uint8Array(await readFile(modelPath)));
  } catch (error) {
    send({ error: errorLine(error) });
    return;
  }
  send(describe(session));
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (!line.trim()) continue;
    send(await answer(ort, session, JSON.parse(line)));
  }
  await session.release();
}

await main();
