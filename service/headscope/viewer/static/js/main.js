// The viewer: state, data and the six views. It fetches only what the shown view needs: one
// analysis per text (tags + every head's activity), the selected head's attention pattern while
// the attention view is open (so choosing a query token costs no request), and corpus or probe
// numbers when their view or measure asks.

import { ApiError, api, onKeyNeeded } from "./api.js";
import { barChart } from "./charts.js";
import { ACTIVITY_RGB, ATTENTION_RGB, PENN_TAGS, TAG_GROUPS, groupOf, shade } from "./colors.js";
import { download, viewPNG, viewSVG } from "./export.js";
import { HeadGrid } from "./grid.js";
import { drawHeatmap } from "./heatmap.js";
import { DEFAULTS, hashFromState, headName, stateFromHash } from "./state.js";
import { insideQuotes, markQuoted, markSelected, renderTokens, shadeTokens } from "./tokens.js";

const $ = (id) => document.getElementById(id);

const EXAMPLES = [
  ["Quotation (L2H0)", 'Lily said, "I want to play with the red ball." Her mom smiled and said, "Yes, you can."'],
  ["Past tense (L6H4)", "Tom went to the park. He saw a big dog and he ran home. Then he ate his lunch."],
  ["Possessives (L5H5)", "The girl took her doll to the garden. The boy held his kite and the dog wagged its tail."],
];

const TOKEN_STRIPS = ["tokens-pos", "tokens-activity", "tokens-attention", "tokens-compare-a"];

let state = stateFromHash(location.hash);
let model = null; // GET /v1/model
let probeRun = null; // GET /v1/probes, or null when the server has no probes
let analysis = null; // { text, tokens, activity: Float32Array [layer, head, token] }
let comparison = null; // the same for text B
let grid = null;
let attentionRow = null; // { layer, head, query, weights }
let heatmapShown = null; // "L2H0" of the pattern on the canvas
const patterns = new Map(); // "L2H0" -> Promise of the pattern, Float32Array [query, key]
const PATTERNS_KEPT = 8;
const viewData = {}; // the numbers behind each view, for the JSON export
const cache = new Map(); // probe score grids and corpus results, by request
let pending = 0; // user actions still loading or drawing
const latest = {}; // per view: the newest request's number, so late answers are dropped

// -- plumbing -----------------------------------------------------------------------------------

function saveState() {
  const hash = hashFromState(state);
  if (hash !== location.hash && !(hash === "#" && !location.hash)) {
    history.replaceState(null, "", hash === "#" ? location.pathname : hash);
  }
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function reportError(error) {
  if (error instanceof ApiError) {
    setStatus(`${error.status} ${error.code}: ${error.message}`, true);
  } else {
    setStatus(String(error), true);
    console.error(error);
  }
}

// Wraps what a user action starts: body[data-pending] counts those still running, and the
// "headscope:idle" event marks the moment the page has caught up (tests and the bench wait on it).
function tracked(action) {
  return async (...args) => {
    pending += 1;
    document.body.dataset.pending = pending;
    try {
      return await action(...args);
    } finally {
      pending -= 1;
      document.body.dataset.pending = pending;
      if (!pending) document.dispatchEvent(new CustomEvent("headscope:idle"));
    }
  };
}

async function fresh(view, load) {
  const ticket = (latest[view] = (latest[view] ?? 0) + 1);
  const result = await load();
  return ticket === latest[view] ? result : undefined;
}

// One request per key for the page's life; a failed one is forgotten, so it can be retried.
async function cached(key, load) {
  if (!cache.has(key)) {
    const loading = load().catch((error) => {
      cache.delete(key);
      throw error;
    });
    cache.set(key, loading);
  }
  return cache.get(key);
}

function activityOf(result, layer, head) {
  const tokens = result.tokens.length;
  const start = (layer * model.n_heads + head) * tokens;
  return result.activity.subarray(start, start + tokens);
}

function meanGrid(result) {
  return gridOf((layer, head) => mean(activityOf(result, layer, head)));
}

function gridOf(valueAt) {
  return Array.from({ length: model.n_layers }, (_, layer) =>
    Array.from({ length: model.n_heads }, (_, head) => valueAt(layer, head)),
  );
}

function mean(values) {
  let total = 0;
  for (const value of values) total += value;
  return values.length ? total / values.length : 0;
}

function tokenLabel(token) {
  return JSON.stringify(token.text);
}

function optionList(select, values, chosen) {
  select.replaceChildren(
    ...values.map((value) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      return option;
    }),
  );
  select.value = values.includes(chosen) ? chosen : values[0];
}

