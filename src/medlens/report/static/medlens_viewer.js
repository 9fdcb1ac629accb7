// medlens's 3D viewer on NiiVue (window.niivue, loaded before this file): one image with its overlays.
//
// window.medlensViewer.show(element, volumes) fills `element` with a NiiVue canvas and its controls and resolves
// to the Niivue instance; `volumes` is what medlens.report.viewer.viewer_volumes makes:
//   {image: {nifti}, overlays: [{key, title, kind: "label" | "heat", nifti, names, colours, opacity, threshold}]}
// (nifti: gzipped NIfTI in base64). The element also gets `element.medlens = {nv, overlays, setOverlay(key, on)}`
// (`overlays`: key -> index in nv.volumes), which tests and pages use to drive it.
(function () {
  "use strict";
  const PLANES = [["multiplanar", "three planes"], ["axial", "axial"], ["coronal", "coronal"],
                  ["sagittal", "sagittal"]];

  function rgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  // NiiVue's label colour table: value v -> colours[v] (opaque), 0 and unlisted values transparent
  function labelTable(names, colours) {
    const values = Object.keys(colours).map(Number);
    const top = Math.max(1, ...values);
    const table = { R: [], G: [], B: [], A: [], I: [], labels: [] };
    for (let v = 0; v <= top; v++) {
      const colour = colours[String(v)];
      const [r, g, b] = colour ? rgb(colour) : [0, 0, 0];
      table.R.push(r); table.G.push(g); table.B.push(b); table.A.push(colour && v > 0 ? 255 : 0);
      table.I.push(v); table.labels.push(names[String(v)] || "");
    }
    return table;
  }

  function element(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props || {});
    node.append(...children);
    return node;
  }

  async function loadImage(nv, volumes) {
    const image = await niivue.NVImage.loadFromBase64({ base64: volumes.image.nifti, name: "image.nii.gz",
                                                        colormap: "gray" });
    nv.addVolume(image);
    const overlays = {};
    for (const o of volumes.overlays) {
      const heat = o.kind === "heat";
      const volume = await niivue.NVImage.loadFromBase64({
        base64: o.nifti, name: o.key + ".nii.gz", colormap: heat ? "warm" : "gray", opacity: o.opacity,
        cal_min: heat ? o.threshold : 0, cal_max: 1 });
      if (!heat) volume.setColormapLabel(labelTable(o.names, o.colours));
      nv.addVolume(volume);
      overlays[o.key] = nv.volumes.length - 1;
    }
    return overlays;
  }

  function planeControl(nv) {
    const select = element("select", { className: "mv-plane", title: "planes shown" });
    for (const [value, text] of PLANES) select.append(element("option", { value }, text));
    select.addEventListener("change", () => nv.setSliceType(nv["sliceType" + select.value[0].toUpperCase() +
                                                                   select.value.slice(1)]));
    return element("label", {}, "view ", select);
  }

  // the axial slice (the image's third axis); NiiVue's mouse wheel scrolls whichever plane is under the pointer
  function sliceControl(nv, depth) {
    const slider = element("input", { type: "range", className: "mv-slice", min: 0, max: depth - 1, step: 1,
                                      value: Math.floor(depth / 2), title: "axial slice" });
    const shown = element("span", { className: "mv-slice-number" }, String(slider.value));
    slider.addEventListener("input", () => {
      const pos = nv.scene.crosshairPos;
      nv.scene.crosshairPos = [pos[0], pos[1], (Number(slider.value) + 0.5) / depth];
      shown.textContent = slider.value;
      nv.drawScene();
    });
    nv.onLocationChange = (where) => {
      const k = where && where.vox ? where.vox[2] : null;
      if (k !== null && k !== undefined) { slider.value = k; shown.textContent = String(k); }
    };
    return element("label", {}, "slice ", slider, shown);
  }

  // window / level as the lowest and highest grey value shown; NiiVue's right-drag sets them too
  function windowControl(nv) {
    const low = element("input", { type: "number", className: "mv-low", step: "any", title: "darkest value" });
    const high = element("input", { type: "number", className: "mv-high", step: "any", title: "brightest value" });
    const sync = () => { low.value = +nv.volumes[0].cal_min.toPrecision(4); high.value = +nv.volumes[0].cal_max.toPrecision(4); };
    const apply = () => {
      nv.volumes[0].cal_min = Number(low.value); nv.volumes[0].cal_max = Number(high.value);
      nv.updateGLVolume();
    };
    low.style.width = high.style.width = "80px";
    low.addEventListener("change", apply); high.addEventListener("change", apply);
    nv.onIntensityChange = sync;
    sync();
    return element("label", {}, "window ", low, " – ", high);
  }

  // one group per overlay (its toggle and its opacity or threshold), kept together when the bar wraps
  function overlayControls(nv, volumes, overlays, state) {
    const groups = [];
    for (const o of volumes.overlays) {
      const box = element("input", { type: "checkbox", checked: true, className: "mv-toggle" });
      box.dataset.key = o.key;
      box.addEventListener("change", () => state.setOverlay(o.key, box.checked));
      let slider;
      if (o.kind === "heat") {
        slider = element("input", { type: "range", min: 0, max: 0.95, step: 0.05, value: o.threshold,
                                    className: "mv-threshold", title: o.title + " lower threshold" });
        slider.addEventListener("input", () => {
          nv.volumes[overlays[o.key]].cal_min = Number(slider.value);
          nv.updateGLVolume();
        });
      } else {
        slider = element("input", { type: "range", min: 0, max: 1, step: 0.05, value: o.opacity,
                                    className: "mv-opacity", title: o.title + " opacity" });
        slider.addEventListener("input", () => { state.opacity[o.key] = Number(slider.value);
                                                 state.setOverlay(o.key, box.checked); });
      }
      const group = element("span", { className: "mv-overlay-group" },
                            element("label", { className: "mv-overlay" }, box, " " + o.title),
                            element("label", {}, o.kind === "heat" ? " threshold " : " opacity ", slider));
      group.style.cssText = "display:inline-flex;align-items:center;gap:4px;white-space:nowrap";
      groups.push(group);
    }
    return groups;
  }

  function legend(volumes) {
    const items = [];
    for (const o of volumes.overlays) {
      for (const [value, name] of Object.entries(o.names || {})) {
        const swatch = element("span", { className: "mv-swatch" });
        swatch.style.cssText = "display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;background:" +
          o.colours[value];
        items.push(swatch, o.title + ": " + name);
      }
    }
    return element("div", { className: "mv-legend" }, ...items);
  }

  async function show(host, volumes) {
    if (!window.niivue) throw new Error("NiiVue is not loaded (run make viewer)");
    if (host.medlens) {  // a new result in the same place: free the previous canvas's WebGL context
      const lose = host.medlens.nv.gl && host.medlens.nv.gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();
      host.medlens = null;
    }
    host.dataset.ready = "false";
    const canvas = element("canvas", { className: "mv-canvas" });
    const stage = element("div", { className: "mv-stage" }, canvas);
    stage.style.cssText = "position:relative;width:100%;height:" + (host.dataset.height || "420") + "px;background:#000";
    host.replaceChildren(stage);
    // a thin cyan crosshair: red is a mask colour
    const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false,
                                   crosshairColor: [0.3, 0.85, 1, 0.7], crosshairWidth: 1,
                                   dragMode: niivue.DRAG_MODE.windowing, isResizeCanvas: true,
                                   multiplanarShowRender: niivue.SHOW_RENDER.NEVER, loadingText: "" });
    await nv.attachToCanvas(canvas);
    const overlays = await loadImage(nv, volumes);
    nv.setSliceType(nv.sliceTypeMultiplanar);
    const state = { nv, overlays, opacity: {}, visible: {} };
    for (const o of volumes.overlays) { state.opacity[o.key] = o.opacity; state.visible[o.key] = true; }
    state.setOverlay = (key, on) => {
      state.visible[key] = on;
      nv.setOpacity(overlays[key], on ? state.opacity[key] : 0);
    };
    const bar = element("div", { className: "mv-controls" }, planeControl(nv), sliceControl(nv, volumes.shape[2]),
                        windowControl(nv), ...overlayControls(nv, volumes, overlays, state));
    bar.style.cssText = "display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;font-size:13px;margin-top:6px";
    host.append(bar, legend(volumes));
    host.medlens = state;
    host.dataset.ready = "true";
    return nv;
  }

  window.medlensViewer = { show, labelTable };
})();
