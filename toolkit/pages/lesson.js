// The lesson page's live part (toolkit/lesson.py inlines this file): load onnxruntime-web from the
// page itself (its module as base64, its WASM as gzip + base64: nothing is fetched), open the four
// models, run them on the input the reader types, and write every returned tensor into the diagrams.
// body[data-runs] counts finished runs and body[data-input] holds the input they ran on (the page
// tests wait on them); each returned tensor's full numbers are in its [data-values].

function bytesOf(id) {
  const raw = atob(document.getElementById(id).textContent.trim());
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

async function loadOrt() {
  const source = new TextDecoder().decode(bytesOf('ort-js'));
  const url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
  const ort = await import(url);
  const gzipped = new Blob([bytesOf('ort-wasm')]).stream().pipeThrough(new DecompressionStream('gzip'));
  ort.env.wasm.wasmBinary = new Uint8Array(await new Response(gzipped).arrayBuffer());
  ort.env.wasm.numThreads = 1; // no worker, no SharedArrayBuffer: a file:// page has no cross-origin isolation
  ort.env.logLevel = 'error';
  return ort;
}

const fmt = (v) => (v >= 0 ? ' ' : '') + v.toFixed(4);

// One tensor into one case's diagram: a (1, 3, 2) sequence fills steps 0-2, a (1, 2) tensor slot 0.
function show(section, name, dims, values) {
  const units = dims[dims.length - 1];
  section.querySelector(`.tensor[data-output="${name}"]`).dataset.values = JSON.stringify(Array.from(values));
  for (const cell of section.querySelectorAll(`.vals[data-output="${name}"]`)) {
    const slot = Number(cell.dataset.slot);
    cell.textContent = '[' + Array.from(values.slice(slot * units, (slot + 1) * units), fmt).join(', ') + ']';
  }
}

function readInput(status) {
  const x = [];
  for (const i of [0, 1, 2]) {
    const text = document.getElementById(`x${i}`).value;
    if (text.trim() === '' || !Number.isFinite(Number(text))) {
      status.textContent = `Expected three numbers. Received: x${i + 1} = "${text}"`;
      return null;
    }
    x.push(Number(text));
  }
  return x;
}

async function main() {
  const status = document.getElementById('status');
  const data = JSON.parse(document.getElementById('lesson-data').textContent);
  status.textContent = 'loading onnxruntime-web ...';
  const ort = await loadOrt();
  const sessions = [];
  for (const c of data.cases) sessions.push(await ort.InferenceSession.create(bytesOf(`model-${c.case}`)));
  let runs = 0;
  async function run() {
    const x = readInput(status);
    if (x === null) return;
    const feed = new ort.Tensor('float32', Float32Array.from(x), [1, 3, 1]);
    for (const [i, c] of data.cases.entries()) {
      const section = document.querySelector(`section.case[data-case="${c.case}"]`);
      const results = await sessions[i].run({ [data.input]: feed });
      for (const name of c.outputs) show(section, name, results[name].dims, results[name].data);
      x.forEach((v, t) => { section.querySelector(`.x[data-step="${t}"]`).textContent = String(v); });
    }
    runs += 1;
    document.body.dataset.input = JSON.stringify(x);
    document.body.dataset.runs = String(runs);
    status.textContent = `onnxruntime-web ${ort.env.versions.web} ran the four models on [${x.join(', ')}]`;
  }
  let chain = Promise.resolve();
  const queue = () => { chain = chain.then(run); return chain; };
  for (const i of [0, 1, 2]) document.getElementById(`x${i}`).addEventListener('input', queue);
  await queue();
}

main().catch((error) => {
  document.getElementById('status').textContent = `onnxruntime-web failed: ${error && error.message}`;
  console.error(error);
});