// -- analysis -----------------------------------------------------------------------------------

async function analyzeText(text) {
  const [{ metadata, tensors }, quotes] = await Promise.all([api.analyze(text), api.quotes(text)]);
  const tokens = metadata.tokens;
  const quoted = insideQuotes(tokens.length, quotes.spans);
  return { text, tokens, quoted, activity: tensors.activity.data };
}

async function runAnalysis() {
  state.text = $("text").value;
  if (!state.text.trim()) {
    setStatus("Type a text first.", true);
    return;
  }
  setStatus("Analyzing…");
  try {
    const result = await fresh("analysis", () => analyzeText(state.text));
    if (!result) return;
    analysis = result;
    if (state.token !== null && state.token >= analysis.tokens.length) state.token = null;
    attentionRow = null;
    heatmapShown = null;
    patterns.clear();
    $("heatmap").width = 0;
    $("heatmap").height = 0;
    $("heatmap-caption").textContent = "";
    buildStrips();
    setStatus(`${analysis.tokens.length} tokens.`);
    saveState();
    await updateAll();
  } catch (error) {
    reportError(error);
  }
}

function buildStrips() {
  for (const id of TOKEN_STRIPS) {
    renderTokens($(id), analysis.tokens, { onSelect: tracked(selectToken), onHover: showHover });
  }
  const strip = $("tokens-pos");
  const present = new Set();
  analysis.tokens.forEach((token, index) => {
    strip.children[index].style.backgroundColor = groupOf(token.tag).color;
    strip.children[index].dataset.tag = token.tag;
    present.add(token.tag);
  });
  markQuoted($("tokens-activity"), analysis.quoted);
  markQuoted($("tokens-compare-a"), analysis.quoted);
  renderLegend(present);
  for (const id of TOKEN_STRIPS) markSelected($(id), state.token);
  viewData.tokens = { text: analysis.text, tokens: analysis.tokens };
}

function renderLegend(present) {
  const items = [];
  for (const group of TAG_GROUPS) {
    const tags = group.tags.filter((tag) => present.has(tag));
    if (!tags.length) continue;
    const item = document.createElement("span");
    item.className = "legend-item";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = group.color;
    item.append(swatch, `${group.name}: ${tags.join(" ")}`);
    items.push(item);
  }
  const others = [...present].filter((tag) => groupOf(tag).name === "other");
  if (others.length) {
    const item = document.createElement("span");
    item.className = "legend-item";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = groupOf("?").color;
    item.append(swatch, `other: ${others.join(" ")}`);
    items.push(item);
  }
  $("legend").replaceChildren(...items);
}

function showHover(index) {
  const token = analysis?.tokens[index];
  if (!token) return;
  const parts = [
    `#${index} ${tokenLabel(token)}`,
    `tag ${token.tag}`,
    `chars ${token.start}–${token.end}`,
    `id ${token.id}`,
  ];
  const { layer, head } = state;
  parts.push(`${headName(layer, head)} activity ${activityOf(analysis, layer, head)[index].toFixed(4)}`);
  if (attentionRow && attentionRow.weights.length === analysis.tokens.length) {
    parts.push(`attention from #${attentionRow.query} ${attentionRow.weights[index].toFixed(4)}`);
  }
  $("hover").textContent = parts.join(" · ");
}

// -- selection ----------------------------------------------------------------------------------

async function selectHead(layer, head) {
  state.layer = layer;
  state.head = head;
  grid.select(layer, head);
  saveState();
  await updateView();
}

