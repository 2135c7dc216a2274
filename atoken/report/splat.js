// atoken report: a small WebGL2 renderer for 3D Gaussians (written for atoken; no libraries).
//
// Each Gaussian is one camera-facing quad. The vertex shader projects its 3D covariance to the
// screen (EWA splatting, as in Kerbl et al. 2023: Sigma' = J W Sigma W^T J^T, plus 0.3 px^2 of
// low-pass), takes the 2D covariance's eigenvectors as the quad's axes (3 sigma each way), and
// the fragment shader draws exp(-d^2 / 2) times the opacity. Quads are drawn back to front
// (a counting sort of the view depths whenever the camera moves; the idea of sorted quads is
// antimatter15/splat's) with premultiplied "over" blending, no depth test. The Gaussians live
// in an RGBA32F texture (4 texels each); only the draw order is re-uploaded per sort.
// Limits: SH degree 0 only (no view-dependent colour), sorting by centre depth (no per-pixel
// ordering), one sort on the main thread (fine up to the page's 200k Gaussians).
"use strict";
(function () {
  const PER_ROW = 1024;
  const VS = `#version 300 es
precision highp float; precision highp int;
uniform highp sampler2D u_data;
uniform mat4 u_view;
uniform vec2 u_focal;     // pixels
uniform vec2 u_viewport;  // pixels
uniform float u_near;
in vec2 a_corner;         // the quad, [-1, 1]^2
in uint a_index;          // which Gaussian (instance attribute, in draw order)
out vec4 v_color;
out vec2 v_pos;           // position in units of sigma along the two axes
void main() {
  int i = int(a_index);
  ivec2 base = ivec2((i % ${PER_ROW}) * 4, i / ${PER_ROW});
  vec4 t0 = texelFetch(u_data, base, 0);
  vec4 t1 = texelFetch(u_data, base + ivec2(1, 0), 0);
  vec4 t2 = texelFetch(u_data, base + ivec2(2, 0), 0);
  vec4 t3 = texelFetch(u_data, base + ivec2(3, 0), 0);
  vec4 cam = u_view * vec4(t0.xyz, 1.0);
  float z = -cam.z;
  if (z < u_near) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }  // behind: clipped
  vec2 ndc = vec2(u_focal.x * cam.x, u_focal.y * cam.y) / z / (0.5 * u_viewport);
  if (any(greaterThan(abs(ndc), vec2(1.3)))) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  mat3 sigma = mat3(t1.x, t1.y, t1.z,  t1.y, t1.w, t2.x,  t1.z, t2.x, t2.y);
  mat3 J = mat3(u_focal.x / z, 0.0, 0.0,
                0.0, u_focal.y / z, 0.0,
                u_focal.x * cam.x / (z * z), u_focal.y * cam.y / (z * z), 0.0);
  mat3 T = J * mat3(u_view);
  mat3 cov = T * sigma * transpose(T);
  float a = cov[0][0] + 0.3, b = cov[0][1], d = cov[1][1] + 0.3;
  float mid = 0.5 * (a + d);
  float rad = length(vec2(0.5 * (a - d), b));
  float l1 = mid + rad, l2 = max(mid - rad, 0.1);
  vec2 e1 = abs(b) > 1e-9 ? normalize(vec2(b, l1 - a)) : (a >= d ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 e2 = vec2(-e1.y, e1.x);
  vec2 major = min(3.0 * sqrt(l1), 1024.0) * e1;
  vec2 minor = min(3.0 * sqrt(l2), 1024.0) * e2;
  vec2 offset = (a_corner.x * major + a_corner.y * minor) / (0.5 * u_viewport);
  v_pos = 3.0 * a_corner;
  v_color = vec4(t3.rgb, t0.w);
  gl_Position = vec4(ndc + offset, 0.0, 1.0);
}`;
  const FS = `#version 300 es
precision highp float;
in vec4 v_color;
in vec2 v_pos;
out vec4 fragColor;
void main() {
  float power = -0.5 * dot(v_pos, v_pos);
  if (power < -4.5) discard;
  float alpha = min(0.99, v_color.a * exp(power));
  if (alpha < 1.0 / 255.0) discard;
  fragColor = vec4(v_color.rgb * alpha, alpha);  // premultiplied, blended ONE, 1 - SRC_ALPHA
}`;
  const BACKGROUND = [0.125, 0.141, 0.165];

  function floats(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  function compile(gl, type, src) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }

  // RGBA32F rows of 4 texels per Gaussian: (xyz, opacity), covariance (6 values), colour.
  function packTexture(data) {
    const n = data.count;
    const pos = floats(data.positions), col = floats(data.colors), op = floats(data.opacities);
    const sc = floats(data.scales), rot = floats(data.rotations);
    const width = 4 * Math.min(Math.max(n, 1), PER_ROW), height = Math.max(1, Math.ceil(n / PER_ROW));
    const tex = new Float32Array(width * height * 4);
    for (let i = 0; i < n; i++) {
      const o = (Math.floor(i / PER_ROW) * width + (i % PER_ROW) * 4) * 4;
      const [w, x, y, z] = [rot[4 * i], rot[4 * i + 1], rot[4 * i + 2], rot[4 * i + 3]];
      const R = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
      ];
      const s2 = [sc[3 * i] ** 2, sc[3 * i + 1] ** 2, sc[3 * i + 2] ** 2];
      const S = (r, c) => R[3 * r] * R[3 * c] * s2[0] + R[3 * r + 1] * R[3 * c + 1] * s2[1] +
        R[3 * r + 2] * R[3 * c + 2] * s2[2];
      tex.set([pos[3 * i], pos[3 * i + 1], pos[3 * i + 2], op[i],
        S(0, 0), S(0, 1), S(0, 2), S(1, 1), S(1, 2), S(2, 2), 0, 0,
        col[3 * i], col[3 * i + 1], col[3 * i + 2], 0], o);
    }
    return { tex, width, height, pos };
  }

  function lookAt(eye, target) {  // column-major world -> camera, +z up, camera looks down -z
    const f = [target[0] - eye[0], target[1] - eye[1], target[2] - eye[2]];
    const fl = Math.hypot(...f); f.forEach((_, k) => { f[k] /= fl; });
    let s = [f[1], -f[0], 0];  // f x up, up = (0, 0, 1)
    const sl = Math.hypot(...s) || 1; s = s.map((v) => v / sl);
    const u = [s[1] * f[2] - s[2] * f[1], s[2] * f[0] - s[0] * f[2], s[0] * f[1] - s[1] * f[0]];
    const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    return new Float32Array([s[0], u[0], -f[0], 0, s[1], u[1], -f[1], 0, s[2], u[2], -f[2], 0,
      -dot(s, eye), -dot(u, eye), dot(f, eye), 1]);
  }

  function Viewer(fig, data) {
    const canvas = fig.querySelector("canvas");
    const status = fig.querySelector(".splat-status");
    const spin = fig.querySelector(".spin");
    // preserveDrawingBuffer: the picture stays readable (toDataURL, tests) after compositing
    const gl = canvas.getContext("webgl2", { preserveDrawingBuffer: true, antialias: false, alpha: false });
    this.frames = 0;
    this.count = data.count;
    if (!gl) { status.textContent = "WebGL2 is not available in this browser"; return; }
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    const packed = packTexture(data);
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, packed.width, packed.height, 0, gl.RGBA, gl.FLOAT, packed.tex);
    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const aCorner = gl.getAttribLocation(prog, "a_corner");
    gl.enableVertexAttribArray(aCorner);
    gl.vertexAttribPointer(aCorner, 2, gl.FLOAT, false, 0, 0);
    const order = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, order);
    const aIndex = gl.getAttribLocation(prog, "a_index");
    gl.enableVertexAttribArray(aIndex);
    gl.vertexAttribIPointer(aIndex, 1, gl.UNSIGNED_INT, 0, 0);
    gl.vertexAttribDivisor(aIndex, 1);
    const U = (name) => gl.getUniformLocation(prog, name);
    gl.uniform1i(U("u_data"), 0);
    gl.disable(gl.DEPTH_TEST);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);

    const n = data.count, pos = packed.pos;
    const fovy = (40 * Math.PI) / 180;
    const home = { az: -Math.PI / 2 + 0.6, el: 0.35, dist: (1.5 * data.radius) / Math.tan(fovy / 2) };
    const cam = { ...home };
    const ids = new Uint32Array(n), depth = new Float32Array(n), keys = new Uint32Array(n);
    const counts = new Uint32Array(65536 + 1);
    const sort = (view) => {  // counting sort by view depth: farthest (most negative z) first
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < n; i++) {
        const z = view[2] * pos[3 * i] + view[6] * pos[3 * i + 1] + view[10] * pos[3 * i + 2] + view[14];
        depth[i] = z; if (z < lo) lo = z; if (z > hi) hi = z;
      }
      const scale = hi > lo ? 65535 / (hi - lo) : 0;
      counts.fill(0);
      for (let i = 0; i < n; i++) { keys[i] = ((depth[i] - lo) * scale) | 0; counts[keys[i] + 1]++; }
      for (let k = 1; k <= 65536; k++) counts[k] += counts[k - 1];
      for (let i = 0; i < n; i++) ids[counts[keys[i]]++] = i;
      gl.bindBuffer(gl.ARRAY_BUFFER, order);
      gl.bufferData(gl.ARRAY_BUFFER, ids, gl.DYNAMIC_DRAW);
    };
    const draw = () => {
      const c = data.center;
      const eye = [c[0] + cam.dist * Math.cos(cam.el) * Math.cos(cam.az),
        c[1] + cam.dist * Math.cos(cam.el) * Math.sin(cam.az), c[2] + cam.dist * Math.sin(cam.el)];
      const view = lookAt(eye, c);
      sort(view);
      const W = canvas.width, H = canvas.height, f = H / (2 * Math.tan(fovy / 2));
      gl.viewport(0, 0, W, H);
      gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.uniformMatrix4fv(U("u_view"), false, view);
      gl.uniform2f(U("u_focal"), f, f);
      gl.uniform2f(U("u_viewport"), W, H);
      gl.uniform1f(U("u_near"), cam.dist * 0.02);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.bindVertexArray(vao);
      gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, n);
      this.frames++;
    };
    this.draw = draw;

    let dragging = null, visible = true, lastT = performance.now(), dirty = true;
    canvas.addEventListener("pointerdown", (ev) => {
      dragging = { x: ev.clientX, y: ev.clientY };
      canvas.setPointerCapture(ev.pointerId);
    });
    canvas.addEventListener("pointermove", (ev) => {
      if (!dragging) return;
      cam.az -= (ev.clientX - dragging.x) * 0.01;
      cam.el = Math.max(-1.5, Math.min(1.5, cam.el + (ev.clientY - dragging.y) * 0.01));
      dragging = { x: ev.clientX, y: ev.clientY };
      dirty = true;
    });
    const release = () => { dragging = null; };
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", release);
    canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      cam.dist *= Math.exp(Math.max(-0.5, Math.min(0.5, ev.deltaY * 0.001)));
      dirty = true;
    }, { passive: false });
    fig.querySelector(".reset").addEventListener("click", () => { Object.assign(cam, home); dirty = true; });
    if ("IntersectionObserver" in window) {
      new IntersectionObserver((entries) => { visible = entries[entries.length - 1].isIntersecting; })
        .observe(canvas);
    }
    const loop = (t) => {
      const dt = Math.min(0.1, (t - lastT) / 1000);
      lastT = t;
      if (spin.checked && !dragging) { cam.az += 0.35 * dt; dirty = true; }
      if (visible && dirty) { draw(); dirty = false; }
      requestAnimationFrame(loop);
    };
    draw();  // the first picture at once, visible or not
    dirty = false;
    status.textContent = `${n.toLocaleString()} Gaussians`;
    requestAnimationFrame(loop);
  }

  window.atokenSplatViewers = [];
  document.querySelectorAll("[data-splat]").forEach((fig) => {
    const data = ATOKEN_REPORT.splats[fig.dataset.splat];
    if (!data) return;
    try {
      const v = new Viewer(fig, data);
      window.atokenSplatViewers.push(v);
      fig.splatViewer = v;
    } catch (err) {
      fig.querySelector(".splat-status").textContent = `3D viewer failed: ${err.message}`;
      console.error("atoken report: 3D viewer failed:", err);
    }
  });
})();
