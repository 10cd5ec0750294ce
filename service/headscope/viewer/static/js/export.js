// Export what a view shows: SVG (the view's own markup and the viewer's CSS in a foreignObject),
// PNG (that SVG drawn onto a canvas), or JSON (the numbers behind the view).

let styleText = null;

async function viewerStyle() {
  styleText ??= await (await fetch("/viewer/viewer.css")).text();
  return styleText;
}

export async function viewSVG(element) {
  const { width, height } = element.getBoundingClientRect();
  const clone = element.cloneNode(true);
  // A canvas's pixels do not survive cloning: carry them over as an image.
  const canvases = element.querySelectorAll("canvas");
  clone.querySelectorAll("canvas").forEach((copy, index) => {
    const image = document.createElement("img");
    image.src = canvases[index].toDataURL("image/png");
    image.width = canvases[index].width;
    image.height = canvases[index].height;
    copy.replaceWith(image);
  });
  clone.setAttribute("xmlns", "http://www.w3.org/1999/xhtml");
  clone.classList.add("exported");
  const markup = new XMLSerializer().serializeToString(clone);
  const style = (await viewerStyle()).replace(/[<>&]/g, (c) => `&#${c.charCodeAt(0)};`);
  const w = Math.ceil(width);
  const h = Math.ceil(height);
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">` +
    `<style>${style}</style><foreignObject x="0" y="0" width="${w}" height="${h}">${markup}` +
    "</foreignObject></svg>"
  );
}

export async function viewPNG(element, scale = 2) {
  const svg = await viewSVG(element);
  const image = new Image();
  // A data: URL, not a blob: one: chromium taints a canvas that drew a foreignObject SVG
  // from a blob URL, and a tainted canvas cannot be exported.
  image.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width * scale;
  canvas.height = image.height * scale;
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

export function download(blob, filename) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