async function selectToken(index) {
  state.token = index;
  for (const id of TOKEN_STRIPS) markSelected($(id), index);
  showHover(index);
  saveState();
  const work = [];
  if (state.measure === "activity-token") work.push(paintGrid());
  if (state.view === "attention") work.push(updateAttention());
  await Promise.all(work);
}

async function showView(view) {
  state.view = view;
  for (const tab of $("tabs").children) {
    const active = tab.dataset.view === view;
    tab.setAttribute("aria-selected", String(active));
    tab.classList.toggle("active", active);
    $(tab.getAttribute("aria-controls")).hidden = !active;
  }
  saveState();
  await updateView();
}

// -- the grid -----------------------------------------------------------------------------------

const HEAD_SCORES = new Map([
  ["induction", "Induction"],
  ["previous_token", "Previous-token"],
  ["duplicate_token", "Duplicate-token"],
]);

async function paintGrid() {
  const { measure } = state;
  $("probe-options").hidden = measure !== "probe";
  $("lift-options").hidden = measure !== "lift";
  try {
    const painted = await fresh("grid", () => gridValues(measure));
    if (!painted) return;
    const { values, centre, caption, describe } = painted;
    grid.paint(values, { centre, describe });
    $("grid-caption").textContent = caption;
    viewData.grid = { measure, caption, values };
  } catch (error) {
    reportError(error);
  }
}

async function gridValues(measure) {
  if (measure === "probe") {
    if (!probeRun) {
      return { values: gridOf(() => null), caption: "No probes loaded on this server." };
    }
    const { vector, probeTag, metric } = state;
    const scores = await cached(`probe ${vector} ${probeTag} ${metric}`, () =>
      api.probeScores(vector, probeTag, metric),
    );
    const support = scores.support === null ? "" : `, ${scores.support} held-out tokens`;
    return {
      values: scores.scores,
      centre: metric === "selectivity" ? 0 : null,
      caption: `Probe ${metric} for ${probeTag} from each head's ${vector} vector (run ${probeRun.run_id}${support}).`,
    };
  }
  if (HEAD_SCORES.has(measure)) {
    const response = await cached(`scores ${measure}`, () => api.headScores(measure));
    return {
      values: response.scores,
      caption:
        `${HEAD_SCORES.get(measure)} score of every head: its mean attention to the position ` +
        `the score names, on ${response.n_sequences} seeded sequences of ${response.length} ` +
        "random tokens repeated once (GET /v1/heads/scores describes the method).",
      describe: (value) => `score ${value.toFixed(3)}`,
    };
  }
  if (measure === "lift") {
    const response = await activityByTag(state.liftTag);
    const values = response.lift ?? gridOf(() => null);
    return {
      values,
      centre: 1,
      caption: `Activity lift ${state.position} ${state.liftTag}: mean there / mean overall, over ${response.source.sequences} corpus sequences (${response.positions} positions of ${response.tokens} tokens). Red: above 1.`,
      describe: (value) => `lift ${value.toFixed(3)}`,
    };
  }
  if (!analysis) return { values: gridOf(() => null), caption: "Analyze a text first." };
  if (measure === "compare") {
    if (!comparison) {
      return { values: gridOf(() => null), caption: "Analyze text B in the Compare view first." };
    }
    const a = meanGrid(analysis);
    const b = meanGrid(comparison);
    return {
      values: gridOf((layer, head) => a[layer][head] - b[layer][head]),
      centre: 0,
      caption: "Mean activity on text A minus on text B. Red: more active on A.",
      describe: (value) => `A − B ${value.toFixed(4)}`,
    };
  }
  if (measure === "activity-token" && state.token !== null) {
    const token = analysis.tokens[state.token];
    return {
      values: gridOf((layer, head) => activityOf(analysis, layer, head)[state.token]),
      caption: `Each head's activity at token #${state.token} ${tokenLabel(token)}.`,
    };
  }
  const note = measure === "activity-token" ? " (select a token for its activity)" : "";
  return {
    values: meanGrid(analysis),
    caption: `Each head's mean activity over the text's ${analysis.tokens.length} tokens${note}.`,
  };
}

async function activityByTag(tag) {
  const body = { tag, position: state.position, n_sequences: state.sequences };
  return cached(`activity ${JSON.stringify(body)}`, () => api.activityByTag(body));
}

