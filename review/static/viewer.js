// fairnode case viewer: swaps server-rendered slices (/cases/{id}/slices/{k}.png) in one <img>.
// Slider, mouse wheel, arrow keys (one slice), PageUp/PageDown (ten), Home/End; S and U toggle the
// segmentation and the uncertainty heatmap; structure names jump to their largest slice. Neighbouring
// slices are fetched ahead so scrolling does not wait on the server. No dependencies, no build step.
(function () {
  "use strict";
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const img = document.getElementById("slice");
  const slider = document.getElementById("slider");
  const label = document.getElementById("slice-no");
  const overlay = document.getElementById("overlay");
  const heatmap = document.getElementById("heatmap");
  const preset = document.getElementById("preset");
  const caseId = viewer.dataset.case;
  const n = parseInt(viewer.dataset.slices, 10);
  const PRELOAD = 3;
  const preloaded = new Map();
  let k = parseInt(viewer.dataset.start, 10) || 0;

  function url(i) {
    const q = new URLSearchParams({
      overlay: overlay.checked ? "true" : "false",
      heatmap: heatmap.checked ? "true" : "false",
      preset: preset.value,
    });
    return "/cases/" + caseId + "/slices/" + i + ".png?" + q.toString();
  }

  function preload(around) {
    for (let d = 1; d <= PRELOAD; d++) {
      for (const i of [around + d, around - d]) {
        if (i < 0 || i >= n) continue;
        const u = url(i);
        if (preloaded.has(u)) continue;
        const im = new Image();
        im.src = u;
        preloaded.set(u, im);
        if (preloaded.size > 400) preloaded.delete(preloaded.keys().next().value);
      }
    }
  }

  function show(i) {
    k = Math.max(0, Math.min(n - 1, i));
    img.src = url(k);
    img.alt = "slice " + (k + 1) + " of case " + caseId;
    slider.value = String(k);
    label.textContent = "slice " + (k + 1) + " / " + n;
    viewer.dataset.current = String(k);
    preload(k);
  }

  slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
  overlay.addEventListener("change", function () { show(k); });
  heatmap.addEventListener("change", function () { show(k); });
  preset.addEventListener("change", function () { show(k); });

  viewer.addEventListener("wheel", function (e) {
    e.preventDefault();
    show(k + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });

  document.addEventListener("keydown", function (e) {
    const t = e.target;
    if (t && (t.tagName === "INPUT" && t.type !== "range" && t.type !== "checkbox" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    const steps = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (e.key in steps) { e.preventDefault(); show(k + steps[e.key]); }
    else if (e.key === "Home") { e.preventDefault(); show(0); }
    else if (e.key === "End") { e.preventDefault(); show(n - 1); }
    else if (e.key === "s" || e.key === "S") { overlay.checked = !overlay.checked; show(k); }
    else if ((e.key === "u" || e.key === "U") && !heatmap.disabled) { heatmap.checked = !heatmap.checked; show(k); }
  });

  for (const b of document.querySelectorAll("button.structure")) {
    b.addEventListener("click", function () { show(parseInt(b.dataset.slice, 10)); viewer.focus(); });
  }

  show(k);
  viewer.focus();
})();
