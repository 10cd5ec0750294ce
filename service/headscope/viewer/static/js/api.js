// Every call to the headscope API. The API key, when the server has one, is asked for once,
// kept in sessionStorage (never in the URL) and sent as a bearer token.

const KEY_STORAGE = "headscope.apiKey";
const SAFETENSORS = "application/x-safetensors";

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

let askForKey = null;
let pendingAsk = null;

// `ask(reason)` resolves to the key the user typed, or null when they cancel.
export function onKeyNeeded(ask) {
  askForKey = ask;
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function keyFromUser(reason) {
  // Several calls can meet a 401 at once: one question answers them all.
  if (!pendingAsk) {
    pendingAsk = askForKey(reason).finally(() => {
      pendingAsk = null;
    });
  }
  return pendingAsk;
}

async function errorOf(response) {
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.code, error.message, error.detail);
  } catch {
    return new ApiError(response.status, "http_error", `${response.status} ${response.statusText}`);
  }
}

async function send(path, { body, accept = "application/json" } = {}) {
  for (;;) {
    const headers = { accept };
    if (body !== undefined) headers["content-type"] = "application/json";
    const key = storedKey();
    if (key) headers.authorization = `Bearer ${key}`;
    const response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && askForKey) {
      const entered = await keyFromUser(
        key ? "The server refused that key." : "This server needs an API key.",
      );
      if (entered) {
        sessionStorage.setItem(KEY_STORAGE, entered);
        continue;
      }
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function getJSON(path) {
  return (await send(path)).json();
}

export async function postJSON(path, body) {
  return (await send(path, { body })).json();
}

// A safetensors response: the arrays as Float32Arrays (float16 widened), the other fields from
// the `headscope` metadata, each array's place holding its tensor's name.
export async function postTensors(path, body) {
  const response = await send(path, { body, accept: SAFETENSORS });
  return parseSafetensors(await response.arrayBuffer());
}

export function parseSafetensors(buffer) {
  const headerLength = Number(new DataView(buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLength)));
  const dataStart = 8 + headerLength;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = info.data_offsets;
    const bytes = buffer.slice(dataStart + begin, dataStart + end);
    tensors[name] = { shape: info.shape, data: toFloat32(info.dtype, bytes) };
  }
  const metadata = JSON.parse(header.__metadata__?.headscope ?? "{}");
  return { metadata, tensors };
}

function toFloat32(dtype, bytes) {
  if (dtype === "F32") return new Float32Array(bytes);
  if (dtype === "F16") return Float32Array.from(new Uint16Array(bytes), halfToFloat);
  throw new Error(`unexpected tensor dtype ${dtype}`);
}

// IEEE 754 half precision to a JavaScript number.
export function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// -- the endpoints the viewer uses --------------------------------------------------------------

export const api = {
  ready: () => fetch("/readyz").then((response) => response.json()),
  model: () => getJSON("/v1/model"),
  probeRun: () => getJSON("/v1/probes"),
  // Tags and every head's activity, float32 exactly as the engine computed them.
  analyze: (text) => postTensors("/v1/analyze", { text }),
  corpusSequence: (seed) => getJSON(`/v1/corpus/sequence?${new URLSearchParams({ seed })}`),
  quotes: (text) => postJSON("/v1/corpus/quotes", { texts: [text] }),
  // One head's whole pattern, float32 as the engine computed it (safetensors: no decimal text).
  attentionPattern: (text, layer, head) => postTensors("/v1/attention", { text, layer, head }),
  probeScores: (vector, tag, metric) =>
    getJSON(`/v1/probes/scores?${new URLSearchParams({ vector, tag, metric })}`),
  probePredict: (text, vector, layer, head) =>
    postJSON("/v1/probes/predict", { text, vector, layer, head, top_k: 3 }),
  headScores: (kind) => getJSON(`/v1/heads/scores?${new URLSearchParams({ kind })}`),
  ablate: (text, layer, head, mode) =>
    postJSON("/v1/ablate", { text, heads: [{ layer, head }], mode, top_k: 1 }),
  attentionByTag: (body) => postJSON("/v1/corpus/attention-by-tag", body),
  activityByTag: (body) => postJSON("/v1/corpus/activity-by-tag", body),
};