// -- the views ----------------------------------------------------------------------------------

async function updateAll() {
  await Promise.all([paintGrid(), updateView()]);
}

async function updateView() {
  const { layer, head } = state;
  const name = headName(layer, head);
  for (const id of [
    "activity-title",
    "attention-title",
    "probe-title",
    "corpus-title",
    "ablation-title",
  ]) {
    $(id).dataset.head = name;
  }
  try {
    switch (state.view) {
      case "activity":
        renderActivity();
        break;
      case "attention":
        await updateAttention();
        return;
      case "probe":
        await updateProbe();
        return;
      case "corpus":
        await updateCorpus();
        return;
      case "compare":
        renderCompare();
        break;
      case "ablation":
        await updateAblation();
        return;
      default:
        break;
    }
  } catch (error) {
    reportError(error);
  }
}

function renderActivity() {
  const { layer, head, threshold } = state;
  $("activity-title").textContent = `Activity of ${headName(layer, head)}`;
  if (!analysis) return;
  const values = activityOf(analysis, layer, head);
  const largest = Math.max(...values);
  shadeTokens($("tokens-activity"), values, (f) => shade(ACTIVITY_RGB, f), {
    scale: largest,
    boldAt: threshold * largest,
  });
  const top = values.indexOf(largest);
  $("activity-caption").textContent =
    `Shade: activity (‖head output‖₂) relative to the largest, ${largest.toFixed(4)} at #${top} ` +
    `${tokenLabel(analysis.tokens[top])}. Bold: at least ${(threshold * largest).toFixed(4)}.`;
  viewData.activity = {
    head: headName(layer, head),
    tokens: analysis.tokens.map((token) => token.text),
    activity: Array.from(values),
    bold_at: threshold * largest,
  };
}

async function updateAttention() {
  const { layer, head, token } = state;
  const name = headName(layer, head);
  const local = model.attention_layers[layer] === "local";
  $("attention-title").textContent =
    `Attention of ${name} (${local ? `local, window ${model.window_size}` : "global"})`;
  const strip = $("tokens-attention");
  if (!analysis) return;
  if (heatmapShown && heatmapShown !== name) {
    heatmapShown = null;
    $("heatmap").width = 0;
    $("heatmap").height = 0;
    $("heatmap-caption").textContent = "";
  }
  if (token === null) {
    shadeTokens(strip, new Array(analysis.tokens.length).fill(0), () => "transparent");
    $("top-keys").replaceChildren();
    $("attention-caption").textContent = "Select a query token.";
    return;
  }
  const pattern = await fresh("attention", () => patternOf(layer, head));
  if (!pattern) return;
  const size = analysis.tokens.length;
  const weights = Array.from(pattern.subarray(token * size, (token + 1) * size));
  attentionRow = { layer, head, query: token, weights };
  shadeTokens(strip, weights, (f) => shade(ATTENTION_RGB, f), { scale: Math.max(...weights) });
  const firstVisible = local ? Math.max(0, token - model.window_size + 1) : 0;
  for (const span of strip.children) {
    const index = Number(span.dataset.index);
    span.classList.toggle("query", index === token);
    span.classList.toggle("window-edge", local && firstVisible > 0 && index === firstVisible);
    span.classList.toggle("masked", index > token || index < firstVisible);
  }
  const ranked = weights
    .map((weight, index) => ({ weight, index }))
    .filter(({ index }) => index <= token)
    .sort((a, b) => b.weight - a.weight)
    .slice(0, 8);
  $("top-keys").replaceChildren(
    ...ranked.map(({ weight, index }) => {
      const item = document.createElement("li");
      item.dataset.index = index;
      item.dataset.value = String(weight);
      item.textContent = `#${index} ${tokenLabel(analysis.tokens[index])} ${weight.toFixed(4)}`;
      return item;
    }),
  );
  const windowNote =
    local && firstVisible > 0 ? ` The window hides keys before #${firstVisible}.` : "";
  $("attention-caption").textContent =
    `Query #${token} ${tokenLabel(analysis.tokens[token])}; shade relative to its largest ` +
    `weight, ${ranked[0].weight.toFixed(4)}.${windowNote}`;
  viewData.attention = {
    head: name,
    query: token,
    tokens: analysis.tokens.map((t) => t.text),
    weights,
  };
}

