// Token strips: the text as the model's tokens, one span each, shaded by a value per token.
// A strip is one focusable listbox; arrow keys move the selected token, Enter/click selects.

export function renderTokens(container, tokens, { onSelect, onHover }) {
  const spans = tokens.map((token) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.id = `${container.id}-t${token.index}`;
    span.dataset.index = token.index;
    span.setAttribute("role", "option");
    span.textContent = token.text;
    return span;
  });
  container.replaceChildren(...spans);
  container.setAttribute("role", "listbox");
  container.tabIndex = 0;
  container.onclick = (event) => {
    const span = event.target.closest(".tok");
    if (span) onSelect(Number(span.dataset.index));
  };
  container.onmouseover = (event) => {
    const span = event.target.closest(".tok");
    if (span) onHover(Number(span.dataset.index));
  };
  container.onkeydown = (event) => {
    const current = Number(container.dataset.selected ?? -1);
    const moves = {
      ArrowRight: current + 1,
      ArrowLeft: current - 1,
      Home: 0,
      End: tokens.length - 1,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = Math.max(0, Math.min(tokens.length - 1, moves[event.key]));
    onSelect(next);
  };
  container.onfocus = () => {
    if (container.dataset.selected !== undefined) onHover(Number(container.dataset.selected));
  };
  return spans;
}

export function markSelected(container, index) {
  const previous = container.querySelector(".tok.selected");
  if (previous) previous.classList.remove("selected");
  if (index === null || index === undefined) {
    delete container.dataset.selected;
    container.removeAttribute("aria-activedescendant");
    return;
  }
  const span = container.children[index];
  if (!span) return;
  span.classList.add("selected");
  span.setAttribute("aria-selected", "true");
  container.dataset.selected = index;
  container.setAttribute("aria-activedescendant", span.id);
}

// values[t] >= 0, shaded relative to `scale` (the largest value, by default); tokens at or above
// `boldAt` (an absolute value) are bold. data-value keeps the exact number for export and tests.
export function shadeTokens(container, values, color, { scale, boldAt = Infinity } = {}) {
  const top = scale ?? Math.max(...values, 0);
  const spans = container.children;
  for (let t = 0; t < spans.length; t++) {
    const span = spans[t];
    const value = values[t];
    span.style.backgroundColor = color(top > 0 ? value / top : 0);
    span.dataset.value = String(value);
    span.classList.toggle("strong", value >= boldAt);
  }
}

// Which tokens lie inside a quotation, from POST /v1/corpus/quotes's spans (the API finds the
// quote marks by character, so a closing mark merged into a token such as '."' still counts).
export function insideQuotes(count, spans) {
  const inside = new Array(count).fill(false);
  for (const span of spans) {
    const end = span.closing_token ?? count;
    for (let t = span.opening_token + 1; t < end; t++) inside[t] = true;
  }
  return inside;
}

export function markQuoted(container, inside) {
  const spans = container.children;
  for (let t = 0; t < spans.length; t++) spans[t].classList.toggle("quoted", inside[t]);
}
