// One head's whole attention pattern on a canvas: query rows down, key columns across.

import { ATTENTION_RGB } from "./colors.js";

// pattern: Float32Array of tokens x tokens. Colour follows sqrt(weight) so that the many small
// weights of a long row stay visible beside a few large ones.
export function drawHeatmap(canvas, pattern, tokens) {
  const cell = Math.max(1, Math.floor(512 / tokens));
  canvas.width = tokens * cell;
  canvas.height = tokens * cell;
  const context = canvas.getContext("2d");
  const image = context.createImageData(tokens, tokens);
  for (let q = 0; q < tokens; q++) {
    for (let k = 0; k < tokens; k++) {
      const strength = Math.sqrt(Math.max(0, pattern[q * tokens + k]));
      const offset = 4 * (q * tokens + k);
      image.data[offset] = 255 + (ATTENTION_RGB[0] - 255) * strength;
      image.data[offset + 1] = 255 + (ATTENTION_RGB[1] - 255) * strength;
      image.data[offset + 2] = 255 + (ATTENTION_RGB[2] - 255) * strength;
      image.data[offset + 3] = 255;
    }
  }
  // Draw at one pixel per weight, then scale up without smoothing.
  const small = new OffscreenCanvas(tokens, tokens);
  small.getContext("2d").putImageData(image, 0, 0);
  context.imageSmoothingEnabled = false;
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}
