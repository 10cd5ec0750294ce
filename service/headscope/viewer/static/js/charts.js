// Horizontal bar charts in SVG: one bar per row, an optional baseline tick per row (uniform
// attention, the overall mean) and an optional confidence interval drawn as a whisker.

const SVG = "http://www.w3.org/2000/svg";

function node(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// rows: [{label, value, baseline?, ci?: [low, high], highlight?}]
export function barChart(container, rows, { title, valueName, baselineName }) {
  const labelWidth = 70;
  const plotWidth = 380;
  const rowHeight = 18;
  const top = 34;
  const height = top + rows.length * rowHeight + 24;
  const largest = Math.max(
    ...rows.flatMap((row) => [row.value, row.baseline ?? 0, row.ci?.[1] ?? 0]),
    1e-9,
  );
  const x = (value) => labelWidth + (value / largest) * plotWidth;
  const svg = node("svg", {
    viewBox: `0 0 ${labelWidth + plotWidth + 70} ${height}`,
    width: labelWidth + plotWidth + 70,
    height,
    role: "img",
    "aria-label": title,
    class: "chart",
  });
  svg.append(node("text", { x: 0, y: 14, class: "chart-title" }, title));
  const legend = node("g", { transform: `translate(${labelWidth}, 26)`, class: "chart-legend" });
  legend.append(node("rect", { x: 0, y: -8, width: 10, height: 8, class: "bar" }));
  legend.append(node("text", { x: 14, y: 0 }, valueName));
  if (baselineName) {
    legend.append(node("line", { x1: 150, x2: 150, y1: -9, y2: 1, class: "baseline" }));
    legend.append(node("text", { x: 156, y: 0 }, baselineName));
  }
  svg.append(legend);
  rows.forEach((row, index) => {
    const y = top + index * rowHeight;
    const group = node("g", { class: row.highlight ? "bar-row highlight" : "bar-row" });
    group.append(node("text", { x: labelWidth - 6, y: y + 12, class: "bar-label" }, row.label));
    const bar = node("rect", {
      x: labelWidth,
      y: y + 3,
      width: Math.max(0, x(row.value) - labelWidth),
      height: rowHeight - 6,
      class: "bar",
      "data-value": row.value,
    });
    bar.append(node("title", {}, `${row.label}: ${row.value.toFixed(4)}`));
    group.append(bar);
    if (row.ci) {
      const [low, high] = row.ci;
      const mid = y + rowHeight / 2;
      group.append(node("line", { x1: x(low), x2: x(high), y1: mid, y2: mid, class: "ci" }));
      for (const end of [low, high]) {
        group.append(node("line", { x1: x(end), x2: x(end), y1: mid - 4, y2: mid + 4, class: "ci" }));
      }
    }
    if (row.baseline !== undefined && row.baseline !== null) {
      const bx = x(row.baseline);
      group.append(node("line", { x1: bx, x2: bx, y1: y + 1, y2: y + rowHeight - 1, class: "baseline" }));
    }
    group.append(
      node(
        "text",
        { x: x(Math.max(row.value, row.baseline ?? 0, row.ci?.[1] ?? 0)) + 4, y: y + 12, class: "bar-value" },
        row.value.toFixed(3),
      ),
    );
    svg.append(group);
  });
  container.replaceChildren(svg);
}