// One head's whole pattern for the current text: float32 safetensors, the engine's numbers.
// The last few heads' patterns are kept, so going back to a head costs no request.
function patternOf(layer, head) {
  const name = headName(layer, head);
  if (!patterns.has(name)) {
    const text = analysis.text;
    const loading = api.attentionPattern(text, layer, head).then(
      (result) => result.tensors.pattern.data,
      (error) => {
        patterns.delete(name);
        throw error;
      },
    );
    patterns.set(name, loading);
    if (patterns.size > PATTERNS_KEPT) patterns.delete(patterns.keys().next().value);
  }
  return patterns.get(name);
}

async function showHeatmap() {
  if (!analysis) return;
  const { layer, head } = state;
  const name = headName(layer, head);
  try {
    const pattern = await fresh("heatmap", () => patternOf(layer, head));
    if (!pattern) return;
    const size = analysis.tokens.length;
    drawHeatmap($("heatmap"), pattern, size);
    heatmapShown = name;
    $("heatmap-caption").textContent =
      `${name}: ${size} × ${size}, query rows down, keys across; colour √weight.`;
  } catch (error) {
    reportError(error);
  }
}

async function updateProbe() {
  const { layer, head, vector } = state;
  const name = headName(layer, head);
  $("probe-title").textContent = `Probe of ${name}'s ${vector} vector`;
  const rows = $("probe-rows");
  if (!probeRun) {
    rows.replaceChildren();
    $("probe-caption").textContent = "This server has no probes loaded (see GET /readyz).";
    return;
  }
  if (!analysis) return;
  const text = analysis.text;
  const response = await fresh("probe", () => api.probePredict(text, vector, layer, head));
  if (!response) return;
  let mismatches = 0;
  rows.replaceChildren(
    ...response.tokens.map((token, index) => {
      const prediction = response.predictions[index];
      const row = document.createElement("tr");
      const wrong = prediction.tag !== token.tag;
      if (wrong) {
        row.className = "mismatch";
        mismatches += 1;
      }
      row.dataset.index = index;
      const cells = [
        index,
        tokenLabel(token),
        token.tag,
        prediction.tag,
        prediction.probability.toFixed(3),
        prediction.top.slice(1).map((t) => `${t.tag} ${t.probability.toFixed(2)}`).join(", "),
      ];
      for (const value of cells) {
        const cell = document.createElement("td");
        cell.textContent = value;
        row.append(cell);
      }
      row.children[4].dataset.value = String(prediction.probability);
      return row;
    }),
  );
  const total = response.tokens.length;
  $("probe-caption").textContent =
    `Run ${response.run_id}: ${total - mismatches} of ${total} tokens agree with NLTK; ` +
    "mismatches highlighted.";
  viewData.probe = response;
}

function tableRow(cells) {
  const row = document.createElement("tr");
  for (const value of cells) {
    const cell = document.createElement("td");
    cell.textContent = value;
    row.append(cell);
  }
  return row;
}

