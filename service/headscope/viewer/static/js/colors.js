// Colours: POS tag groups for the token view, and the scales that shade tokens and grid cells.

export const TAG_GROUPS = [
  { name: "noun", color: "#8ecae6", tags: ["NN", "NNS", "NNP", "NNPS"] },
  { name: "pronoun", color: "#bde0a8", tags: ["PRP", "PRP$", "WP", "WP$", "EX"] },
  { name: "verb", color: "#f4a3a8", tags: ["VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "MD"] },
  { name: "adjective", color: "#ffd166", tags: ["JJ", "JJR", "JJS"] },
  { name: "adverb", color: "#f6bd60", tags: ["RB", "RBR", "RBS", "WRB", "RP"] },
  { name: "determiner", color: "#cdb4db", tags: ["DT", "PDT", "WDT"] },
  { name: "preposition", color: "#a9def9", tags: ["IN", "TO"] },
  { name: "conjunction", color: "#e4c1f9", tags: ["CC"] },
  { name: "number", color: "#d0f4de", tags: ["CD"] },
  { name: "punctuation", color: "#dddddd", tags: [".", ",", ":", "``", "''", "(", ")", "#", "$"] },
];
const OTHER = { name: "other", color: "#f1f1f1", tags: [] };

export const PENN_TAGS = TAG_GROUPS.flatMap((group) => group.tags).concat([
  "FW", "LS", "POS", "SYM", "UH", "NONE",
]);

export function groupOf(tag) {
  return TAG_GROUPS.find((group) => group.tags.includes(tag)) ?? OTHER;
}

// [0, 1] -> a background over white: transparent at 0, the full colour at 1.
export function shade(rgb, fraction) {
  const alpha = Math.max(0, Math.min(1, fraction));
  return `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha.toFixed(3)})`;
}

export const ACTIVITY_RGB = [230, 97, 1];
export const ATTENTION_RGB = [33, 102, 172];

// Grid cells: white to dark blue for a measure >= 0; blue-white-red around 0 for a difference.
export function sequential(fraction) {
  const t = Math.max(0, Math.min(1, fraction));
  const mix = (from, to) => Math.round(from + (to - from) * t);
  return `rgb(${mix(247, 8)}, ${mix(251, 48)}, ${mix(255, 107)})`;
}

export function diverging(fraction) {
  const t = Math.max(-1, Math.min(1, fraction));
  const mix = (from, to, amount) => Math.round(from + (to - from) * amount);
  return t >= 0
    ? `rgb(${mix(247, 178, t)}, ${mix(247, 24, t)}, ${mix(247, 43, t)})`
    : `rgb(${mix(247, 33, -t)}, ${mix(247, 102, -t)}, ${mix(247, 172, -t)})`;
}

// Dark text on light cells, light text on dark ones.
export function inkFor(fraction) {
  return Math.abs(fraction) > 0.55 ? "#ffffff" : "#1b1b1b";
}
