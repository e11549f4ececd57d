// The wire form of tensors, shared by the Node harness (harness.mjs) and the browser page (page.html):
// its one description is toolkit/runtimes/wire.py (a tensor {name, dtype, shape, data}, data the base64
// of its little-endian bytes; every platform these runtimes run on here is little-endian, so a typed
// array's own bytes are those; float16 travels as its uint16 bits).

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
  uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array,
};

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function toBase64(bytes) {
  let raw = '';
  const step = 0x8000; // String.fromCharCode takes its bytes as arguments: keep each call small
  for (let i = 0; i < bytes.length; i += step) raw += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  return btoa(raw);
}

export function decodeTensor(ort, spec) {
  const Array_ = ARRAYS[spec.dtype];
  if (!Array_) throw new Error(`Expected a dtype among ${Object.keys(ARRAYS)}. Received: ${spec.dtype}`);
  const bytes = fromBase64(spec.data);
  const data = new Array_(bytes.buffer, 0, bytes.byteLength / Array_.BYTES_PER_ELEMENT);
  return new ort.Tensor(spec.dtype, data, spec.shape);
}

export function encodeTensor(name, tensor) {
  const data = tensor.data;
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { name, dtype: tensor.type, shape: Array.from(tensor.dims), data: toBase64(bytes) };
}

export function errorLine(error) {
  const text = String((error && error.message) || error || 'unknown error').trim();
  return text.split('\n')[0].slice(0, 300);
}

// What the Python side learns once the model is loaded: the names the session lists.
export function describe(session) {
  return { ready: true, inputs: Array.from(session.inputNames), outputs: Array.from(session.outputNames) };
}

// One run: decode the feeds, run, encode every output. Errors come back as an answer, not a crash.
export async function answer(ort, session, request) {
  try {
    const feeds = {};
    for (const spec of request.feeds) feeds[spec.name] = decodeTensor(ort, spec);
    const results = await session.run(feeds);
    return { outputs: session.outputNames.map((name) => encodeTensor(name, results[name])) };
  } catch (error) {
    return { error: errorLine(error) };
  }
}

// onnxruntime-web on one thread: no SharedArrayBuffer (a page would need cross-origin isolation for
// more), no worker left running, and the same order of float operations on every run.
export function configureWeb(ort) {
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = 'error';
  return ort;
}

// A streaming loop, what deploy code in JavaScript runs: `calls` consecutive runs, each fed the next chunk
// (in turn) and the states the run before it returned (`map`: state input -> output; the output tensor
// itself becomes the next input, no copy). Timed here, so the JSON transfer is not. Request:
// {stream: {input, chunks: [tensor...], states: [tensor...], map, calls}}; answer {seconds (per call),
// outputs: [tensor...] of the last call} or {error}.
export async function stream(ort, session, request) {
  try {
    const { input, map, calls } = request.stream;
    const chunks = request.stream.chunks.map((spec) => decodeTensor(ort, spec));
    const feeds = {};
    for (const spec of request.stream.states) feeds[spec.name] = decodeTensor(ort, spec);
    const carried = Object.entries(map);
    let results;
    const start = performance.now();
    for (let i = 0; i < calls; i++) {
      feeds[input] = chunks[i % chunks.length];
      results = await session.run(feeds);
      for (const [stateIn, stateOut] of carried) feeds[stateIn] = results[stateOut];
    }
    const seconds = (performance.now() - start) / 1e3 / Math.max(calls, 1);
    return { seconds, outputs: session.outputNames.map((name) => encodeTensor(name, results[name])) };
  } catch (error) {
    return { error: errorLine(error) };
  }
}
