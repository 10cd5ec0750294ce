// The viewer's whole state, and its round trip through the URL's fragment (the permalink).
// The fragment never reaches the server, so a long text costs no request; the API key is
// deliberately not part of the state.

export const DEFAULTS = Object.freeze({
  text: 'Tom looked at the sky. He said, "The sun is hot today." Then he ran to the lake.',
  compare: 'Tom looked at the sky. He said that the sun was hot today. Then he ran to the lake.',
  view: "tokens",
  layer: 2,
  head: 0,
  token: null,
  measure: "activity",
  vector: "key",
  probeTag: "NN",
  metric: "f1",
  liftTag: "VBD",
  threshold: 0.5,
  corpusTag: "NN",
  direction: "from",
  position: "on",
  sequences: 20,
  storySeed: null,
  ablationMode: "zero",
});

// URL parameter name -> state field, and how to read it back.
const FIELDS = {
  text: ["text", String],
  compare: ["compare", String],
  view: ["view", String],
  l: ["layer", Number],
  h: ["head", Number],
  t: ["token", (value) => (value === "" ? null : Number(value))],
  m: ["measure", String],
  vec: ["vector", String],
  ptag: ["probeTag", String],
  metric: ["metric", String],
  lift: ["liftTag", String],
  bold: ["threshold", Number],
  ctag: ["corpusTag", String],
  dir: ["direction", String],
  pos: ["position", String],
  n: ["sequences", Number],
  seed: ["storySeed", (value) => (value === "" ? null : Number(value))],
  amode: ["ablationMode", String],
};

export function stateFromHash(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const state = { ...DEFAULTS };
  for (const [param, [field, read]] of Object.entries(FIELDS)) {
    if (!params.has(param)) continue;
    const value = read(params.get(param));
    if (typeof value === "number" && Number.isNaN(value)) continue;
    state[field] = value;
  }
  return state;
}

export function hashFromState(state) {
  const params = new URLSearchParams();
  for (const [param, [field]] of Object.entries(FIELDS)) {
    const value = state[field];
    if (value !== DEFAULTS[field]) params.set(param, value === null ? "" : String(value));
  }
  return `#${params}`;
}

export function headName(layer, head) {
  return `L${layer}H${head}`;
}