// The selected head ablated (POST /v1/ablate): how much worse each next token is predicted.
async function updateAblation() {
  const { layer, head, ablationMode } = state;
  const name = headName(layer, head);
  $("ablation-title").textContent = `${name} ablated (${ablationMode} z)`;
  if (!analysis) return;
  const text = analysis.text;
  const response = await fresh("ablation", () => api.ablate(text, layer, head, ablationMode));
  if (!response) return;
  $("ablation-rows").replaceChildren(
    ...response.predictions.map((p) => {
      const row = tableRow([
        p.index,
        JSON.stringify(p.next_text),
        p.next_tag,
        p.loss_before.toFixed(3),
        p.loss_after.toFixed(3),
        (p.loss_change >= 0 ? "+" : "") + p.loss_change.toFixed(3),
        p.top_after.map((t) => `${JSON.stringify(t.text)} ${t.prob.toFixed(2)}`).join(", "),
      ]);
      row.children[5].dataset.value = String(p.loss_change);
      if (p.loss_change > 0) row.className = "hurt";
      return row;
    }),
  );
  $("ablation-tags").replaceChildren(
    ...response.by_next_tag.map((t) => {
      const row = tableRow([
        t.tag,
        t.tokens,
        t.mean_loss_before.toFixed(3),
        (t.mean_loss_change >= 0 ? "+" : "") + t.mean_loss_change.toFixed(3),
      ]);
      row.children[3].dataset.value = String(t.mean_loss_change);
      return row;
    }),
  );
  const change = response.mean_loss_after - response.mean_loss_before;
  $("ablation-caption").textContent =
    `Mean next-token loss ${response.mean_loss_before.toFixed(3)} -> ` +
    `${response.mean_loss_after.toFixed(3)} nats (${change >= 0 ? "+" : ""}${change.toFixed(3)})` +
    " with this head's z replaced before W_O; rows the ablation hurts are highlighted.";
  viewData.ablation = response;
}

// A confidence interval, if the API gives one, as [low, high]: `<field>_ci`, `ci.<field>`, or
// `ci` itself (the corpus endpoints may add these; until then nothing is drawn).
function intervalOf(item, field) {
  const ci = item?.ci;
  const interval = item?.[`${field}_ci`] ?? (Array.isArray(ci) ? ci : ci?.[field]) ?? null;
  return Array.isArray(interval) && interval.length === 2 ? interval : null;
}

async function updateCorpus() {
  const { layer, head, corpusTag, direction, position, sequences } = state;
  const name = headName(layer, head);
  $("corpus-title").textContent = `${name} over the corpus`;
  $("corpus-caption").textContent = `Computing over ${sequences} sequences…`;
  const attentionBody = {
    layer,
    head,
    [direction === "from" ? "from_tag" : "to_tag"]: corpusTag,
    n_sequences: sequences,
  };
  const results = await fresh("corpus", () =>
    Promise.all([
      cached(`attention ${JSON.stringify(attentionBody)}`, () =>
        api.attentionByTag(attentionBody),
      ),
      activityByTag(corpusTag),
    ]),
  );
  if (!results) return;
  const [byTag, activity] = results;
  const rows = byTag.rows.slice(0, 15).map((row) => ({
    label: row.tag,
    value: row.attention,
    baseline: row.frequency,
    ci: intervalOf(row, "attention"),
  }));
  barChart($("chart-attention"), rows, {
    title:
      direction === "from"
        ? `Where ${corpusTag} tokens put ${name}'s attention, by key tag`
        : `Attention ${name} puts on ${corpusTag} tokens, by query tag`,
    valueName: "attention",
    baselineName: "uniform attention",
  });
  // [layer][head][low, high], when the API gives them.
  const intervals = activity.mean_at_position_ci ?? activity.ci?.mean_at_position ?? null;
  const activityRows = Array.from({ length: model.n_heads }, (_, h) => ({
    label: headName(layer, h),
    value: activity.mean_at_position?.[layer][h] ?? 0,
    baseline: activity.mean_overall[layer][h],
    ci: intervalOf({ ci: intervals?.[layer]?.[h] }, "mean_at_position"),
    highlight: h === head,
  }));
  barChart($("chart-activity"), activityRows, {
    title: `Layer ${layer}'s heads: activity ${position} ${corpusTag}`,
    valueName: `mean ${position} ${corpusTag}`,
    baselineName: "mean overall",
  });
  const source = byTag.source;
  $("corpus-caption").textContent =
    `${source.sequences} sequences, ${source.tokens} tokens (seed ${source.seed ?? 0}); ` +
    `${byTag.tag_tokens} ${corpusTag} tokens; activity averaged over ${activity.positions} ` +
    `positions ${position} ${corpusTag}.`;
  viewData.corpus = { attention_by_tag: byTag, activity_by_tag: activity };
}

