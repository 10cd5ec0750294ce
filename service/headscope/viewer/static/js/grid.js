// The layer x head grid: one cell per head (L0H0 ... L7H15), coloured by a measure. One
// focusable element; arrow keys move the selection, as does a click.

import { diverging, inkFor, sequential } from "./colors.js";
import { headName } from "./state.js";

export class HeadGrid {
  constructor(element, layers, heads, onSelect) {
    this.element = element;
    this.layers = layers;
    this.heads = heads;
    this.cells = [];
    const corner = document.createElement("div");
    corner.className = "grid-label";
    const columnLabels = Array.from({ length: heads }, (_, head) => label(`H${head}`));
    element.replaceChildren(corner, ...columnLabels);
    element.style.setProperty("--heads", heads);
    for (let layer = 0; layer < layers; layer++) {
      element.append(label(`L${layer}`));
      const row = [];
      for (let head = 0; head < heads; head++) {
        const cell = document.createElement("div");
        cell.className = "cell";
        cell.id = `cell-${headName(layer, head)}`;
        cell.setAttribute("role", "gridcell");
        cell.dataset.layer = layer;
        cell.dataset.head = head;
        element.append(cell);
        row.push(cell);
      }
      this.cells.push(row);
    }
    element.onclick = (event) => {
      const cell = event.target.closest(".cell");
      if (cell) onSelect(Number(cell.dataset.layer), Number(cell.dataset.head));
    };
    element.onkeydown = (event) => {
      const moves = {
        ArrowUp: [-1, 0],
        ArrowDown: [1, 0],
        ArrowLeft: [0, -1],
        ArrowRight: [0, 1],
      };
      if (!(event.key in moves)) return;
      event.preventDefault();
      const [down, right] = moves[event.key];
      const layer = clamp(this.selected[0] + down, 0, layers - 1);
      const head = clamp(this.selected[1] + right, 0, heads - 1);
      onSelect(layer, head);
    };
    this.selected = [0, 0];
  }

  select(layer, head) {
    const [oldLayer, oldHead] = this.selected;
    this.cells[oldLayer][oldHead].classList.remove("selected");
    this.cells[oldLayer][oldHead].removeAttribute("aria-selected");
    const cell = this.cells[layer][head];
    cell.classList.add("selected");
    cell.setAttribute("aria-selected", "true");
    this.element.setAttribute("aria-activedescendant", cell.id);
    this.selected = [layer, head];
  }

  // values[layer][head]: numbers or null. centre: draw differences from it in two colours.
  paint(values, { centre = null, describe = (value) => value.toFixed(3) } = {}) {
    const finite = values.flat().filter((value) => value !== null && Number.isFinite(value));
    const span =
      centre === null
        ? Math.max(...finite, 0)
        : Math.max(...finite.map((value) => Math.abs(value - centre)), 0);
    for (let layer = 0; layer < this.layers; layer++) {
      for (let head = 0; head < this.heads; head++) {
        const cell = this.cells[layer][head];
        const value = values?.[layer]?.[head];
        if (value === null || value === undefined || !Number.isFinite(value)) {
          cell.style.backgroundColor = "";
          cell.style.color = "";
          cell.textContent = "";
          cell.dataset.value = "";
          cell.title = `${headName(layer, head)}: no value`;
          continue;
        }
        const fraction = span > 0 ? (centre === null ? value : value - centre) / span : 0;
        cell.style.backgroundColor = centre === null ? sequential(fraction) : diverging(fraction);
        cell.style.color = inkFor(fraction);
        cell.textContent = compact(value);
        cell.dataset.value = String(value);
        cell.title = `${headName(layer, head)}: ${describe(value)}`;
      }
    }
  }
}

function label(text) {
  const element = document.createElement("div");
  element.className = "grid-label";
  element.textContent = text;
  return element;
}

function clamp(value, low, high) {
  return Math.max(low, Math.min(high, value));
}

// What fits in a cell: two significant digits.
function compact(value) {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 100) return value.toFixed(0);
  return magnitude >= 1 ? value.toPrecision(2) : value.toFixed(2).replace(/^(-?)0\./, "$1.");
}
