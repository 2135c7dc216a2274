// atoken report: comparison sliders and synchronised clip players (no libraries, no network).
"use strict";
const ATOKEN_REPORT = JSON.parse(document.getElementById("atoken-report-data").textContent);

// ---- comparison sliders: the left picture is clipped at the handle, over the right one
function setupCompare(fig) {
  const frame = fig.querySelector(".compare-frame");
  const left = fig.querySelector(".compare-left");
  const handle = fig.querySelector(".compare-handle");
  const range = fig.querySelector(".compare-range");
  const set = (pct) => {
    const v = Math.min(100, Math.max(0, pct));
    left.style.clipPath = `inset(0 ${(100 - v).toFixed(2)}% 0 0)`;
    handle.style.left = `${v}%`;
    if (Number(range.value) !== v) range.value = String(v);
  };
  range.addEventListener("input", () => set(Number(range.value)));
  let dragging = false;
  const fromPointer = (ev) => {
    const r = frame.getBoundingClientRect();
    set(((ev.clientX - r.left) / r.width) * 100);
  };
  frame.addEventListener("pointerdown", (ev) => {
    dragging = true;
    frame.setPointerCapture(ev.pointerId);
    fromPointer(ev);
  });
  frame.addEventListener("pointermove", (ev) => { if (dragging) fromPointer(ev); });
  const stop = () => { dragging = false; };
  frame.addEventListener("pointerup", stop);
  frame.addEventListener("pointercancel", stop);
  set(Number(range.value));
}

// ---- clips: the frames are JPEG data: URIs, shown on <img>s in sync. Playing embedded frames
// rather than an <video> of the MP4 keeps the page independent of the codecs a browser has
// (headless and Linux builds of Chromium often lack H.264).
function setupVideo(fig) {
  const clip = ATOKEN_REPORT.videos[fig.dataset.video];
  if (!clip) return;
  const imgs = fig.querySelectorAll(".pane img");
  const button = fig.querySelector(".play");
  const scrub = fig.querySelector(".scrub");
  const label = fig.querySelector(".frame-no");
  const n = clip.frames[0].length;
  // A timer, not requestAnimationFrame: animation frames stall while the page draws something
  // slow (the software-rendered 3D viewer on a busy machine), and a clip should keep its pace.
  // Each tick shows the frame the wall clock has reached, so a late tick skips, never drifts.
  let frame = 0, timer = null, start = 0, from = 0;
  const step = 1000 / Math.max(1, clip.fps);
  const show = (i) => {
    frame = ((i % n) + n) % n;
    clip.frames.forEach((frames, k) => { imgs[k].src = frames[frame]; });
    scrub.value = String(frame);
    label.textContent = `frame ${clip.indices[frame] + 1} / ${clip.total}`;
  };
  const tick = () => {
    const k = Math.floor((performance.now() - start) / step);
    if ((from + k) % n !== frame) show(from + k);
  };
  const play = (on) => {
    if (timer !== null) { clearInterval(timer); timer = null; }
    button.textContent = on ? "❚❚ pause" : "▶ play";
    if (on) { start = performance.now(); from = frame; timer = setInterval(tick, Math.min(step, 50)); }
  };
  button.addEventListener("click", () => play(timer === null));
  scrub.addEventListener("input", () => { play(false); show(Number(scrub.value)); });
  show(0);
}

document.querySelectorAll("[data-compare]").forEach(setupCompare);
document.querySelectorAll("[data-video]").forEach(setupVideo);