async function runComparison() {
  state.compare = $("compare-text").value;
  if (!state.compare.trim() || !analysis) return;
  try {
    const result = await fresh("comparison", () => analyzeText(state.compare));
    if (!result) return;
    comparison = result;
    renderTokens($("tokens-compare-b"), comparison.tokens, {
      onSelect: () => {},
      onHover: () => {},
    });
    markQuoted($("tokens-compare-b"), comparison.quoted);
    saveState();
    await updateAll();
  } catch (error) {
    reportError(error);
  }
}

function renderCompare() {
  const name = headName(state.layer, state.head);
  $("compare-title").textContent = `Compare two texts: ${name}`;
  if (!analysis) return;
  const a = activityOf(analysis, state.layer, state.head);
  if (!comparison) {
    shadeTokens($("tokens-compare-a"), a, (f) => shade(ACTIVITY_RGB, f));
    return;
  }
  const b = activityOf(comparison, state.layer, state.head);
  // One scale for both, so equal shades mean equal activity.
  const scale = Math.max(...a, ...b);
  shadeTokens($("tokens-compare-a"), a, (f) => shade(ACTIVITY_RGB, f), { scale });
  shadeTokens($("tokens-compare-b"), b, (f) => shade(ACTIVITY_RGB, f), { scale });
  const meanA = meanGrid(analysis);
  const meanB = meanGrid(comparison);
  const differences = meanA
    .flatMap((row, layer) =>
      row.map((value, head) => ({ layer, head, difference: value - meanB[layer][head] })),
    )
    .sort((x, y) => Math.abs(y.difference) - Math.abs(x.difference));
  $("compare-heads").replaceChildren(
    ...differences.slice(0, 10).map(({ layer, head, difference }) => {
      const item = document.createElement("li");
      item.textContent = `${headName(layer, head)} ${difference >= 0 ? "+" : ""}${difference.toFixed(4)}`;
      item.dataset.value = String(difference);
      return item;
    }),
  );
  viewData.compare = { a: state.text, b: state.compare, head: name, differences };
}

// -- export -------------------------------------------------------------------------------------

function exportName(extension) {
  return `headscope-${state.view}-${headName(state.layer, state.head)}.${extension}`;
}

async function exportView(kind) {
  const panel = $(`view-${state.view}`);
  try {
    if (kind === "json") {
      const data = { view: state.view, state: { ...state }, data: viewData[state.view] ?? null };
      download(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }), exportName("json"));
    } else if (kind === "svg") {
      download(new Blob([await viewSVG(panel)], { type: "image/svg+xml" }), exportName("svg"));
    } else {
      download(await viewPNG(panel), exportName("png"));
    }
  } catch (error) {
    reportError(error);
  }
}

// -- API key ------------------------------------------------------------------------------------

function askForKey(reason) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason;
  $("key-input").value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "ok" ? $("key-input").value.trim() || null : null),
      { once: true },
    );
  });
}

// The next seed's sequence from the server's corpus becomes the text; the seed goes into the
// permalink, so the next click (here or on a restored link) draws a story not yet seen.
async function drawStory() {
  const seed = state.storySeed === null ? 0 : state.storySeed + 1;
  setStatus("Drawing a story…");
  let story;
  try {
    story = await api.corpusSequence(seed);
  } catch (error) {
    reportError(error);
    return;
  }
  state.storySeed = seed;
  saveState();
  $("text").value = story.text;
  await runAnalysis();
}

// -- start --------------------------------------------------------------------------------------

function applyStateToControls() {
  $("text").value = state.text;
  $("compare-text").value = state.compare;
  $("measure").value = state.measure;
  $("metric").value = state.metric;
  $("threshold").value = state.threshold;
  $("threshold-value").textContent = `${Math.round(state.threshold * 100)}%`;
  $("direction").value = state.direction;
  $("ablation-mode").value = state.ablationMode;
  $("position").value = state.position;
  $("sequences").value = state.sequences;
  optionList($("lift-tag"), PENN_TAGS, state.liftTag);
  optionList($("corpus-tag"), PENN_TAGS, state.corpusTag);
  const vectors = probeRun?.vectors ?? ["key", "query", "value"];
  optionList($("vector"), vectors, state.vector);
  const probeTags = [...(probeRun?.tags ?? PENN_TAGS), "accuracy", "macro", "weighted"];
  optionList($("probe-tag"), probeTags, state.probeTag);
  state.vector = $("vector").value;
  state.probeTag = $("probe-tag").value;
}

