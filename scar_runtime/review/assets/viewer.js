// The case page's viewer: NiiVue (niivue.umd.js, loaded before this file as a plain <script>)
// with the image, the segmentation in the label map's colours, and the key-points as markers
// named by level. The page embeds what to show as JSON (#case-data); window.scarViewer exposes
// the NiiVue instance once everything is drawn, for the browser tests and for the console.
"use strict";

(async function () {
  const data = JSON.parse(document.getElementById("case-data").textContent);
  const status = document.getElementById("viewer-status");
  const canvas = document.getElementById("viewer");
  const nv = new niivue.Niivue({
    backColor: [0, 0, 0, 1],
    show3Dcrosshair: true,
    isColorbar: false,
    showLegend: true,
    legendBackgroundColor: [0.1, 0.1, 0.1, 0.7],
    dragAndDropEnabled: false,
    // key-point spheres show on the 2D slices within this many mm of them only
    meshThicknessOn2D: 6,
  });
  try {
    await nv.attachToCanvas(canvas);
    nv.setSliceType(nv.sliceTypeMultiplanar);
    const volumes = [];
    if (data.image) volumes.push({ url: data.image, colormap: "gray" });
    if (data.seg) volumes.push({ url: data.seg, colormap: "gray", opacity: data.image ? 0.5 : 1 });
    await nv.loadVolumes(volumes);
    if (data.seg) {
      const seg = nv.volumes[nv.volumes.length - 1];
      seg.setColormapLabel(labelColormap(data.labels));
      nv.updateGLVolume();
    }
    addKeypoints(nv, data);
    nv.onLocationChange = (loc) => {
      document.getElementById("viewer-location").textContent = loc.string || "";
    };
    status.textContent = data.image ? "" : data.no_image_reason;
    window.scarViewer = { nv, ready: true };
  } catch (err) {
    status.textContent = "the viewer could not load this case: " + err;
    window.scarViewer = { nv, ready: false, error: String(err) };
  }

  for (const button of document.querySelectorAll("[data-slice-type]")) {
    button.addEventListener("click", () => nv.setSliceType(nv[button.dataset.sliceType]));
  }
  const opacity = document.getElementById("overlay-opacity");
  if (opacity) {
    opacity.addEventListener("input", () => {
      if (nv.volumes.length > 1) nv.setOpacity(nv.volumes.length - 1, opacity.value / 100);
    });
  }
})();

// NiiVue's label colour table: one entry per class id, background transparent, names shown
// when the crosshair sits on a structure
function labelColormap(labels) {
  const cm = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (const l of labels) {
    cm.I.push(l.id);
    cm.R.push(l.color[0]);
    cm.G.push(l.color[1]);
    cm.B.push(l.color[2]);
    cm.A.push(l.id === 0 ? 0 : 255);
    cm.labels.push(l.name);
  }
  return cm;
}

// The key-points as white spheres (a NiiVue connectome without edges) and each level's name
// in the legend, in its label colour
function addKeypoints(nv, data) {
  const points = data.keypoints.filter((k) => Array.isArray(k.mm) && k.mm.length === 3);
  if (points.length === 0) return;
  nv.loadConnectome({
    name: "key-points",
    nodeColormap: "gray",
    nodeColormapNegative: "gray",
    nodeMinColor: 0,
    nodeMaxColor: 1,
    nodeScale: 2,
    edgeColormap: "gray",
    edgeColormapNegative: "gray",
    edgeMin: 0,
    edgeMax: 1,
    edgeScale: 1,
    showLegend: false,
    nodes: points.map((k) => ({
      name: k.name, x: k.mm[0], y: k.mm[1], z: k.mm[2], colorValue: 1, sizeValue: 1,
    })),
    edges: [],
  });
  const colours = Object.fromEntries(data.labels.map((l) => [l.name, l.color]));
  for (const k of points) {
    const c = (colours[k.name] || [255, 255, 255]).map((v) => v / 255).concat([1]);
    nv.addLabel(k.name, {
      textColor: [1, 1, 1, 1], bulletScale: 1, bulletColor: c, lineWidth: 0, lineColor: c,
    }, k.mm);
  }
  nv.drawScene();
}