function clampSelection() {
  state.layer = Math.max(0, Math.min(model.n_layers - 1, state.layer));
  state.head = Math.max(0, Math.min(model.n_heads - 1, state.head));
}

function bindControls() {
  $("analyze").onclick = tracked(runAnalysis);
  $("draw-story").onclick = tracked(drawStory);
  $("text").onkeydown = (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) tracked(runAnalysis)();
  };
  for (const [label, text] of EXAMPLES) {
    const option = document.createElement("option");
    option.value = text;
    option.textContent = label;
    $("example").append(option);
  }
  $("example").onchange = () => {
    if (!$("example").value) return;
    $("text").value = $("example").value;
    tracked(runAnalysis)();
  };
  for (const tab of $("tabs").children) tab.onclick = tracked(() => showView(tab.dataset.view));
  const onChange = (id, field, read = String, then = paintGrid) => {
    $(id).onchange = tracked(() => {
      state[field] = read($(id).value);
      saveState();
      return then();
    });
  };
  onChange("measure", "measure");
  onChange("vector", "vector", String, () => Promise.all([paintGrid(), updateView()]));
  onChange("probe-tag", "probeTag");
  onChange("metric", "metric");
  onChange("lift-tag", "liftTag");
  onChange("corpus-tag", "corpusTag", String, updateView);
  onChange("direction", "direction", String, updateView);
  onChange("ablation-mode", "ablationMode", String, updateView);
  onChange("position", "position", String, updateAll);
  onChange("sequences", "sequences", Number, updateAll);
  $("corpus-run").onclick = tracked(updateView);
  $("threshold").oninput = tracked(() => {
    state.threshold = Number($("threshold").value);
    $("threshold-value").textContent = `${Math.round(state.threshold * 100)}%`;
    saveState();
    return updateView();
  });
  $("heatmap-button").onclick = tracked(showHeatmap);
  $("compare-run").onclick = tracked(runComparison);
  $("export-png").onclick = tracked(() => exportView("png"));
  $("export-svg").onclick = tracked(() => exportView("svg"));
  $("export-json").onclick = tracked(() => exportView("json"));
  $("copy-link").onclick = async () => {
    saveState();
    try {
      await navigator.clipboard.writeText(location.href);
      setStatus("Link copied.");
    } catch {
      setStatus(`Link: ${location.href}`);
    }
  };
  $("key-button").onclick = tracked(async () => {
    const key = await askForKey("Enter the server's API key.");
    if (key) {
      sessionStorage.setItem("headscope.apiKey", key);
      await start();
    }
  });
  // A pasted permalink, or back/forward: the whole state from the URL.
  window.addEventListener("hashchange", tracked(async () => {
    state = stateFromHash(location.hash);
    applyStateToControls();
    clampSelection();
    grid.select(state.layer, state.head);
    await showView(state.view);
    await runAnalysis();
    if (state.compare && state.view === "compare") await runComparison();
  }));
}

async function start() {
  try {
    model = await api.model();
    const ready = await api.ready();
    probeRun = ready.probes === "loaded" ? await api.probeRun() : null;
  } catch (error) {
    reportError(error);
    $("model-info").textContent = "not connected";
    return;
  }
  const probes = probeRun ? `probes ${probeRun.run_id}` : "no probes";
  $("model-info").textContent =
    `${model.model_id} · ${model.n_layers}×${model.n_heads} heads · ${probes}`;
  $("model-info").title = `weights sha256 ${model.weights_sha256}`;
  applyStateToControls();
  clampSelection();
  grid = new HeadGrid($("grid"), model.n_layers, model.n_heads, tracked(selectHead));
  grid.select(state.layer, state.head);
  await showView(state.view);
  await runAnalysis();
  if (state.compare !== DEFAULTS.compare || state.view === "compare" || state.measure === "compare") {
    await runComparison();
  }
}

onKeyNeeded(askForKey);
bindControls();
tracked(start)();
